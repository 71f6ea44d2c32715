"""Block-sparse INT8 matmul on AVX512-VNNI: 1x4 blocks (one output row x one K-quad), and 4x4 blocks
(four output rows sharing one K-quad, the rows-concatenated layout that reuses each activation load).

Computes, with the arithmetic of kernels/int8.py (bit-identical int32 sums, same epilogue),

    Y[b] (N, S) = act(float32(Wq (N, K) @ Xq[b] (K, S)) * (w_scale[n] * x_scale[b, s]) + bias[n])
                  (+ R[b])

on activations packed by `int8_vnni.quantize_pack` (XP (B, KQ, SP, 4) uint8 = code + 128, SP a
multiple of 64); the unsigned offset adds 128 * rowsum[n], subtracted before dequantizing.

- 1x4 (`pack_bsr1x4`, `spmm_int8_bsr1x4`): a block is the 4 codes of one row at one K-quad, one
  int32 word; `gidx` its quad counted from its K-chunk's start, `ptr` (n_chunks, N + 1) bounding
  each (chunk, row) run (entries grouped by K-chunk, then row: `spmm.chunk_entries`). Each block
  is one broadcast word against 128 tokens: 8 loads of packed activations, 8 `vpdpbusd` into 8
  zmm accumulators (64-token tiles at a ragged end). A row's blocks have their own columns, so
  nothing is shared across rows: one activation load per `vpdpbusd`.
- 4x4 (`pack_bsr4x4`, `spmm_int8_bsr4x4`): a block is rows 4i .. 4i + 3 at one K-quad, 4 words;
  `ptr` (n_chunks, ceil(N / 4) + 1) over row blocks. Each block: 4 activation loads (64 tokens)
  shared by 4 rows, 16 `vpdpbusd` into 16 accumulators, as the dense VNNI tile of int8_gemm.py.

The K-chunk (`chunk_quads` quads) keeps one token tile's slice of the activations in L1 while a
task's rows sweep it; partial sums wait in a per-task int32 buffer between chunks.

Contract (validated by `sparsebert.quant.linear`): the CPU has AVX512-VNNI; arrays C-contiguous;
words int32; gidx uint16 in [0, chunk_quads); ptr integer, rows non-decreasing, chunk c's quads
below XP's KQ; rowsum int32 (N,); w_scale, bias float32 (N,); x_scale float32 (B, S); R float32
(B, N, S) when has_residual; Y float32 (B, N, S). The intrinsics read through raw pointers, out of
NUMBA_BOUNDSCHECK's sight: the packers are what keep them in bounds.

Left out: AMX sparse tiles, AVX2 fallbacks. (Unstructured weights: each row's nonzeros concatenated
into full quads, the activation rows gathered at run time, are kernels/int8_gather.py.)
References: Intel Intrinsics Guide `_mm512_dpbusd_epi32`; Kurtic et al. 2022 (oBERT, "4-block"
pruning); Intel Neural Compressor's sparse int8 GEMM (4x1 blocks, VNNI).
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .int8_gemm import _dequant_block
from .int8_vnni import pack_weight
from .jit import parallel_kernel
from .spmm import chunk_entries

# Numba's cache keys these kernels on this file only: tests/test_ffn_int8.py fails until this stamp
# matches the files whose helpers they inline, so an edit there re-compiles them.
BUILT_AGAINST = "int8_gemm.py bfe0e0dc7e8c6e38, numeric.py 6c0311da66f4dbb7"
CHUNK_QUADS = 64  # 64 quads x 128 tokens x 4 bytes = 32 KiB of activations per chunk, in L1
_I32, _I64 = ir.IntType(32), ir.IntType(64)
_I32X16 = ir.VectorType(_I32, 16)


def _make_tile(rows, vecs):
    # An intrinsic adding `rows` output rows x (16 * vecs) tokens of block products to acc.
    @intrinsic
    def tile(typingctx, xp, x_off, x_stride, wq, gidx, start, end, acc, acc_off):
        # acc[acc_off + r * 16 vecs + j] += sum over blocks p in [start, end) of dpbusd(
        # xp[x_off + gidx[p] * x_stride + 4 j : + 4], wq[p * rows + r]); byte offsets into xp.
        sig = types.void(xp, x_off, x_stride, wq, gidx, start, end, acc, acc_off)

        def codegen(context, builder, signature, args):
            at = signature.args
            ptr = lambda i: context.make_array(at[i])(context, builder, args[i]).data  # noqa: E731
            i64 = lambda i: context.cast(builder, args[i], at[i], types.int64)  # noqa: E731
            xp_ptr, wq_ptr, g_ptr, acc_ptr = ptr(0), ptr(3), ptr(4), ptr(7)
            x_off, x_stride, start, end, acc_off = i64(1), i64(2), i64(5), i64(6), i64(8)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_I32X16, [_I32X16] * 3),
                "llvm.x86.avx512.vpdpbusd.512")
            c64 = lambda v: ir.Constant(_I64, v)  # noqa: E731
            vps = [builder.bitcast(builder.gep(acc_ptr, [builder.add(acc_off, c64(16 * i))]),
                                   _I32X16.as_pointer()) for i in range(rows * vecs)]
            accs = [cgutils.alloca_once_value(builder, builder.load(vp, align=4)) for vp in vps]
            lanes = ir.Constant(_I32X16, [0] * 16)
            with cgutils.for_range_slice(builder, start, end, c64(1), inc=True) as (p, _):
                g = builder.load(builder.gep(g_ptr, [p]))
                g = builder.zext(g, _I64) if g.type.width < 64 else g
                base = builder.gep(xp_ptr, [builder.add(x_off, builder.mul(g, x_stride))])
                xv = [builder.load(builder.bitcast(builder.gep(base, [c64(64 * t)]),
                                                   _I32X16.as_pointer()), align=1)
                      for t in range(vecs)]
                for r in range(rows):
                    w = builder.load(builder.gep(wq_ptr, [builder.add(builder.mul(p, c64(rows)), c64(r))]))
                    wv = builder.insert_element(ir.Constant(_I32X16, ir.Undefined), w, ir.Constant(_I32, 0))
                    wb = builder.shuffle_vector(wv, ir.Constant(_I32X16, ir.Undefined), lanes)
                    for t in range(vecs):
                        a = accs[r * vecs + t]
                        builder.store(builder.call(fn, [builder.load(a), xv[t], wb]), a)
            for a, vp in zip(accs, vps):
                builder.store(builder.load(a), vp, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile_1x128 = _make_tile(1, 8)
_tile_1x64 = _make_tile(1, 4)
_tile_4x64 = _make_tile(4, 4)


@parallel_kernel
def spmm_int8_bsr1x4(wq, gidx, ptr, chunk_quads, rowsum, XP, S, w_scale, x_scale, bias, act, R,
                     has_residual, Y):
    B, KQX, SP = XP.shape[0], XP.shape[1], XP.shape[2]
    N = ptr.shape[1] - 1
    rows = 16
    groups = (N + rows - 1) // rows
    xf, yf, rf = XP.reshape(XP.size), Y.reshape(Y.size), R.reshape(R.size)
    for i in prange(B * groups):
        b = i // groups
        n0 = (i - b * groups) * rows
        n1 = min(N, n0 + rows)
        acc = np.empty(rows * 128, dtype=np.int32)
        s0 = 0
        while s0 < S:
            wide = s0 + 128 <= SP
            tw = 128 if wide else 64
            acc[:] = 0
            for c in range(ptr.shape[0]):
                x_off = ((b * KQX + c * chunk_quads) * SP + s0) * 4
                for n in range(n0, n1):
                    s, e = ptr[c, n], ptr[c, n + 1]
                    if e > s:
                        if wide:
                            _tile_1x128(xf, x_off, SP * 4, wq, gidx, s, e, acc, (n - n0) * 128)
                        else:
                            _tile_1x64(xf, x_off, SP * 4, wq, gidx, s, e, acc, (n - n0) * 128)
            _dequant_block(acc, 128, n1 - n0, n0, b, s0, min(tw, S - s0), rowsum, w_scale, x_scale,
                           bias, act, rf, has_residual, yf, N, S)
            s0 += tw


@parallel_kernel
def spmm_int8_bsr4x4(wq, gidx, ptr, chunk_quads, rowsum, XP, S, w_scale, x_scale, bias, act, R,
                     has_residual, Y):
    B, KQX, SP = XP.shape[0], XP.shape[1], XP.shape[2]
    NB = ptr.shape[1] - 1
    N = Y.shape[1]
    blocks = 4  # row blocks (16 rows) per task
    groups = (NB + blocks - 1) // blocks
    xf, yf, rf = XP.reshape(XP.size), Y.reshape(Y.size), R.reshape(R.size)
    for i in prange(B * groups):
        b = i // groups
        m0 = (i - b * groups) * blocks
        m1 = min(NB, m0 + blocks)
        acc = np.empty(blocks * 4 * 64, dtype=np.int32)
        for t in range(SP // 64):
            s0 = t * 64
            if s0 >= S:
                break
            acc[:] = 0
            for c in range(ptr.shape[0]):
                x_off = ((b * KQX + c * chunk_quads) * SP + s0) * 4
                for m in range(m0, m1):
                    s, e = ptr[c, m], ptr[c, m + 1]
                    if e > s:
                        _tile_4x64(xf, x_off, SP * 4, wq, gidx, s, e, acc, (m - m0) * 256)
            _dequant_block(acc, 64, (m1 - m0) * 4, m0 * 4, b, s0, min(64, S - s0), rowsum, w_scale,
                           x_scale, bias, act, rf, has_residual, yf, N, S)


def pack_bsr1x4(codes: np.ndarray, chunk_quads: int = CHUNK_QUADS):
    """(N, K) int8 codes -> (wq int32 (nnzb,), gidx uint16, ptr (n_chunks, N + 1), chunk_quads,
    rowsum int32 (N,)): every K-quad of a row holding a nonzero code is one block. This is the
    layout `int8_vnni.pack_weight` already builds (one int32 word per kept quad, K-chunk then row),
    so it is that function."""
    return pack_weight(codes, chunk_quads)


def pack_bsr4x4(codes: np.ndarray, chunk_quads: int = CHUNK_QUADS):
    """(N, K) int8 codes -> (wq int32 (nnzb * 4,), gidx uint16, ptr (n_chunks, ceil(N / 4) + 1),
    chunk_quads, rowsum): every (4-row block, K-quad) holding a nonzero code is one block of 4
    words (rows past N are zero)."""
    N, K = codes.shape
    NB, KQ = -(-N // 4), -(-K // 4)
    padded = np.zeros((NB * 4, KQ * 4), dtype=np.int8)
    padded[:N, :K] = codes
    blocks = padded.reshape(NB, 4, KQ, 4).transpose(0, 2, 1, 3)  # (NB, KQ, 4 rows, 4 codes)
    keep = blocks.any(axis=(2, 3))
    rows, cols = np.nonzero(keep)
    return _chunked(blocks[rows, cols].reshape(-1, 16), keep, cols, KQ, chunk_quads, codes)


def _chunked(block_bytes, keep, cols, KQ, chunk_quads, codes):
    indptr = np.zeros(keep.shape[0] + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    chunk_quads = int(max(1, min(chunk_quads, KQ, 1 << 16)))
    order, local, ptr = chunk_entries(indptr, cols.astype(np.int64), KQ, chunk_quads)
    words = np.ascontiguousarray(block_bytes[order]).view("<i4").reshape(-1).astype(np.int32)
    rowsum = codes.astype(np.int32).sum(axis=1).astype(np.int32)
    return words, local.astype(np.uint16), ptr.astype(np.int64), chunk_quads, rowsum


def block_fill(codes: np.ndarray, rows_per_block: int) -> float:
    """Fraction of stored block values that are nonzero: 1.0 when every nonzero of `codes` sits in
    full rows_per_block x 4 blocks (for a pruned model, the block structure is exact)."""
    N, K = codes.shape
    NB, KQ = -(-N // rows_per_block), -(-K // 4)
    padded = np.zeros((NB * rows_per_block, KQ * 4), dtype=np.int8)
    padded[:N, :K] = codes
    keep = padded.reshape(NB, rows_per_block, KQ, 4).any(axis=(1, 3))
    stored = int(keep.sum()) * rows_per_block * 4
    return float(np.count_nonzero(codes)) / stored if stored else 1.0
