"""INT8 encoder layers fused: the tail per token tile (`ffn_int8`), the whole layer per sequence
(`layer_int8`).

Computes, for every sequence b of a batch in sparsebert's layout (see `sparsebert.kernels`), with
the int8 linears' arithmetic (`kernels/int8_gemm.py`: per-token activation codes, exact int32
sums, the float epilogue),

    F (I, S)    = act(int8 linear W1 on X[b] (H, S))
    Y[b] (H, S) = int8 linear W2 on F (+ residual[b]), then optionally LayerNorm over H

one 64-token tile at a time. A task copies its (H, 64) slice of X, quantizes it per token into the
VNNI layout (`int8_vnni.pack_quads`: quads of 4 features x 64 tokens, code + 128), runs W1 into an
(I, 64) float32 intermediate with bias and activation, quantizes that per token (the token's max
over all I features is in the task, so the scales are the dynamic ones of the unfused path, not
static calibrated ones), runs W2, and writes Y's columns. The unfused path writes F (B, I, S) as
float32 to memory (50 MB at 32 x 128 for BERT-base), reads it back to quantize it and writes and
reads its packed codes; here F and its codes stay in the task's cache (I x 64 x 5 B: 960 KiB for
BERT-base, 480 KiB for MiniLM).

With has_pre the tile first runs the attention output linear W0 (H, H) on X (the attention
context): h = LayerNorm0(W0 X + b0 + residual) per token, and h takes the place of X and of the
FFN's residual; y may then be residual itself.

`layer_int8` runs a whole encoder layer per task, one sequence each: the qkv linear per 64-token
tile into the task's (3H, S) buffer, attention per head (with att8 in int8,
`attention_int8.one_head_int8`, else `attention.one_head`: the code of the per-step path) into a
(H, S) context buffer, then the tail above per tile, in place in x. The
per-step path writes qkv (B, 3H, S) and ctx (B, H, S) to memory (50 MB per layer at 32 x 128 for
BERT-base) and reads them back; here they stay in the task's caches (1.5 MB at S = 128).

Where the boundaries are: every linear's input is quantized per token (int8), every linear's sums
are dequantized to float32 for the bias, GELU, residual add and LayerNorm, and the residual stream
(h, Y) stays float32 because LayerNorm needs it. Outputs equal the unfused int8 calls bit for bit
(same codes, same sums, same epilogue and LayerNorm code on the same values).

Weights, each one of three kinds (`Int8Linear` formats): kind 0 "gemm" (w = WP (NB, KQ, 4) words
flat, cq = KQ; g and p unused) with `int8_gemm._block_vnni` (4 rows x 64 tokens); kind 1 "bsr1x4"
(w = one word per stored 1x4 block, g its chunk-local quad, p (n_chunks, N + 1), cq quads per
chunk) with `int8_bsr`'s one-row 64-token tile; kind 2 "gather" (w = one word per quad of a row's
concatenated nonzeros, g their 4 columns each, p (1, N + 1), cq unused) with `int8_gather`'s tile,
its input tile quantized as K feature rows of W bytes instead of quads. rs: the codes' row sums; ws: per-row scales; sm:
the SmoothQuant factors of the linear's input (K,).

Contract (validated by the caller, `sparsebert.quant.fused`): the CPU has AVX512-VNNI; float32
C-contiguous x (B, H, S), y (B, H, S) not overlapping x; residual (B, H, S) if has_residual (it
may be y); W1 (I, H), W2 (H, I), W0 (H, H) as packed by `Int8Linear`, p's entries within w and g,
g below cq, chunks within the weight's KQ; gamma, beta (H,) float32. The intrinsics read through
raw pointers: those packings are what keep them in bounds.

Left out: AMX tiles, the one-row "vnni" kind, the portable (non-VNNI) int8 kinds, batch-1 row
splitting (tasks are (sequence, token tile) pairs, or sequences), 128-token tiles in `ffn_int8`
(`layer_int8` has them).
"""

import numpy as np
from numba import prange

from .attention import sequence_heads
from .attention_int8 import sequence_heads_int8
from .int8 import token_scales
from .int8_bsr import _tile_1x64, _tile_1x128
from .int8_gather import _tile_gather64, code_rows
from .int8_gemm import RB, _block_vnni, _dequant_block
from .int8_vnni import TILE, inverse_smooth, pack_quads
from .jit import helper, parallel_kernel
from .ops import layer_norm_tile

