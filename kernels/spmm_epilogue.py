"""Helpers shared by the generated spmm drivers: the fused epilogue and the short-sequence panel.

`epilogue_row` turns one row of biased matmul sums into the layer output: activation
(0 none, 1 exact GELU via the vectorisable `erf_f32`, 2 tanh GELU, 3 relu), + residual. Each
activation has its own loop so LLVM sees branch-free bodies it can vectorise.
"""

import numpy as np

from .jit import kernel
from .numeric import gelu_f32, gelu_tanh_f32

_ZERO = np.float32(0.0)


@kernel
def epilogue_row(src, soff, dst, doff, width, act, res, roff, has_residual):
    # dst[doff + j] = act(src[soff + j]) (+ res[roff + j]) for j < width; the bias is already in
    # src. Flat float32 arrays, uint64 offsets (no wraparound checks); src may be dst, same offset.
    if act == 1:
        for j in range(width):
            dst[doff + j] = gelu_f32(src[soff + j])
    elif act == 2:
        for j in range(width):
            dst[doff + j] = gelu_tanh_f32(src[soff + j])
    elif act == 3:
        for j in range(width):
            dst[doff + j] = max(src[soff + j], _ZERO)
    else:
        for j in range(width):
            dst[doff + j] = src[soff + j]
    if has_residual:
        for j in range(width):
            dst[doff + j] += res[roff + j]


@kernel
def pack_sequences(x, b0, nb, width):
    # Flat (K, width) panel holding x[b0 + i, :, :S] at columns i*S .. i*S + S - 1 for i < nb,
    # zero elsewhere (nb * S <= width): short sequences side by side for one full-width tile.
    K, S = x.shape[1], x.shape[2]
    panel = np.zeros(K * width, dtype=np.float32)
    for k in range(K):
        for i in range(nb):
            for s in range(S):
                panel[k * width + i * S + s] = x[b0 + i, k, s]
    return panel
