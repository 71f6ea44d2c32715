"""Multi-head self-attention on the (B, F, T) layout, and its vectorisable softmax.

`attention(qkv, key_bias, heads, scale, ctx)`:
  qkv (B, 3H, T) float32 holds the Q, K and V projections as row blocks; for sequence b and head h
  (D = H / heads), Q_h = qkv[b, hD:(h+1)D] (D, T) and likewise K_h, V_h at offsets H and 2H.
  ctx[b, hD:(h+1)D] (D, T) = V_h @ softmax_rows(scale * Q_hᵀ K_h + key_bias[b])ᵀ.
  key_bias (B, T): 0 for real keys, very negative (-1e30) for padding; a row whose keys are all
  padding gets a uniform softmax (finite output). Shapes are validated by the caller.
  One task per (b, h); the two matmuls are single-threaded BLAS calls (see dense.py for why).

`softmax_row(row, ibits)`: in place, softmax of one float32 row; ibits is int32 scratch (>= len).
  exp is evaluated as 2^n * p(r) with r = x - n ln2 (Cody-Waite split) and a degree-6 polynomial
  (Cephes expf coefficients, ~1 ulp); 2^n is assembled in `ibits` and read back through a float32
  view, so every loop is branch-free and vectorises. Inputs below -87 (exp < 1.7e-38) give exactly 0.
  Max and sum use 8 independent partial accumulators (vectorisable without reassociation, and the
  same order whatever the thread count, so results are deterministic).
"""

import numpy as np
from numba import prange

from .jit import kernel, parallel_kernel

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_MIN_ARG = np.float32(-87.0)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)
_NEG_INF = np.float32(-np.inf)


@kernel
def _row_max(row):
    n = row.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = _NEG_INF
    n8 = n - n % 8
    for j in range(0, n8, 8):
        m0 = max(m0, row[j])
        m1 = max(m1, row[j + 1])
        m2 = max(m2, row[j + 2])
        m3 = max(m3, row[j + 3])
        m4 = max(m4, row[j + 4])
        m5 = max(m5, row[j + 5])
        m6 = max(m6, row[j + 6])
        m7 = max(m7, row[j + 7])
    m = max(max(max(m0, m1), max(m2, m3)), max(max(m4, m5), max(m6, m7)))
    for j in range(n8, n):
        m = max(m, row[j])
    return m


@kernel
def _row_sum(row):
    n = row.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = _ZERO
    n8 = n - n % 8
    for j in range(0, n8, 8):
        s0 += row[j]
        s1 += row[j + 1]
        s2 += row[j + 2]
        s3 += row[j + 3]
        s4 += row[j + 4]
        s5 += row[j + 5]
        s6 += row[j + 6]
        s7 += row[j + 7]
    s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
    for j in range(n8, n):
        s += row[j]
    return s


@kernel
def softmax_row(row, ibits):
    n = row.shape[0]
    m = _row_max(row)
    for j in range(n):
        x = row[j] - m
        keep = x >= _MIN_ARG
        x = max(x, _MIN_ARG)
        k = np.floor(x * _LOG2E + _HALF)
        r = x - k * _LN2_HI
        r = r - k * _LN2_LO
        p = _P0 * r + _P1
        p = p * r + _P2
        p = p * r + _P3
        p = p * r + _P4
        p = p * r + _P5
        p = p * r * r + r + _ONE
        row[j] = p if keep else _ZERO
        ibits[j] = (np.int32(k) + np.int32(127)) << np.int32(23)
    scale = ibits[:n].view(np.float32)
    for j in range(n):
        row[j] *= scale[j]
    inv = _ONE / _row_sum(row)
    for j in range(n):
        row[j] *= inv


@parallel_kernel
def attention(qkv, key_bias, heads, scale, ctx):
    B, H3, T = qkv.shape
    H = H3 // 3
    D = H // heads
    for i in prange(B * heads):
        b = i // heads
        h = i - b * heads
        q = qkv[b, h * D : (h + 1) * D]  # (D, T)
        k = qkv[b, H + h * D : H + (h + 1) * D]
        v = qkv[b, 2 * H + h * D : 2 * H + (h + 1) * D]
        p = np.dot(q.T, k)  # (Tq, Tk)
        kb = key_bias[b]
        ibits = np.empty(T, dtype=np.int32)
        for r in range(T):
            row = p[r]
            for j in range(T):
                row[j] = row[j] * scale + kb[j]
            softmax_row(row, ibits)
        np.dot(v, p.T, ctx[b, h * D : (h + 1) * D])
