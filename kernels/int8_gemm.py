"""Dense INT8 matmul: register-blocked AVX512-VNNI `vpdpbusd` tiles, and AMX-INT8 `tdpbsud` tiles.

Computes, as kernels/int8.py and kernels/int8_vnni.py (same arithmetic, bit-identical sums),

    Y[b] (N, S) = act(float32(Wq (N, K) @ Xq[b] (K, S)) * (w_scale[n] * x_scale[b, s]) + bias[n])
                  (+ R[b])

on activations packed once per call by `int8_vnni.quantize_pack`: XP (B, KQ, SP, 4) uint8 =
code + 128, the 4 consecutive features of a K-quad side by side per token; SP a multiple of 64.
Unsigned x signed sums carry 128 * rowsum[n], subtracted before dequantizing, so the integer part
equals numpy's int32 matmul bit for bit.

- VNNI (`pack_weight_vnni`, `gemm_int8_vnni`): weights pre-packed WP (NB, KQ, RB) int32, the 4
  codes of quad q of the RB = 4 rows of block nb in one word each. The micro-tile (`_block_vnni`,
  an llvmlite intrinsic) keeps RB rows x 64 tokens in 16 zmm accumulators over all K: per quad,
  4 loads of activations and 4 broadcast weight words feed 16 `vpdpbusd` (the 1-row tile of
  int8_vnni.py needs 5 loads per 4).
- AMX (`pack_weight_amx`, `gemm_int8_amx`): weights pre-packed WA (M16, KB, 16, 64) int8, 16
  rows x 64 features per 1 KiB tile (M16 even, rows past N zero). The micro-tile (`_block_amx`)
  holds a 32-row x 32-token int32 block in tiles 0-3; per 64 features it loads 2 weight tiles
  (A, signed) and 2 activation tiles (B: 16 quads x 16 tokens x 4 bytes, straight from XP) and
  runs 4 `tdpbsud` (signed x unsigned, 16 x 16 x 64 multiply-adds each). Each task loads the tile
  configuration (`ldtilecfg`) and releases it (`tilerelease`) at its end: tile state is per thread.
  Linux grants AMX tile data only on request: `amx_available()` asks once (arch_prctl
  ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); without it the first tile instruction is SIGILL.

Contract (validated by the caller, `sparsebert.quant.linear`): the CPU has AVX512-VNNI (VNNI
kernels) / AMX-INT8 with permission granted (AMX kernels); XP from `quantize_pack` with KQ >=
`packed_quads(K)` (features past K hold byte 128 and meet zero weights); WP / WA packed from the
same (N, K) codes; rowsum int32 (N,) = codes' row sums; w_scale, bias float32 (N,); x_scale
float32 (B, S); R float32 (B, N, S) when has_residual; Y float32 (B, N, S); all C-contiguous. The
intrinsics read through raw pointers, out of NUMBA_BOUNDSCHECK's sight: the packers' padding is
what keeps them in bounds.

Left out: K-chunking inside the VNNI tile (K up to 4096 keeps a 64-token activation slice in L2),
AVX-VNNI (ymm) and AVX2 variants, int8 outputs.
References: Intel Intrinsics Guide `_mm512_dpbusd_epi32`, `_tile_dpbsud`, `_tile_loadconfig`;
Intel SDM vol. 1 ch. 18 (AMX); Linux Documentation/arch/x86/xstate.rst.
"""

import ctypes
import sys

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import helper, parallel_kernel
from .spmm_epilogue import epilogue_inplace

RB = 4  # weight rows per VNNI register tile
TOKENS = 64  # tokens per VNNI register tile (4 zmm); packed activations pad S to a multiple
AMX_ROWS, AMX_TOKENS = 32, 32  # the AMX block: 2 x 2 tiles of 16 x 16 int32
_I8, _I32, _I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
_I32X16 = ir.VectorType(_I32, 16)
_OFFSET = np.int32(128)


