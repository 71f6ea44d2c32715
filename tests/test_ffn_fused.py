"""Conformance of the fused FFN kernel (kernels/ffn_fused.py via sparsebert.ffn) against NumPy.

Reference: Y = W2 @ act(W1 @ X + b1) + b2 (+ residual) in float64, at the real layer sizes
(MiniLM 384 -> 1536 -> 384, BERT-base 768 -> 3072 -> 768), sequence lengths that are not a
multiple of the 64-token tile, T = 1, weights with empty rows and all-zero weights.
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from scipy.special import erf

from sparsebert.errors import InputError
from sparsebert.ffn import fuse_ffn, worth_fusing
from sparsebert.kernels import ffn_fused
from sparsebert.dispatch import make_linear

KERNELS = Path(ffn_fused.__file__).resolve().parent


def gelu(v):
    return 0.5 * v * (1.0 + erf(v / np.sqrt(2.0)))


def reference(w1, b1, w2, b2, x, act, residual):
    f = np.einsum("ik,bks->bis", w1.astype(np.float64), x.astype(np.float64)) + b1[:, None]
    f = {None: f, "gelu": gelu(f), "relu": np.maximum(f, 0.0)}[act]
    y = np.einsum("hi,bis->bhs", w2.astype(np.float64), f) + b2[:, None]
    return y if residual is None else y + residual


def pruned(rng, shape, sparsity, empty_rows=0, kind="csr"):
    # kind "bsr4x1": whole aligned 4x1 blocks (4 output rows, one input column) zeroed
    w = rng.standard_normal(shape).astype(np.float32) / np.sqrt(shape[1])
    if kind == "bsr4x1":
        w[np.repeat(rng.random((shape[0] // 4, shape[1])) < sparsity, 4, axis=0)] = 0
    else:
        w[rng.random(shape) < sparsity] = 0
    w[rng.choice(shape[0], empty_rows, replace=False)] = 0
    return w


@pytest.fixture(autouse=True)
def always_fuse(monkeypatch):
    # The conformance cases must reach the kernel, whatever worth_fusing would choose.
    monkeypatch.setattr("sparsebert.ffn.worth_fusing", lambda B, S: True)


def run(H, I, B, T, sparsity, act="gelu", with_residual=True, empty_rows=0, seed=0, kinds=("csr", "csr")):
    rng = np.random.default_rng(seed)
    w1 = pruned(rng, (I, H), sparsity, empty_rows, kinds[0])
    w2 = pruned(rng, (H, I), sparsity, empty_rows, kinds[1])
    b1 = rng.standard_normal(I).astype(np.float32) * 0.1
    b2 = rng.standard_normal(H).astype(np.float32) * 0.1
    x = rng.standard_normal((B, H, T)).astype(np.float32)
    residual = rng.standard_normal((B, H, T)).astype(np.float32) if with_residual else None
    ffn = fuse_ffn(make_linear(w1, b1, kinds[0]), make_linear(w2, b2, kinds[1]), act)
    assert ffn is not None
    y = ffn(x, residual=residual)
    assert y.shape == (B, H, T) and y.dtype == np.float32
    want = reference(w1, b1, w2, b2, x, act, residual)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    return y


@pytest.mark.parametrize("H, I", [(384, 1536), (768, 3072)])
@pytest.mark.parametrize("sparsity", [0.8, 0.9])
@pytest.mark.parametrize("B, T", [(2, 100), (1, 1), (3, 64), (1, 130)])
def test_real_sizes(H, I, sparsity, B, T):
    run(H, I, B, T, sparsity)


@pytest.mark.parametrize("kinds", [("bsr4x1", "bsr4x1"), ("csr", "bsr4x1"), ("bsr4x1", "csr")])
@pytest.mark.parametrize("H, I, B, T", [(384, 1536, 2, 100), (768, 3072, 1, 130), (384, 1536, 1, 1)])
def test_real_sizes_4x1_blocks(kinds, H, I, B, T):
    run(H, I, B, T, 0.9, kinds=kinds)


def test_4x1_empty_block_rows():
    run(384, 1536, 2, 77, 0.9, empty_rows=40, kinds=("bsr4x1", "bsr4x1"))


@pytest.mark.parametrize("act", [None, "gelu", "relu"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_epilogues(act, with_residual):
    run(384, 1536, 2, 70, 0.85, act, with_residual)


def test_empty_rows_and_all_zero_weights():
    run(384, 1536, 2, 77, 0.9, empty_rows=200)
    y = run(384, 1536, 2, 77, 1.0, with_residual=False)  # every row empty: Y = b2
    assert np.ptp(y, axis=2).max() == 0


def test_residual_may_be_the_input():
    rng = np.random.default_rng(1)
    w1, w2 = pruned(rng, (1536, 384), 0.9), pruned(rng, (384, 1536), 0.9)
    b1, b2 = np.zeros(1536, np.float32), np.zeros(384, np.float32)
    x = rng.standard_normal((2, 384, 90)).astype(np.float32)
    ffn = fuse_ffn(make_linear(w1, b1, "csr"), make_linear(w2, b2, "csr"), "gelu")
    np.testing.assert_allclose(ffn(x, residual=x), reference(w1, b1, w2, b2, x, "gelu", x),
                               rtol=1e-4, atol=1e-4)


def test_equals_the_two_call_path():
    rng = np.random.default_rng(2)
    w1, w2 = pruned(rng, (1536, 384), 0.9), pruned(rng, (384, 1536), 0.9)
    b1 = rng.standard_normal(1536).astype(np.float32)
    b2 = rng.standard_normal(384).astype(np.float32)
    ffn_in, ffn_out = make_linear(w1, b1, "csr"), make_linear(w2, b2, "csr")
    x = rng.standard_normal((3, 384, 128)).astype(np.float32)
    two_calls = ffn_out(ffn_in(x, activation="gelu"), residual=x)
    np.testing.assert_allclose(fuse_ffn(ffn_in, ffn_out, "gelu")(x, residual=x), two_calls,
                               rtol=1e-5, atol=1e-5)


def test_only_csr_pairs_fuse_and_bad_inputs_raise():
    rng = np.random.default_rng(3)
    w1, w2 = pruned(rng, (64, 32), 0.5), pruned(rng, (32, 64), 0.5)
    b1, b2 = np.zeros(64, np.float32), np.zeros(32, np.float32)
    assert fuse_ffn(make_linear(w1, b1, "dense"), make_linear(w2, b2, "csr"), "gelu") is None
    ffn = fuse_ffn(make_linear(w1, b1, "csr"), make_linear(w2, b2, "csr"), "gelu")
    with pytest.raises(InputError, match="shape"):
        ffn(np.zeros((1, 31, 4), np.float32))
    x = np.zeros((1, 32, 4), np.float32)
    with pytest.raises(InputError, match="overlap"):
        ffn(x, out=x)


def test_stamp_matches_the_helpers_it_calls():
    # The kernel's Numba cache entry does not notice edits to the files of the helpers it calls:
    # bump the stamp in kernels/ffn_fused.py (which re-compiles it) whenever they change.
    stamp = ", ".join(f"{name} {hashlib.sha256((KERNELS / name).read_bytes()).hexdigest()[:16]}"
                      for name in ("_spmm_generated.py", "spmm_zmm.py", "ops.py", "attention.py",
                                   "spmm_epilogue.py", "numeric.py"))
    assert ffn_fused.BUILT_AGAINST == stamp


def test_worth_fusing_leaves_short_and_tiny_batches_to_two_calls(monkeypatch):
    monkeypatch.setattr("numba.get_num_threads", lambda: 2)
    assert worth_fusing(8, 128) and worth_fusing(4, 64)
    assert not worth_fusing(32, 20)  # mostly padding
    assert worth_fusing(1, 128)  # 2 tiles, one per thread
    assert not worth_fusing(3, 64) and not worth_fusing(1, 192)  # 3 tiles: one thread idles half the time
    assert not worth_fusing(1, 64)  # 1 tile: the two-call path splits its rows over both threads
    assert not worth_fusing(8, 70)  # 128 columns computed for 70


def test_two_call_fallback_gives_the_same_result(monkeypatch):
    rng = np.random.default_rng(4)
    w1, w2 = pruned(rng, (1536, 384), 0.9), pruned(rng, (384, 1536), 0.9)
    b1, b2 = rng.standard_normal(1536).astype(np.float32), rng.standard_normal(384).astype(np.float32)
    ffn = fuse_ffn(make_linear(w1, b1, "csr"), make_linear(w2, b2, "csr"), "gelu")
    x = rng.standard_normal((2, 384, 20)).astype(np.float32)
    fused = ffn(x, residual=x)
    monkeypatch.setattr("sparsebert.ffn.worth_fusing", lambda B, S: False)
    np.testing.assert_allclose(ffn(x, residual=x), fused, rtol=1e-5, atol=1e-5)


def test_model_with_fused_ffn_equals_its_dense_path(minilm_path, tmp_path, monkeypatch):
    # MiniLM pruned to 90%: CSR linears (every FFN fused) vs the same weights dense, on a batch
    # that takes the fused kernel (64-token tiles, enough of them for the threads).
    import sparsebert
    from sparsebert.prune import prune_checkpoint

    monkeypatch.setattr("numba.get_num_threads", lambda: 2)
    prune_checkpoint(minilm_path, tmp_path / "m90", sparsity=0.9)
    sparse = sparsebert.load(tmp_path / "m90", formats="csr")
    dense = sparsebert.load(tmp_path / "m90", formats="dense")
    assert all(layer.fused_ffn is not None for layer in sparse.encoder.layers)
    ids = np.random.default_rng(5).integers(1000, 2000, size=(4, 128))
    assert worth_fusing(*ids.shape)
    a = sparse(ids).last_hidden_state
    b = dense(ids).last_hidden_state
    assert a.shape == b.shape == (4, 128, 384)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_model_with_fused_4x1_ffn_equals_its_dense_path(minilm_path, tmp_path, monkeypatch):
    # MiniLM pruned to 90% in 4x1 blocks, every linear BSR 4x1 (each layer's tail in one fused
    # call per tile) vs the same weights dense.
    import sparsebert
    from sparsebert.prune import prune_checkpoint

    monkeypatch.setattr("numba.get_num_threads", lambda: 2)
    prune_checkpoint(minilm_path, tmp_path / "m90", sparsity=0.9, block="4x1")
    sparse = sparsebert.load(tmp_path / "m90", formats="bsr4x1")
    dense = sparsebert.load(tmp_path / "m90", formats="dense")
    assert all(layer.fused_tail for layer in sparse.encoder.layers)
    ids = np.random.default_rng(5).integers(1000, 2000, size=(4, 128))
    np.testing.assert_allclose(sparse(ids).last_hidden_state, dense(ids).last_hidden_state, rtol=0, atol=1e-5)


def _whole_layer_models(minilm_path, tmp_path, monkeypatch, block, fmt):
    # MiniLM pruned to 90% (block: None or "4x1"), loaded with every linear `fmt` and dense, on 2
    # threads: 4 sequences make each layer run whole per sequence (layer_csr).
    import sparsebert
    from sparsebert.prune import prune_checkpoint

    monkeypatch.setattr("numba.get_num_threads", lambda: 2)
    prune_checkpoint(minilm_path, tmp_path / "m90", sparsity=0.9, block=block)
    return sparsebert.load(tmp_path / "m90", formats=fmt), sparsebert.load(tmp_path / "m90", formats="dense")


@pytest.mark.parametrize("block,fmt", [(None, "csr"), ("4x1", "bsr4x1")])
def test_model_whole_layer_per_sequence_equals_the_per_step_calls(minilm_path, tmp_path, monkeypatch, block, fmt):
    # MiniLM pruned to 90%, every linear CSR (or 4x1 blocks): on 4 sequences over 2 threads each
    # layer runs whole per sequence (layer_csr), padding included; against the per-step calls and
    # the same weights dense.
    sparse, dense = _whole_layer_models(minilm_path, tmp_path, monkeypatch, block, fmt)
    assert all(layer.fused_layer for layer in sparse.encoder.layers)
    ids = np.random.default_rng(5).integers(1000, 2000, size=(4, 128))
    mask = np.ones_like(ids)
    mask[2, 90:] = 0
    whole = sparse(ids, attention_mask=mask).last_hidden_state
    monkeypatch.setattr("sparsebert.model.layer_pays", lambda B, S: False)
    steps = sparse(ids, attention_mask=mask).last_hidden_state
    np.testing.assert_allclose(whole, steps, rtol=0, atol=1e-5)
    np.testing.assert_allclose(whole, dense(ids, attention_mask=mask).last_hidden_state, rtol=0, atol=1e-5)


def layer_norm_ref(y, gamma, beta, eps):
    mean = y.mean(axis=1, keepdims=True)
    var = ((y - mean) ** 2).mean(axis=1, keepdims=True)
    return (y - mean) / np.sqrt(var + eps) * gamma[:, None] + beta[:, None]


@pytest.mark.parametrize("H, I, B, T", [(384, 1536, 2, 100), (768, 3072, 1, 130), (384, 1536, 3, 1)])
@pytest.mark.parametrize("fused", [True, False])
def test_layer_norm_in_the_epilogue(H, I, B, T, fused, monkeypatch):
    monkeypatch.setattr("sparsebert.ffn.worth_fusing", lambda B, S: fused)
    rng = np.random.default_rng(6)
    w1, w2 = pruned(rng, (I, H), 0.8), pruned(rng, (H, I), 0.8)
    b1 = rng.standard_normal(I).astype(np.float32) * 0.1
    b2 = rng.standard_normal(H).astype(np.float32) * 0.1
    gamma = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(H)).astype(np.float32)
    x = rng.standard_normal((B, H, T)).astype(np.float32)
    ffn = fuse_ffn(make_linear(w1, b1, "csr"), make_linear(w2, b2, "csr"), "gelu")
    y = ffn(x, residual=x, norm=(gamma, beta, np.float32(1e-12)))
    want = layer_norm_ref(reference(w1, b1, w2, b2, x, "gelu", x), gamma, beta, 1e-12)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def _layer_norm64(v, gamma, beta, eps):
    # v (H, S): each token (column) normalised over its H features
    mean = v.mean(axis=0, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=0, keepdims=True)
    return (v - mean) / np.sqrt(var + eps) * gamma[:, None] + beta[:, None]


@pytest.mark.parametrize("kind", ["csr", "bsr4x1"])
@pytest.mark.parametrize("H,I,T", [(384, 1536, 128), (64, 256, 77), (64, 256, 1)])
def test_layer_tail_matches_float64_and_the_separate_calls(H, I, T, kind):
    # FusedFFN.tail: h = LN0(W0 @ ctx + b0 + x), x = LN(W2 @ gelu(W1 @ h + b1) + b2 + h), in place,
    # in one kernel call per tile (always_fuse); against float64 and bit for bit against the
    # separate calls the model makes when it does not fuse.
    from sparsebert.kernels import ops

    rng = np.random.default_rng(H + T)
    w0, w1, w2 = pruned(rng, (H, H), 0.8, 3, kind), pruned(rng, (I, H), 0.8, 0, kind), pruned(rng, (H, I), 0.8, 0, kind)
    b0, b2 = (rng.standard_normal(H).astype(np.float32) * 0.1 for _ in range(2))
    b1 = rng.standard_normal(I).astype(np.float32) * 0.1
    g0, be0, g1, be1 = (rng.standard_normal(H).astype(np.float32) for _ in range(4))
    eps = np.float32(1e-12)
    ctx = rng.standard_normal((2, H, T)).astype(np.float32)
    x = rng.standard_normal((2, H, T)).astype(np.float32)
    o, a, b = make_linear(w0, b0, kind), make_linear(w1, b1, kind), make_linear(w2, b2, kind)
    ffn = fuse_ffn(a, b, "gelu")
    out = ffn.tail(ctx, x.copy(), o, (g0, be0, eps), (g1, be1, eps))

    h64 = np.einsum("hk,bks->bhs", w0.astype(np.float64), ctx.astype(np.float64)) + b0[:, None] + x
    h64 = np.stack([_layer_norm64(v, g0, be0, eps) for v in h64])
    y64 = reference(w1, b1, w2, b2, h64, "gelu", h64)
    y64 = np.stack([_layer_norm64(v, g1, be1, eps) for v in y64])
    np.testing.assert_allclose(out, y64, rtol=1e-4, atol=1e-4)

    h = o(ctx, residual=x)
    ops.layer_norm(h, g0, be0, eps)
    y = b(a(h, activation="gelu"), residual=h)
    ops.layer_norm(y, g1, be1, eps)
    if T % 64 == 0:
        np.testing.assert_array_equal(out, y)  # whole tiles: the same tile code, the same sums
    else:  # the separate calls run 8-token tail tiles past the last whole tile, summing in another order
        np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)


def test_layer_tail_rejects_overlap_and_a_non_csr_linear():
    rng = np.random.default_rng(1)
    H, I = 16, 32
    a, b = make_linear(pruned(rng, (I, H), 0.5), np.zeros(I, np.float32), "csr"), \
        make_linear(pruned(rng, (H, I), 0.5), np.zeros(H, np.float32), "csr")
    ffn = fuse_ffn(a, b, "gelu")
    norm = (np.ones(H, np.float32), np.zeros(H, np.float32), np.float32(1e-12))
    x = np.zeros((1, H, 64), np.float32)
    with pytest.raises(InputError, match="overlap"):
        ffn.tail(x, x, make_linear(pruned(rng, (H, H), 0.5), np.zeros(H, np.float32), "csr"), norm, norm)
    with pytest.raises(InputError, match="gamma"):
        ffn.tail(x.copy(), x, make_linear(pruned(rng, (H, H), 0.5), np.zeros(H, np.float32), "csr"),
                 (np.ones(H - 1, np.float32), norm[1], norm[2]), norm)
    with pytest.raises(InputError, match="CSR"):
        ffn.tail(x.copy(), x, make_linear(pruned(rng, (H, H), 0.5), np.zeros(H, np.float32), "dense"), norm, norm)
    with pytest.raises(InputError, match="4x1"):
        ffn.tail(x.copy(), x, make_linear(pruned(rng, (H, H), 0.5), np.zeros(H, np.float32), "bsr2x2"), norm, norm)


@pytest.mark.skipif(bool(__import__("numba").config.BOUNDSCHECK), reason="normal pass only")
def test_fused_kernel_on_a_cpu_without_avx512():
    # On an AVX-512 host the cases above run the zmm tiles; this reruns the 4x1 and real-size CSR
    # cases compiled for Haswell (AVX2; Numba caches per target CPU): the generated tiles, the
    # 4x1 ones 32 tokens wide, twice per 64-token tile.
    from avx2_rerun import rerun_on_haswell

    rerun_on_haswell(__file__, "(4x1 or real_sizes or wide_tile) and not model and not without_avx512")


# --- the 128-token tile (AVX-512 CPUs; the tuner chooses it per model) -----------------------------

@pytest.fixture
def wide_tiles(monkeypatch):
    # Off AVX-512 the Python side offers 64 only, but the kernels compute any multiple of 64 (the
    # 64-token tile per 64 columns): let the 128 cases run there too, on that path.
    if 128 not in ffn_fused.TILES:
        monkeypatch.setattr(ffn_fused, "TILES", (64, 128))


wide = pytest.mark.usefixtures("wide_tiles")


def _pair(rng, H, I, sparsity, kinds):
    w1, w2 = pruned(rng, (I, H), sparsity, 0, kinds[0]), pruned(rng, (H, I), sparsity, 0, kinds[1])
    b1 = rng.standard_normal(I).astype(np.float32) * 0.1
    b2 = rng.standard_normal(H).astype(np.float32) * 0.1
    return w1, b1, w2, b2, fuse_ffn(make_linear(w1, b1, kinds[0]), make_linear(w2, b2, kinds[1]), "gelu")


@wide
@pytest.mark.parametrize("kinds", [("csr", "csr"), ("bsr4x1", "bsr4x1"), ("csr", "bsr4x1")])
@pytest.mark.parametrize("H, I, B, T", [(384, 1536, 2, 200), (768, 3072, 1, 128), (384, 1536, 2, 77),
                                        (64, 256, 1, 1)])
def test_wide_tile_matches_float64_and_the_64_token_tile(kinds, H, I, B, T, monkeypatch):
    # 128-token tasks on every batch (partial last tiles included), against float64 and against
    # the 64-token tile: the same sums per token, so equal to float rounding of their order.
    monkeypatch.setattr("sparsebert.ffn.tiles_fill", lambda B, S, tile: True)
    rng = np.random.default_rng(H + T)
    w1, b1, w2, b2, ffn = _pair(rng, H, I, 0.8, kinds)
    x = rng.standard_normal((B, H, T)).astype(np.float32)
    gamma = (1 + 0.1 * rng.standard_normal(H)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(H)).astype(np.float32)
    norm = (gamma, beta, np.float32(1e-12))
    ffn.tile = 128
    assert ffn.tile_for(B, T) == 128
    y = ffn(x, residual=x)
    np.testing.assert_allclose(y, reference(w1, b1, w2, b2, x, "gelu", x), rtol=1e-4, atol=1e-4)
    normed = ffn(x, residual=x, norm=norm)  # the LayerNorm epilogue over all 128 columns
    np.testing.assert_allclose(normed, layer_norm_ref(reference(w1, b1, w2, b2, x, "gelu", x), *norm),
                               rtol=1e-4, atol=1e-4)
    ffn.tile = 64
    np.testing.assert_allclose(y, ffn(x, residual=x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(normed, ffn(x, residual=x, norm=norm), rtol=1e-5, atol=1e-5)


@wide
@pytest.mark.parametrize("kind", ["csr", "bsr4x1"])
def test_wide_tile_layer_tail_matches_float64(kind, monkeypatch):
    monkeypatch.setattr("sparsebert.ffn.tiles_fill", lambda B, S, tile: True)
    rng = np.random.default_rng(11)
    H, I, T = 384, 1536, 150
    w0 = pruned(rng, (H, H), 0.8, 3, kind)
    b0 = rng.standard_normal(H).astype(np.float32) * 0.1
    w1, b1, w2, b2, ffn = _pair(rng, H, I, 0.8, (kind, kind))
    g0, be0, g1, be1 = (rng.standard_normal(H).astype(np.float32) for _ in range(4))
    eps = np.float32(1e-12)
    ctx = rng.standard_normal((2, H, T)).astype(np.float32)
    x = rng.standard_normal((2, H, T)).astype(np.float32)
    ffn.tile = 128
    out = ffn.tail(ctx, x.copy(), make_linear(w0, b0, kind), (g0, be0, eps), (g1, be1, eps))
    h64 = np.einsum("hk,bks->bhs", w0.astype(np.float64), ctx.astype(np.float64)) + b0[:, None] + x
    h64 = np.stack([_layer_norm64(v, g0, be0, eps) for v in h64])
    y64 = np.stack([_layer_norm64(v, g1, be1, eps) for v in reference(w1, b1, w2, b2, h64, "gelu", h64)])
    np.testing.assert_allclose(out, y64, rtol=1e-4, atol=1e-4)


@wide
@pytest.mark.parametrize("block,fmt", [(None, "csr"), ("4x1", "bsr4x1")])
def test_wide_tile_whole_layer_equals_the_dense_model(minilm_path, tmp_path, monkeypatch, block, fmt):
    # MiniLM pruned to 90%, every layer whole per sequence (layer_csr) with 128-token tiles, on
    # sequences of 128 (one tile), 120 (a partial tile) and 250 (both), padding included.
    sparse, dense = _whole_layer_models(minilm_path, tmp_path, monkeypatch, block, fmt)
    for layer in sparse.encoder.layers:
        assert layer.fused_layer
        layer.fused_ffn.tile = 128
    calls = []
    real = ffn_fused.layer_csr
    monkeypatch.setattr(ffn_fused, "layer_csr", lambda *a: calls.append(a[-1]) or real(*a))
    for T in (128, 120, 250):  # one whole tile, one partial, a whole and a partial one
        ids = np.random.default_rng(T).integers(1000, 2000, size=(4, T))
        mask = np.ones_like(ids)
        mask[2, 90:] = 0
        got = sparse(ids, attention_mask=mask).last_hidden_state
        want = dense(ids, attention_mask=mask).last_hidden_state
        valid = mask.astype(bool)
        np.testing.assert_allclose(got[valid], want[valid], rtol=0, atol=1e-5)
        # padding positions too, to rounding: no output reads them, and their values follow each
        # engine's summation order (seen 1.05e-5 off at |x| ~ 6, and 2.1e-5 at |x| ~ 1 on a Zen 4 whose
        # dense path tuned differently); unwritten or wrong memory would be off by O(1)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=5e-5)
    assert calls == [128] * 18  # 6 layers x 3 lengths, each in 128-token tiles


def test_tile_width_is_checked_and_falls_back_where_it_would_pad(monkeypatch):
    from sparsebert.ffn import tiles_fill

    monkeypatch.setattr("numba.get_num_threads", lambda: 2)
    rng = np.random.default_rng(12)
    *_, ffn = _pair(rng, 32, 64, 0.5, ("csr", "csr"))
    assert ffn.tile == 64 and ffn.tile_for(8, 128) == 64
    for bad in (96, 0, True, 256):
        with pytest.raises(InputError, match="token tile"):
            ffn.tile = bad
    assert tiles_fill(8, 128, 128) and tiles_fill(2, 128, 128) and tiles_fill(4, 250, 128)
    assert not tiles_fill(8, 100, 128)  # 28% padding
    assert not tiles_fill(1, 128, 128) and not tiles_fill(3, 128, 128)  # one thread idles
    if 128 in ffn_fused.TILES:
        ffn.tile = 128
        assert ffn.tile_for(8, 128) == 128 and ffn.tile_for(8, 256) == 128
        assert ffn.tile_for(8, 100) == 64 and ffn.tile_for(1, 128) == 64
    else:
        with pytest.raises(InputError, match=r"\(64,\)"):
            ffn.tile = 128


def test_run_at_times_the_width_asked_and_a_failed_tuner_leaves_64(monkeypatch, wide_tiles):
    rng = np.random.default_rng(13)
    w1, b1, w2, b2, ffn = _pair(rng, 64, 256, 0.8, ("csr", "csr"))
    x = rng.standard_normal((1, 64, 100)).astype(np.float32)  # a batch tile_for would run at 64
    calls = []
    real = ffn_fused.ffn_csr
    monkeypatch.setattr(ffn_fused, "ffn_csr", lambda *a: calls.append(a[-1]) or real(*a))
    want = reference(w1, b1, w2, b2, x, "gelu", x)
    for tile in (64, 128):
        np.testing.assert_allclose(ffn.run_at(x, tile), want, rtol=1e-4, atol=1e-4)
    assert calls == [64, 128]
    with pytest.raises(InputError, match="token tile"):
        ffn.run_at(x, 96)

    def broken(pair):
        pair.tile = 128
        raise RuntimeError("timer failed")

    ffn.tune_tile_on_first_use(broken)
    with pytest.warns(UserWarning, match="stays 64"):
        ffn.settle_tile()
    assert ffn.tile == 64
    ffn.settle_tile()  # tried once: no second warning, no second failure
