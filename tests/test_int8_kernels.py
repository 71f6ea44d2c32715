"""Every VNNI / AMX int8 kernel path, bit for bit against a NumPy integer reference, at real shapes.

The production kernels are called as production calls them (fused dequantize + bias epilogue),
with unit scales and zero bias: each output is then float32(exact int32 sum), and every case keeps
|sum| < 2^24 or a multiple of 2^(bits past 24), so any wrong, dropped or doubled product shows as
an inequality. Shapes cover several tokens tiles (S > 64, ragged), several K-chunks, several rows
per task, ragged N and K (not multiples of 4, 16, 32 or 64), S = 1 and B > 1.

On a CPU that has AVX512-VNNI (or AMX-INT8) the tests must run: `test_host_detection_matches_cpuinfo`
fails if sparsebert's detection would make them skip there.
"""

import sys

import numpy as np
import pytest

from sparsebert.kernels import int8 as k8
from sparsebert.quant import Int8Linear
from sparsebert.quant.linear import host_has_vnni
from test_int8 import reference_linear  # the float64 model of an Int8Linear call

NO_RES = np.zeros((1, 1, 1), np.float32)
NO_CODES = np.zeros((1, 1, 1), np.int8)
VNNI = host_has_vnni()
needs_vnni = pytest.mark.skipif(not VNNI, reason="needs AVX512-VNNI (not in this CPU's flags)")


def _cpu_flags() -> set:
    if sys.platform != "linux":
        return set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _amx():
    from sparsebert.kernels import int8_gemm

    return int8_gemm.amx_available()


def test_host_detection_matches_cpuinfo():
    # A detection bug must not turn the kernel tests below into silent skips.
    flags = _cpu_flags()
    if "avx512_vnni" in flags:
        assert VNNI, "/proc/cpuinfo lists avx512_vnni but host_has_vnni() is False"
    if {"amx_int8", "amx_tile"} <= flags:
        assert _amx(), "/proc/cpuinfo lists amx_int8 but the AMX kernels are unavailable"


# (N, K, B, S, quad sparsity): real BERT-base shapes (several K-chunks and tasks, S > 128 ragged),
# ragged everything, 1 x 1, S = 1, an all-zero weight, empty rows.
CASES = [(3072, 768, 1, 130, 0.0), (768, 3072, 2, 77, 0.8), (2304, 768, 1, 128, 0.9),
         (37, 130, 3, 65, 0.5), (101, 1000, 2, 129, 0.0), (1, 1, 1, 1, 0.0), (19, 70, 2, 1, 0.3),
         (33, 200, 1, 40, 1.0), (64, 384, 2, 200, 0.97)]


