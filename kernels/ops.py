"""Element-wise and normalisation kernels on the (B, F, S) activation layout.

Contracts (all arrays float32 C-contiguous unless stated; shapes validated by the caller):
- `bias_act_residual(y, bias, act, residual)`: in place, y[b, n, s] = act(y + bias[n]) + residual.
- `layer_norm(x, gamma, beta, eps)`: in place, LayerNorm over F for every (b, s).
- `masked_softmax(scores, key_bias, scale)`: in place over the last axis of (B, NH, S, S):
  softmax(scale * scores + key_bias[b, None, :]). key_bias is 0 for real keys and a large negative
  number for padding, so a row whose keys are all padding still gets a finite uniform softmax.
- `gelu(x)`: exact erf GELU of a scalar.
"""

import math

import numpy as np
from numba import prange

from .jit import kernel, parallel_kernel

_INV_SQRT2 = 0.7071067811865476


@kernel
def gelu(x):
    return 0.5 * x * (1.0 + math.erf(x * _INV_SQRT2))


@kernel
def gelu_tanh(x):
    return 0.5 * x * (1.0 + math.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


@parallel_kernel
def _bias_act_residual(y, bias, act, residual, has_residual):
    B, N, S = y.shape
    for i in prange(B * N):
        b = i // N
        n = i - b * N
        row = y[b, n]
        bn = bias[n]
        for s in range(S):
            v = row[s] + bn
            if act == 1:
                v = gelu(v)
            elif act == 2:
                v = gelu_tanh(v)
            elif act == 3:
                v = max(v, 0.0)
            if has_residual:
                v += residual[b, n, s]
            row[s] = v


_NO_RESIDUAL = np.zeros((1, 1, 1), dtype=np.float32)


def bias_act_residual(y, bias, act: int, residual=None) -> None:
    """In place: y = act(y + bias) (+ residual). act: 0 none, 1 gelu, 2 gelu_tanh, 3 relu."""
    if residual is None:
        _bias_act_residual(y, bias, act, _NO_RESIDUAL, False)
    else:
        _bias_act_residual(y, bias, act, residual, True)


@parallel_kernel
def layer_norm(x, gamma, beta, eps):
    B, F, S = x.shape
    inv_f = np.float32(1.0 / F)
    for b in prange(B):
        mean = np.zeros(S, dtype=np.float32)
        rstd = np.zeros(S, dtype=np.float32)
        for f in range(F):
            for s in range(S):
                mean[s] += x[b, f, s]
        for s in range(S):
            mean[s] *= inv_f
        for f in range(F):
            for s in range(S):
                d = x[b, f, s] - mean[s]
                rstd[s] += d * d
        for s in range(S):
            rstd[s] = np.float32(1.0) / np.sqrt(rstd[s] * inv_f + eps)
        for f in range(F):
            g = gamma[f]
            be = beta[f]
            for s in range(S):
                x[b, f, s] = (x[b, f, s] - mean[s]) * rstd[s] * g + be


@parallel_kernel
def masked_softmax(scores, key_bias, scale):
    B, NH, SQ, SK = scores.shape
    for i in prange(B * NH):
        b = i // NH
        h = i - b * NH
        kb = key_bias[b]
        for q in range(SQ):
            row = scores[b, h, q]
            m = np.float32(-np.inf)
            for k in range(SK):
                v = row[k] * scale + kb[k]
                row[k] = v
                m = max(m, v)
            total = np.float32(0.0)
            for k in range(SK):
                e = np.float32(math.exp(row[k] - m))
                row[k] = e
                total += e
            inv = np.float32(1.0) / total
            for k in range(SK):
                row[k] *= inv
