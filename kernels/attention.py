"""Multi-head self-attention on the (B, F, T) layout, with the softmax run down the key axis.

`attention(qkv, key_bias, heads, scale, ctx)`:
  qkv (B, 3H, T) float32 holds the Q, K and V projections as row blocks; for sequence b and head h
  (D = H / heads), Q_h = qkv[b, hD:(h+1)D] (D, T) and likewise K_h, V_h at offsets H and 2H.
  ctx[b, hD:(h+1)D] (D, T) = V_h @ softmax_rows(scale * Q_hᵀ K_h + key_bias[b])ᵀ.
  key_bias (B, T): 0 for real keys, very negative (-1e30) for padding; a row whose keys are all
  padding gets a uniform softmax (finite output). Shapes are validated by the caller.
  One task per (b, h), each one call of the serial `one_head` (the two matmuls are single-threaded
  BLAS calls, see dense.py for why). The same code written inside the prange body compiled to a
  slower loop (73 vs 63 us per (sequence, head) at T = 128, one Zen 4 core) and took 3.3 instead
  of 2.6 s to compile: NumPy calls in a prange body become parfors of their own.

How: the scores are computed key-major, Sᵀ = K_hᵀ Q_h (Tk, Tq), so each softmax (one per query, a
column of Sᵀ) runs down the columns, and every pass is a plain elementwise loop over whole rows of
Tq queries: scale + bias + running max in one pass, exp + running sum in the next, with no
horizontal reductions and no per-row loop starts. The context is then V_h Sᵀ (D, Tq) with no
transposes, and the 1 / sum normalisation is applied to its D x Tq values instead of the Tk x Tq
probabilities. (Row-major scores with a softmax per row took 15-18 us of the ~65 us per
(sequence, head) at T = 128 on Sapphire Rapids.) Max and sum are accumulated key by key in the same
order whatever the thread count, so results are deterministic.

`exp_shifted(row, m, ibits)`: in place, row[j] = exp(row[j] - m[j]) for float32 rows; ibits is int32
  scratch (>= len). exp is evaluated as 2^n * p(r) with r = x - n ln2 (Cody-Waite split) and a
  degree-6 polynomial (Cephes expf coefficients, ~1 ulp); 2^n is assembled in `ibits` and read back
  through a float32 view, so every loop is branch-free and vectorises. Arguments below -87
  (exp < 1.7e-38) give exactly 0.
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
def exp_shifted(row, m, ibits):
    n = row.shape[0]
    for j in range(n):
        x = row[j] - m[j]
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


@kernel
def one_head(qkv, key_bias, b, h, heads, scale, ctx, s, m, total, ibits):
    # ctx[b, hD:(h+1)D] for one (sequence, head); s (T, T), m, total (T,) float32 and ibits (T,)
    # int32 are the caller's scratch.
    T = qkv.shape[2]
    H = qkv.shape[1] // 3
    D = H // heads
    q = qkv[b, h * D : (h + 1) * D]  # (D, T)
    k = qkv[b, H + h * D : H + (h + 1) * D]
    v = qkv[b, 2 * H + h * D : 2 * H + (h + 1) * D]
    np.dot(k.T, q, s)  # (Tk, Tq): s[j, r] = k_j . q_r
    kb = key_bias[b]
    for r in range(T):
        m[r] = _NEG_INF  # per query: max over keys
        total[r] = _ZERO  # per query: sum over keys of exp
    for j in range(T):
        row = s[j]
        bj = kb[j]
        for r in range(T):
            val = row[r] * scale + bj
            row[r] = val
            m[r] = max(m[r], val)
    for j in range(T):
        row = s[j]
        exp_shifted(row, m, ibits)
        for r in range(T):
            total[r] += row[r]
    out = ctx[b, h * D : (h + 1) * D]  # (D, Tq)
    np.dot(v, s, out)
    for r in range(T):
        total[r] = _ONE / total[r]
    for d in range(D):
        o = out[d]
        for r in range(T):
            o[r] *= total[r]


@kernel
def sequence_heads(qkv, key_bias, heads, scale, ctx):
    # Every head of one sequence, serially: qkv (1, 3H, T), key_bias (1, T), ctx (1, H, T); for
    # the fused whole-layer kernels, whose tasks are sequences (kernels/ffn_fused.py, ffn_int8.py).
    T = qkv.shape[2]
    s = np.empty((T, T), dtype=np.float32)
    m = np.empty(T, dtype=np.float32)
    total = np.empty(T, dtype=np.float32)
    ibits = np.empty(T, dtype=np.int32)
    for h in range(heads):
        one_head(qkv, key_bias, 0, h, heads, scale, ctx, s, m, total, ibits)


@parallel_kernel
def attention(qkv, key_bias, heads, scale, ctx):
    # The loop body is one serial call: NumPy allocations written inside a prange body become
    # parfors of their own, and compiling those took a third of this kernel's compile time.
    B, H3, T = qkv.shape
    for i in prange(B * heads):
        b = i // heads
        s = np.empty((T, T), dtype=np.float32)
        m = np.empty(T, dtype=np.float32)
        total = np.empty(T, dtype=np.float32)
        ibits = np.empty(T, dtype=np.int32)
        one_head(qkv, key_bias, b, i - b * heads, heads, scale, ctx, s, m, total, ibits)
