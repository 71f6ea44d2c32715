"""Checkpoint tensors → a frozen, shape-checked weights container.

Stage two of loading (readers produce a name→array dict with Hugging Face names; this module maps them
once, through `_LAYER_TABLE` / `_EMBEDDING_TABLE`, to internal names and checks every shape against the
config). Compression into sparse formats is a separate, later step (`sparsebert.linear`).

Internal names: `qkv` (query, key and value stacked, (3H, H)), `attn_out` (H, H), `ffn_in` (I, H),
`ffn_out` (H, I), `attn_norm`, `ffn_norm`. Linear weights keep PyTorch's (out, in) orientation, which is
exactly what `Y = W @ X` on the (B, F, S) layout needs: no transposes happen here. (ONNX readers
transpose their (in, out) initializers before handing the dict over.)

Task-head tensors (classifier, qa_outputs, cls.predictions...) are kept aside, unchecked, in `heads` for
the pipelines to claim; anything else unexpected is an error.

Int8 checkpoints (a `sparsebert quantize` folder, an int8 ONNX export) arrive as float tensors (codes
* scale, what the file computes) plus, beside them, each quantized linear's `Int8Weight` by checkpoint
name; `build_weights` stacks those like the float weights (Q, K and V into qkv) and hands them to the
model in `LayerWeights.int8`, where `sparsebert.dispatch` builds int8 linears from them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

import numpy as np

from .config import BertConfig
from .errors import CheckpointError, ConfigError


@dataclasses.dataclass(frozen=True)
class LayerNormWeights:
    gamma: np.ndarray  # (H,)
    beta: np.ndarray  # (H,)


@dataclasses.dataclass(frozen=True)
class Int8Weight:
    """A linear's weight as stored int8: W = codes * scale[:, None] / smooth[None, :]."""

    codes: np.ndarray  # (N, K) int8, symmetric, in [-127, 127]
    scale: np.ndarray  # (N,) float32, per output channel
    smooth: np.ndarray | None = None  # (K,) float32 SmoothQuant factors, None for ones
    # What the checkpoint does with activations: "per-token" (quantized at run time, w8a8) or
    # "float" (a weight-only export: activations stay float, so the model runs the float weight).
    activations: str = "per-token"

    def dequantized(self) -> np.ndarray:
        w = self.codes.astype(np.float32) * self.scale[:, None]
        return w if self.smooth is None else w / self.smooth[None, :]


@dataclasses.dataclass(frozen=True)
class LayerWeights:
    qkv_w: np.ndarray  # (3H, H): rows [0,H) query, [H,2H) key, [2H,3H) value
    qkv_b: np.ndarray  # (3H,)
    attn_out_w: np.ndarray  # (H, H)
    attn_out_b: np.ndarray  # (H,)
    attn_norm: LayerNormWeights
    ffn_in_w: np.ndarray  # (I, H)
    ffn_in_b: np.ndarray  # (I,)
    ffn_out_w: np.ndarray  # (H, I)
    ffn_out_b: np.ndarray  # (H,)
    ffn_norm: LayerNormWeights
    # Int8 form of linears the checkpoint stores quantized, by internal name (qkv, attn_out, ...).
    int8: Mapping[str, Int8Weight] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class BertWeights:
    config: BertConfig
    word_emb: np.ndarray  # (V, H)
    pos_emb: np.ndarray  # (P, H)
    type_emb: np.ndarray | None  # (TV, H), None when the checkpoint has no token-type path
    emb_norm: LayerNormWeights
    layers: tuple[LayerWeights, ...]
    pooler_w: np.ndarray | None  # (H, H)
    pooler_b: np.ndarray | None  # (H,)
    heads: Mapping[str, np.ndarray]  # task-head tensors by checkpoint name (prefix stripped)
    source_layers: tuple[int, ...]  # checkpoint index of each kept layer