def packed_quads(K: int) -> int:
    """K-quads to allocate in XP for both kernels: K rounded up to the 64 features of an AMX tile."""
    return -(-K // 64) * 16


def _ptr(context, builder, ty, val):
    return context.make_array(ty)(context, builder, val).data


def _i64(context, builder, ty, val):
    return context.cast(builder, val, ty, types.int64)


def _emit_block(context, builder, xp_ptr, x_off, x_stride, wp_ptr, w_off, w_qstride, w_rstride, nq,
                acc_ptr, op="vpdpbusd"):
    # The VNNI register tile's IR: acc[r * 64 + j] = sum over q < nq of dpbusd(xp[x_off + q *
    # x_stride + 4 j : + 4], wp[w_off + q * w_qstride + r * w_rstride]) for r < RB, j < 64; with
    # op="vpdpwssd" each word is 2 signed int16 instead of 4 unsigned x signed bytes.
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_I32X16, [_I32X16] * 3), f"llvm.x86.avx512.{op}.512")
    zero = ir.Constant(_I32X16, [0] * 16)
    accs = [cgutils.alloca_once_value(builder, zero) for _ in range(RB * 4)]
    lanes = ir.Constant(_I32X16, [0] * 16)
    with cgutils.for_range_slice(builder, ir.Constant(_I64, 0), nq, ir.Constant(_I64, 1),
                                 inc=True) as (q, _):
        base = builder.gep(xp_ptr, [builder.add(x_off, builder.mul(q, x_stride))])
        xv = [builder.load(builder.bitcast(builder.gep(base, [ir.Constant(_I64, 64 * t)]),
                                           _I32X16.as_pointer()), align=1) for t in range(4)]
        wbase = builder.add(w_off, builder.mul(q, w_qstride))
        for r in range(RB):
            w = builder.load(builder.gep(wp_ptr, [builder.add(wbase, builder.mul(ir.Constant(_I64, r),
                                                                                 w_rstride))]))
            wv = builder.insert_element(ir.Constant(_I32X16, ir.Undefined), w, ir.Constant(_I32, 0))
            wb = builder.shuffle_vector(wv, ir.Constant(_I32X16, ir.Undefined), lanes)
            for t in range(4):
                a = accs[r * 4 + t]
                builder.store(builder.call(fn, [builder.load(a), xv[t], wb]), a)
    for i in range(RB * 4):
        vp = builder.bitcast(builder.gep(acc_ptr, [ir.Constant(_I64, 16 * i)]), _I32X16.as_pointer())
        builder.store(builder.load(accs[i]), vp, align=4)


@intrinsic
def _block_vnni(typingctx, xp, x_off, x_stride, wp, w_off, nquads, acc):
    # acc[r * 64 + j] = sum over q < nquads of dpbusd(xp[x_off + q * x_stride + 4 j : + 4],
    # wp[w_off + q * RB + r]) for r < RB, j < 64 (overwrites acc[: RB * 64]); byte offsets into
    # xp, word offsets into wp. 16 zmm accumulators (allocas that LLVM promotes to registers).
    sig = types.void(xp, x_off, x_stride, wp, w_off, nquads, acc)

    def codegen(context, builder, signature, args):
        at = signature.args
        xp_ptr, wp_ptr, acc_ptr = (_ptr(context, builder, at[i], args[i]) for i in (0, 3, 6))
        x_off, x_stride, w_off, nq = (_i64(context, builder, at[i], args[i]) for i in (1, 2, 4, 5))
        _emit_block(context, builder, xp_ptr, x_off, x_stride, wp_ptr, w_off, ir.Constant(_I64, RB),
                    ir.Constant(_I64, 1), nq, acc_ptr)
        return context.get_dummy_value()

    return sig, codegen


