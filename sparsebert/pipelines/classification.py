"""Text classification (pooler → classifier) and token classification (classifier on each token).

Both reproduce the outputs of transformers' `text-classification` and `token-classification`
pipelines on BertForSequenceClassification / BertForTokenClassification checkpoints:

- text: softmax over labels (sigmoid for `problem_type` multi_label_classification or one label,
  none for regression); `{"label", "score"}`; `top_k` sorts and returns k dicts per input.
- token: softmax per token, special tokens skipped, character offsets from the tokenizer;
  aggregation_strategy "none" (one dict per token: entity/score/index/word/start/end), "simple"
  (adjacent B-/I- tokens of one type grouped), "first" / "max" / "average" (word-level label
  first, then grouped), entities labelled "O" dropped (ignore_labels).

What it leaves out: `function_to_apply` overrides other than the problem_type rule, long-text stride
for token classification (texts are truncated at the tokenizer's max_length).
"""

from __future__ import annotations

import numpy as np

from ..errors import CheckpointError, InputError
from .base import Pipeline, check_text, check_top_k, linear, read_json, sigmoid, softmax

_LEGACY = object()  # top_k not given: transformers' one-dict-per-input output shape


class TextClassificationPipeline(Pipeline):
    task = "text-classification"
    defaults = {"top_k": _LEGACY, "function_to_apply": None}

    def __init__(self, model, folder, **kwargs):
        super().__init__(model, folder, **kwargs)
        if model.encoder.pooler is None:
            raise CheckpointError(
                "the text-classification pipeline needs a BertForSequenceClassification checkpoint "
                "with a pooler (pooler.dense.weight/bias) and classifier.weight/bias; this "
                "checkpoint has no pooler"
            )
        H = model.config.hidden_size
        self.w = self.head_tensor("classifier.weight", (None, H))
        self.b = self.head_tensor("classifier.bias", (self.w.shape[0],))
        self.labels = self.label_names(self.w.shape[0])
        cfg = read_json(folder, "config.json") or {}
        self.problem_type = cfg.get("problem_type") if isinstance(cfg, dict) else None

    def _check_options(self, opts):
        if opts["top_k"] is not _LEGACY:
            opts["top_k"] = check_top_k(opts["top_k"], allow_none=True)
        fn = opts["function_to_apply"]
        if fn is not None and fn not in ("softmax", "sigmoid", "none"):
            raise ValueError(f"function_to_apply must be 'softmax', 'sigmoid' or 'none', got {fn!r}")
        return opts

    def _is_single(self, inputs) -> bool:
        return isinstance(inputs, (str, dict))

    def _function(self, opts) -> str:
        if opts["function_to_apply"] is not None:
            return opts["function_to_apply"]
        if self.problem_type == "regression":
            return "none"
        if self.problem_type == "multi_label_classification" or len(self.labels) == 1:
            return "sigmoid"
        return "softmax"

    def _run_chunk(self, chunk, opts):
        texts, pairs = [], []
        for i, item in enumerate(chunk):
            if isinstance(item, dict):
                unknown = set(item) - {"text", "text_pair"}
                if "text" not in item or unknown:
                    raise InputError(
                        f"a text-classification input dict needs keys 'text' and optionally "
                        f"'text_pair', got {sorted(item)}"
                    )
                texts.append(check_text(item["text"], "text"))
                pair = item.get("text_pair")
                pairs.append(None if pair is None else check_text(pair, "text_pair"))
            else:
                texts.append(check_text(item, "text"))
                pairs.append(None)
        encodings = encode_mixed(self.model, texts, pairs)

        def head(out, ids, mask, types):
            return linear(out.pooler_output, self.w, self.b)  # (b, L)

        logits = self.forward(encodings, head)
        fn = self._function(opts)
        results = []
        for row in logits:
            scores = softmax(row) if fn == "softmax" else sigmoid(row) if fn == "sigmoid" else row
            top_k = opts["top_k"]
            if top_k is _LEGACY:
                best = int(np.argmax(scores))
                results.append({"label": self.labels[best], "score": float(scores[best])})
                continue
            order = np.argsort(-scores, kind="stable")[: top_k]
            results.append([{"label": self.labels[i], "score": float(scores[i])} for i in order])
        return results

    def __call__(self, inputs, **options):
        result = super().__call__(inputs, **options)
        # transformers answers one string (not a dict pair) without top_k with a one-item list.
        if isinstance(inputs, str) and isinstance(result, dict):
            return [result]
        return result