# Checkpoint name (within `encoder.layer.{i}.`) → (internal field, expected shape as a function of
# (H, I)). Q, K and V are stacked into qkv afterwards.
_LAYER_TABLE = {
    "attention.self.query.weight": ("q_w", lambda H, I: (H, H)),
    "attention.self.query.bias": ("q_b", lambda H, I: (H,)),
    "attention.self.key.weight": ("k_w", lambda H, I: (H, H)),
    "attention.self.key.bias": ("k_b", lambda H, I: (H,)),
    "attention.self.value.weight": ("v_w", lambda H, I: (H, H)),
    "attention.self.value.bias": ("v_b", lambda H, I: (H,)),
    "attention.output.dense.weight": ("attn_out_w", lambda H, I: (H, H)),
    "attention.output.dense.bias": ("attn_out_b", lambda H, I: (H,)),
    "attention.output.LayerNorm.weight": ("attn_norm_g", lambda H, I: (H,)),
    "attention.output.LayerNorm.bias": ("attn_norm_b", lambda H, I: (H,)),
    "intermediate.dense.weight": ("ffn_in_w", lambda H, I: (I, H)),
    "intermediate.dense.bias": ("ffn_in_b", lambda H, I: (I,)),
    "output.dense.weight": ("ffn_out_w", lambda H, I: (H, I)),
    "output.dense.bias": ("ffn_out_b", lambda H, I: (H,)),
    "output.LayerNorm.weight": ("ffn_norm_g", lambda H, I: (H,)),
    "output.LayerNorm.bias": ("ffn_norm_b", lambda H, I: (H,)),
}

_EMBEDDING_TABLE = {
    "embeddings.word_embeddings.weight": lambda c: (c.vocab_size, c.hidden_size),
    "embeddings.position_embeddings.weight": lambda c: (c.max_position_embeddings, c.hidden_size),
    "embeddings.token_type_embeddings.weight": lambda c: (c.type_vocab_size, c.hidden_size),
    "embeddings.LayerNorm.weight": lambda c: (c.hidden_size,),
    "embeddings.LayerNorm.bias": lambda c: (c.hidden_size,),
    "pooler.dense.weight": lambda c: (c.hidden_size, c.hidden_size),
    "pooler.dense.bias": lambda c: (c.hidden_size,),
}

# Buffers that carry no learned values.
_IGNORED = ("embeddings.position_ids", "embeddings.token_type_ids")
# Old TF-converted checkpoints name LayerNorm parameters gamma/beta.
_LEGACY_SUFFIXES = {".gamma": ".weight", ".beta": ".bias"}
# Prefixes of task heads (HF BertFor... classes); kept for pipelines.
_HEAD_PREFIXES = ("classifier.", "qa_outputs.", "cls.")
_LAYER_RE = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")


def normalize_names(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip a `bert.` prefix (BertFor... checkpoints) and legacy gamma/beta suffixes."""
    out: dict[str, np.ndarray] = {}
    for name, value in state_dict.items():
        key = name[len("bert."):] if name.startswith("bert.") else name
        for old, new in _LEGACY_SUFFIXES.items():
            if key.endswith(old) and "LayerNorm" in key:
                key = key[: -len(old)] + new
        if key in out:
            raise CheckpointError(f"tensor {key!r} appears twice in the checkpoint (as {name!r})")
        out[key] = value
    return out


def select_layers(layers: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """Validate a layer-dropping choice: indices into the checkpoint's layers, in the order given."""
    if layers is None:
        return tuple(range(num_layers))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise ConfigError(f"layers must be a sequence of layer indices, got {layers!r}")
    chosen = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise ConfigError(f"layers must hold integers, got {i!r} in {list(layers)!r}")
        if not 0 <= i < num_layers:
            raise ConfigError(
                f"layer index {i} is out of range: the checkpoint has {num_layers} layers "
                f"(valid indices 0..{num_layers - 1})"
            )
        chosen.append(int(i))
    if not chosen:
        raise ConfigError("layers is empty: keep at least one encoder layer")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"layers repeats an index: {chosen}; each layer may be kept once")
    return tuple(chosen)


