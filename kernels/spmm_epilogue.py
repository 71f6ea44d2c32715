"""Helpers shared by the generated spmm drivers (and kernels/dense.py): the fused epilogue and the
short-sequence panel.

`epilogue_inplace` turns one row of matmul sums into the layer output in one pass: + bias,
activation (0 none, 1 exact GELU via the vectorisable `erf_f32`, 2 tanh GELU, 3 relu), then
+ residual. It reads and writes the same array at the same index, so LLVM vectorises it without
runtime overlap checks (a src -> dst form handed the same buffer as both made those checks fail
and ran the GELU scalar, 6x slower); `copy_row` moves a scratch row to its destination first.
"""

import numpy as np

from .jit import helper
from .numeric import gelu_f32, gelu_tanh_f32

_ZERO = np.float32(0.0)


@helper
def epilogue_inplace(y, off, width, bias, act, res, roff, has_residual):
    # y[off + j] = act(y[off + j] + bias) (+ res[roff + j]) for j < width: the bias after the
    # products, as a dense layer adds it. Flat float32 arrays, uint64 offsets (no wraparound
    # checks); res must not overlap y's row.
    if act == 1:
        for j in range(width):
            y[off + j] = gelu_f32(y[off + j] + bias)
    elif act == 2:
        for j in range(width):
            y[off + j] = gelu_tanh_f32(y[off + j] + bias)
    elif act == 3:
        for j in range(width):
            y[off + j] = max(y[off + j] + bias, _ZERO)
    else:
        for j in range(width):
            y[off + j] += bias
    if has_residual:
        for j in range(width):
            y[off + j] += res[roff + j]


@helper
def copy_row(src, soff, dst, doff, width):
    # dst[doff + j] = src[soff + j] for j < width: raw sums out of a scratch row, before the
    # driver's one epilogue pass.
    for j in range(width):
        dst[doff + j] = src[soff + j]


@helper
def pack_sequences(x, b0, nb, width):
    # Flat (K, width) panel holding x[b0 + i, :, :S] at columns i*S .. i*S + S - 1 for i < nb,
    # zero elsewhere (nb * S <= width): short sequences side by side for one full-width tile.
    K, S = x.shape[1], x.shape[2]
    xf = x.reshape(-1)
    us, uw = np.uint64(S), np.uint64(width)
    panel = np.zeros(K * width, dtype=np.float32)
    for i in range(nb):
        src = np.uint64((b0 + i) * K * S)
        dst = np.uint64(i * S)
        for k in range(np.uint64(K)):
            for s in range(us):
                panel[dst + k * uw + s] = xf[src + k * us + s]
    return panel


@helper
def zero_rows(y, off, n_rows, stride, width):
    # y[off + i * stride + j] = 0 for i < n_rows, j < width: the sums the spmm tiles accumulate
    # into (the bias comes after the products, in the epilogue: starting the sums from it moved
    # MiniLM's sparse-vs-dense difference from 2e-6 to 1.4e-5).
    o = np.uint64(off)
    for i in range(n_rows):
        for j in range(np.uint64(width)):
            y[o + j] = _ZERO
        o += np.uint64(stride)


@helper
def pack_panel(xf, src, stride, nk, width, panel):
    # panel[k * width + j] = xf[src + k * stride + j] for k < nk, j < width: one K-chunk of a
    # token tile, made contiguous. Flat arrays, uint64 offsets: indexing x[b, k][s0 + j] compiled
    # to wraparound selects and gathers, 8x slower.
    uw = np.uint64(width)
    for k in range(np.uint64(nk)):
        s = src + k * np.uint64(stride)
        d = k * uw
        for j in range(uw):
            panel[d + j] = xf[s + j]
