"""SmoothQuant calibration: per-input-channel smoothing factors for every encoder linear, from texts.

For a linear with input X (K features) and weight W (N, K), SmoothQuant (Xiao et al. 2023,
"SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language Models") picks
smooth[k] = max|X[k]|^alpha / max|W[:, k]|^(1 - alpha), then quantizes X / smooth and W * smooth:
the product is unchanged, and the few outlier channels BERT's LayerNorm outputs carry no longer
set every token's activation scale alone. max|X[k]| is measured here by running the float model
on calibration texts with recording wrappers around its linears.

Left out: per-token static scales (activations stay dynamic per token), searching alpha per layer.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


class _Recorder:
    """A float linear that also keeps the running max |x| per input feature."""

    def __init__(self, inner):
        self.inner = inner
        self.out_features, self.in_features = inner.out_features, inner.in_features
        self.amax = np.zeros(inner.in_features, dtype=np.float32)

    def __call__(self, x, **kw):
        np.maximum(self.amax, np.abs(x).max(axis=(0, 2)), out=self.amax)
        return self.inner(x, **kw)

    def describe(self):
        return self.inner.describe()


def smoothing_factors(model, texts, alpha: float = 0.5, batch_size: int = 32) -> dict:
    """{(layer index, linear name): smooth (K,) float32} for the model's encoder linears, from
    the activations `texts` produce (at least one text)."""
    from ..api import Model
    from ..model import BertEncoder

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise InputError("calibration needs a non-empty list of texts")
    # A dense float copy of the model whose encoder linears also record their inputs.
    encoder = BertEncoder(model.encoder.weights, "dense")
    recorders = {}
    for i, (layer, w) in enumerate(zip(encoder.layers, model.encoder.weights.layers)):
        for name in ("qkv", "attn_out", "ffn_in", "ffn_out"):
            rec = _Recorder(getattr(layer, name))
            setattr(layer, name, rec)
            recorders[(i, name)] = (rec, getattr(w, f"{name}_w"))
    probe = Model(encoder, model.tokenizer)
    probe.encode(texts, batch_size=batch_size)
    out = {}
    for key, (rec, weight) in recorders.items():
        wmax = np.abs(weight).max(axis=0)
        s = np.power(np.maximum(rec.amax, 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1.0 - alpha)
        s = np.where((rec.amax > 0) & (wmax > 0), s, 1.0)
        out[key] = np.clip(s, 1e-4, 1e4).astype(np.float32)
    return out