def build_weights(
    state_dict: Mapping[str, np.ndarray],
    config: BertConfig,
    layers: Sequence[int] | None = None,
    int8: Mapping[str, Int8Weight] | None = None,
) -> BertWeights:
    """Map, check and freeze a checkpoint's tensors. `layers` keeps a subset of encoder layers.
    `int8`: the int8 form of quantized linears by checkpoint name (`encoder.layer.0.attention.self.
    query`; see `sparsebert.loaders.Checkpoint.int8`), carried into `LayerWeights.int8`."""
    sd = normalize_names(state_dict)
    H, I = config.hidden_size, config.intermediate_size

    per_layer: dict[int, dict[str, np.ndarray]] = {}
    top: dict[str, np.ndarray] = {}
    heads: dict[str, np.ndarray] = {}
    unexpected = []
    for name, value in sd.items():
        m = _LAYER_RE.match(name)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            if rest not in _LAYER_TABLE:
                unexpected.append(name)
                continue
            per_layer.setdefault(idx, {})[rest] = value
        elif name in _EMBEDDING_TABLE:
            top[name] = value
        elif name.startswith(_HEAD_PREFIXES):
            heads[name] = _as_float32(name, value)
        elif name not in _IGNORED:
            unexpected.append(name)
    if unexpected:
        raise CheckpointError(
            f"unexpected tensors in checkpoint: {sorted(unexpected)[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}; this is not a BERT encoder checkpoint sparsebert "
            "understands (supported: BertModel and BertFor... task heads)"
        )

    n_ckpt = config.num_hidden_layers
    found = sorted(per_layer)
    if found != list(range(n_ckpt)):
        raise CheckpointError(
            f"config.json says num_hidden_layers={n_ckpt} but the checkpoint has encoder layers "
            f"{_ranges(found)}; fix num_hidden_layers or re-export the checkpoint"
        )
    kept = select_layers(layers, n_ckpt)

    def take(name, expected):
        if name not in top:
            raise CheckpointError(f"checkpoint is missing tensor {name!r} (shape {expected})")
        return _checked(name, top[name], expected)

    c = config
    word = take("embeddings.word_embeddings.weight", _EMBEDDING_TABLE["embeddings.word_embeddings.weight"](c))
    pos = take("embeddings.position_embeddings.weight", _EMBEDDING_TABLE["embeddings.position_embeddings.weight"](c))
    type_name = "embeddings.token_type_embeddings.weight"
    type_emb = take(type_name, _EMBEDDING_TABLE[type_name](c)) if type_name in top else None
    emb_norm = LayerNormWeights(
        take("embeddings.LayerNorm.weight", (H,)), take("embeddings.LayerNorm.bias", (H,))
    )
    has_pooler = "pooler.dense.weight" in top or "pooler.dense.bias" in top
    pooler_w = take("pooler.dense.weight", (H, H)) if has_pooler else None
    pooler_b = take("pooler.dense.bias", (H,)) if has_pooler else None

    layer_weights = []
    for idx in kept:
        tensors = per_layer[idx]
        t = {}
        for rest, (field, shape_fn) in _LAYER_TABLE.items():
            full = f"encoder.layer.{idx}.{rest}"
            if rest not in tensors:
                raise CheckpointError(f"checkpoint is missing tensor {full!r} (shape {shape_fn(H, I)})")
            t[field] = _checked(full, tensors[rest], shape_fn(H, I))
        layer_weights.append(
            LayerWeights(
                qkv_w=_frozen(np.concatenate([t["q_w"], t["k_w"], t["v_w"]], axis=0)),
                qkv_b=_frozen(np.concatenate([t["q_b"], t["k_b"], t["v_b"]])),
                attn_out_w=t["attn_out_w"],
                attn_out_b=t["attn_out_b"],
                attn_norm=LayerNormWeights(t["attn_norm_g"], t["attn_norm_b"]),
                ffn_in_w=t["ffn_in_w"],
                ffn_in_b=t["ffn_in_b"],
                ffn_out_w=t["ffn_out_w"],
                ffn_out_b=t["ffn_out_b"],
                ffn_norm=LayerNormWeights(t["ffn_norm_g"], t["ffn_norm_b"]),
                int8=_layer_int8(int8 or {}, idx),
            )
        )
    return BertWeights(
        config=config.replace(num_hidden_layers=len(kept)),
        word_emb=word,
        pos_emb=pos,
        type_emb=type_emb,
        emb_norm=emb_norm,
        layers=tuple(layer_weights),
        pooler_w=pooler_w,
        pooler_b=pooler_b,
        heads=heads,
        source_layers=kept,
    )


