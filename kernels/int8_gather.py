"""Unstructured sparse INT8 matmul on AVX512-VNNI: each row's nonzeros concatenated four to a quad,
the four activation rows they meet gathered and interleaved into quads at run time.

Computes, with the arithmetic of kernels/int8.py (bit-identical int32 sums, same epilogue),

    Y[b] (N, S) = act(float32(Wq (N, K) @ Xq[b] (K, S)) * (w_scale[n] * x_scale[b, s]) + bias[n])
                  (+ R[b])

The 1x4-block kernel (int8_bsr.py) feeds `vpdpbusd` quads of 4 consecutive input channels; on an
unstructured 90%-sparse row most of them hold one nonzero (34% of quads stored, 1.16 nonzeros
each), so most multiply-adds are spent on zeros. Here a row's nonzeros, in column order, fill quads
completely (the last one padded with zero codes): `idx` holds the 4 columns of each quad (uint16),
`wq` its 4 codes as one int32 word, `ptr` (N + 1) bounds each row's quads. The activations are
kept per feature: XR (B, K, SP) uint8 = code + 128, SP a multiple of 64 (`quantize_rows`; padding
tokens 128). For one row and 64 tokens, a quad loads the 4 feature rows it names (64 bytes each),
interleaves them into 64 token quads with 8 byte / word unpacks, and runs 4 `vpdpbusd` against the
broadcast weight word (`_tile_gather64`, an llvmlite intrinsic). The unpacks leave the tokens in a
fixed lane order, which the tile undoes once per row when it adds its sums into acc. Measured on
Zen 4, int32 sums at 32 x 128, 90% unstructured: (3072, 768) 9.3 ms vs 16.5 ms for the 128-token
1x4 tile, (768, 3072) 6.8 vs 15.5 ms.

Contract (validated by `sparsebert.quant.linear`): the CPU has AVX512-VNNI; arrays C-contiguous;
idx uint16 < K, 4 per quad; wq int32; ptr int64 (N + 1,) non-decreasing from 0 to len(wq); rowsum
int32 (N,); XR from `quantize_rows` for the same K; w_scale, bias float32 (N,); x_scale float32
(B, S); R float32 (B, N, S) when has_residual; Y float32 (B, N, S). The intrinsic reads through raw
pointers: `pack_gather`'s indices below K are what keep it in bounds.

Left out: K-chunking (a 64-token tile of XR is K x 64 bytes, 192 KiB at K = 3072: in L2), 128-token
tiles, the fused layer kinds (kernels/ffn_int8.py), AVX2.
References: Intel Intrinsics Guide `_mm512_dpbusd_epi32`, `_mm512_unpacklo_epi8`.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .int8 import token_scales
from .int8_gemm import _dequant_block, _i64, _ptr
from .int8_vnni import _code_byte, inverse_smooth
from .jit import helper, parallel_kernel

# Numba's on-disk cache keys these kernels on this file only: tests/test_ffn_int8.py fails until this
# stamp matches the files whose helpers they inline.
BUILT_AGAINST = "int8.py e8cb762509f1d006, int8_gemm.py bfe0e0dc7e8c6e38, int8_vnni.py 481ed9f95056e5e2, spmm_epilogue.py 84df407a011b8901, numeric.py 6c0311da66f4dbb7"
TOKENS = 64  # tokens per register tile
ROWS = 16  # output rows per task
_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_V8, _V16, _V32 = ir.VectorType(_I8, 64), ir.VectorType(_I16, 32), ir.VectorType(_I32, 16)
_PAD = np.uint8(128)


def _mask(values):
    return ir.Constant(ir.VectorType(_I32, len(values)), values)


def _unpack(per_lane, hi):
    # vpunpck{l,h}{bw,wd} as a shufflevector mask over two vectors of 4 128-bit lanes of `per_lane`
    # elements: per lane, the low (high) halves of both interleaved.
    n, half, m = 4 * per_lane, per_lane // 2, []
    for lane in range(4):
        for i in range(half):
            e = lane * per_lane + (half if hi else 0) + i
            m += [e, n + e]
    return _mask(m)


@intrinsic
def _tile_gather64(typingctx, xr, x_off, x_stride, idx, wq, start, end, acc, acc_off):
    # acc[acc_off + j] += sum over quads p in [start, end) and i < 4 of
    # xr[x_off + idx[4 p + i] * x_stride + j] * code_i(wq[p]), j < 64; byte offsets into xr.
    sig = types.void(xr, x_off, x_stride, idx, wq, start, end, acc, acc_off)

    def codegen(context, builder, signature, args):
        at = signature.args
        c64 = lambda v: ir.Constant(_I64, v)  # noqa: E731
        xp, ip, wp, ap = (_ptr(context, builder, at[i], args[i]) for i in (0, 3, 4, 7))
        x_off, x_stride, start, end, acc_off = (_i64(context, builder, at[i], args[i]) for i in (1, 2, 5, 6, 8))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V32, [_V32] * 3),
                                            "llvm.x86.avx512.vpdpbusd.512")
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_V32, [0] * 16)) for _ in range(4)]
        lo8, hi8, lo16, hi16 = _unpack(16, False), _unpack(16, True), _unpack(8, False), _unpack(8, True)
        lanes = ir.Constant(_V32, [0] * 16)
        with cgutils.for_range_slice(builder, start, end, c64(1), inc=True) as (p, _):
            rows = []
            for i in range(4):
                k = builder.zext(builder.load(builder.gep(ip, [builder.add(builder.mul(p, c64(4)), c64(i))])), _I64)
                a = builder.gep(xp, [builder.add(x_off, builder.mul(k, x_stride))])
                rows.append(builder.load(builder.bitcast(a, _V8.as_pointer()), align=1))
            t0 = builder.bitcast(builder.shuffle_vector(rows[0], rows[1], lo8), _V16)
            t1 = builder.bitcast(builder.shuffle_vector(rows[0], rows[1], hi8), _V16)
            t2 = builder.bitcast(builder.shuffle_vector(rows[2], rows[3], lo8), _V16)
            t3 = builder.bitcast(builder.shuffle_vector(rows[2], rows[3], hi8), _V16)
            # quads: u_m's int32 element 4 L + i is token 16 L + 4 m + i
            quads = [builder.shuffle_vector(t0, t2, lo16), builder.shuffle_vector(t0, t2, hi16),
                     builder.shuffle_vector(t1, t3, lo16), builder.shuffle_vector(t1, t3, hi16)]
            w = builder.load(builder.gep(wp, [p]))
            wv = builder.insert_element(ir.Constant(_V32, ir.Undefined), w, ir.Constant(_I32, 0))
            wb = builder.shuffle_vector(wv, ir.Constant(_V32, ir.Undefined), lanes)
            for m in range(4):
                a = accs[m]
                builder.store(builder.call(fn, [builder.load(a), builder.bitcast(quads[m], _V32), wb]), a)
        u = [builder.load(a) for a in accs]

        def sh(x, y, m):
            return builder.shuffle_vector(x, y, _mask(m))

        # back to token order: out_j (tokens 16 j .. 16 j + 15) = lane j of u_0, u_1, u_2, u_3
        lo = [0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23]
        hi = [8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31]
        first, second = list(range(8)) + list(range(16, 24)), list(range(8, 16)) + list(range(24, 32))
        a01, a23, b01, b23 = sh(u[0], u[1], lo), sh(u[2], u[3], lo), sh(u[0], u[1], hi), sh(u[2], u[3], hi)
        outs = [sh(a01, a23, first), sh(a01, a23, second), sh(b01, b23, first), sh(b01, b23, second)]
        for j in range(4):
            vp = builder.bitcast(builder.gep(ap, [builder.add(acc_off, c64(16 * j))]), _V32.as_pointer())
            builder.store(builder.add(builder.load(vp, align=4), outs[j]), vp, align=4)
        return context.get_dummy_value()

    return sig, codegen


@parallel_kernel
def quantize_rows(X, smooth, XR, x_scale):
    # X (B, K, S) float32 -> XR (B, K, SP) uint8 = code + 128 (the codes of kernels/int8.py's
    # quantize_tokens), padding tokens 128; x_scale (B, S). One task per (sequence, 64-token tile).
    B, K, S = X.shape
    SP = XR.shape[2]
    xf = X.reshape(X.size)
    rf = XR.reshape(XR.size)
    inv_smooth = inverse_smooth(smooth, (K + 3) // 4)
    n_tiles = SP // TOKENS
    for task in prange(B * n_tiles):
        b = task // n_tiles
        s0 = (task - b * n_tiles) * TOKENS
        width = max(0, min(TOKENS, S - s0))
        inv = np.zeros(TOKENS, dtype=np.float32)
        if width > 0:
            token_scales(xf, b, K, S, s0, width, inv_smooth, x_scale, inv)
        base = np.uint64(b) * np.uint64(K)
        code_rows(xf, base * np.uint64(S) + np.uint64(s0), np.uint64(S), rf, base * np.uint64(SP) + np.uint64(s0),
                  np.uint64(SP), K, width, TOKENS, inv_smooth, inv)


@helper
def code_rows(src, sbase, sstride, dst, dbase, dstride, K, width, W, inv_smooth, inv):
    # The activation layout the gather tile reads, shared by quantize_rows and the fused kernels:
    # dst's K rows (dstride apart from dbase, flat uint8) = the codes + 128 of src's K rows
    # (sstride apart from sbase, flat float32) over columns [0, width), scaled by inv_smooth[k] and
    # each column's inv[j]; columns [width, W) padding 128. Offsets are unsigned: signed ones keep
    # Numba's negative-index wraparound in the loop.
    uw, ut = np.uint64(width), np.uint64(W)
    for k in range(np.uint64(K)):
        s, d = sbase + k * sstride, dbase + k * dstride
        m = inv_smooth[k]
        for j in range(uw):
            dst[d + j] = np.uint8(_code_byte(src[s + j], m, inv[j]))
        for j in range(uw, ut):
            dst[d + j] = _PAD


@parallel_kernel
def spmm_int8_gather(idx, wq, ptr, rowsum, XR, S, w_scale, x_scale, bias, act, R, has_residual, Y):
    # One task: sequence b x ROWS output rows, every 64-token tile.
    B, K, SP = XR.shape
    N = ptr.shape[0] - 1
    groups = (N + ROWS - 1) // ROWS
    xf, yf, rf = XR.reshape(XR.size), Y.reshape(Y.size), R.reshape(R.size)
    for i in prange(B * groups):
        b = i // groups
        n0 = (i - b * groups) * ROWS
        n1 = min(N, n0 + ROWS)
        acc = np.empty(ROWS * TOKENS, dtype=np.int32)
        for t in range(SP // TOKENS):
            s0 = t * TOKENS
            if s0 >= S:
                break
            acc[:] = 0
            for n in range(n0, n1):
                _tile_gather64(xf, b * K * SP + s0, SP, idx, wq, ptr[n], ptr[n + 1], acc, (n - n0) * TOKENS)
            _dequant_block(acc, TOKENS, n1 - n0, n0, b, s0, min(TOKENS, S - s0), rowsum, w_scale, x_scale,
                           bias, act, rf, has_residual, yf, N, S)


def pack_gather(codes: np.ndarray):
    """(N, K) int8 codes -> (idx uint16 (4 * quads,), wq int32 (quads,), ptr int64 (N + 1,), rowsum
    int32 (N,)): each row's nonzeros in column order, four to a quad; a row's last quad is padded
    with zero codes at its last nonzero's column (a row without nonzeros has no quads)."""
    N, K = codes.shape
    if K > 1 << 16:
        raise ValueError(f"the gather kernel indexes columns in uint16: K = {K} is above 65,536")
    rows, cols = np.nonzero(codes)
    counts = np.bincount(rows, minlength=N)
    quads = -(-counts // 4)
    ptr = np.zeros(N + 1, dtype=np.int64)
    np.cumsum(quads, out=ptr[1:])
    starts = np.zeros(N + 1, dtype=np.int64)  # first nonzero of each row in (rows, cols)
    np.cumsum(counts, out=starts[1:])
    last = np.where(counts > 0, cols[np.maximum(starts[1:] - 1, 0)] if cols.size else 0, 0)
    idx = np.repeat(last, 4 * quads).astype(np.uint16)
    vals = np.zeros(4 * int(ptr[-1]), dtype=np.int8)
    dest = 4 * ptr[rows] + (np.arange(rows.size) - starts[rows])
    idx[dest] = cols
    vals[dest] = codes[rows, cols]
    rowsum = codes.astype(np.int32).sum(axis=1).astype(np.int32)
    return idx, vals.view("<i4").astype(np.int32), ptr, rowsum
