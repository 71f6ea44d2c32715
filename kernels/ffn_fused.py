"""The feed-forward block fused per token tile: `ffn_csr`.

Computes, for every sequence b of a batch in sparsebert's layout (see `sparsebert.kernels`),

    F (I, S)    = act(W1 (I, H) @ X[b] (H, S) + b1[:, None])
    Y[b] (H, S) = W2 (H, I) @ F + b2[:, None] (+ residual[b]), then optionally LayerNorm over H

one token tile at a time: a task packs its (H, TW) slice of X into a contiguous panel, computes the
(I, TW) intermediate into a scratch buffer, which stays in L2 (I x TW x 4 B: 768 KiB for BERT-base
at TW = 64, 384 KiB for MiniLM), and runs the second matmul straight from it. The unfused path
writes all of F (B, I, S) to memory (12.6 MB at B = 8 x 128 for BERT-base) and reads it back.
Each matmul uses a 64-token register tile (`spmm_zmm`'s on AVX-512, else `_spmm_generated.py`'s)
for its weight's kind; a partial tile at the end of a sequence runs on a zero-padded panel and
writes back only its own columns.

Weights are grouped by K-chunk as `sparsebert.linear.CSRLinear` / `BSRLinear` store them
(`spmm.chunk_entries`), each either CSR (r = 1: data (nnz,), chunk-local column indices, ptr
(n_chunks, N + 1)) or 4x1 blocks (r = 4: data (nblocks * 4,) flat, chunk-local block-column
indices, ptr (n_chunks, N / 4 + 1)), chunk_cols columns per chunk; r1, r2, r0 give each weight's
kind. act: 0 none, 1 exact GELU, 2 tanh GELU, 3 relu (`spmm_epilogue.epilogue_inplace`).

Contract (validated by the caller, `sparsebert.ffn`): float32 C-contiguous x (B, H, S), y (B, H, S)
not overlapping x, residual (B, H, S) if has_residual (it may be x itself); W1 is (I, H), W2 (H, I),
b1 (I,), b2 (H,); gamma, beta (H,) float32 (read only when has_norm); every ptr range inside its
entry arrays, indices in range. The LayerNorm is `ops.layer_norm_tile`, the code of `ops.layer_norm`.

With has_pre the tile first runs the attention output linear W0 (H, H) on X (the attention
context): h = LayerNorm0(W0 @ X + b0 + residual) per column (gamma0, beta0; the same eps), and h
takes the place of X and of the FFN's residual; y may then be residual itself (each task reads its
residual tile before it writes that tile of y). W0's arrays are read only when has_pre.

Left out: batch-1 splitting of one tile's rows over threads (tasks are (sequence, token tile)
pairs), other block shapes, dense weights (BLAS already keeps its own tiles in cache).
"""

import numpy as np
from numba import prange

from ._spmm_generated import _tile_bsr4x1_w32, _tile_csr_w64
from .attention import sequence_heads
from .jit import helper, parallel_kernel
from .ops import layer_norm_tile
from .spmm_epilogue import copy_row, epilogue_inplace, zero_rows
from .spmm_zmm import ZMM, tile_bsr4x1_z64, tile_csr_z64

TILE = 64  # tokens per task: the width of the register tiles below
# The zmm tile where the target CPU has AVX-512 (spmm_zmm); Numba's cache keys the compiled kernel
# on that target, so the choice made here at import and the cached code agree.
_tile_csr = tile_csr_z64 if ZMM else _tile_csr_w64
# Numba's on-disk cache keys a kernel on its own file, not on the helpers it calls from
# `_spmm_generated.py`, `spmm_zmm.py` and `ops.py`; tests/test_ffn_fused.py fails until this stamp
# matches those files, so an edit to them also edits (and re-compiles) this one.
BUILT_AGAINST = "_spmm_generated.py 7d83bc8828359aed, spmm_zmm.py 19555bb18465a4cb, ops.py bf281eab8eb1be2a, attention.py 839209a8831a6388, spmm_epilogue.py 84df407a011b8901, numeric.py 6c0311da66f4dbb7"


