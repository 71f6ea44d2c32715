"""Dense matmul and attention kernels: BLAS inside Numba's thread pool.

Why not numpy's matmul: numpy's OpenBLAS runs its own pthreads, which keep spinning after each call
and fight Numba's OpenMP workers for the two cores; alternating the two pools cost ~5 ms per switch
here, more than a whole small layer. So every parallel loop is Numba's, and BLAS runs inside it
single-threaded (`np.dot` in nopython mode calls SciPy's BLAS, which `jit.py` limits to one thread).
Independent per-(batch, row-chunk) gemms also beat one multi-threaded gemm per batch item.

Contracts (float32, C-contiguous, shapes validated by the caller):
- `gemm(W, X, bias, act, R, has_residual, rows, Y)`: Y[b] (N, S) = epilogue(W (N, K) @ X[b] (K, S)),
  epilogue = + bias[n], activation `act` (0 none, 1 GELU, 2 tanh GELU, 3 relu), + R[b] if has_residual.
  Work is split in chunks of `rows` output rows, one gemm + epilogue each, so results stay in cache.
- `attention(qkv, key_bias, heads, scale, ctx)`: qkv (B, 3H, T) holds Q, K, V row blocks; for each
  sequence b and head h with D = H / heads, ctx[b, hD:(h+1)D] (D, T) = V_h @ softmax(scale * Q_hᵀ K_h
  + key_bias[b])ᵀ, the softmax over keys. key_bias (B, T) is 0 for real keys and very negative for
  padding, so fully padded rows stay finite.
"""

import math

import numpy as np
from numba import prange

from .jit import parallel_kernel
from .spmm_epilogue import epilogue_row


@parallel_kernel
def gemm(W, X, bias, act, R, has_residual, rows, Y):
    B, K, S = X.shape
    N = W.shape[0]
    chunks = (N + rows - 1) // rows
    yflat = Y.reshape(B * N * S)
    rflat = R.reshape(R.size)
    for i in prange(B * chunks):
        b = i // chunks
        n0 = (i - b * chunks) * rows
        n1 = min(N, n0 + rows)
        np.dot(W[n0:n1], X[b], Y[b, n0:n1])
        for n in range(n0, n1):
            off = np.uint64((b * N + n) * S)
            epilogue_row(yflat, off, yflat, off, S, bias[n], act, rflat, off, has_residual)


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
        for r in range(T):
            row = p[r]
            m = np.float32(-np.inf)
            for j in range(T):
                x = row[j] * scale + kb[j]
                row[j] = x
                m = max(m, x)
            total = np.float32(0.0)
            for j in range(T):
                e = np.float32(math.exp(row[j] - m))
                row[j] = e
                total += e
            inv = np.float32(1.0) / total
            for j in range(T):
                row[j] *= inv
        np.dot(v, p.T, ctx[b, h * D : (h + 1) * D])
