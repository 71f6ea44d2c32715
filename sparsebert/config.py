"""One frozen, validated BERT configuration, keyed by Hugging Face `BertConfig` names.

`BertConfig.from_dict` accepts a parsed config.json (BertModel or any BertFor... head variant) and
rejects unknown activations, inconsistent head counts and out-of-range sizes with a message that
quotes the bad value. Keys that only matter to training (dropout, initializer_range, ...) are
ignored. What is deliberately not modelled: relative position embeddings and decoder options;
they raise instead of silently computing something else.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from .errors import ConfigError

# GELU flavours. "gelu" is the exact erf form that BERT checkpoints are trained with.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")

# Upper bounds that keep a hostile config.json from asking for absurd allocations; they are far
# above any real BERT-family encoder.
_LIMITS = {
    "vocab_size": 1_000_000,
    "hidden_size": 16_384,
    "num_hidden_layers": 256,
    "num_attention_heads": 256,
    "intermediate_size": 65_536,
    "max_position_embeddings": 65_536,
    "type_vocab_size": 1_024,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Task-head metadata, used by pipelines; the encoder ignores them.
    architectures: tuple[str, ...] = ()
    id2label: tuple[tuple[int, str], ...] = ()

    def __post_init__(self):
        for key, limit in _LIMITS.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"config {key!r} must be an integer, got {value!r}")
            low = 0 if key == "type_vocab_size" else 1
            if not low <= value <= limit:
                raise ConfigError(
                    f"config {key!r} = {value} is out of range [{low}, {limit}]; "
                    "check config.json"
                )
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}; each head needs hidden_size / heads features"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"hidden_act {self.hidden_act!r} is not supported; expected one of {ACTIVATIONS}"
            )
        eps = self.layer_norm_eps
        # Below ~1e-30 the float32 eps the kernels use underflows to 0 (or a denormal), and a
        # constant feature row would divide by zero.
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 1e-30 <= eps < 1:
            raise ConfigError(f"layer_norm_eps must be a float in [1e-30, 1), got {eps!r}")
        pad = self.pad_token_id
        if isinstance(pad, bool) or not isinstance(pad, int) or not 0 <= pad < self.vocab_size:
            raise ConfigError(
                f"pad_token_id {self.pad_token_id!r} is outside the vocabulary "
                f"[0, {self.vocab_size})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def labels(self) -> dict[int, str]:
        return dict(self.id2label)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "BertConfig":
        if not isinstance(raw, Mapping):
            raise ConfigError(f"config must be a JSON object, got {type(raw).__name__}")
        model_type = raw.get("model_type", "bert")
        if model_type not in ("bert",):
            raise ConfigError(
                f"model_type {model_type!r} is not supported; sparsebert runs BERT encoders "
                "(model_type 'bert')"
            )
        pos_type = raw.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ConfigError(
                f"position_embedding_type {pos_type!r} is not supported; only 'absolute' is"
            )
        if raw.get("is_decoder") or raw.get("add_cross_attention"):
            raise ConfigError("decoder configs (is_decoder / add_cross_attention) are not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: raw[k] for k in fields if k in raw and k not in ("architectures", "id2label")}
        if "hidden_act" in kwargs and not isinstance(kwargs["hidden_act"], str):
            raise ConfigError(f"hidden_act must be a string, got {kwargs['hidden_act']!r}")
        if "pad_token_id" in kwargs and kwargs["pad_token_id"] is None:
            kwargs["pad_token_id"] = 0
        archs = raw.get("architectures") or ()
        if not isinstance(archs, (list, tuple)) or not all(isinstance(a, str) for a in archs):
            raise ConfigError(f"architectures must be a list of strings, got {archs!r}")
        kwargs["architectures"] = tuple(archs)
        kwargs["id2label"] = _parse_id2label(raw.get("id2label"))
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "BertConfig":
        try:
            with open(path, "rb") as f:
                data = f.read((1 << 20) + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc}") from exc
        if len(data) > 1 << 20:
            raise ConfigError(f"config file {os.fspath(path)!r} is larger than 1 MiB; not a config")
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"config file {os.fspath(path)!r} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw)

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A config.json-compatible dict (transformers can load it as BertConfig)."""
        d = dataclasses.asdict(self)
        d["architectures"] = list(self.architectures)
        d["id2label"] = {str(k): v for k, v in self.id2label}
        if not d["id2label"]:
            del d["id2label"]
        else:
            d["label2id"] = {v: k for k, v in self.id2label}
        d["model_type"] = "bert"
        d["position_embedding_type"] = "absolute"
        return d


def _parse_id2label(raw) -> tuple[tuple[int, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"id2label must be an object mapping ids to labels, got {raw!r}")
    out = []
    for key, label in raw.items():
        try:
            idx = int(key)
        except (TypeError, ValueError):
            raise ConfigError(f"id2label key {key!r} is not an integer") from None
        if not isinstance(label, str):
            raise ConfigError(f"id2label[{key!r}] must be a string, got {label!r}")
        out.append((idx, label))
    out.sort()
    if [i for i, _ in out] != list(range(len(out))):
        raise ConfigError(f"id2label keys must be 0..{len(out) - 1}, got {[i for i, _ in out]}")
    return tuple(out)
