"""Int8 attention (kernels/attention_int8.py) against an independent NumPy emulation of its
arithmetic (int64 code products, float64 scales and exps) and against float64 softmax attention.

The emulation is written here from the documented scheme: Q per query and K per key quantized to
int8 over the head's features, exact integer scores, exps coded round(2047 e), V quantized per
feature row to +-1023, the context normalised by the codes' sum. Where the kernel's float32 exp and the
emulation's float64 exp fall on opposite sides of a code's rounding boundary, one code differs
by 1: so almost every value must agree to float32 rounding, and the rest by at most a few codes.
"""

import numpy as np
import pytest

from sparsebert.errors import InputError
from sparsebert.quant.linear import host_has_vnni
from test_attention import MASKED, reference

needs_vnni = pytest.mark.skipif(not host_has_vnni(), reason="int8 attention needs AVX512-VNNI")


def codes(x, axis, qmax=127):
    amax = np.abs(x).max(axis=axis, keepdims=True).astype(np.float32)
    scale = amax / np.float32(qmax)
    inv = np.zeros_like(scale)
    np.divide(np.float32(1), scale, out=inv, where=scale > 0)
    return np.clip(np.rint(x * inv), -qmax, qmax).astype(np.int64), scale.astype(np.float64)


def v_codes(v):  # per feature row, +-1023, as the kernel computes them (multiplier 1023 / amax)
    amax = np.abs(v).max(axis=1, keepdims=True).astype(np.float32)
    mult = np.zeros_like(amax)
    np.divide(np.float32(1023), amax, out=mult, where=amax > 0)
    return np.rint(v * mult).astype(np.int64), (amax / np.float32(1023)).astype(np.float64)


def emulate(qkv, key_bias, heads, scale):
    B, H3, T = qkv.shape
    H = H3 // 3
    D = H // heads
    out = np.empty((B, H, T))
    for b in range(B):
        for h in range(heads):
            q, k, v = (qkv[b, o + h * D: o + (h + 1) * D] for o in (0, H, 2 * H))  # (D, T)
            qc, sq = codes(q, 0)  # per query
            kc, sk = codes(k, 0)  # per key
            s = (kc.T @ qc) * (float(scale) * sk.T) * sq + key_bias[b].astype(np.float64)[:, None]
            p = np.floor(np.exp(s - s.max(axis=0, keepdims=True)) * 2047 + 0.5)  # (Tk, Tq) codes
            vc, sv = v_codes(v)  # per feature row
            out[b, h * D:(h + 1) * D] = (vc @ p) * sv / p.sum(axis=0)
    return out


def inputs(B, heads, D, T, seed):
    rng = np.random.default_rng(seed)
    qkv = rng.standard_normal((B, 3 * heads * D, T)).astype(np.float32)
    key_bias = np.zeros((B, T), np.float32)
    for b, n in enumerate([T, max(1, T // 3), T - 1][:B]):
        key_bias[b, n:] = MASKED
    return qkv, key_bias, np.float32(1.0 / np.sqrt(D))


@needs_vnni
@pytest.mark.parametrize("B,heads,D,T", [(3, 12, 64, 128), (2, 12, 32, 77), (1, 2, 8, 5), (2, 3, 12, 130),
                                         (1, 2, 64, 511)])
def test_int8_attention_matches_emulation_and_float64(B, heads, D, T):
    from sparsebert.kernels import attention_int8

    qkv, key_bias, scale = inputs(B, heads, D, T, T)
    ctx = np.full((B, heads * D, T), np.nan, np.float32)
    attention_int8.attention_int8(qkv, key_bias, heads, scale, ctx)
    want = emulate(qkv, key_bias, heads, scale)
    err = np.abs(ctx - want)
    vmax = np.abs(qkv[:, 2 * heads * D:]).max()
    # a flipped code moves a value by at most vmax / 2047; flips hit ~0.1% of the values
    assert (err > 1e-5 * vmax).mean() < 1e-2, "more than rare code flips away from the emulation"
    assert err.max() < 4 * vmax / 2047
    # and close to exact float64 attention: the quantization error only
    exact = reference(qkv, key_bias, heads, scale)
    assert np.abs(ctx - exact).max() < 0.05 * vmax
    assert np.abs(ctx - exact).mean() < 0.003 * vmax


@needs_vnni
def test_fused_sequence_heads_equal_the_parallel_kernel():
    from sparsebert.kernels import attention_int8

    qkv, key_bias, scale = inputs(3, 12, 32, 150, 3)
    want = np.empty((3, 384, 150), np.float32)
    attention_int8.attention_int8(qkv, key_bias, 12, scale, want)
    for b in range(3):
        got = np.empty((1, 384, 150), np.float32)
        attention_int8.sequence_heads_int8(qkv[b:b + 1].copy(), key_bias[b:b + 1].copy(), 12, scale, got)
        np.testing.assert_array_equal(got[0], want[b])


@needs_vnni
def test_all_padding_row_is_uniform_and_finite():
    from sparsebert.kernels import attention_int8

    rng = np.random.default_rng(1)
    heads, D, T = 2, 8, 16
    qkv = rng.standard_normal((1, 3 * heads * D, T)).astype(np.float32)
    key_bias = np.full((1, T), MASKED, np.float32)
    ctx = np.empty((1, heads * D, T), np.float32)
    attention_int8.attention_int8(qkv, key_bias, heads, np.float32(0.35), ctx)
    v = qkv[0, 2 * heads * D:]
    vc, sv = v_codes(v)
    np.testing.assert_allclose(ctx[0], np.repeat(vc.mean(axis=1, keepdims=True) * sv, T, axis=1), rtol=1e-5,
                               atol=1e-6)


@needs_vnni
def test_quantized_minilm_runs_int8_attention_close_to_float(minilm_path, tmp_path):
    # Independent reference: the FP32 model (itself checked against transformers and onnxruntime).
    import sparsebert
    from sparsebert.quant import quantize

    quantize(minilm_path, tmp_path / "q", onnx=False)
    texts = ["A man is playing a guitar on the stage.", "The weather was cold and wet all week.",
             "Stocks fell sharply after the announcement.", "short"]
    fp = sparsebert.load(minilm_path).encode(texts)
    q8 = sparsebert.load(tmp_path / "q")
    assert q8.sparsity_report()["total"]["attention"] == ["int8-vnni"] * 6
    q_fp_attn = sparsebert.load(tmp_path / "q", int8_attention=False)
    assert q_fp_attn.sparsity_report()["total"]["attention"] == ["float32"] * 6
    a, b = q8.encode(texts), q_fp_attn.encode(texts)
    assert not np.array_equal(a, b)  # the int8 attention did run
    assert (a * fp).sum(1).min() > 0.99
    assert abs((a * fp).sum(1).mean() - (b * fp).sum(1).mean()) < 0.002


def test_int8_attention_refused_on_float_linears(minilm_path):
    import sparsebert

    with pytest.raises(InputError, match="int8 attention needs int8 query/key/value"):
        sparsebert.load(minilm_path, int8_attention=True)
