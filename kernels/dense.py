"""Dense matmul kernel: BLAS inside Numba's thread pool.

Why not numpy's matmul: numpy's OpenBLAS runs its own pthreads, which keep spinning after each call
and fight Numba's OpenMP workers for the two cores; alternating the two pools cost ~5 ms per switch
here, more than a whole small layer. So every parallel loop is Numba's, and BLAS runs inside it
single-threaded (`np.dot` in nopython mode calls SciPy's BLAS, which `jit.py` limits to one thread).
Independent per-(batch, row-chunk) gemms also beat one multi-threaded gemm per batch item.

Contracts (float32, C-contiguous, shapes validated by the caller):
- `gemm(W, X, bias, act, R, has_residual, rows, Y)`: Y[b] (N, S) = epilogue(W (N, K) @ X[b] (K, S)),
  epilogue = + bias[n], activation `act` (0 none, 1 GELU, 2 tanh GELU, 3 relu), + R[b] if has_residual.
  Work is split in chunks of `rows` output rows, one gemm + epilogue each, so results stay in cache.
"""

import numpy as np
from numba import prange

from .jit import parallel_kernel
from .spmm_epilogue import epilogue_inplace


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
        us = np.uint64(S)
        for n in range(n0, n1):
            off = np.uint64((b * N + n) * S)
            epilogue_inplace(yflat, off, us, bias[n], act, rflat, off, has_residual)
