"""INT8 kernels (kernels/int8.py) and int8 linears (sparsebert/quant/linear.py) against NumPy.

Integer sums must equal a numpy int64 matmul of the same codes bit for bit on the conformance
cases (empty rows, all-zero weight, 1x1, sizes that are no multiple of anything, S = 1, B > 1);
the activation codes must equal numpy's rint of the same float32 products; the fused float
epilogue is compared with a float64 reference built from the codes and scales (tolerance 1e-5 x
the output scale: float32 rounding of the dequantized sums, and the 1e-7 erf approximation).
"""

import math
import re
import sys

import numpy as np
import pytest

from sparsebert.errors import CheckpointError, InputError
from sparsebert.kernels import int8 as k8
from sparsebert.quant import Int8Linear, quantize_weight
from sparsebert.quant.linear import host_has_vnni

_erf = np.vectorize(math.erf)
NO_CODES = np.zeros((1, 1, 1), np.int8)
NO_RES = np.zeros((1, 1, 1), np.float32)

# (N, K, B, S, sparsity): 1x1, S = 1, odd sizes, empty rows (sparsity 0.95 on few columns), zeros.
CASES = [(1, 1, 1, 1, 0.0), (7, 13, 2, 1, 0.5), (33, 17, 3, 5, 0.9), (64, 96, 2, 37, 0.0),
         (50, 3, 1, 9, 0.95), (16, 40, 2, 8, 1.0), (384, 384, 2, 128, 0.9), (96, 1536, 1, 19, 0.5)]


def codes_for(rng, N, K, sparsity):
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    return (w * (rng.random((N, K)) >= sparsity)).astype(np.int8)


def to_csr(codes):
    rows, cols = np.nonzero(codes)
    indptr = np.zeros(codes.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=codes.shape[0]), out=indptr[1:])
    return codes[rows, cols].copy(), cols.astype(np.int32), indptr


def reference_sums(codes, q):
    return np.stack([codes.astype(np.int64) @ q[b].astype(np.int64) for b in range(q.shape[0])])


@pytest.mark.parametrize("N,K,B,S,sparsity", CASES)
def test_integer_sums_bit_exact(N, K, B, S, sparsity):
    rng = np.random.default_rng(N * 1000 + K)
    codes = codes_for(rng, N, K, sparsity)
    q = rng.integers(-127, 128, (B, K, S)).astype(np.int8)
    want = reference_sums(codes, q)
    dense = np.full((B, N, S), -1, np.int32)
    k8.gemm_int8_acc(codes, np.ascontiguousarray(q.transpose(0, 2, 1)), dense)
    sparse = np.full((B, N, S), -1, np.int32)
    k8.spmm_int8_csr_acc(*to_csr(codes), q, sparse)
    assert dense.dtype == sparse.dtype == np.int32
    np.testing.assert_array_equal(dense, want)
    np.testing.assert_array_equal(sparse, want)


