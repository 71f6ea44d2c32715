"""Conformance suite for the sparse matmul kernels (kernels/spmm.py) against a NumPy reference.

Every kernel runs the same cases: empty rows, all-zero matrix, 1x1-sized layers, S = 1, S not a
multiple of the token tile, short sequences, B = 1 and B > 1, each epilogue, and random sparsity
0 / 50 / 90 / 99 %. The reference is computed in float64 with math.erf; the tolerance is
1e-5 x the output scale (float32 sums in a different order).
"""

import math
import os

import numpy as np
import pytest

from sparsebert.kernels import gen_spmm, numeric, spmm

ACTS = {0: None, 1: "gelu", 2: "gelu_tanh", 3: "relu"}
_erf = np.vectorize(math.erf)


def reference(w, x, bias, act, residual):
    y = np.matmul(w.astype(np.float64), x.astype(np.float64)) + bias[:, None]
    if act == 1:
        y = 0.5 * y * (1.0 + _erf(y / math.sqrt(2.0)))
    elif act == 2:
        y = 0.5 * y * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (y + 0.044715 * y**3)))
    elif act == 3:
        y = np.maximum(y, 0.0)
    if residual is not None:
        y = y + residual
    return y


def to_csr(w):
    rows, cols = np.nonzero(w)
    indptr = np.zeros(w.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    return w[rows, cols].astype(np.float32), cols.astype(np.int32), indptr


def to_bsr(w, R, C):
    N, K = w.shape
    blocks = w.reshape(N // R, R, K // C, C).transpose(0, 2, 1, 3)
    brow, bcol = np.nonzero(blocks.any(axis=(2, 3)))
    indptr = np.zeros(N // R + 1, dtype=np.int64)
    np.cumsum(np.bincount(brow, minlength=N // R), out=indptr[1:])
    return np.ascontiguousarray(blocks[brow, bcol], dtype=np.float32), bcol.astype(np.int32), indptr


def random_weight(rng, N, K, sparsity, block=(1, 1)):
    R, C = block
    w = rng.standard_normal((N, K)).astype(np.float32)
    keep = rng.random((N // R, K // C)) >= sparsity
    return w * np.repeat(np.repeat(keep, R, 0), C, 1)


def run(fmt, w, x, bias, act, residual, chunk=None):
    """The kernel on w; with chunk, entries regrouped into K-chunks of that many block columns."""
    data, indices, indptr = to_csr(w) if fmt == "csr" else to_bsr(w, *fmt)
    if chunk is not None:
        C = 1 if fmt == "csr" else fmt[1]
        order, indices, indptr = spmm.chunk_entries(indptr, indices, w.shape[1] // C, chunk)
        data = data[order]
    kernel = spmm.spmm_csr if fmt == "csr" else spmm.spmm_bsr
    return kernel(data, indices, indptr, x, bias, act=act, residual=residual, chunk_cols=chunk)


def check(fmt, w, B, S, act=0, with_residual=False, seed=0, chunk=None):
    rng = np.random.default_rng(seed)
    N, K = w.shape
    x = rng.standard_normal((B, K, S)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    residual = rng.standard_normal((B, N, S)).astype(np.float32) if with_residual else None
    y = run(fmt, w, x, bias, act, residual, chunk)
    assert y.shape == (B, N, S) and y.dtype == np.float32
    ref = reference(w, x, bias, act, residual)
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(y - ref).max() <= 1e-5 * scale


FORMATS = ["csr"] + list(spmm.BLOCK_SHAPES)
IDS = ["csr"] + [f"bsr{r}x{c}" for r, c in spmm.BLOCK_SHAPES]


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("B,S", [(1, 128), (3, 77), (2, 1), (4, 5), (2, 30), (1, 200)])
def test_random_sparsity(fmt, sparsity, B, S):
    block = (1, 1) if fmt == "csr" else fmt
    w = random_weight(np.random.default_rng(1), 48, 40, sparsity, block)
    check(fmt, w, B, S)


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("with_residual", [False, True])
def test_epilogues(fmt, act, with_residual):
    block = (1, 1) if fmt == "csr" else fmt
    w = random_weight(np.random.default_rng(2), 32, 24, 0.5, block)
    # (5, 30) and (7, 13): several short-sequence panels, the last one partly filled.
    for B, S in [(2, 70), (1, 3), (5, 30), (7, 13)]:
        check(fmt, w, B, S, act, with_residual)


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
@pytest.mark.parametrize("B,S", [(1, 128), (3, 77), (2, 1), (5, 13)])
def test_k_chunked_entries(fmt, chunk, B, S):
    # K-chunks of 1, 3 and 7 block columns (3 and 7 do not divide K = 40 / C), and one chunk
    # wider than K; full tiles, tails and packed short sequences; an empty row in every chunk.
    block = (1, 1) if fmt == "csr" else fmt
    w = random_weight(np.random.default_rng(7), 48, 40, 0.6, block)
    w[block[0] : 2 * block[0]] = 0
    check(fmt, w, B, S, act=1, with_residual=True, chunk=chunk)


def test_chunk_entries_groups_by_chunk_then_row():
    indptr = np.array([0, 3, 3, 5])
    indices = np.array([4, 0, 2, 5, 1])  # row 0: cols 4, 0, 2; row 2: cols 5, 1
    order, local, ptr = spmm.chunk_entries(indptr, indices, 6, 3)
    # chunk 0 (cols 0-2): row 0 entries 1, 2, then row 2 entry 4; chunk 1: row 0 entry 0, row 2 entry 3
    assert order.tolist() == [1, 2, 4, 0, 3]
    assert local.tolist() == [0, 2, 1, 1, 2]
    assert ptr.tolist() == [[0, 2, 2, 3], [3, 4, 4, 5]] and ptr.dtype == np.int32


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_empty_rows_and_all_zero(fmt):
    block = (1, 1) if fmt == "csr" else fmt
    R, C = block
    w = random_weight(np.random.default_rng(3), 64, 16, 0.5, block)
    w[: 8 * R] = 0  # leading empty rows
    w[-R:] = 0  # trailing empty row (block)
    w[24:40] = 0
    check(fmt, w, 2, 66, act=1, with_residual=True)
    check(fmt, np.zeros((16, 8), dtype=np.float32), 2, 40, act=0, with_residual=True)


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
def test_smallest_layer(fmt):
    R, C = (1, 1) if fmt == "csr" else fmt  # one block: a 1x1 layer for CSR
    w = np.full((R, C), 0.5, dtype=np.float32)
    for S in (1, 8, 9, 64):
        check(fmt, w, 1, S, act=3)


def test_unsorted_and_duplicate_csr_columns_are_summed():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 19)).astype(np.float32)
    data = np.array([1.0, 2.0, -1.5, 0.5], dtype=np.float32)
    indices = np.array([5, 0, 5, 2], dtype=np.int32)
    indptr = np.array([0, 3, 3, 4], dtype=np.int64)
    w = np.zeros((3, 6), dtype=np.float32)
    w[0, 5] = -0.5
    w[0, 0] = 2.0
    w[2, 2] = 0.5
    y = spmm.spmm_csr(data, indices, indptr, x, np.zeros(3, np.float32))
    np.testing.assert_allclose(y, reference(w, x, np.zeros(3), 0, None), atol=1e-5)


def test_erf_f32_accuracy():
    xs = np.concatenate([np.linspace(-6, 6, 200001), [0.0, -0.0, 1e-30, 50.0, -50.0]])
    got = np.array([numeric.erf_f32(np.float32(v)) for v in xs[::7]], dtype=np.float64)
    want = _erf(xs[::7].astype(np.float32).astype(np.float64))
    assert np.abs(got - want).max() <= 1e-6


def test_tanh_f32_accuracy():
    xs = np.concatenate([np.linspace(-10, 10, 200001), [0.0, 1e-30, 50.0, -50.0]])[::7]
    got = np.array([numeric.tanh_f32(np.float32(v)) for v in xs], dtype=np.float64)
    assert np.abs(got - np.tanh(xs.astype(np.float32).astype(np.float64))).max() <= 1e-6


def test_epilogue_gelu_matches_exact_gelu_in_bulk():
    # The vectorised loop inside the kernel, not just the scalar function.
    x = np.linspace(-8, 8, 4001, dtype=np.float32).reshape(1, 1, -1)
    eye = np.ones((1, 1), dtype=np.float32)
    y = spmm.spmm_csr(*to_csr(eye), x, np.zeros(1, np.float32), act=1)
    ref = reference(eye, x, np.zeros(1), 1, None)
    assert np.abs(y - ref).max() <= 1e-6 * 8


def test_generated_file_is_up_to_date():
    path = gen_spmm.OUTPUT
    with open(path) as f:
        committed = f.read()
    assert committed == gen_spmm.generate(), (
        f"{os.path.basename(path)} is stale: run `python kernels/gen_spmm.py`"
    )


@pytest.mark.skipif(
    bool(__import__("numba").config.BOUNDSCHECK),
    reason="NUMBA_BOUNDSCHECK=1 forces per-access checks that keep loops scalar; CI's bounds-checked "
           "pass reruns this file, and the normal pass (same CI run) checks the vectorisation",
)
def test_tiles_are_vectorised():
    # SLP vectorisation must really be on (kernels/jit.py): the CSR tile's inner loop should
    # be packed single-precision FMAs on ymm/zmm registers, not scalar ones.
    from sparsebert.kernels import _spmm_generated as gen

    # A cached dispatcher has no assembly, so compile a private uncached copy with the same options.
    import numba

    from sparsebert.kernels import jit

    tile = numba.njit(fastmath=jit.FASTMATH, nogil=True)(gen._tile_csr_w64.py_func)
    f32, u64 = numba.float32[::1], numba.uint64
    sig = (f32, u64, u64, f32, u64, u64, f32, numba.int32[::1], u64, u64)
    tile.compile(sig)
    asm = "\n".join(tile.inspect_asm().values())
    assert "vfmadd231ps\t" in asm and ("%ymm" in asm or "%zmm" in asm)


@pytest.mark.parametrize("N,K", [(37, 13), (1, 300), (300, 1)])
def test_csr_sizes_not_multiple_of_any_block(N, K):
    # BSR needs N % R == 0 and K % C == 0 (ragged weights are rejected by sparsebert.linear,
    # see test_linear.py); CSR takes any shape.
    w = random_weight(np.random.default_rng(6), N, K, 0.7)
    for B, S in [(2, 67), (1, 1)]:
        check("csr", w, B, S, act=1, with_residual=True)


# Real layer shapes at batch 32 x 128 tokens: the path BERT-base and MiniLM layers take, with
# >= 256 rows per task, so X tiles are packed into L1 panels per K-chunk (`spmm.packs_panels`),
# several K-chunks per row (`spmm.k_chunk_columns`, capped), full 64/32/16-token
# tiles and no tail. Small shapes above never reach this path: with a packed panel that drops the
# last row of each K-chunk injected, the rest of this file passed (260 tests) and all 20 cases here
# failed. One deliberate bug in each other kernel path (X read in place, tail tiles, packed short
# sequences, the micro-kernel's entry loop, BSR value layout, the GELU epilogue) fails this file too.
# Under NUMBA_BOUNDSCHECK=1 (CI's second pass) the loops run scalar and checked: the MiniLM shapes
# there reach the same code paths; the BERT-base shapes run in the normal pass only.
_BASE_ONLY = pytest.mark.skipif(bool(__import__("numba").config.BOUNDSCHECK),
                                reason="BERT-base shapes: normal pass only (same paths as MiniLM's)")
REAL_SHAPES = [(1536, 384), (384, 1536), pytest.param(3072, 768, marks=_BASE_ONLY),
               pytest.param(768, 3072, marks=_BASE_ONLY)]


@pytest.mark.parametrize("fmt", FORMATS, ids=IDS)
@pytest.mark.parametrize("N,K", REAL_SHAPES, ids=["1536x384", "384x1536", "3072x768", "768x3072"])
def test_real_layer_shapes_packed_panels(fmt, N, K):
    import numba

    block = (1, 1) if fmt == "csr" else fmt
    B, S = 32, 128
    rng = np.random.default_rng(N + K)
    w = random_weight(rng, N, K, 0.9, block)
    w[block[0] : 2 * block[0]] = 0  # an empty (block) row
    # The production chunk width, capped so every case spans >= 3 K-chunks, the last one partial.
    chunk = min(spmm.k_chunk_columns(block, 0.1) // block[1], K // block[1] // 3 + 5)
    x = rng.standard_normal((B, K, S)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    residual = rng.standard_normal((B, N, S)).astype(np.float32)
    act = 1 if N > K else 0  # FFN-in shapes with GELU, the others plain; both with a residual
    threads = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        assert spmm.packs_panels(B, S, N, block), "this case must reach the packed-panel path"
        assert K // block[1] > chunk, "this case must span several K-chunks"
        y = run(fmt, w, x, bias, act, residual, chunk)
    finally:
        numba.set_num_threads(threads)
    assert y.shape == (B, N, S) and y.dtype == np.float32
    # float64 reference, tokens flattened into one matmul (the batch loop costs 30x more)
    xt = x.transpose(1, 0, 2).reshape(K, B * S).astype(np.float64)
    ref = (w.astype(np.float64) @ xt).reshape(N, B, S).transpose(1, 0, 2) + bias[:, None]
    if act == 1:
        ref = 0.5 * ref * (1.0 + _erf_fast(ref / math.sqrt(2.0)))
    ref += residual
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(y - ref).max() <= 1e-5 * scale


def _erf_fast(v):
    # math.erf over 12M values takes ~10 s; scipy's is exact to float64 rounding too.
    from scipy.special import erf

    return erf(v)


def test_zmm_tiles_are_512_bit_fmas():
    # Where the target CPU has AVX-512, CSR and 4x1 run spmm_zmm's tiles: packed FMAs on zmm
    # registers (the generated tiles' SLP code is ymm on Intel server cores).
    import numba

    from sparsebert.kernels import jit, spmm_zmm

    if not spmm_zmm.ZMM:
        pytest.skip("the target CPU has no AVX-512; test_generated_tiles_on_a_cpu_without_avx512 "
                    "covers the path it runs")
    assert spmm.tile_width((1, 1)) == 64 and spmm.tile_width((4, 1)) == 64
    f32, u64 = numba.float32[::1], numba.uint64
    sig = (f32, u64, u64, f32, u64, u64, f32, numba.uint16[::1], u64, u64)
    for tile in (spmm_zmm.tile_csr_z64, spmm_zmm.tile_bsr4x1_z64):
        copy = numba.njit(fastmath=jit.FASTMATH, nogil=True)(tile.py_func)
        copy.compile(sig)
        asm = "\n".join(copy.inspect_asm().values())
        assert "vfmadd231ps\t" in asm and "%zmm" in asm


@pytest.mark.skipif(bool(__import__("numba").config.BOUNDSCHECK), reason="normal pass only")
def test_generated_tiles_on_a_cpu_without_avx512():
    # On an AVX-512 host the main suite runs the zmm drivers for CSR and 4x1; this reruns their
    # conformance cases compiled for Haswell (AVX2, Numba caches per target CPU), the code an AVX2
    # machine runs: the generated tiles, 64 and 32 tokens wide.
    from avx2_rerun import rerun_on_haswell

    rerun_on_haswell(__file__, "(csr or 4x1) and (real_layer or random_sparsity or epilogues or k_chunked)")