@helper
def _tile_4x1(out, yoff, src, xoff, d, i, start, end):
    # One 4x1-block row's entries [start, end) over TILE tokens: the zmm tile where the target
    # has AVX-512 (ZMM is a compile-time constant), else the generated 32-token tile twice.
    ut = np.uint64(TILE)
    if ZMM:
        tile_bsr4x1_z64(out, yoff, ut, src, xoff, ut, d, i, start, end)
    else:
        half = np.uint64(TILE // 2)
        _tile_bsr4x1_w32(out, yoff, ut, src, xoff, ut, d, i, start, end)
        _tile_bsr4x1_w32(out, yoff + half, ut, src, xoff + half, ut, d, i, start, end)


@helper
def _product(out, src, d, i, p, kc, R):
    # out (N, TILE) += W (N, K) @ src (K, TILE), both flat with rows TILE apart; W's entries grouped
    # by K-chunk (p (n_chunks, N / R + 1), kc columns per chunk), one chunk of src at a time: CSR
    # (R = 1, data (nnz,)) or 4x1 blocks (R = 4, data (nblocks * 4,), indices block columns).
    ut = np.uint64(TILE)
    for c in range(p.shape[0]):
        xoff = np.uint64(c * kc * TILE)
        for n in range(p.shape[1] - 1):
            start, end = np.uint64(p[c, n]), np.uint64(p[c, n + 1])
            if R == 4:
                _tile_4x1(out, np.uint64(n * 4 * TILE), src, xoff, d, i, start, end)
            else:
                _tile_csr(out, np.uint64(n * TILE), ut, src, xoff, ut, d, i, start, end)


@helper
def _tail_tile(d1, i1, p1, kc1, b1, act, d2, i2, p2, kc2, b2, xf, xbase, rf, base, S, width, has_residual,
               gamma, beta, eps, has_norm, yf, d0, i0, p0, kc0, b0, gamma0, beta0, has_pre, r1, r2, r0):
    # One token tile of `ffn_csr`: the (H, S) matrices at xf[xbase:] and rf[base:] (columns
    # [0, width)) in, yf[base:] out.
    H = b2.shape[0]
    n_inner = (p1.shape[1] - 1) * r1  # I
    us = np.uint64(S)
    ut = np.uint64(TILE)
    # X tile (H, TILE), contiguous; columns past the sequence's end stay zero.
    panel = np.zeros(H * TILE, dtype=np.float32)
    uw = np.uint64(width)
    for k in range(np.uint64(H)):
        for j in range(uw):
            panel[k * ut + j] = xf[xbase + k * us + j]
    h = panel
    if has_pre:
        # h tile = LayerNorm0(W0 @ X tile + b0 + residual tile): stays in L2 for the FFN.
        h = np.zeros(H * TILE, dtype=np.float32)
        _product(h, panel, d0, i0, p0, kc0, r0)
        for n in range(H):
            epilogue_inplace(h, np.uint64(n * TILE), uw, b0[n], 0, rf, base + np.uint64(n) * us, True)
        layer_norm_tile(h, np.uint64(0), H, TILE, width, gamma0, beta0, eps)
    # F tile (I, TILE) = act(W1 @ h + b1): stays in L2 for the second matmul.
    f = np.zeros(n_inner * TILE, dtype=np.float32)
    _product(f, h, d1, i1, p1, kc1, r1)
    for n in range(n_inner):
        epilogue_inplace(f, np.uint64(n * TILE), ut, b1[n], act, f, np.uint64(0), False)
    # Y tile (H, TILE) = W2 @ F, into the panel (X is no longer needed), then its own columns
    # go to y with + b2 (+ residual, or + h).
    zero_rows(panel, 0, H, TILE, TILE)
    _product(panel, f, d2, i2, p2, kc2, r2)
    for n in range(H):
        off = base + np.uint64(n) * us
        copy_row(panel, np.uint64(n * TILE), yf, off, uw)
        if has_pre:
            epilogue_inplace(yf, off, uw, b2[n], 0, h, np.uint64(n * TILE), True)
        else:
            epilogue_inplace(yf, off, uw, b2[n], 0, rf, off, has_residual)
    if has_norm:  # the tile's rows were just written: LayerNorm them while they are in cache
        layer_norm_tile(yf, base, H, S, width, gamma, beta, eps)


@parallel_kernel
def ffn_csr(d1, i1, p1, kc1, b1, act, d2, i2, p2, kc2, b2, x, residual, has_residual, gamma, beta, eps,
            has_norm, y, d0, i0, p0, kc0, b0, gamma0, beta0, has_pre, r1, r2, r0):
    # Y[b] = W2 @ act(W1 @ X[b] + b1) + b2 (+ residual[b]), then LayerNorm over H if has_norm;
    # see the module docstring. With has_pre, X[b] is first replaced, per tile, by
    # h = LayerNorm0(W0 @ X[b] + b0 + residual[b]) (the attention output linear and the LayerNorm
    # after it), and h is then the FFN's residual (has_residual is ignored).
    B, H, S = x.shape
    n_tiles = (S + TILE - 1) // TILE
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    rf = residual.reshape(-1)
    for task in prange(B * n_tiles):
        b = task // n_tiles
        s0 = (task - b * n_tiles) * TILE
        base = np.uint64(b * H * S + s0)
        _tail_tile(d1, i1, p1, kc1, b1, act, d2, i2, p2, kc2, b2, xf, base, rf, base, S, min(TILE, S - s0),
                   has_residual, gamma, beta, eps, has_norm, yf, d0, i0, p0, kc0, b0, gamma0, beta0, has_pre,
                   r1, r2, r0)


@parallel_kernel
def layer_csr(dq, iq, pq, kcq, bq, rq, key_bias, heads, scale, d0, i0, p0, kc0, b0, gamma0, beta0, r0,
              d1, i1, p1, kc1, b1, act, r1, d2, i2, p2, kc2, b2, r2, gamma, beta, eps, x):
    # A whole encoder layer, one sequence per task, in place in x (B, H, S): qkv = Wqkv x + bqkv
    # (3H, S) per token tile into the task's buffer, attention per head (`attention.one_head`) into
    # ctx (H, S), then the tail (`_tail_tile`, has_pre) per tile; qkv and ctx stay in the task's
    # caches. Wqkv, W0, W1, W2 each CSR (r = 1) or 4x1 blocks (r = 4), K-chunked as above.
    B, H, S = x.shape
    n_tiles = (S + TILE - 1) // TILE
    xf = x.reshape(-1)
    us, ut = np.uint64(S), np.uint64(TILE)
    for b in prange(B):
        qkv = np.empty((1, 3 * H, S), dtype=np.float32)
        ctx = np.empty((1, H, S), dtype=np.float32)
        qf = qkv.reshape(-1)
        panel = np.zeros(H * TILE, dtype=np.float32)
        out = np.zeros(3 * H * TILE, dtype=np.float32)
        for t in range(n_tiles):
            s0 = t * TILE
            uw = np.uint64(min(TILE, S - s0))
            src = np.uint64(b * H * S + s0)
            for k in range(np.uint64(H)):
                for j in range(uw):
                    panel[k * ut + j] = xf[src + k * us + j]
            zero_rows(out, 0, 3 * H, TILE, TILE)
            _product(out, panel, dq, iq, pq, kcq, rq)
            for n in range(3 * H):
                off = np.uint64(n) * us + np.uint64(s0)
                copy_row(out, np.uint64(n * TILE), qf, off, uw)
                epilogue_inplace(qf, off, uw, bq[n], 0, qf, off, False)
        sequence_heads(qkv, key_bias[b:b + 1], heads, scale, ctx)
        cf = ctx.reshape(-1)
        for t in range(n_tiles):
            s0 = t * TILE
            _tail_tile(d1, i1, p1, kc1, b1, act, d2, i2, p2, kc2, b2, cf, np.uint64(s0), xf,
                       np.uint64(b * H * S + s0), S, min(TILE, S - s0), False, gamma, beta, eps, True, xf,
                       d0, i0, p0, kc0, b0, gamma0, beta0, True, r1, r2, r0)