# Numba's on-disk cache keys a kernel on its own file, not on the helpers it inlines from other
# files; tests/test_ffn_int8.py fails until this stamp matches them, so an edit there also edits
# (and re-compiles) this file.
BUILT_AGAINST = "int8_gather.py 1c7a764c4c71913c, attention.py 839209a8831a6388, attention_int8.py 7165694aac82f380, int8.py e8cb762509f1d006, int8_bsr.py 70acaa5a06cc5c56, int8_gemm.py bfe0e0dc7e8c6e38, int8_vnni.py 481ed9f95056e5e2, ops.py bf281eab8eb1be2a, spmm_epilogue.py 84df407a011b8901, numeric.py 6c0311da66f4dbb7"
GEMM, BSR1X4, GATHER = 0, 1, 2  # weight kinds
_GROUP = 16  # output rows per int32 sums block (a multiple of RB)


@helper
def _sums(kind, w, g, p, cq, xq, n0, n1, acc, W, half):
    # acc[(n - n0) * A + j] = int32 sums (of code + 128 bytes) of rows [n0, n1) against the packed
    # tile xq (flat uint8, W tokens: quads W * 4 bytes apart); n0 a multiple of RB. gemm: the 64
    # tokens of half `half`, A = 64 (a block past n1 writes rows of zero weights into acc's spare
    # RB rows); bsr1x4: all W (64 or 128) tokens, A = W.
    qb = W * 4
    if kind == GEMM:
        for nb in range(n0 // RB, (n1 + RB - 1) // RB):
            _block_vnni(xq, half * 256, qb, w, nb * cq * RB, cq, acc[(nb * RB - n0) * 64:])
    elif kind == GATHER:  # xq holds feature rows of W bytes; p (1, N + 1)
        for i in range((n1 - n0) * W):
            acc[i] = 0
        for n in range(n0, n1):
            s, e = p[0, n], p[0, n + 1]
            if e > s:
                for h in range(W // 64):
                    _tile_gather64(xq, h * 64, W, g, w, s, e, acc, (n - n0) * W + h * 64)
    else:
        for i in range((n1 - n0) * W):
            acc[i] = 0
        for c in range(p.shape[0]):
            for n in range(n0, n1):
                s, e = p[c, n], p[c, n + 1]
                if e > s:
                    if W == 128:
                        _tile_1x128(xq, c * cq * qb, qb, w, g, s, e, acc, (n - n0) * W)
                    else:
                        _tile_1x64(xq, c * cq * qb, qb, w, g, s, e, acc, (n - n0) * W)


@helper
def _quantize(kind, src, K, width, inv_sm, xq, xs, inv, W):
    # The (K, W) tile src, columns [0, width), per token into xq in the layout of the weight kind
    # that reads it: KQ quads of W tokens, or (gather) K feature rows of W bytes; padding code 0.
    # xs (1, >= W) the tokens' scales.
    KQ = (K + 3) // 4
    token_scales(src, 0, K, W, 0, width, inv_sm, xs, inv)
    if kind == GATHER:
        z, uw = np.uint64(0), np.uint64(W)
        code_rows(src, z, uw, xq, z, uw, K, width, W, inv_sm, inv)
    else:
        pack_quads(src, 0, K, W, 0, width, inv_sm, inv, xq.view(np.uint32), np.uint64(0), W, KQ, W)


@helper
def _linear(kind, w, g, p, cq, rs, ws, bias, act, xq, xs, width, out, S, s0, res, has_res, acc, W):
    # out (N, S) columns [s0, s0 + width) (flat) = the int8 linear's epilogue on xq's sums
    # (+ res, same layout); xs[0, s0 + j] the tile's token scales; xq a tile of W tokens.
    N = rs.shape[0]
    for n0 in range(0, N, _GROUP):
        n1 = min(N, n0 + _GROUP)
        if kind == GEMM:
            for half in range(W // 64):
                part = min(64, width - 64 * half)
                if part > 0:
                    _sums(kind, w, g, p, cq, xq, n0, n1, acc, W, half)
                    _dequant_block(acc, 64, n1 - n0, n0, 0, s0 + 64 * half, part, rs, ws, xs, bias, act,
                                   res, has_res, out, N, S)
        else:
            _sums(kind, w, g, p, cq, xq, n0, n1, acc, W, 0)
            _dequant_block(acc, W, n1 - n0, n0, 0, s0, width, rs, ws, xs, bias, act, res, has_res, out,
                           N, S)


@helper
def _load_tile(xf, base, K, S, width, out, W):
    # out (K, W) columns [0, width) = the (K, S) matrix at xf[base:], columns [0, width).
    us, uw, ut = np.uint64(S), np.uint64(width), np.uint64(W)
    for k in range(np.uint64(K)):
        for j in range(uw):
            out[k * ut + j] = xf[base + k * us + j]


@helper
def _norm(v, H, width, gamma, beta, eps, W):
    # LayerNorm over H of the columns [0, width) of the (H, W) tile v, 64 columns at a time.
    for c0 in range(0, width, 64):
        layer_norm_tile(v, np.uint64(c0), H, W, min(64, width - c0), gamma, beta, eps)


@helper
def _tail_tile(k1, w1, g1, p1, cq1, rs1, ws1, b1, inv1, act,
               k2, w2, g2, p2, cq2, rs2, ws2, b2, inv2,
               xf, xbase, rf, base, S, width, has_residual, gamma, beta, eps, has_norm, yf,
               k0, w0, g0, p0, cq0, rs0, ws0, b0, inv0, gamma0, beta0, has_pre, W):
    # One tile of W (64 or 128) tokens: the (H, S) matrices at xf[xbase:], rf[base:] (columns
    # [0, width)) in, yf[base:] out; inv*: the linears' inverse smoothing factors.
    H = rs2.shape[0]
    n_inner = rs1.shape[0]  # I
    xs = np.zeros((1, W), dtype=np.float32)
    inv = np.zeros(W, dtype=np.float32)
    acc = np.empty((_GROUP + RB) * W, dtype=np.int32)
    xq = np.empty(((max(H, n_inner) + 3) // 4) * W * 4, dtype=np.uint8)
    tile = np.zeros(H * W, dtype=np.float32)  # X's columns
    res = np.zeros(H * W, dtype=np.float32)  # the FFN's residual: h, or residual's columns
    out = np.zeros(H * W, dtype=np.float32)
    _load_tile(xf, xbase, H, S, width, tile, W)
    if has_pre:
        # h = LayerNorm0(W0 @ X tile + b0 + residual tile), into res.
        _load_tile(rf, base, H, S, width, out, W)
        _quantize(k0, tile, H, width, inv0, xq, xs, inv, W)
        _linear(k0, w0, g0, p0, cq0, rs0, ws0, b0, 0, xq, xs, width, res, W, 0, out, True, acc, W)
        _norm(res, H, width, gamma0, beta0, eps, W)
        _quantize(k1, res, H, width, inv1, xq, xs, inv, W)
    else:
        if has_residual:
            _load_tile(rf, base, H, S, width, res, W)
        _quantize(k1, tile, H, width, inv1, xq, xs, inv, W)
    # F (I, W) = act(W1 h + b1), then its codes.
    f = np.zeros(n_inner * W, dtype=np.float32)
    _linear(k1, w1, g1, p1, cq1, rs1, ws1, b1, act, xq, xs, width, f, W, 0, f, False, acc, W)
    _quantize(k2, f, n_inner, width, inv2, xq, xs, inv, W)
    # Y tile = W2 F + b2 (+ residual), LayerNorm, then its columns to y.
    _linear(k2, w2, g2, p2, cq2, rs2, ws2, b2, 0, xq, xs, width, out, W, 0, res,
            has_pre or has_residual, acc, W)
    if has_norm:
        _norm(out, H, width, gamma, beta, eps, W)
    us, uw, ut = np.uint64(S), np.uint64(width), np.uint64(W)
    for n in range(np.uint64(H)):
        for j in range(uw):
            yf[base + n * us + j] = out[n * ut + j]


@parallel_kernel
def ffn_int8(k1, w1, g1, p1, cq1, rs1, ws1, b1, sm1, act,
             k2, w2, g2, p2, cq2, rs2, ws2, b2, sm2,
             x, residual, has_residual, gamma, beta, eps, has_norm, y,
             k0, w0, g0, p0, cq0, rs0, ws0, b0, sm0, gamma0, beta0, has_pre):
    # See the module docstring.
    B, H, S = x.shape
    n_tiles = (S + TILE - 1) // TILE
    xf, yf, rf = x.reshape(-1), y.reshape(-1), residual.reshape(-1)
    inv1 = inverse_smooth(sm1, (H + 3) // 4)
    inv2 = inverse_smooth(sm2, (rs1.shape[0] + 3) // 4)
    inv0 = inverse_smooth(sm0, (H + 3) // 4)
    for task in prange(B * n_tiles):
        b = task // n_tiles
        s0 = (task - b * n_tiles) * TILE
        _tail_tile(k1, w1, g1, p1, cq1, rs1, ws1, b1, inv1, act, k2, w2, g2, p2, cq2, rs2, ws2, b2, inv2,
                   xf, np.uint64(b * H * S + s0), rf, np.uint64(b * H * S + s0), S, min(TILE, S - s0),
                   has_residual, gamma, beta,
                   eps, has_norm, yf, k0, w0, g0, p0, cq0, rs0, ws0, b0, inv0, gamma0, beta0, has_pre, TILE)


@parallel_kernel
def layer_int8(kq, wq, gq, pq, cqq, rsq, wsq, bq, smq, key_bias, heads, scale, att8,
               k0, w0, g0, p0, cq0, rs0, ws0, b0, sm0, gamma0, beta0,
               k1, w1, g1, p1, cq1, rs1, ws1, b1, sm1, act,
               k2, w2, g2, p2, cq2, rs2, ws2, b2, sm2, gamma, beta, eps, x, W):
    # A whole encoder layer, one sequence per task, in place in x (B, H, S): qkv = Wqkv x + bqkv
    # (3H, S) per tile of W (64 or 128) tokens into the task's buffer, attention per head
    # (`attention_int8.one_head_int8` when att8, else `attention.one_head`) into ctx (H, S), then
    # the tail (`_tail_tile`) per tile. qkv and ctx never leave the task's caches; only x is read
    # and written.
    B, H, S = x.shape
    n_tiles = (S + W - 1) // W
    xf = x.reshape(-1)
    invq = inverse_smooth(smq, (H + 3) // 4)
    inv1 = inverse_smooth(sm1, (H + 3) // 4)
    inv2 = inverse_smooth(sm2, (rs1.shape[0] + 3) // 4)
    inv0 = inverse_smooth(sm0, (H + 3) // 4)
    for b in prange(B):
        qkv = np.empty((1, 3 * H, S), dtype=np.float32)
        ctx = np.empty((1, H, S), dtype=np.float32)
        xs = np.zeros((1, S + W), dtype=np.float32)
        inv = np.zeros(W, dtype=np.float32)
        acc = np.empty((_GROUP + RB) * W, dtype=np.int32)
        xq = np.empty(((H + 3) // 4) * W * 4, dtype=np.uint8)
        tile = np.zeros(H * W, dtype=np.float32)
        qf = qkv.reshape(-1)
        for t in range(n_tiles):
            s0 = t * W
            width = min(W, S - s0)
            _load_tile(xf, np.uint64(b * H * S + s0), H, S, width, tile, W)
            _quantize(kq, tile, H, width, invq, xq, xs[:, s0:], inv, W)
            _linear(kq, wq, gq, pq, cqq, rsq, wsq, bq, 0, xq, xs, width, qf, S, s0, qf, False, acc, W)
        if att8:
            sequence_heads_int8(qkv, key_bias[b:b + 1], heads, scale, ctx)
        else:
            sequence_heads(qkv, key_bias[b:b + 1], heads, scale, ctx)
        cf = ctx.reshape(-1)
        for t in range(n_tiles):
            s0 = t * W
            _tail_tile(k1, w1, g1, p1, cq1, rs1, ws1, b1, inv1, act, k2, w2, g2, p2, cq2, rs2, ws2, b2,
                       inv2, cf, np.uint64(s0), xf, np.uint64(b * H * S + s0), S, min(W, S - s0), False,
                       gamma, beta, eps, True, xf, k0, w0, g0, p0, cq0, rs0, ws0, b0, inv0, gamma0, beta0,
                       True, W)
