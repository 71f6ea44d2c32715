"""INT8 matmul on AVX512-VNNI: `vpdpbusd` over K-quads, for dense and sparse weights alike.

Same contract and arithmetic as `kernels/int8.py` (per-token activation codes, per-row weight
scales, int32 sums, fused float epilogue), on layouts that feed `vpdpbusd`, which adds to each
int32 lane the dot product of 4 unsigned bytes with 4 signed bytes:

- activations XP (B, KQ, SP, 4) uint8: code + 128 (VNNI multiplies unsigned x signed), the 4
  consecutive features 4q .. 4q + 3 of a token side by side; KQ = ceil(K / 4), SP = S rounded up
  to the 64-token tile; padding holds code 0 (byte 128). Made by `quantize_pack`.
- weights grouped by K-quad, CSR over quads: row n holds the quads q with any nonzero code,
  `wq[p]` the 4 codes of quad `gidx[p]` packed little-endian in an int32; entries are grouped
  by K-chunk of `chunk_quads` quads (as the FP32 spmm's, `spmm.chunk_entries`), `ptr`
  (n_chunks, N + 1) bounding each (chunk, row) run, gidx counted from the chunk's first quad.
  Dense weights are the case where every quad is stored; unstructured 90% sparsity stores ~34%
  of the quads (1 - 0.9^4), so each stored quad carries ~1.2 nonzeros.
- sum_k (x + 128) w = sum_k x w + 128 * rowsum[n]: `rowsum` (N,) int32, the codes' row sums, is
  subtracted before dequantizing, so the sums equal numpy's int32 matmul bit for bit.

The inner loop is one LLVM intrinsic (`_tile64`, written with llvmlite): 64 tokens x one row kept
in four zmm accumulators while it walks the row's quads, one broadcast of the 4 weight bytes and
four `vpdpbusd` per quad (LLVM's auto-vectoriser only reaches `vpmaddwd` / `vpdpwssd` from Numba
loops, at a quarter of the bytes per instruction; see kernels/int8.py).

Contract (validated by `sparsebert.quant.linear`): the CPU has AVX512-VNNI (the caller checks;
on other CPUs these kernels must not be compiled); arrays C-contiguous; ptr int64 rows
non-decreasing from 0; wq int32; gidx uint16 in [0, chunk_quads); rowsum int32 (N,); XP from
`quantize_pack` for the same K; w_scale, bias float32 (N,); x_scale float32 (B, S); R float32
(B, N, S) when has_residual; Y float32 (B, N, S). The intrinsic reads through raw pointers, out
of NUMBA_BOUNDSCHECK's sight: `pack_weight` and `quantize_pack` are what keep it in bounds.

Left out: AVX-VNNI (256-bit) and AMX-INT8 variants, multi-row register tiles.
References: Intel Intrinsics Guide, `_mm512_dpbusd_epi32`; LLVM `llvm.x86.avx512.vpdpbusd.512`.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .int8 import token_scales
from .jit import helper, kernel, parallel_kernel
from .spmm import chunk_entries
from .spmm_epilogue import epilogue_inplace

TILE = 64  # tokens per register tile: 4 zmm of 16 int32 lanes
# Quads per K-chunk: a chunk's slice of one token tile is 128 x 256 B = 32 KiB, in L1 (48 KiB
# on Sapphire Rapids) while a task's rows sweep it.
CHUNK_QUADS = 128
_I32X16 = ir.VectorType(ir.IntType(32), 16)
_I64 = ir.IntType(64)
_OFFSET = np.int32(128)


@intrinsic
def _tile64(typingctx, xp, x_off, x_stride, wq, gidx, start, end, acc, acc_off):
    # acc[acc_off : + 64] += sum over p in [start, end) of dpbusd(xp[x_off + gidx[p] * x_stride :
    # + 256], broadcast(wq[p])): 64 tokens x one weight row, four zmm accumulators (allocas that
    # LLVM promotes to registers), unaligned loads. Always accumulating (the caller zeroes acc)
    # keeps one straight-line entry, as in the FP32 spmm tiles.
    sig = types.void(xp, x_off, x_stride, wq, gidx, start, end, acc, acc_off)

    def codegen(context, builder, signature, args):
        at = signature.args
        xp_ptr = context.make_array(at[0])(context, builder, args[0]).data
        wq_ptr = context.make_array(at[3])(context, builder, args[3]).data
        g_ptr = context.make_array(at[4])(context, builder, args[4]).data
        acc_ptr = context.make_array(at[7])(context, builder, args[7]).data
        x_off = context.cast(builder, args[1], at[1], types.int64)
        x_stride = context.cast(builder, args[2], at[2], types.int64)
        start = context.cast(builder, args[5], at[5], types.int64)
        end = context.cast(builder, args[6], at[6], types.int64)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I32X16, [_I32X16] * 3), "llvm.x86.avx512.vpdpbusd.512")
        acc_off = context.cast(builder, args[8], at[8], types.int64)
        acc_vp = [builder.bitcast(builder.gep(acc_ptr, [builder.add(acc_off, ir.Constant(_I64, 16 * t))]),
                                  _I32X16.as_pointer()) for t in range(4)]
        accs = [cgutils.alloca_once_value(builder, builder.load(vp, align=4)) for vp in acc_vp]
        lanes = ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16)
        with cgutils.for_range_slice(builder, start, end, ir.Constant(_I64, 1), inc=True) as (p, _):
            w = builder.load(builder.gep(wq_ptr, [p]))
            wv = builder.insert_element(ir.Constant(_I32X16, ir.Undefined), w, ir.Constant(ir.IntType(32), 0))
            wb = builder.shuffle_vector(wv, ir.Constant(_I32X16, ir.Undefined), lanes)
            g = builder.load(builder.gep(g_ptr, [p]))
            g = builder.zext(g, _I64) if g.type.width < 64 else g  # indices are >= 0
            base = builder.gep(xp_ptr, [builder.add(x_off, builder.mul(g, x_stride))])
            for t in range(4):
                vp = builder.bitcast(builder.gep(base, [ir.Constant(_I64, 64 * t)]), _I32X16.as_pointer())
                xv = builder.load(vp, align=1)
                builder.store(builder.call(fn, [builder.load(accs[t]), xv, wb]), accs[t])
        for t in range(4):
            builder.store(builder.load(accs[t]), acc_vp[t], align=4)
        return context.get_dummy_value()

    return sig, codegen


@helper
def _code_byte(x, m, r):
    # The uint8 byte of one activation: clip(rint(x * m * r), +-127) + 128, as a uint32.
    v = np.rint((x * m) * r)
    return np.uint32(np.int32(min(max(v, np.float32(-127.0)), np.float32(127.0))) + _OFFSET)


@helper
def pack_quads(xf, b, K, S, s0, width, inv_smooth, inv, pw, d0, stride, KQ, padded):
    # pw[d0 + q * stride + j] (uint32 words) = the 4 code bytes of features 4q .. 4q + 3 of token
    # s0 + j of sequence b of flat X (B, K, S), for q < KQ, j < width (inv: the tokens' code
    # multipliers from `token_scales`); words j in [width, padded) hold code 0 (0x80808080).
    # Each token's quad is assembled as one little-endian uint32 from four feature rows, so the
    # token loop stores contiguous words and vectorises (byte stores 4 apart did not).
    us = np.uint64(S)
    uw = np.uint64(width)
    pad = np.uint32(0x80808080)
    for q in range(KQ):
        d = d0 + np.uint64(q) * np.uint64(stride)
        k0 = 4 * q
        o0 = (np.uint64(b) * np.uint64(K) + np.uint64(min(k0, K - 1))) * us + np.uint64(s0)
        o1 = (np.uint64(b) * np.uint64(K) + np.uint64(min(k0 + 1, K - 1))) * us + np.uint64(s0)
        o2 = (np.uint64(b) * np.uint64(K) + np.uint64(min(k0 + 2, K - 1))) * us + np.uint64(s0)
        o3 = (np.uint64(b) * np.uint64(K) + np.uint64(min(k0 + 3, K - 1))) * us + np.uint64(s0)
        # Features past K (the last quad of a K not divisible by 4) read row K - 1 through a
        # zero multiplier: code 0, byte 128.
        m0, m1, m2, m3 = inv_smooth[k0], inv_smooth[k0 + 1], inv_smooth[k0 + 2], inv_smooth[k0 + 3]
        for j in range(uw):
            r = inv[j]
            pw[d + j] = (_code_byte(xf[o0 + j], m0, r) | (_code_byte(xf[o1 + j], m1, r) << 8)
                         | (_code_byte(xf[o2 + j], m2, r) << 16)
                         | (_code_byte(xf[o3 + j], m3, r) << 24))
        for j in range(uw, np.uint64(padded)):
            pw[d + j] = pad


@helper
def inverse_smooth(smooth, KQ):
    # 1 / smooth[k] for k < K, 0 for the features past K up to 4 KQ (multiplier 0, code 0).
    inv_smooth = np.zeros(KQ * 4, dtype=np.float32)
    for k in range(smooth.shape[0]):
        inv_smooth[k] = np.float32(1.0) / smooth[k]
    return inv_smooth


@parallel_kernel
def quantize_pack(X, smooth, XP, x_scale):
    # X (B, K, S) float32 -> XP (B, KQ, SP, 4) uint8 = code + 128 (codes as kernels/int8.py's
    # quantize_tokens), padding 128; x_scale (B, S). One task per (sequence, 64-token tile), so a
    # single sequence still spreads over the threads.
    B, K, S = X.shape
    KQ, SP = XP.shape[1], XP.shape[2]
    xf = X.reshape(X.size)
    pw = XP.reshape(XP.size).view(np.uint32)
    inv_smooth = inverse_smooth(smooth, KQ)
    n_tiles = (SP + TILE - 1) // TILE
    for task in prange(B * n_tiles):
        b = task // n_tiles
        s0 = (task - b * n_tiles) * TILE
        width = max(0, min(TILE, S - s0))
        inv = np.zeros(TILE, dtype=np.float32)
        if width > 0:
            token_scales(xf, b, K, S, s0, width, inv_smooth, x_scale, inv)
        pack_quads(xf, b, K, S, s0, width, inv_smooth, inv, pw, np.uint64(b * KQ * SP + s0), SP, KQ,
                   min(SP, s0 + TILE) - s0)


@kernel
def _row_tile(XP, b, t, c, chunk_quads, wq, gidx, start, end, acc, acc_off):
    # acc[acc_off : + 64] += row sums over quads [start, end) of K-chunk c, token tile t of b.
    KQ, SP = XP.shape[1], XP.shape[2]
    xf = XP.reshape(XP.size)
    _tile64(xf, ((b * KQ + c * chunk_quads) * SP + t * TILE) * 4, SP * 4, wq, gidx, start, end,
            acc, acc_off)


@kernel
def _task_sums(XP, b, t, n0, n1, chunk_quads, wq, gidx, ptr, acc):
    # acc[(n - n0) * 64 : + 64] = int32 sums of rows n0 .. n1 - 1 for token tile t of sequence b,
    # K-chunk by K-chunk: one chunk's slice of the tile (chunk_quads x 256 bytes) stays in L1
    # while every row of the task sweeps it; the rows' partial sums wait in acc (L2).
    for i in range((n1 - n0) * TILE):
        acc[i] = 0
    for c in range(ptr.shape[0]):
        for n in range(n0, n1):
            s, e = ptr[c, n], ptr[c, n + 1]
            if e > s:
                _row_tile(XP, b, t, c, chunk_quads, wq, gidx, s, e, acc, (n - n0) * TILE)


@parallel_kernel
def spmm_int8_vnni(wq, gidx, ptr, chunk_quads, rowsum, XP, S, w_scale, x_scale, bias, act, R,
                   has_residual, rows, Y):
    B, SP = XP.shape[0], XP.shape[2]
    N = ptr.shape[1] - 1
    chunks = (N + rows - 1) // rows
    tiles = SP // TILE
    yf, rf = Y.reshape(Y.size), R.reshape(R.size)
    for i in prange(B * chunks):
        b = i // chunks
        n0 = (i - b * chunks) * rows
        n1 = min(N, n0 + rows)
        acc = np.empty((n1 - n0) * TILE, dtype=np.int32)
        for t in range(tiles):
            s0 = t * TILE
            width = min(TILE, S - s0)
            _task_sums(XP, b, t, n0, n1, chunk_quads, wq, gidx, ptr, acc)
            for n in range(n0, n1):
                off = np.uint64((b * N + n) * S + s0)
                a0 = (n - n0) * TILE
                ws = w_scale[n]
                comp = rowsum[n] * _OFFSET
                for s in range(width):
                    yf[off + np.uint64(s)] = np.float32(acc[a0 + s] - comp) * (ws * x_scale[b, s0 + s])
                epilogue_inplace(yf, off, np.uint64(width), bias[n], act, rf, off, has_residual)


@parallel_kernel
def spmm_int8_vnni_acc(wq, gidx, ptr, chunk_quads, rowsum, XP, S, A):
    # A (B, N, S) int32: the integer sums of `spmm_int8_vnni`.
    B, SP = XP.shape[0], XP.shape[2]
    N = ptr.shape[1] - 1
    tiles = SP // TILE
    for i in prange(B * N):
        b = i // N
        n = i - b * N
        acc = np.empty(TILE, dtype=np.int32)
        for t in range(tiles):
            _task_sums(XP, b, t, n, n + 1, chunk_quads, wq, gidx, ptr, acc)
            for s in range(min(TILE, S - t * TILE)):
                A[b, n, t * TILE + s] = acc[s] - rowsum[n] * _OFFSET


def pack_weight(codes: np.ndarray, chunk_quads: int = CHUNK_QUADS):
    """(N, K) int8 codes -> (wq int32, gidx, ptr (n_chunks, N + 1), chunk_quads, rowsum int32
    (N,)): the quads holding a nonzero code, grouped by K-chunk of `chunk_quads` quads, then row
    (`spmm.chunk_entries`); gidx uint16 counts quads from the chunk's start."""
    N, K = codes.shape
    KQ = -(-K // 4)
    padded = np.zeros((N, KQ * 4), dtype=np.int8)
    padded[:, :K] = codes
    quads = padded.reshape(N, KQ, 4)
    keep = quads.any(axis=2)
    rows, cols = np.nonzero(keep)
    indptr = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    wq = np.ascontiguousarray(quads[rows, cols]).view("<i4").reshape(-1).astype(np.int32)
    rowsum = codes.astype(np.int32).sum(axis=1).astype(np.int32)
    chunk_quads = int(max(1, min(chunk_quads, KQ, 1 << 16)))
    order, local, ptr = chunk_entries(indptr, cols.astype(np.int64), KQ, chunk_quads)
    return (np.ascontiguousarray(wq[order]), local.astype(np.uint16), ptr.astype(np.int64),
            chunk_quads, rowsum)
