"""The feed-forward block fused per token tile: `ffn_csr`.

Computes, for every sequence b of a batch in sparsebert's layout (see `sparsebert.kernels`),

    F (I, S)    = act(W1 (I, H) @ X[b] (H, S) + b1[:, None])
    Y[b] (H, S) = W2 (H, I) @ F + b2[:, None] (+ residual[b]), then optionally LayerNorm over H

one token tile at a time: a task packs its (H, TW) slice of X into a contiguous panel, computes the
(I, TW) intermediate into a scratch buffer, which stays in L2 (I x TW x 4 B: 768 KiB for BERT-base
at TW = 64, 384 KiB for MiniLM), and runs the second matmul straight from it. The unfused path
writes all of F (B, I, S) to memory (12.6 MB at B = 8 x 128 for BERT-base) and reads it back.
The token-tile width tw is an argument, one of `TILES`: 64, or on AVX-512 also 128. Each matmul
uses the 64-token register tile of its weight's kind (`spmm_zmm`'s on AVX-512, else
`_spmm_generated.py`'s), once per 64 tokens, except CSR at tw = 128, which runs `spmm_zmm`'s
128-token tile. A partial tile at the end of a sequence writes back only its own columns; in
`ffn_csr` it runs on a zero-padded panel, in `layer_csr` the qkv panel keeps the previous tile's
columns past the end (columns are independent, and those are never written back). Which width is
faster depends on the CPU's caches (128 halves the passes over the weights but doubles the panel and
the intermediate: I x 128 x 4 B is 1.5 MiB for BERT-base), so the tuner times both per model
(`sparsebert.tuning.choose_ffn_tile`).

Weights are grouped by K-chunk as `sparsebert.linear.CSRLinear` / `BSRLinear` store them
(`spmm.chunk_entries`), each either CSR (r = 1: data (nnz,), chunk-local column indices, ptr
(n_chunks, N + 1)) or 4x1 blocks (r = 4: data (nblocks * 4,) flat, chunk-local block-column
indices, ptr (n_chunks, N / 4 + 1)), chunk_cols columns per chunk; r1, r2, r0 give each weight's
kind. act: 0 none, 1 exact GELU, 2 tanh GELU, 3 relu (`spmm_epilogue.epilogue_inplace`).

Contract (validated by the caller, `sparsebert.ffn`): float32 C-contiguous x (B, H, S), y (B, H, S)
not overlapping x, residual (B, H, S) if has_residual (it may be x itself); W1 is (I, H), W2 (H, I),
b1 (I,), b2 (H,); gamma, beta (H,) float32 (read only when has_norm); every ptr range inside its
entry arrays, indices in range; tw one of `TILES`. The LayerNorm is `ops.layer_norm_tile`, the code of `ops.layer_norm`.

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
from .spmm_zmm import ZMM, tile_bsr4x1_z64, tile_csr_z64, tile_csr_z128

TILE = 64  # tokens per task by default: the width of the register tiles below
# The token-tile widths the kernels take (tw); 128 needs the zmm CSR tile of that width.
TILES = (64, 128) if ZMM else (64,)
# The zmm tile where the target CPU has AVX-512 (spmm_zmm); Numba's cache keys the compiled kernel
# on that target, so the choice made here at import and the cached code agree.
_tile_csr = tile_csr_z64 if ZMM else _tile_csr_w64
_tile_csr_128 = tile_csr_z128 if ZMM else _tile_csr_w64  # Numba compiles what it calls
# Numba's on-disk cache keys a kernel on its own file, not on the helpers it calls from
# `_spmm_generated.py`, `spmm_zmm.py` and `ops.py`; tests/test_ffn_fused.py fails until this stamp
# matches those files, so an edit to them also edits (and re-compiles) this one.
BUILT_AGAINST = "_spmm_generated.py 7c900d42c91b3b4f, spmm_zmm.py 1a798bb96672e871, ops.py bf281eab8eb1be2a, attention.py 839209a8831a6388, spmm_epilogue.py 84df407a011b8901, numeric.py 6c0311da66f4dbb7"


@helper
def _tile_4x1(out, yoff, src, xoff, ut, d, i, start, end):
    # One 4x1-block row's entries [start, end) over 64 tokens, rows ut apart: the zmm tile where
    # the target has AVX-512 (ZMM is a compile-time constant), else the generated 32-token tile twice.
    if ZMM:
        tile_bsr4x1_z64(out, yoff, ut, src, xoff, ut, d, i, start, end)
    else:
        half = np.uint64(32)
        _tile_bsr4x1_w32(out, yoff, ut, src, xoff, ut, d, i, start, end)
        _tile_bsr4x1_w32(out, yoff + half, ut, src, xoff + half, ut, d, i, start, end)


@helper
def _norm_columns(xf, base, H, S, width, gamma, beta, eps):
    # LayerNorm of the columns [0, width) of the (H, S) matrix at xf[base:], 64 at a time (the
    # most `ops.layer_norm_tile` takes): the same bits as `ops.layer_norm`.
    for j0 in range(0, width, 64):
        layer_norm_tile(xf, base + np.uint64(j0), H, S, min(64, width - j0), gamma, beta, eps)


@helper
def _product(out, src, d, i, p, kc, R, tw):
    # out (N, tw) += W (N, K) @ src (K, tw), both flat with rows tw apart; W's entries grouped
    # by K-chunk (p (n_chunks, N / R + 1), kc columns per chunk), one chunk of src at a time: CSR
    # (R = 1, data (nnz,)) or 4x1 blocks (R = 4, data (nblocks * 4,), indices block columns).
    ut = np.uint64(tw)
    for c in range(p.shape[0]):
        xoff = np.uint64(c * kc * tw)
        for n in range(p.shape[1] - 1):
            start, end = np.uint64(p[c, n]), np.uint64(p[c, n + 1])
            if R == 4:
                for q in range(tw // 64):  # 64 tokens a pass
                    _tile_4x1(out, np.uint64(n * 4 * tw + q * 64), src, xoff + np.uint64(q * 64), ut, d, i,
                              start, end)
            elif tw == 128 and ZMM:  # never true off AVX-512, where _tile_csr_128 is not that tile
                _tile_csr_128(out, np.uint64(n * tw), ut, src, xoff, ut, d, i, start, end)
            else:
                for q in range(tw // 64):
                    _tile_csr(out, np.uint64(n * tw + q * 64), ut, src, xoff + np.uint64(q * 64), ut, d, i,
                              start, end)


@helper
def _tail_tile(d1, i1, p1, kc1, b1, act, d2, i2, p2, kc2, b2, xf, xbase, rf, base, S, width, has_residual,
               gamma, beta, eps, has_norm, yf, d0, i0, p0, kc0, b0, gamma0, beta0, has_pre, r1, r2, r0, tw):
    # One token tile of `ffn_csr`: the (H, S) matrices at xf[xbase:] and rf[base:] (columns
    # [0, width)) in, yf[base:] out.
    H = b2.shape[0]
    n_inner = (p1.shape[1] - 1) * r1  # I
    us = np.uint64(S)
    ut = np.uint64(tw)
    # X tile (H, tw), contiguous; columns past the sequence's end stay zero.
    panel = np.zeros(H * tw, dtype=np.float32)
    uw = np.uint64(width)
    for k in range(np.uint64(H)):
        for j in range(uw):
            panel[k * ut + j] = xf[xbase + k * us + j]
    h = panel
    if has_pre:
        # h tile = LayerNorm0(W0 @ X tile + b0 + residual tile): stays in L2 for the FFN.
        h = np.zeros(H * tw, dtype=np.float32)
        _product(h, panel, d0, i0, p0, kc0, r0, tw)
        for n in range(H):
            epilogue_inplace(h, np.uint64(n * tw), uw, b0[n], 0, rf, base + np.uint64(n) * us, True)
        _norm_columns(h, np.uint64(0), H, tw, width, gamma0, beta0, eps)
    # F tile (I, tw) = act(W1 @ h + b1): stays in L2 for the second matmul.
    f = np.zeros(n_inner * tw, dtype=np.float32)
    _product(f, h, d1, i1, p1, kc1, r1, tw)
    for n in range(n_inner):
        epilogue_inplace(f, np.uint64(n * tw), ut, b1[n], act, f, np.uint64(0), False)
    # Y tile (H, tw) = W2 @ F, into the panel (X is no longer needed), then its own columns
    # go to y with + b2 (+ residual, or + h).
    zero_rows(panel, 0, H, tw, tw)
    _product(panel, f, d2, i2, p2, kc2, r2, tw)
    for n in range(H):
        off = base + np.uint64(n) * us
        copy_row(panel, np.uint64(n * tw), yf, off, uw)
        if has_pre:
            epilogue_inplace(yf, off, uw, b2[n], 0, h, np.uint64(n * tw), True)
        else:
            epilogue_inplace(yf, off, uw, b2[n], 0, rf, off, has_residual)
    if has_norm:  # the tile's rows were just written: LayerNorm them while they are in cache
        _norm_columns(yf, base, H, S, width, gamma, beta, eps)


@parallel_kernel
def ffn_csr(d1, i1, p1, kc1, b1, act, d2, i2, p2, kc2, b2, x, residual, has_residual, gamma, beta, eps,
            has_norm, y, d0, i0, p0, kc0, b0, gamma0, beta0, has_pre, r1, r2, r0, tw):
    # Y[b] = W2 @ act(W1 @ X[b] + b1) + b2 (+ residual[b]), then LayerNorm over H if has_norm;
    # see the module docstring. With has_pre, X[b] is first replaced, per tile, by
    # h = LayerNorm0(W0 @ X[b] + b0 + residual[b]) (the attention output linear and the LayerNorm
    # after it), and h is then the FFN's residual (has_residual is ignored).
    B, H, S = x.shape
    n_tiles = (S + tw - 1) // tw
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    rf = residual.reshape(-1)
    for task in prange(B * n_tiles):
        b = task // n_tiles
        s0 = (task - b * n_tiles) * tw
        base = np.uint64(b * H * S + s0)
        _tail_tile(d1, i1, p1, kc1, b1, act, d2, i2, p2, kc2, b2, xf, base, rf, base, S, min(tw, S - s0),
                   has_residual, gamma, beta, eps, has_norm, yf, d0, i0, p0, kc0, b0, gamma0, beta0, has_pre,
                   r1, r2, r0, tw)


@parallel_kernel
def layer_csr(dq, iq, pq, kcq, bq, rq, key_bias, heads, scale, d0, i0, p0, kc0, b0, gamma0, beta0, r0,
              d1, i1, p1, kc1, b1, act, r1, d2, i2, p2, kc2, b2, r2, gamma, beta, eps, x, tw):
    # A whole encoder layer, one sequence per task, in place in x (B, H, S): qkv = Wqkv x + bqkv
    # (3H, S) per token tile into the task's buffer, attention per head (`attention.one_head`) into
    # ctx (H, S), then the tail (`_tail_tile`, has_pre) per tile; qkv and ctx stay in the task's
    # caches. Wqkv, W0, W1, W2 each CSR (r = 1) or 4x1 blocks (r = 4), K-chunked as above.
    B, H, S = x.shape
    n_tiles = (S + tw - 1) // tw
    xf = x.reshape(-1)
    us, ut = np.uint64(S), np.uint64(tw)
    for b in prange(B):
        qkv = np.empty((1, 3 * H, S), dtype=np.float32)
        ctx = np.empty((1, H, S), dtype=np.float32)
        qf = qkv.reshape(-1)
        panel = np.zeros(H * tw, dtype=np.float32)
        out = np.zeros(3 * H * tw, dtype=np.float32)
        for t in range(n_tiles):
            s0 = t * tw
            uw = np.uint64(min(tw, S - s0))
            src = np.uint64(b * H * S + s0)
            for k in range(np.uint64(H)):
                for j in range(uw):
                    panel[k * ut + j] = xf[src + k * us + j]
            zero_rows(out, 0, 3 * H, tw, tw)
            _product(out, panel, dq, iq, pq, kcq, rq, tw)
            for n in range(3 * H):
                off = np.uint64(n) * us + np.uint64(s0)
                copy_row(out, np.uint64(n * tw), qf, off, uw)
                epilogue_inplace(qf, off, uw, bq[n], 0, qf, off, False)
        sequence_heads(qkv, key_bias[b:b + 1], heads, scale, ctx)
        cf = ctx.reshape(-1)
        for t in range(n_tiles):
            s0 = t * tw
            _tail_tile(d1, i1, p1, kc1, b1, act, d2, i2, p2, kc2, b2, cf, np.uint64(s0), xf,
                       np.uint64(b * H * S + s0), S, min(tw, S - s0), False, gamma, beta, eps, True, xf,
                       d0, i0, p0, kc0, b0, gamma0, beta0, True, r1, r2, r0, tw)
