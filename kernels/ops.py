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
    for i in prange(B * tiles):
        b = i // tiles
        s0 = (i - b * tiles) * _TILE
        w = min(_TILE, S - s0)
        mean = np.zeros(_TILE, dtype=np.float32)
        rstd = np.zeros(_TILE, dtype=np.float32)
        for f in range(F):
            row = x[b, f]
            for j in range(w):
                mean[j] += row[s0 + j]
        for j in range(w):
            mean[j] *= inv_f
        for f in range(F):
            row = x[b, f]
            for j in range(w):
                d = row[s0 + j] - mean[j]
                rstd[j] += d * d
        for j in range(w):
            rstd[j] = np.float32(1.0) / np.sqrt(rstd[j] * inv_f + eps)
        for f in range(F):
            row = x[b, f]
            g = gamma[f]
            be = beta[f]
            for j in range(w):
                row[s0 + j] = (row[s0 + j] - mean[j]) * rstd[j] * g + be
