"""Vectorisable float32 special functions for kernel epilogues.

`math.erf` compiles to a scalar libm call that LLVM cannot vectorise, and the GELU after the FFN's
first matmul touches 3072 x 4096 values per layer. `erf_f32` is the clamped odd rational
approximation Eigen and XLA use for float32 (x * P(x^2) / Q(x^2) on [-4, 4], where |erf| rounds
to 1 outside): only multiply-adds, one division and min/max, so a loop over it becomes AVX code.
Its max abs error vs `math.erf` is ~1e-7 (tests/test_kernels.py checks <= 1e-6).

`tanh_f32` is the matching Eigen float32 rational for tanh, for the "gelu_new" activation.
"""

import numpy as np

from .jit import helper

_ERF_CLAMP = np.float32(4.0)
# Numerator (odd) and denominator (even) coefficients, highest power first (Eigen, XLA).
_A1 = np.float32(-2.72614225801306e-10)
_A3 = np.float32(2.77068142495902e-08)
_A5 = np.float32(-2.10102402082508e-06)
_A7 = np.float32(-5.69250639462346e-05)
_A9 = np.float32(-7.34990630326855e-04)
_A11 = np.float32(-2.95459980854025e-03)
_A13 = np.float32(-1.60960333262415e-02)
_B0 = np.float32(-1.45660718464996e-05)
_B2 = np.float32(-2.13374055278905e-04)
_B4 = np.float32(-1.68282697438203e-03)
_B6 = np.float32(-7.37332916720468e-03)
_B8 = np.float32(-1.42647390514189e-02)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_INV_SQRT2 = np.float32(0.7071067811865476)


@helper
def erf_f32(x):
    """erf of a float32 scalar, max abs error ~1e-7, branch-free (vectorises in loops)."""
    x = min(max(x, -_ERF_CLAMP), _ERF_CLAMP)
    x2 = x * x
    p = x2 * _A1 + _A3
    p = x2 * p + _A5
    p = x2 * p + _A7
    p = x2 * p + _A9
    p = x2 * p + _A11
    p = x2 * p + _A13
    p = x * p
    q = x2 * _B0 + _B2
    q = x2 * q + _B4
    q = x2 * q + _B6
    q = x2 * q + _B8
    # np.divide, not `/`: Numba's `/` checks for a zero divisor (Python semantics), and that
    # branch stops LLVM from vectorising the loop; q is never 0 on the clamped range.
    return np.divide(p, q)


@helper
def gelu_f32(x):
    """Exact (erf) GELU of a float32 scalar through `erf_f32`."""
    return _HALF * x * (_ONE + erf_f32(x * _INV_SQRT2))


# tanh: Eigen's float32 rational (odd numerator of degree 13, even denominator of degree 6),
# clamped where tanh rounds to +-1 in float32.
_TANH_CLAMP = np.float32(7.90531110763549805)
_T1 = np.float32(4.89352455891786e-03)
_T3 = np.float32(6.37261928875436e-04)
_T5 = np.float32(1.48572235717979e-05)
_T7 = np.float32(5.12229709037114e-08)
_T9 = np.float32(-8.60467152213735e-11)
_T11 = np.float32(2.00018790482477e-13)
_T13 = np.float32(-2.76076847742355e-16)
_U0 = np.float32(4.89352518554385e-03)
_U2 = np.float32(2.26843463243900e-03)
_U4 = np.float32(1.18534705686654e-04)
_U6 = np.float32(1.19825839466702e-06)
_SQRT_2_OVER_PI = np.float32(0.7978845608028654)
_GELU_TANH_C = np.float32(0.044715)


@helper
def tanh_f32(x):
    """tanh of a float32 scalar, max abs error ~1e-7, branch-free (vectorises in loops)."""
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = x2 * _T13 + _T11
    p = x2 * p + _T9
    p = x2 * p + _T7
    p = x2 * p + _T5
    p = x2 * p + _T3
    p = x2 * p + _T1
    p = x * p
    q = x2 * _U6 + _U4
    q = x2 * q + _U2
    q = x2 * q + _U0
    return np.divide(p, q)


@helper
def gelu_tanh_f32(x):
    """tanh-approximated GELU ("gelu_new") of a float32 scalar through `tanh_f32`."""
    return _HALF * x * (_ONE + tanh_f32(_SQRT_2_OVER_PI * (x + _GELU_TANH_C * x * x * x)))
