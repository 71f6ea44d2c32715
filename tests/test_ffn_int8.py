"""Conformance of the fused int8 layer tail (kernels/ffn_int8.py via sparsebert.quant.fused).

Two references: the separate int8 calls the model makes when it does not fuse (whose integer sums
tests/test_int8_kernels.py checks against NumPy int64 and whose float epilogue tests/test_int8.py
checks against float64), which the fused kernel must equal bit for bit; and a float64 model of the
whole chain (per-token quantization of each linear's input, as `reference_linear`), which it must
match to int8 rounding. Real sizes (MiniLM 384 -> 1536, BERT-base 768 -> 3072: several K-chunks of
1x4 blocks), partial 64-token tiles, T = 1, SmoothQuant factors, both VNNI kinds and their mixes.
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from sparsebert.errors import InputError
from sparsebert.kernels import ops
from sparsebert.quant import Int8Linear
from sparsebert.quant.fused import fuse_ffn8, fusable8
from sparsebert.quant.linear import host_has_vnni
from test_int8 import reference_linear  # the float64 model of an Int8Linear call

needs_vnni = pytest.mark.skipif(not host_has_vnni(), reason="the fused int8 kernel needs AVX512-VNNI")
EPS = np.float32(1e-12)


@pytest.fixture(autouse=True)
def always_fuse(monkeypatch):
    # The conformance cases must reach the kernel, whatever worth_fusing would choose.
    monkeypatch.setattr("sparsebert.ffn.worth_fusing", lambda B, S: True)


def linear(rng, N, K, kind, sparsity=0.8):
    # bsr1x4 weights pruned in whole 1x4 blocks (one row, 4 consecutive inputs), with an empty row.
    w = (rng.standard_normal((N, K)) / np.sqrt(K)).astype(np.float32)
    if kind == "bsr1x4":
        w *= np.repeat(rng.random((N, K // 4)) >= sparsity, 4, axis=1)
        w[N // 3] = 0
    elif kind == "gather":  # unstructured, with an empty row and a row of 1-3 nonzeros
        w *= rng.random((N, K)) >= sparsity
        w[N // 3] = 0
        w[N // 2, 3:] = 0
    smooth = rng.uniform(0.5, 2.0, K).astype(np.float32)
    lin = Int8Linear.from_float(w, (0.1 * rng.standard_normal(N)).astype(np.float32), kind, smooth)
    assert lin.format == f"int8-{kind}" and fusable8(lin)
    return lin


def norm(rng, H):
    return ((1 + 0.1 * rng.standard_normal(H)).astype(np.float32),
            (0.1 * rng.standard_normal(H)).astype(np.float32), EPS)


def layer_norm64(v, gamma, beta, eps):
    mean = v.mean(axis=1, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=1, keepdims=True)
    return (v - mean) / np.sqrt(var + eps) * gamma[:, None] + beta[:, None]


def separate(lin, x, **kw):
    return lin(x, **kw)


KINDS = [("gemm", "gemm", "gemm"), ("bsr1x4", "bsr1x4", "bsr1x4"), ("gemm", "bsr1x4", "gemm"),
         ("bsr1x4", "gemm", "bsr1x4"), ("gather", "gather", "gather"), ("gather", "bsr1x4", "gather"),
         ("gemm", "gather", "bsr1x4")]
SHAPES = [(384, 1536, 2, 100), (768, 3072, 1, 130), (384, 1536, 3, 1), (64, 200, 2, 64)]


@needs_vnni
@pytest.mark.parametrize("kinds", KINDS, ids="-".join)
@pytest.mark.parametrize("H,I,B,T", SHAPES)
def test_ffn_equals_the_separate_calls_and_float64(kinds, H, I, B, T):
    rng = np.random.default_rng(H + T)
    a, b = linear(rng, I, H, kinds[0]), linear(rng, H, I, kinds[1])
    ffn = fuse_ffn8(a, b, "gelu")
    x = rng.standard_normal((B, H, T)).astype(np.float32)
    g = norm(rng, H)
    y = ffn(x, residual=x, norm=g)
    two = b(a(x, activation="gelu"), residual=x)
    ops.layer_norm(two, *g)
    np.testing.assert_array_equal(y, two)
    f64 = reference_linear(a, x, "gelu", None)
    want = layer_norm64(reference_linear(b, f64.astype(np.float32), None, x), g[0], g[1], 1e-12)
    np.testing.assert_allclose(y, want, rtol=0, atol=0.03)
    # no norm, no residual
    np.testing.assert_array_equal(ffn(x), b(a(x, activation="gelu")))


@needs_vnni
@pytest.mark.parametrize("kinds", KINDS, ids="-".join)
@pytest.mark.parametrize("H,I,B,T", SHAPES)
def test_layer_tail_equals_the_separate_calls(kinds, H, I, B, T):
    # tail: h = LN0(attn_out(ctx) + x), x = LN(ffn(h) + h), in place, one kernel call per tile.
    rng = np.random.default_rng(7 * H + T)
    a, b, o = linear(rng, I, H, kinds[0]), linear(rng, H, I, kinds[1]), linear(rng, H, H, kinds[2])
    ffn = fuse_ffn8(a, b, "gelu")
    assert ffn.can_tail(o)
    ctx = rng.standard_normal((B, H, T)).astype(np.float32)
    x = rng.standard_normal((B, H, T)).astype(np.float32)
    n0, n1 = norm(rng, H), norm(rng, H)
    h = o(ctx, residual=x)
    ops.layer_norm(h, *n0)
    want = b(a(h, activation="gelu"), residual=h)
    ops.layer_norm(want, *n1)
    got = x.copy()
    assert ffn.tail(ctx, got, o, n0, n1) is got
    np.testing.assert_array_equal(got, want)


@needs_vnni
@pytest.mark.parametrize("block,fmt", [("1x4", "int8-bsr1x4"), (None, "int8-gemm"), (None, "int8-gather")])
@pytest.mark.parametrize("layer_tile,int8_attention", [(64, None), (128, None), (128, False)])
def test_model_int8_fused_layer_and_tail_bit_for_bit(minilm_path, tmp_path, monkeypatch, block, fmt, layer_tile,
                                                     int8_attention):
    # MiniLM pruned to 80% (1x4 blocks: bsr1x4 linears; unstructured: forced gemm or gather) and
    # quantized:
    # every layer runs whole per sequence (layer_int8, batch 4 on 2 threads), or its tail fused per
    # tile, or the separate calls; all three give the same bits, padding included; with int8
    # attention (the default on VNNI) and with float32 attention.
    import sparsebert
    from sparsebert.prune import prune_checkpoint
    from sparsebert.quant import quantize

    monkeypatch.setattr("numba.get_num_threads", lambda: 2)
    prune_checkpoint(minilm_path, tmp_path / "p80", sparsity=0.8, block=block)
    quantize(tmp_path / "p80", tmp_path / "q80", onnx=False)
    model = sparsebert.load(tmp_path / "q80", formats=fmt, int8_attention=int8_attention)
    assert all(layer.fused_tail and layer.fused_layer for layer in model.encoder.layers)
    assert all(layer.int8_attention is (int8_attention is None) for layer in model.encoder.layers)
    for layer in model.encoder.layers:
        layer.fused_ffn.layer_tile = layer_tile
    rng = np.random.default_rng(5)
    ids = rng.integers(1000, 2000, size=(4, 150))  # 150: a partial last tile either way
    mask = np.ones_like(ids)
    mask[1, 77:] = 0
    mask[3, 140:] = 0
    runs = {}
    for mode in ("layer", "tail", "separate"):
        monkeypatch.setattr("sparsebert.model.layer_pays", lambda B, S: mode == "layer")
        monkeypatch.setattr("sparsebert.model.worth_fusing", lambda B, S: mode == "tail")
        runs[mode] = model(ids, attention_mask=mask).last_hidden_state
    np.testing.assert_array_equal(runs["layer"], runs["separate"])
    np.testing.assert_array_equal(runs["tail"], runs["separate"])
    assert np.isfinite(runs["layer"]).all()


def test_layer_pays_only_with_whole_sequences_for_every_thread(monkeypatch):
    from sparsebert.ffn import layer_pays

    monkeypatch.setattr("numba.get_num_threads", lambda: 2)
    assert layer_pays(32, 128) and layer_pays(4, 128)
    assert not layer_pays(2, 128) and not layer_pays(1, 128)  # the per-step calls split rows
    assert not layer_pays(5, 128)  # one thread would run 3 sequences, the other 2
    assert not layer_pays(32, 1024)


@needs_vnni
def test_pairs_that_do_not_qualify_and_bad_inputs():
    rng = np.random.default_rng(3)
    a, b = linear(rng, 40, 16, "gemm"), linear(rng, 16, 40, "bsr1x4")
    assert fuse_ffn8(a, linear(rng, 16, 32, "gemm"), "gelu") is None  # shapes do not chain
    csr = Int8Linear.from_float(rng.standard_normal((16, 40)).astype(np.float32), np.zeros(16, np.float32), "csr")
    assert not fusable8(csr) and fuse_ffn8(a, csr, "gelu") is None
    ffn = fuse_ffn8(a, b, "gelu")
    assert not ffn.can_tail(csr) and not ffn.can_tail(linear(rng, 16, 40, "gemm"))
    with pytest.raises(InputError, match="float32 C-contiguous x"):
        ffn(np.zeros((1, 15, 4), np.float32))
    x = np.zeros((1, 16, 4), np.float32)
    with pytest.raises(InputError, match="overlap"):
        ffn(x, out=x)
    with pytest.raises(InputError, match="attention output linear of kind int8 gemm"):
        ffn.tail(np.zeros_like(x), x, csr, norm(rng, 16), norm(rng, 16))
    with pytest.raises(InputError, match="LayerNorm gamma"):
        ffn(x, norm=(np.ones(15, np.float32), np.zeros(16, np.float32), EPS))


@pytest.mark.parametrize("module", ["ffn_int8", "int8_bsr", "attention_int8", "int8_gather"])
def test_cached_kernels_are_stamped_with_the_helpers_they_inline(module):
    # Numba's cache would keep serving a kernel compiled against an old helper from another file:
    # bump the stamp in the kernel's file (which re-compiles it) whenever those files change.
    import importlib

    mod = importlib.import_module(f"sparsebert.kernels.{module}")
    folder = Path(mod.__file__).resolve().parent
    names = [part.split()[0] for part in mod.BUILT_AGAINST.split(", ")]
    stamp = ", ".join(f"{n} {hashlib.sha256((folder / n).read_bytes()).hexdigest()[:16]}" for n in names)
    assert mod.BUILT_AGAINST == stamp
