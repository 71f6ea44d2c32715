"""Normalisation kernels on the (B, F, S) activation layout.

`layer_norm(x, gamma, beta, eps)`: in place, for every (b, s): x[b, :, s] = (x - mean) / sqrt(var + eps)
  * gamma + beta, mean and (biased) variance over F. float32 C-contiguous x (B, F, S); gamma, beta (F,).
  Work is split into (sequence, 64-position tile) tasks so batch size 1 still uses every thread; the
  inner loops run along contiguous positions and vectorise. Variance is two-pass (no cancellation).
"""

import numpy as np
from numba import prange

from .jit import parallel_kernel

_TILE = 64


@parallel_kernel
def layer_norm(x, gamma, beta, eps):
    B, F, S = x.shape
    tiles = (S + _TILE - 1) // _TILE
    inv_f = np.float32(1.0 / F)
    # Flat x with uint64 offsets: indexing the (B, F, S) array as x[b, f][s0 + j] made LLVM emit
    # negative-index wraparound selects and gathers, 5.7x slower (5.1 ms vs 0.9 ms, B=32 T=128).
    xf = x.reshape(-1)
    us = np.uint64(S)
    for i in prange(B * tiles):
        b = i // tiles
        s0 = (i - b * tiles) * _TILE
        w = np.uint64(min(_TILE, S - s0))
        base = np.uint64(b * F * S + s0)
        mean = np.zeros(_TILE, dtype=np.float32)
        rstd = np.zeros(_TILE, dtype=np.float32)
        for f in range(F):
            o = base + np.uint64(f) * us
            for j in range(w):
                mean[j] += xf[o + j]
        for j in range(w):
            mean[j] *= inv_f
        for f in range(F):
            o = base + np.uint64(f) * us
            for j in range(w):
                d = xf[o + j] - mean[j]
                rstd[j] += d * d
        for j in range(w):
            rstd[j] = np.float32(1.0) / np.sqrt(rstd[j] * inv_f + eps)
        for f in range(F):
            o = base + np.uint64(f) * us
            g = gamma[f]
            be = beta[f]
            for j in range(w):
                xf[o + j] = (xf[o + j] - mean[j]) * rstd[j] * g + be