# Internal linear -> the checkpoint linears (within `encoder.layer.{i}.`) stacked into it, in order.
INT8_STACKS = {
    "qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attn_out": ("attention.output.dense",),
    "ffn_in": ("intermediate.dense",),
    "ffn_out": ("output.dense",),
}


def _layer_int8(int8: Mapping[str, Int8Weight], idx: int) -> dict[str, Int8Weight]:
    """The int8 weights of checkpoint layer `idx` by internal name, Q, K and V stacked as qkv_w is.
    A linear only part of whose stack is int8 (e.g. per-input-channel ONNX scales on K) stays float."""
    out = {}
    for internal, subs in INT8_STACKS.items():
        parts = [int8.get(f"encoder.layer.{idx}.{sub}") for sub in subs]
        if any(p is None for p in parts):
            continue
        smooth = [p.smooth for p in parts]
        if any(s is None for s in smooth) and any(s is not None for s in smooth) or \
                any(not np.array_equal(s, smooth[0]) for s in smooth if s is not None):
            raise CheckpointError(f"layer {idx} {internal}: the linears sharing this input must all "
                                  "carry the same input_smooth, or none")
        modes = {p.activations for p in parts}
        if len(modes) != 1:
            raise CheckpointError(f"layer {idx} {internal}: its linears disagree on activation "
                                  f"quantization ({sorted(modes)})")
        out[internal] = Int8Weight(np.concatenate([p.codes for p in parts]),
                                   np.concatenate([p.scale for p in parts]).astype(np.float32),
                                   smooth[0], modes.pop())
    return out


# Largest |weight| accepted. Trained BERT tensors stay below ~100; the bound keeps every activation
# (LayerNorm output <= sqrt(H) * |gamma| + |beta|) and pooled norms far from float32 overflow.
MAX_WEIGHT = 1e6


def _as_float32(name: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind != "f":
        raise CheckpointError(
            f"tensor {name!r} has dtype {arr.dtype}; expected a floating-point tensor"
        )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise CheckpointError(
            f"tensor {name!r} holds {bad} NaN/Inf values; the checkpoint is corrupt or was saved "
            "from a diverged training run"
        )
    peak = float(np.abs(arr).max()) if arr.size else 0.0
    if peak > MAX_WEIGHT:
        raise CheckpointError(
            f"tensor {name!r} holds a value of magnitude {peak:.3g}, above {MAX_WEIGHT:.0e}; trained "
            "BERT weights stay far below that, so the checkpoint is corrupt: re-download or re-export it"
        )
    return arr


def _checked(name: str, value, expected: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != tuple(expected):
        raise CheckpointError(
            f"tensor {name!r} has shape {tuple(arr.shape)}, but the config implies {tuple(expected)}; "
            "the config.json does not match the weights"
        )
    return _frozen(_as_float32(name, arr))


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    arr.flags.writeable = False
    return arr


def _ranges(idx: list[int]) -> str:
    if not idx:
        return "none"
    return f"{len(idx)} ({idx[:6]}{'...' if len(idx) > 6 else ''})"