def _case(N, K, B, S, sparsity, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(-127, 128, (N, K)).astype(np.int8)
    KQ = -(-K // 4)
    keep = np.repeat(rng.random((N, KQ)) >= sparsity, 4, axis=1)[:, :K]
    codes = (codes * keep).astype(np.int8)
    x = rng.standard_normal((B, K, S)).astype(np.float32)
    return codes, x


def _packed(x, K, S):
    from sparsebert.kernels import int8_gemm as kg
    from sparsebert.kernels import int8_vnni as kv

    B = x.shape[0]
    xp = np.empty((B, kg.packed_quads(K), -(-S // kg.TOKENS) * kg.TOKENS, 4), np.uint8)
    xs = np.empty((B, S), np.float32)
    kv.quantize_pack(x, np.ones(K, np.float32), xp, xs)
    q = np.empty((B, K, S), np.int8)
    k8.quantize_tokens(x, np.ones(K, np.float32), q, NO_CODES, np.empty((B, S), np.float32), False)
    return xp, q


def _reference(codes, q):
    return np.stack([codes.astype(np.int64) @ q[b].astype(np.int64) for b in range(q.shape[0])])


def _run(kind, codes, xp, S, B):
    from sparsebert.kernels import int8_bsr as kb
    from sparsebert.kernels import int8_gemm as kg
    from sparsebert.kernels import int8_vnni as kv

    N = codes.shape[0]
    one, zero = np.ones(N, np.float32), np.zeros(N, np.float32)
    xs = np.ones((B, S), np.float32)
    rowsum = codes.astype(np.int32).sum(axis=1).astype(np.int32)
    y = np.full((B, N, S), np.nan, np.float32)
    tail = (xs, zero, 0, NO_RES, False, y)
    if kind == "gemm":
        kg.gemm_int8_vnni(kg.pack_weight_vnni(codes), rowsum, xp, S, one, *tail)
    elif kind == "amx":
        kg.gemm_int8_amx(kg.pack_weight_amx(codes), rowsum, xp, S, one, *tail, kg.TILE_CONFIG)
    elif kind.startswith("bsr1x4"):
        chunk = 5 if kind.endswith("small-chunks") else kb.CHUNK_QUADS
        kb.spmm_int8_bsr1x4(*kb.pack_bsr1x4(codes, chunk), xp, S, one, *tail)
    elif kind.startswith("bsr4x4"):
        chunk = 5 if kind.endswith("small-chunks") else kb.CHUNK_QUADS
        kb.spmm_int8_bsr4x4(*kb.pack_bsr4x4(codes, chunk), xp, S, one, *tail)
    elif kind == "gather":  # its per-feature layout: the quads' bytes, one row per feature
        from sparsebert.kernels import int8_gather as kq

        K = codes.shape[1]
        xr = np.ascontiguousarray(xp.transpose(0, 1, 3, 2).reshape(B, -1, xp.shape[2])[:, :K])
        kq.spmm_int8_gather(*kq.pack_gather(codes), xr, S, one, *tail)
    elif kind.startswith("vnni"):  # the fused one-row quad kernel production ran before this
        chunk = 3 if kind.endswith("small-chunks") else kv.CHUNK_QUADS
        # its packed layout: KQ = ceil(K / 4) quads
        xq = np.ascontiguousarray(xp[:, : -(-codes.shape[1] // 4)])
        kv.spmm_int8_vnni(*kv.pack_weight(codes, chunk), xq, S, one, *tail[:-1], 5, y)
    return y


KINDS = ["gemm", "amx", "bsr1x4", "bsr1x4-small-chunks", "bsr4x4", "bsr4x4-small-chunks", "vnni",
         "vnni-small-chunks", "gather"]


@needs_vnni
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("N,K,B,S,sparsity", CASES)
def test_kernel_sums_bit_exact(kind, N, K, B, S, sparsity):
    if kind == "amx" and not _amx():
        pytest.skip("needs AMX-INT8 (not in this CPU's flags)")
    codes, x = _case(N, K, B, S, sparsity, N * 7 + K)
    xp, q = _packed(x, K, S)
    want = _reference(codes, q)
    assert np.abs(want).max(initial=0) < 1 << 24
    got = _run(kind, codes, xp, S, B)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want.astype(np.float32))


@needs_vnni
@pytest.mark.parametrize("kind", ["gemm", "amx", "bsr1x4", "bsr4x4", "vnni", "gather"])
def test_extreme_sums_do_not_saturate(kind):
    # K = 3072 products of +-127 x +-127: |sum| = 49.5 M (a multiple of 1024, exact in float32),
    # past int16 and float32's integer range: vpdpbusd must add in int32, not saturate.
    if kind == "amx" and not _amx():
        pytest.skip("needs AMX-INT8")
    N, K, B, S = 8, 3072, 1, 70
    codes = np.full((N, K), 127, np.int8)
    codes[1::2] = -127
    x = np.ones((B, K, S), np.float32)
    x[:, :, 1::3] = -1.0
    xp, q = _packed(x, K, S)
    got = _run(kind, codes, xp, S, B)
    np.testing.assert_array_equal(got, _reference(codes, q).astype(np.float32))


@needs_vnni
@pytest.mark.parametrize("fmt", ["gemm", "amx", "bsr1x4", "gather"])
def test_int8_linear_kinds_fused_epilogue(fmt):
    if fmt == "amx" and not _amx():
        pytest.skip("needs AMX-INT8")
    rng = np.random.default_rng(4)
    N, K, B, S = 70, 136, 2, 131
    keep = np.repeat(rng.random((N, K // 4)) > (0.8 if fmt == "bsr1x4" else 0.0), 4, axis=1)
    w = rng.standard_normal((N, K)).astype(np.float32) * keep
    w[3] = 0.0
    b = rng.standard_normal(N).astype(np.float32)
    lin = Int8Linear.from_float(w, b, fmt, rng.uniform(0.5, 2, K).astype(np.float32))
    assert lin.format == f"int8-{fmt}" and lin.describe()["format"] == f"int8-{fmt}"
    codes = lin.to_codes()
    np.testing.assert_array_equal(Int8Linear(codes, lin.scale, b, "csr").to_codes(), codes)
    x = rng.standard_normal((B, K, S)).astype(np.float32)
    res = rng.standard_normal((B, N, S)).astype(np.float32)
    for act, r in ((None, None), ("gelu", res)):
        y = lin(x, activation=act, residual=r)
        want = reference_linear(lin, x, act, r)
        np.testing.assert_allclose(y, want, atol=1e-5 * np.abs(want).max(), rtol=0)


@needs_vnni
def test_auto_picks_a_vnni_kind_by_quad_density():
    rng = np.random.default_rng(6)
    N, K = 64, 256
    w = rng.standard_normal((N, K)).astype(np.float32)
    dense = Int8Linear.from_float(w, np.zeros(N, np.float32))
    assert dense.format == ("int8-amx" if _amx() else "int8-gemm")
    keep = np.repeat(rng.random((N, K // 4)) > 0.9, 4, axis=1)
    sparse = Int8Linear.from_float(w * keep, np.zeros(N, np.float32))
    assert sparse.format == "int8-bsr1x4"
    assert sparse.describe()["flops_per_token"] == 2 * 4 * int(keep[:, ::4].sum())


@needs_vnni
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 0.999])
def test_gather_layout_rows_and_packing(sparsity):
    # quantize_rows gives the quads' bytes one row per feature (the same codes as quantize_pack,
    # which _packed checks against NumPy); pack_gather keeps every nonzero once, in column order,
    # and its padding codes are 0 at columns below K; the unstructured unit test of its sums.
    from sparsebert.kernels import int8_gather as kq

    rng = np.random.default_rng(11)
    N, K, B, S = 37, 203, 2, 70
    codes = rng.integers(-127, 128, (N, K)).astype(np.int8)
    codes[rng.random((N, K)) < sparsity] = 0
    codes[5] = 0
    codes[6, 4:] = 0
    x = rng.standard_normal((B, K, S)).astype(np.float32)
    xp, q = _packed(x, K, S)
    xr = np.empty((B, K, xp.shape[2]), np.uint8)
    xs = np.empty((B, S), np.float32)
    kq.quantize_rows(x, np.ones(K, np.float32), xr, xs)
    np.testing.assert_array_equal(xr[:, :, :S].astype(np.int16) - 128, q)
    assert (xr[:, :, S:] == 128).all()
    idx, wq, ptr, rowsum = kq.pack_gather(codes)
    assert ptr[0] == 0 and (np.diff(ptr) == -(-np.count_nonzero(codes, axis=1) // 4)).all()
    assert idx.size == 4 * wq.size == 4 * ptr[-1] and (idx < K).all()
    lin = Int8Linear(codes, np.ones(N, np.float32), np.zeros(N, np.float32), "gather")
    np.testing.assert_array_equal(lin.to_codes(), codes)
    np.testing.assert_array_equal(_run("gather", codes, xp, S, B), _reference(codes, q).astype(np.float32))