@pytest.mark.skipif(not host_has_vnni(), reason="the vnni kernels need a CPU with AVX512-VNNI")
@pytest.mark.parametrize("N,K,B,S,sparsity", CASES + [(5, 130, 2, 129, 0.9), (8, 3072, 1, 64, 0.0)])
def test_vnni_sums_and_codes_bit_exact(N, K, B, S, sparsity):
    from sparsebert.kernels import int8_vnni as kv

    rng = np.random.default_rng(N * 1000 + K + 1)
    codes = codes_for(rng, N, K, sparsity)
    if K == 3072:  # the int32 extreme: every product 127 * 127
        codes[:] = 127
    x = rng.standard_normal((B, K, S)).astype(np.float32)
    smooth = rng.uniform(0.5, 2, K).astype(np.float32)
    q = np.empty((B, K, S), np.int8)
    scale = np.empty((B, S), np.float32)
    k8.quantize_tokens(x, smooth, q, NO_CODES, scale, False)
    xp = np.empty((B, -(-K // 4), -(-S // kv.TILE) * kv.TILE, 4), np.uint8)
    packed_scale = np.empty((B, S), np.float32)
    kv.quantize_pack(x, smooth, xp, packed_scale)
    np.testing.assert_array_equal(packed_scale, scale)
    unpacked = (xp.astype(np.int16) - 128).transpose(0, 1, 3, 2).reshape(B, -1, xp.shape[2])
    np.testing.assert_array_equal(unpacked[:, :K, :S], q)
    assert (xp.reshape(B, -1, xp.shape[2], 4)[:, :, S:] == 128).all()  # padding tokens: code 0
    for chunk_quads in (kv.CHUNK_QUADS, 3):  # one chunk or several, with a ragged last one
        got = np.full((B, N, S), -1, np.int32)
        kv.spmm_int8_vnni_acc(*kv.pack_weight(codes, chunk_quads), xp, S, got)
        np.testing.assert_array_equal(got, reference_sums(codes, q))


def test_extreme_codes_do_not_overflow():
    # K = 3072 rows of +-127 x +-127: |sum| = 49.5 M, past float32's exact range, inside int32.
    codes = np.full((4, 3072), 127, np.int8)
    codes[1] = -127
    q = np.full((1, 3072, 2), 127, np.int8)
    q[0, :, 1] = -127
    got = np.empty((1, 4, 2), np.int32)
    k8.gemm_int8_acc(codes, np.ascontiguousarray(q.transpose(0, 2, 1)), got)
    np.testing.assert_array_equal(got, reference_sums(codes, q))


@pytest.mark.parametrize("token_major", [False, True])
def test_quantize_tokens_matches_numpy(token_major):
    rng = np.random.default_rng(3)
    B, K, S = 3, 45, 11
    x = (rng.standard_normal((B, K, S)) * rng.uniform(0.1, 30, (1, K, 1))).astype(np.float32)
    x[1, :, 4] = 0.0  # an all-zero token: scale 0, codes 0
    x[2, 7, 2] = 1e-30  # a tiny one: no division by zero, no overflow
    smooth = rng.uniform(0.5, 4, K).astype(np.float32)
    scale = np.empty((B, S), np.float32)
    q = np.empty((B, S, K) if token_major else (B, K, S), np.int8)
    k8.quantize_tokens(x, smooth, NO_CODES if token_major else q, q if token_major else NO_CODES,
                       scale, token_major)
    z = x * (np.float32(1) / smooth)[None, :, None]
    np.testing.assert_allclose(scale, np.abs(z).max(axis=1) / np.float32(127), rtol=1e-6, atol=0)
    inv = np.where(scale > 0, np.float32(1) / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    want = np.clip(np.rint(z * inv[:, None, :]), -127, 127).astype(np.int8)
    got = q.transpose(0, 2, 1) if token_major else q
    np.testing.assert_array_equal(got, want)
    assert scale[1, 4] == 0 and not got[1, :, 4].any()
    assert np.abs(got).max() == 127


def reference_linear(lin, x, act, residual):
    z = x / lin.smooth[None, :, None]
    xs = np.abs(z).max(axis=1) / np.float32(127)
    q = np.clip(np.rint(z / np.where(xs > 0, xs, 1)[:, None, :]), -127, 127)
    w = lin.to_codes().astype(np.float64) * lin.scale[:, None]
    y = np.einsum("nk,bks->bns", w, q * xs[:, None, :].astype(np.float64)) + lin.bias[None, :, None]
    if act == "gelu":
        y = 0.5 * y * (1.0 + _erf(y / math.sqrt(2.0)))
    elif act == "gelu_tanh":
        y = 0.5 * y * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y**3)))
    elif act == "relu":
        y = np.maximum(y, 0.0)
    return y if residual is None else y + residual


FORMATS = ["dense", "csr", pytest.param("vnni", marks=pytest.mark.skipif(
    not host_has_vnni(), reason="needs AVX512-VNNI"))]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("act", [None, "gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("smooth", [False, True])
def test_int8_linear_fused_epilogue(fmt, act, smooth):
    rng = np.random.default_rng(11)
    N, K, B, S = 40, 72, 3, 9
    w = rng.standard_normal((N, K)).astype(np.float32) * (rng.random((N, K)) > 0.6)
    w[5] = 0.0  # an empty row
    b = rng.standard_normal(N).astype(np.float32)
    sm = rng.uniform(0.3, 3, K).astype(np.float32) if smooth else None
    lin = Int8Linear.from_float(w, b, fmt, sm)
    assert lin.format == f"int8-{fmt}"
    x = rng.standard_normal((B, K, S)).astype(np.float32)
    res = rng.standard_normal((B, N, S)).astype(np.float32)
    for r in (None, res):
        out = np.empty((B, N, S), np.float32)
        y = lin(x, activation=act, residual=r, out=out)
        assert y is out and y.dtype == np.float32 and y.shape == (B, N, S)
        want = reference_linear(lin, x, act, r)
        np.testing.assert_allclose(y, want, atol=1e-5 * np.abs(want).max(), rtol=0)


def test_quantize_weight_keeps_zeros_and_range():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((30, 50)).astype(np.float32) * (rng.random((30, 50)) > 0.9)
    w[3] = 0.0
    codes, scale = quantize_weight(w)
    assert codes.dtype == np.int8 and scale.dtype == np.float32 and scale[3] == 0
    assert not codes[w == 0].any()
    assert np.abs(codes).max(axis=1)[scale > 0].min() == 127
    np.testing.assert_allclose(codes * scale[:, None], w, atol=scale.max() / 2 + 1e-7)
    for fmt in ["dense", "csr"] + (["vnni"] if host_has_vnni() else []):
        lin = Int8Linear(codes, scale, np.zeros(30, np.float32), fmt)
        assert lin.format == f"int8-{fmt}" and lin.nnz == np.count_nonzero(codes)
        np.testing.assert_array_equal(lin.to_codes(), codes)


def test_bad_arguments_are_typed_errors():
    codes = np.ones((4, 6), np.int8)
    with pytest.raises(CheckpointError, match="int8"):
        Int8Linear(codes.astype(np.int16), np.ones(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(CheckpointError, match="-128"):
        Int8Linear(np.full((4, 6), -128, np.int8), np.ones(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(CheckpointError, match="scale"):
        Int8Linear(codes, np.full(4, np.nan, np.float32), np.zeros(4, np.float32))
    with pytest.raises(CheckpointError, match="smoothing"):
        Int8Linear(codes, np.ones(4, np.float32), np.zeros(4, np.float32), smooth=np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="format"):
        Int8Linear(codes, np.ones(4, np.float32), np.zeros(4, np.float32), "bsr")
    if not host_has_vnni():
        with pytest.raises(ValueError, match="AVX512-VNNI"):
            Int8Linear(codes, np.ones(4, np.float32), np.zeros(4, np.float32), "vnni")
    lin = Int8Linear(codes, np.ones(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(InputError, match="expects x"):
        lin(np.zeros((1, 5, 2), np.float32))
    with pytest.raises(InputError, match="residual"):
        lin(np.zeros((1, 6, 2), np.float32), residual=np.zeros((1, 4, 3), np.float32))


def _host_has_vnni() -> bool:
    try:
        import llvmlite.binding as ll

        f = ll.get_host_cpu_features()
        return bool(f.get("avx512vnni") or f.get("avxvnni"))
    except Exception:
        return False


@pytest.mark.skipif(not host_has_vnni(), reason="needs a CPU with AVX512-VNNI")
def test_vnni_kernel_compiles_to_vpdpbusd():
    # The vnni path must run vpdpbusd on zmm registers: a fresh compile with the project's
    # settings (a kernel loaded from Numba's cache has no asm to inspect).
    import numba

    from sparsebert.kernels import int8_vnni as kv
    from sparsebert.kernels.jit import FASTMATH

    kern = numba.njit(fastmath=FASTMATH, nogil=True)(kv._row_tile.py_func)
    xp = np.full((1, 2, kv.TILE, 4), 128, np.uint8)
    wq, g, ptr, cq, _ = kv.pack_weight(np.ones((1, 8), np.int8))
    kern(xp, 0, 0, 0, cq, wq, g, 0, 2, np.zeros(kv.TILE, np.int32), 0)
    asm = "\n".join(kern.inspect_asm().values())
    assert re.search(r"vpdpbusd\s+[^\n]*%zmm", asm), "vpdpbusd on zmm missing from the vnni tile"


@pytest.mark.skipif(sys.platform != "linux" or not _host_has_vnni(),
                    reason="needs a CPU with AVX512-VNNI or AVX-VNNI to inspect VNNI code")
def test_integer_dot_compiles_to_simd_multiply_add():
    # The K loop of the dense kernels must stay a SIMD integer multiply-add (VNNI vpdpwssd /
    # vpdpbusd, or vpmaddwd), never a scalar or widening vpmulld loop: a silent fall back costs 2-4x.
    # A fresh compile with the project's settings: a kernel loaded from Numba's cache has no asm.

    import numba
    from sparsebert.kernels.jit import FASTMATH

    kern = numba.njit(fastmath=FASTMATH, nogil=True, parallel=True)(k8.gemm_int8_acc.py_func)
    kern(np.ones((4, 64), np.int8), np.ones((1, 3, 64), np.int8), np.empty((1, 4, 3), np.int32))
    asm = "\n".join(kern.inspect_asm().values())
    found = set(re.findall(r"\b(vpdpwssd|vpdpbusd|vpmaddwd)\b", asm))
    assert found, "no SIMD integer dot-product instruction in gemm_int8_acc"