def _strided_block(op):
    # An intrinsic tile(xp, x_off, x_stride, wp, w_off, w_qstride, w_rstride, nquads, acc):
    # `_block_vnni` with the weight words anywhere (row r's word of quad q at wp[w_off + q *
    # w_qstride + r * w_rstride]), `op` "vpdpbusd" (4 unsigned x signed bytes per word) or
    # "vpdpwssd" (2 signed int16 per word).
    @intrinsic
    def tile(typingctx, xp, x_off, x_stride, wp, w_off, w_qstride, w_rstride, nquads, acc):
        sig = types.void(xp, x_off, x_stride, wp, w_off, w_qstride, w_rstride, nquads, acc)

        def codegen(context, builder, signature, args):
            at = signature.args
            xp_ptr, wp_ptr, acc_ptr = (_ptr(context, builder, at[i], args[i]) for i in (0, 3, 8))
            x_off, x_stride, w_off, w_q, w_r, nq = (_i64(context, builder, at[i], args[i])
                                                    for i in (1, 2, 4, 5, 6, 7))
            _emit_block(context, builder, xp_ptr, x_off, x_stride, wp_ptr, w_off, w_q, w_r, nq, acc_ptr, op)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# The attention kernels' K and V tiles (kernels/attention_int8.py): QK^T in bytes, PV in int16.
block_vnni_strided = _strided_block("vpdpbusd")
block_vnni16_strided = _strided_block("vpdpwssd")


@helper
def _dequant_block(acc, a_stride, nrows, n0, b, s0, width, rowsum, w_scale, x_scale, bias, act,
                   rf, has_residual, yf, N, S):
    # Y[b, n0 + r, s0 + j] = act((acc[r * a_stride + j] - 128 rowsum) * scales + bias[n])
    # (+ residual) for r < nrows (clipped to N), j < width: the arithmetic of
    # `spmm_epilogue.epilogue_inplace`, in one pass over each row without an activation; with one,
    # the sums are stored first and the epilogue runs on them (one pass with GELU inside ran 20%
    # slower, Zen 4).
    # x_scale C-contiguous. Unsigned flat offsets: signed indexing (acc[a0 + j],
    # x_scale[b, s0 + j]) kept Numba's negative-index wraparound selects in the token loop.
    xsf = x_scale.reshape(-1)
    xoff = np.uint64(b * x_scale.shape[1] + s0)
    uw = np.uint64(width)
    for r in range(min(nrows, N - n0)):
        n = n0 + r
        off = np.uint64((b * N + n) * S + s0)
        ws = w_scale[n]
        comp = rowsum[n] * _OFFSET
        a0 = np.uint64(r * a_stride)
        bn = bias[n]
        if act == 0 and has_residual:
            for j in range(uw):
                yf[off + j] = np.float32(acc[a0 + j] - comp) * (ws * xsf[xoff + j]) + bn + rf[off + j]
        elif act == 0:
            for j in range(uw):
                yf[off + j] = np.float32(acc[a0 + j] - comp) * (ws * xsf[xoff + j]) + bn
        else:
            for j in range(uw):
                yf[off + j] = np.float32(acc[a0 + j] - comp) * (ws * xsf[xoff + j])
            epilogue_inplace(yf, off, uw, bn, act, rf, off, has_residual)


@parallel_kernel
def gemm_int8_vnni(wp, rowsum, XP, S, w_scale, x_scale, bias, act, R, has_residual, Y):
    # One task: sequence b x `group` row blocks, every token tile; the 64-token activation slice
    # (KQ x 256 bytes) is reused by the group's blocks, the group's weights by every tile.
    B, KQX, SP = XP.shape[0], XP.shape[1], XP.shape[2]
    NB, KQ = wp.shape[0], wp.shape[1]
    N = Y.shape[1]
    group = 8
    groups = (NB + group - 1) // group
    xf, wf = XP.reshape(XP.size), wp.reshape(wp.size)
    yf, rf = Y.reshape(Y.size), R.reshape(R.size)
    for i in prange(B * groups):
        b = i // groups
        g = i - b * groups
        acc = np.empty(RB * TOKENS, dtype=np.int32)
        for t in range(SP // TOKENS):
            s0 = t * TOKENS
            width = min(TOKENS, S - s0)
            for nb in range(g * group, min(NB, g * group + group)):
                _block_vnni(xf, (b * KQX * SP + s0) * 4, SP * 4, wf, nb * KQ * RB, KQ, acc)
                _dequant_block(acc, TOKENS, RB, nb * RB, b, s0, width, rowsum, w_scale, x_scale,
                               bias, act, rf, has_residual, yf, N, S)


def pack_weight_vnni(codes: np.ndarray) -> np.ndarray:
    """(N, K) int8 codes -> WP (ceil(N / RB), ceil(K / 4), RB) int32: row block, quad, row; rows
    past N and features past K are zero."""
    N, K = codes.shape
    NB, KQ = -(-N // RB), -(-K // 4)
    padded = np.zeros((NB * RB, KQ * 4), dtype=np.int8)
    padded[:N, :K] = codes
    quads = padded.reshape(NB, RB, KQ, 4).transpose(0, 2, 1, 3)  # (NB, KQ, RB, 4)
    return np.ascontiguousarray(quads).view("<i4").reshape(NB, KQ, RB).astype(np.int32)


# ---- AMX-INT8 -------------------------------------------------------------------------------

def _tile_config() -> np.ndarray:
    # 64-byte palette-1 configuration: tiles 0-7 all 16 rows x 64 bytes.
    cfg = np.zeros(64, dtype=np.uint8)
    cfg[0] = 1
    for t in range(8):
        cfg[16 + 2 * t] = 64  # colsb, little-endian uint16
        cfg[48 + t] = 16  # rows
    return cfg


TILE_CONFIG = _tile_config()


def _void_fn(builder, name, argtys):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), argtys), name)