class TokenClassificationPipeline(Pipeline):
    task = "token-classification"
    defaults = {"aggregation_strategy": "none", "ignore_labels": ("O",)}
    STRATEGIES = ("none", "simple", "first", "max", "average")

    def __init__(self, model, folder, **kwargs):
        super().__init__(model, folder, **kwargs)
        H = model.config.hidden_size
        self.w = self.head_tensor("classifier.weight", (None, H))
        self.b = self.head_tensor("classifier.bias", (self.w.shape[0],))
        self.labels = self.label_names(self.w.shape[0])
        raw = self.raw_tokenizer()
        self.word_aware = bool(getattr(raw.model, "continuing_subword_prefix", None))
        self.unk_id = raw.token_to_id("[UNK]")

    def _check_options(self, opts):
        strategy = opts["aggregation_strategy"]
        strategy = strategy.lower() if isinstance(strategy, str) else strategy
        if strategy not in self.STRATEGIES:
            raise ValueError(f"aggregation_strategy must be one of {self.STRATEGIES}, got {strategy!r}")
        opts["aggregation_strategy"] = strategy
        if isinstance(opts["ignore_labels"], str):
            raise ValueError("ignore_labels must be a list of labels, e.g. ['O']")
        opts["ignore_labels"] = tuple(opts["ignore_labels"] or ())
        return opts

    def _run_chunk(self, chunk, opts):
        texts = [check_text(t, "text") for t in chunk]
        encodings = self.model.tokenize(texts).encodings

        def head(out, ids, mask, types):
            logits = linear(out.last_hidden_state, self.w, self.b)  # (b, T, L)
            return [lg[: int(m.sum())] for lg, m in zip(logits, mask)]

        logits = self.forward(encodings, head)
        return [self._entities(t, e, lg, opts) for t, e, lg in zip(texts, encodings, logits)]

    def _entities(self, text, enc, logits, opts) -> list[dict]:
        strategy = opts["aggregation_strategy"]
        scores = softmax(logits)  # (T, L)
        pre = []
        for idx, token_scores in enumerate(scores):
            if enc.special_tokens_mask[idx]:
                continue
            word = enc.tokens[idx]
            start, end = enc.offsets[idx]
            ref = text[start:end]
            if self.word_aware:
                is_subword = len(word) != len(ref)
            else:
                is_subword = start > 0 and " " not in text[start - 1:start + 1]
            if enc.ids[idx] == self.unk_id:
                word, is_subword = ref, False
            pre.append({"word": word, "scores": token_scores, "start": start, "end": end,
                        "index": idx, "is_subword": is_subword})
        if strategy in ("none", "simple"):
            entities = []
            for p in pre:
                best = int(p["scores"].argmax())
                entities.append({"entity": self.labels[best], "score": float(p["scores"][best]),
                                 "index": p["index"], "word": p["word"], "start": p["start"],
                                 "end": p["end"]})
        else:
            entities = self._words(pre, strategy)
        if strategy != "none":
            entities = self._group(entities)
        ignore = opts["ignore_labels"]
        return [e for e in entities
                if e.get("entity") not in ignore and e.get("entity_group") not in ignore]

    def _decode_tokens(self, tokens: list[str]) -> str:
        decoder = self.raw_tokenizer().decoder
        if decoder is None:
            return " ".join(tokens)
        return decoder.decode(tokens)

    def _words(self, pre, strategy) -> list[dict]:
        groups: list[list[dict]] = []
        for p in pre:
            if groups and p["is_subword"]:
                groups[-1].append(p)
            else:
                groups.append([p])
        words = []
        for g in groups:
            if strategy == "first":
                scores = g[0]["scores"]
            elif strategy == "max":
                scores = max(g, key=lambda p: p["scores"].max())["scores"]
            else:
                scores = np.nanmean(np.stack([p["scores"] for p in g]), axis=0)
            best = int(scores.argmax())
            words.append({"entity": self.labels[best], "score": float(scores[best]),
                          "word": self._decode_tokens([p["word"] for p in g]),
                          "start": g[0]["start"], "end": g[-1]["end"]})
        return words

    def _group(self, entities) -> list[dict]:
        groups: list[list[dict]] = []
        for e in entities:
            bi, tag = _bio(e["entity"])
            if groups and bi != "B" and tag == _bio(groups[-1][-1]["entity"])[1]:
                groups[-1].append(e)
            else:
                groups.append([e])
        return [{"entity_group": g[0]["entity"].split("-", 1)[-1],
                 "score": float(np.mean([e["score"] for e in g])),
                 "word": self._decode_tokens([e["word"] for e in g]),
                 "start": g[0]["start"], "end": g[-1]["end"]} for g in groups]


def _bio(label: str) -> tuple[str, str]:
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def encode_mixed(model, texts: list[str], pairs: list[str | None]) -> list:
    """Tokenize a chunk where some inputs are pairs and others single texts; encodings in order."""
    out: list = [None] * len(texts)
    single = [i for i, p in enumerate(pairs) if p is None]
    paired = [i for i, p in enumerate(pairs) if p is not None]
    if single:
        for i, e in zip(single, model.tokenize([texts[i] for i in single]).encodings):
            out[i] = e
    if paired:
        encs = model.tokenize([texts[i] for i in paired], [pairs[i] for i in paired]).encodings
        for i, e in zip(paired, encs):
            out[i] = e
    return out
