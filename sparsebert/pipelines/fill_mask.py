"""Masked-token prediction on BertForMaskedLM checkpoints, as transformers' `fill-mask` pipeline.

Head (run only at [MASK] positions): h = LayerNorm(act(W_t h + b_t)); logits = h @ E^T + b, with E the
word-embedding table (the decoder is tied to it unless the checkpoint stores its own
`cls.predictions.decoder.weight`). Output per mask: top_k dicts {score, token, token_str, sequence};
one mask → a list of dicts, several masks → a list of such lists (sequences then keep special tokens,
as transformers does, so the other masks stay visible).
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

from ..errors import InputError
from .base import Pipeline, check_text, check_top_k, linear, softmax

_ACTIVATIONS = {
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0))),
    "gelu_new": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
    "gelu_pytorch_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
    "relu": lambda x: np.maximum(x, 0.0),
}


class FillMaskPipeline(Pipeline):
    task = "fill-mask"
    defaults = {"top_k": 5}

    def __init__(self, model, folder, **kwargs):
        super().__init__(model, folder, **kwargs)
        c = model.config
        H, V = c.hidden_size, c.vocab_size
        p = "cls.predictions."
        self.dense_w = self.head_tensor(p + "transform.dense.weight", (H, H))
        self.dense_b = self.head_tensor(p + "transform.dense.bias", (H,))
        self.norm_g = self.head_tensor(p + "transform.LayerNorm.weight", (H,))
        self.norm_b = self.head_tensor(p + "transform.LayerNorm.bias", (H,))
        heads = model.encoder.weights.heads
        # Tied decoder: transformers omits the weight (and its bias, which is cls.predictions.bias).
        if p + "decoder.weight" in heads:
            self.decoder_w = self.head_tensor(p + "decoder.weight", (V, H))
        else:
            self.decoder_w = model.encoder.weights.word_emb
        bias_name = p + "decoder.bias" if p + "decoder.bias" in heads else p + "bias"
        self.decoder_b = self.head_tensor(bias_name, (V,))
        self.act = _ACTIVATIONS[c.hidden_act]
        self.eps = c.layer_norm_eps
        self.mask_id = self.raw_tokenizer().token_to_id("[MASK]")
        if self.mask_id is None:
            raise InputError("the tokenizer has no [MASK] token; fill-mask needs one")

    def _check_options(self, opts):
        opts["top_k"] = min(check_top_k(opts["top_k"]), self.model.config.vocab_size)
        return opts

    def _mlm_logits(self, h: np.ndarray) -> np.ndarray:
        """(n, H) hidden states at mask positions → (n, V) vocabulary logits."""
        t = self.act(linear(h, self.dense_w, self.dense_b))
        mu = t.mean(axis=-1, keepdims=True)
        var = ((t - mu) ** 2).mean(axis=-1, keepdims=True)
        t = (t - mu) / np.sqrt(var + self.eps) * self.norm_g + self.norm_b
        return linear(t.astype(np.float32), self.decoder_w, self.decoder_b)

    def _run_chunk(self, chunk, opts):
        texts = [check_text(t, "text") for t in chunk]
        encodings = self.model.tokenize(texts).encodings
        for text, enc in zip(texts, encodings):
            if self.mask_id not in enc.ids:
                raise InputError(
                    f"no [MASK] token in the text {text!r:.100} (after truncation to "
                    f"{self.model.tokenizer.max_length} tokens); fill-mask needs at least one"
                )

        def head(out, ids, mask, types):
            rows = []
            for hidden, row in zip(out.last_hidden_state, ids):
                where = np.flatnonzero(row == self.mask_id)
                rows.append(softmax(self._mlm_logits(hidden[where])))  # (n_mask, V)
            return rows

        probs = self.forward(encodings, head)
        return [self._predictions(enc, p, opts["top_k"]) for enc, p in zip(encodings, probs)]

    def _predictions(self, enc, probs: np.ndarray, top_k: int):
        raw = self.raw_tokenizer()
        ids = np.array(enc.ids)
        where = np.flatnonzero(ids == self.mask_id)
        single = len(where) == 1
        result = []
        for pos, p in zip(where, probs):
            top = np.argsort(-p, kind="stable")[:top_k]
            row = []
            for t in top:
                filled = ids.copy()
                filled[pos] = t
                row.append({
                    "score": float(p[t]),
                    "token": int(t),
                    "token_str": raw.decode([int(t)], skip_special_tokens=False),
                    "sequence": raw.decode(filled.tolist(), skip_special_tokens=single),
                })
            result.append(row)
        return result[0] if single else result