@intrinsic
def _amx_configure(typingctx, cfg):
    # ldtilecfg from the 64-byte array cfg (TILE_CONFIG).
    sig = types.void(cfg)

    def codegen(context, builder, signature, args):
        p = builder.bitcast(_ptr(context, builder, signature.args[0], args[0]), _I8.as_pointer())
        builder.call(_void_fn(builder, "llvm.x86.ldtilecfg", [_I8.as_pointer()]), [p])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _amx_release(typingctx, dummy):
    # tilerelease: return the tile state to init so context switches stay cheap.
    sig = types.void(dummy)

    def codegen(context, builder, signature, args):
        builder.call(_void_fn(builder, "llvm.x86.tilerelease", []), [])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _block_amx(typingctx, wa, w_off, w_next, xp, x_off, x_stride, x_kstride, ksteps, acc, acc_off,
               acc_stride):
    # acc[acc_off + r * acc_stride + j] (r, j < 32) int32 = sum over k < ksteps of A_m(k) @ B_n(k),
    # m, n in {0, 1}: A_m(k) the 1 KiB weight tile at byte wa + w_off + m * w_next + k * 1024
    # (16 rows x 64 codes), B_n(k) the activation tile at byte xp + x_off + n * 64 + k * x_kstride
    # (16 quads x 16 tokens, row stride x_stride). Tiles 0-3 accumulate, 4-5 hold A, 6-7 hold B.
    sig = types.void(wa, w_off, w_next, xp, x_off, x_stride, x_kstride, ksteps, acc, acc_off,
                     acc_stride)

    def codegen(context, builder, signature, args):
        at = signature.args
        i8p = _I8.as_pointer()
        wa_ptr = builder.bitcast(_ptr(context, builder, at[0], args[0]), i8p)
        xp_ptr = builder.bitcast(_ptr(context, builder, at[3], args[3]), i8p)
        acc_ptr = builder.bitcast(_ptr(context, builder, at[8], args[8]), i8p)
        w_off, w_next, x_off, x_stride, x_kstride, ks, acc_off, acc_stride = (
            _i64(context, builder, at[i], args[i]) for i in (1, 2, 4, 5, 6, 7, 9, 10))
        zero = _void_fn(builder, "llvm.x86.tilezero", [_I8])
        load = _void_fn(builder, "llvm.x86.tileloadd64", [_I8, i8p, _I64])
        store = _void_fn(builder, "llvm.x86.tilestored64", [_I8, i8p, _I64])
        dp = _void_fn(builder, "llvm.x86.tdpbsud", [_I8, _I8, _I8])
        tile = lambda t: ir.Constant(_I8, t)  # noqa: E731
        c64 = lambda v: ir.Constant(_I64, v)  # noqa: E731
        for t in range(4):
            builder.call(zero, [tile(t)])
        with cgutils.for_range_slice(builder, c64(0), ks, c64(1), inc=True) as (k, _):
            wk = builder.gep(wa_ptr, [builder.add(w_off, builder.mul(k, c64(1024)))])
            xk = builder.gep(xp_ptr, [builder.add(x_off, builder.mul(k, x_kstride))])
            builder.call(load, [tile(4), wk, c64(64)])
            builder.call(load, [tile(5), builder.gep(wk, [w_next]), c64(64)])
            builder.call(load, [tile(6), xk, x_stride])
            builder.call(load, [tile(7), builder.gep(xk, [c64(64)]), x_stride])
            for c, (a, b) in enumerate(((4, 6), (4, 7), (5, 6), (5, 7))):
                builder.call(dp, [tile(c), tile(a), tile(b)])
        row = builder.mul(acc_stride, c64(4))  # bytes
        base = builder.gep(acc_ptr, [builder.mul(acc_off, c64(4))])
        lower = builder.gep(base, [builder.mul(row, c64(16))])
        for c, (p, off) in enumerate(((base, 0), (base, 64), (lower, 0), (lower, 64))):
            builder.call(store, [tile(c), builder.gep(p, [c64(off)]), row])
        return context.get_dummy_value()

    return sig, codegen


