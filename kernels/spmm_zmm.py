"""Sparse register tiles written as explicit 512-bit vectors, for CPUs with AVX-512.

The generated tiles (`gen_spmm.py`) are scalar locals that LLVM's SLP pass packs into vectors, and
LLVM prefers 256-bit vectors on Intel server cores (its "prefer-256-bit" tuning), so on Sapphire
Rapids they ran on ymm registers at half the FMA width. These tiles are llvmlite intrinsics over
<16 x float> values, which LLVM keeps at 512 bits (no min-legal-vector-width attribute narrows
them). Same contract as the generated `_tile_<fmt>_w<T>`: add one block row's entries [start, end)
over T tokens to the sums in y.

Measured (benchmarks/bench_spmm_tiles.py, Sapphire Rapids, 2 threads, B = 32 x 128, BERT-base
shapes; useful GMAC/s, generated -> zmm): CSR 80% 44-53 -> 52-61 with 64 tokens and two
alternating accumulator sets (one set of 4 zmm is a 4-deep FMA dependency chain: 8 chains keep
both FMA ports busy), 90% 33-39 -> 38-47; 4x1 blocks at 64 tokens (16 zmm sums, one X load feeds
four rows) 80% 53-62 -> 79-93, 90% 39-51 -> 48-73. 128-token CSR tiles won at 80% (59-70) but
lost at 90%, and 1x4 blocks showed no steady gain, so they keep the generated tiles.

`ZMM` says whether the kernels are compiled for a CPU with AVX-512F (Numba's target: the host, or
NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when set); Numba's cache keys compiled code on that target, so
a cache never serves one path's code to the other.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .jit import helper, kernel


def _target_has_avx512() -> bool:
    from numba.core import config

    if config.CPU_NAME:  # Numba compiles for the named CPU, with exactly these features
        return "+avx512f" in (config.CPU_FEATURES or "").split(",")
    import llvmlite.binding as ll

    try:
        return bool(ll.get_host_cpu_features().get("avx512f"))
    except RuntimeError:
        return False


ZMM = _target_has_avx512()

_F32X16 = ir.VectorType(ir.FloatType(), 16)
_I64 = ir.IntType(64)


def make_tile(R: int, C: int, T: int, sets: int = 1):
    """An intrinsic tile(y, yoff, ystride, x, xoff, xstride, data, indices, start, end) adding the
    R x C blocks [start, end) of one block row over T tokens (T % 16 == 0) to y, as the generated
    `_tile_<fmt>_w<T>`; `sets` > 1 (CSR only) alternates entries over that many accumulator sets,
    summed at the end (so a row's sum is not in the generated tile's order: equal within rounding).
    Offsets are element counts; loads and stores are unaligned."""
    vecs = T // 16
    assert T % 16 == 0 and (sets == 1 or R * C == 1)

    @intrinsic
    def _tile(typingctx, y, yoff, ystride, x, xoff, xstride, data, indices, start, end):
        sig = types.void(y, yoff, ystride, x, xoff, xstride, data, indices, start, end)

        def codegen(context, builder, signature, args):
            at = signature.args

            def i64(k):
                return context.cast(builder, args[k], at[k], types.int64)

            y_ptr = context.make_array(at[0])(context, builder, args[0]).data
            x_ptr = context.make_array(at[3])(context, builder, args[3]).data
            d_ptr = context.make_array(at[6])(context, builder, args[6]).data
            i_ptr = context.make_array(at[7])(context, builder, args[7]).data
            yoff, ystride, xoff, xstride, start, end = i64(1), i64(2), i64(4), i64(5), i64(8), i64(9)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_F32X16, [_F32X16] * 3), "llvm.fma.v16f32")

            def vptr(base, off):
                return builder.bitcast(builder.gep(base, [off]), _F32X16.as_pointer())

            y_vp = [[vptr(y_ptr, builder.add(builder.add(yoff, builder.mul(ystride, ir.Constant(_I64, r))),
                                             ir.Constant(_I64, 16 * v))) for v in range(vecs)] for r in range(R)]
            zero = ir.Constant(_F32X16, [0.0] * 16)
            accs = [[[cgutils.alloca_once_value(builder, builder.load(y_vp[r][v], align=4) if s == 0 else zero)
                      for v in range(vecs)] for r in range(R)] for s in range(sets)]
            lanes = ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16)

            def step(p, s):
                q = builder.mul(p, ir.Constant(_I64, R * C))
                w = [[None] * C for _ in range(R)]
                for r in range(R):
                    for c in range(C):
                        v = builder.load(builder.gep(d_ptr, [builder.add(q, ir.Constant(_I64, r * C + c))]))
                        v = builder.insert_element(ir.Constant(_F32X16, ir.Undefined), v, ir.Constant(ir.IntType(32), 0))
                        w[r][c] = builder.shuffle_vector(v, ir.Constant(_F32X16, ir.Undefined), lanes)
                g = builder.load(builder.gep(i_ptr, [p]))
                g = builder.zext(g, _I64) if g.type.width < 64 else g
                row0 = builder.add(xoff, builder.mul(builder.mul(g, ir.Constant(_I64, C)), xstride))
                for c in range(C):
                    base = builder.add(row0, builder.mul(xstride, ir.Constant(_I64, c))) if c else row0
                    for v in range(vecs):
                        xv = builder.load(vptr(x_ptr, builder.add(base, ir.Constant(_I64, 16 * v))), align=4)
                        for r in range(R):
                            a = accs[s][r][v]
                            builder.store(builder.call(fma, [w[r][c], xv, builder.load(a)]), a)

            n_main = builder.and_(builder.sub(end, start), ir.Constant(_I64, -sets))
            main_end = builder.add(start, n_main)
            with cgutils.for_range_slice(builder, start, main_end, ir.Constant(_I64, sets), inc=True) as (p, _):
                for s in range(sets):
                    step(builder.add(p, ir.Constant(_I64, s)) if s else p, s)
            if sets > 1:
                with cgutils.for_range_slice(builder, main_end, end, ir.Constant(_I64, 1), inc=True) as (p, _):
                    step(p, 0)
            for r in range(R):
                for v in range(vecs):
                    total = builder.load(accs[0][r][v])
                    for s in range(1, sets):
                        total = builder.fadd(total, builder.load(accs[s][r][v]))
                    builder.store(total, y_vp[r][v], align=4)
            return context.get_dummy_value()

        return sig, codegen

    return _tile


# The zmm tiles `gen_spmm.FORMATS` names (tile_<fmt>_z<width>); the generated drivers call them.
_csr_z64 = make_tile(1, 1, 64, 2)
_bsr4x1_z64 = make_tile(4, 1, 64, 1)
# The fused FFN's wide token tile (`ffn_fused.TILES`): 16 zmm sums in two sets, 8 zmm of X per entry.
_csr_z128 = make_tile(1, 1, 128, 2)


@kernel
def tile_csr_z64(y, yoff, ystride, x, xoff, xstride, data, indices, start, end):
    _csr_z64(y, yoff, ystride, x, xoff, xstride, data, indices, start, end)


@kernel
def tile_csr_z128(y, yoff, ystride, x, xoff, xstride, data, indices, start, end):
    _csr_z128(y, yoff, ystride, x, xoff, xstride, data, indices, start, end)


@kernel
def tile_bsr4x1_z64(y, yoff, ystride, x, xoff, xstride, data, indices, start, end):
    _bsr4x1_z64(y, yoff, ystride, x, xoff, xstride, data, indices, start, end)


def make_tile_kernel(R: int, C: int, T: int, sets: int = 1):
    """An uncached kernel around `make_tile(R, C, T, sets)`, for experiments
    (benchmarks/bench_spmm_tiles.py)."""
    tile = make_tile(R, C, T, sets)

    @helper
    def run(y, yoff, ystride, x, xoff, xstride, data, indices, start, end):
        tile(y, yoff, ystride, x, xoff, xstride, data, indices, start, end)

    return run
