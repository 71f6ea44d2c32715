"""The attention kernel against a float64 NumPy softmax-attention at real BERT shapes, with padding.

The reference is written here from the definition (row-wise softmax over keys of scale * QᵀK + mask,
then V times its transpose), independent of the kernel's key-major layout and deferred
normalisation; the model-level checks against transformers and onnxruntime cover it again.
"""

import numpy as np
import pytest

from sparsebert.kernels import attention

MASKED = np.float32(-1e30)  # what sparsebert.model passes for padding keys


def reference(qkv, key_bias, heads, scale):
    B, H3, T = qkv.shape
    H = H3 // 3
    D = H // heads
    x = qkv.astype(np.float64)
    ctx = np.empty((B, H, T))
    for b in range(B):
        for h in range(heads):
            q, k, v = (x[b, o + h * D: o + (h + 1) * D] for o in (0, H, 2 * H))  # (D, T) each
            scores = scale * (q.T @ k) + key_bias[b].astype(np.float64)[None, :]  # (Tq, Tk)
            scores -= scores.max(axis=1, keepdims=True)
            p = np.exp(scores)
            p /= p.sum(axis=1, keepdims=True)
            ctx[b, h * D:(h + 1) * D] = v @ p.T
    return ctx


@pytest.mark.parametrize("B,heads,D,T", [(3, 12, 64, 128), (2, 12, 32, 77), (1, 2, 8, 5)])
def test_attention_matches_float64_reference(B, heads, D, T):
    rng = np.random.default_rng(T)
    H = heads * D
    qkv = (2.0 * rng.standard_normal((B, 3 * H, T))).astype(np.float32)
    lengths = [T, max(1, T // 3), T - 1][:B]
    key_bias = np.zeros((B, T), np.float32)
    for b, n in enumerate(lengths):
        key_bias[b, n:] = MASKED
    scale = np.float32(1.0 / np.sqrt(D))
    ctx = np.full((B, H, T), np.nan, np.float32)
    attention.attention(qkv, key_bias, heads, scale, ctx)
    want = reference(qkv, key_bias, heads, scale)
    np.testing.assert_allclose(ctx, want, rtol=2e-5, atol=2e-5)


def test_all_padding_row_is_uniform_and_finite():
    # A sequence whose keys are all padding: every query attends uniformly (the mean of V).
    rng = np.random.default_rng(1)
    heads, D, T = 2, 8, 16
    qkv = rng.standard_normal((1, 3 * heads * D, T)).astype(np.float32)
    key_bias = np.full((1, T), MASKED, np.float32)
    ctx = np.empty((1, heads * D, T), np.float32)
    attention.attention(qkv, key_bias, heads, np.float32(0.35), ctx)
    v = qkv[0, 2 * heads * D:]
    np.testing.assert_allclose(ctx[0], np.repeat(v.mean(axis=1, keepdims=True), T, axis=1), rtol=1e-5, atol=1e-6)


def test_large_scores_do_not_overflow():
    # Scores far above exp's range: the max subtraction keeps every value finite.
    rng = np.random.default_rng(2)
    heads, D, T = 1, 16, 40
    qkv = (30.0 * rng.standard_normal((1, 3 * D, T))).astype(np.float32)
    key_bias = np.zeros((1, T), np.float32)
    ctx = np.empty((1, D, T), np.float32)
    attention.attention(qkv, key_bias, heads, np.float32(1.0), ctx)
    assert np.isfinite(ctx).all()
    np.testing.assert_allclose(ctx, reference(qkv, key_bias, heads, 1.0), rtol=1e-4, atol=1e-4)


def test_exp_shifted_matches_numpy():
    x = np.linspace(-100.0, 5.0, 4099).astype(np.float32)
    m = np.full_like(x, 0.5)
    row = x.copy()
    attention.exp_shifted(row, m, np.empty(x.size, np.int32))
    arg = (x - m).astype(np.float64)  # the kernel's own float32 argument, then exp in float64
    want = np.exp(arg)
    want[arg < -87.0] = 0.0
    np.testing.assert_allclose(row, want, rtol=3e-7, atol=1e-37)