@parallel_kernel
def gemm_int8_amx(wa, rowsum, XP, S, w_scale, x_scale, bias, act, R, has_residual, Y, cfg):
    # One task: sequence b x `group` 32-row blocks; each block runs every 32-token tile into one
    # (32, SP) int32 buffer, so each output row is written once, whole (S floats in a row): row
    # pieces written tile by tile cost ~2x in memory traffic on a ffn_in-sized output.
    B, KQX, SP = XP.shape[0], XP.shape[1], XP.shape[2]
    M16, KB = wa.shape[0], wa.shape[1]
    MB = M16 // 2
    N = Y.shape[1]
    group = 4
    groups = (MB + group - 1) // group
    xf, wf = XP.reshape(XP.size), wa.reshape(wa.size)
    yf, rf = Y.reshape(Y.size), R.reshape(R.size)
    for i in prange(B * groups):
        b = i // groups
        g = i - b * groups
        acc = np.empty(AMX_ROWS * SP, dtype=np.int32)
        _amx_configure(cfg)
        for mb in range(g * group, min(MB, g * group + group)):
            for t in range((S + AMX_TOKENS - 1) // AMX_TOKENS):
                s0 = t * AMX_TOKENS
                _block_amx(wf, 2 * mb * KB * 1024, KB * 1024, xf, (b * KQX * SP + s0) * 4, SP * 4,
                           16 * SP * 4, KB, acc, s0, SP)
            _dequant_block(acc, SP, AMX_ROWS, mb * AMX_ROWS, b, 0, S, rowsum, w_scale, x_scale, bias,
                           act, rf, has_residual, yf, N, S)
        _amx_release(0)


def pack_weight_amx(codes: np.ndarray) -> np.ndarray:
    """(N, K) int8 codes -> WA (M16, KB, 16, 64) int8: 16-row x 64-feature tiles, M16 = 2 *
    ceil(N / 32), KB = ceil(K / 64); rows past N and features past K are zero."""
    N, K = codes.shape
    M16, KB = 2 * -(-N // AMX_ROWS), -(-K // 64)
    padded = np.zeros((M16 * 16, KB * 64), dtype=np.int8)
    padded[:N, :K] = codes
    return np.ascontiguousarray(padded.reshape(M16, 16, KB, 64).transpose(0, 2, 1, 3))


_AMX_STATE = {}


def amx_available() -> bool:
    """True when this CPU has AMX-INT8 and Linux granted this process the AMX tile data state
    (asked once: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)); the AMX kernels need both."""
    if "ok" not in _AMX_STATE:
        ok = False
        try:
            import llvmlite.binding as ll

            feats = ll.get_host_cpu_features()
            if sys.platform == "linux" and feats.get("amx-int8") and feats.get("amx-tile"):
                libc = ctypes.CDLL(None, use_errno=True)
                ok = libc.syscall(158, 0x1023, 18) == 0  # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM
        except (OSError, AttributeError, RuntimeError, TypeError):
            ok = False
        _AMX_STATE["ok"] = ok
    return _AMX_STATE["ok"]
