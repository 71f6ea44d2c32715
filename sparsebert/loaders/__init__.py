"""Checkpoint readers: find what a path holds and return config + name→array dict + tokenizer path.

Stage one of loading. Supported:
- a Hugging Face folder: config.json + model.safetensors (or a sharded model.safetensors.index.json,
  or pytorch_model.bin through torch's weights-only loader), tokenizer.json or vocab.txt;
- an ONNX file, or a folder holding model.onnx (the SparseML / DeepSparse deployment layout), with an
  optional config.json beside it that must agree with what the graph shows.
Int8 checkpoints come out here too, as the float tensors they compute (codes * scale) with each
quantized linear's exact codes and scales beside them in `Checkpoint.int8`: a `sparsebert quantize`
folder (`int8_folder.py`) and int8 ONNX exports (`onnx_quant.py`).
Nothing here interprets tensor names beyond ONNX graph recovery; `sparsebert.weights` maps them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from ..config import BertConfig
from ..errors import CheckpointError, ConfigError
from ..weights import Int8Weight
from .int8_folder import quantization_section, read_int8_folder
from .safetensors_reader import read_safetensors


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    config: BertConfig
    state_dict: dict[str, np.ndarray]
    tokenizer_path: Path | None  # tokenizer.json or vocab.txt, if the checkpoint ships one
    kind: str  # "safetensors" | "pytorch" | "onnx"
    source: Path
    # Quantized linears by checkpoint name (`encoder.layer.0.attention.self.query`): their exact
    # int8 form; `state_dict` holds the same weights in float (what the file computes).
    int8: dict[str, Int8Weight] = dataclasses.field(default_factory=dict)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"{str(path)!r} does not exist; pass a Hugging Face model folder, an .onnx file or a "
            "folder with model.onnx (no model hub access: download weights beforehand)"
        )
    if path.is_file():
        if path.suffix == ".onnx":
            return _read_onnx(path, path.parent)
        if path.name == "config.json" or path.suffix in (".safetensors", ".bin"):
            return read_checkpoint(path.parent)
        raise CheckpointError(
            f"{str(path)!r} is neither an .onnx file nor a model folder; pass the folder that "
            "holds config.json and model.safetensors"
        )
    if (path / "model.safetensors").is_file():
        return _read_hf(path, read_safetensors(path / "model.safetensors"), "safetensors")
    if (path / "model.safetensors.index.json").is_file():
        return _read_hf(path, _read_sharded(path), "safetensors")
    if (path / "pytorch_model.bin").is_file():
        from .torch_bin import read_torch_bin

        return _read_hf(path, read_torch_bin(path / "pytorch_model.bin"), "pytorch")
    if (path / "model.onnx").is_file():
        return _read_onnx(path / "model.onnx", path)
    onnx_files = sorted(path.glob("*.onnx"))
    if len(onnx_files) == 1:
        return _read_onnx(onnx_files[0], path)
    listing = sorted(p.name for p in path.iterdir())[:12]
    raise CheckpointError(
        f"{str(path)!r} holds no model sparsebert can read (found {listing}); expected "
        "config.json + model.safetensors, pytorch_model.bin, or model.onnx"
    )


def find_tokenizer(folder: Path) -> Path | None:
    for name in ("tokenizer.json", "vocab.txt"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_hf(folder: Path, state_dict, kind: str) -> Checkpoint:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{str(folder)!r} has weights but no config.json; copy the config.json the model was "
            "trained with into that folder"
        )
    config = BertConfig.from_json_file(cfg_path)
    section = quantization_section(folder) if kind == "safetensors" else None
    int8 = {}
    if section is not None:  # written by `sparsebert quantize`
        state_dict, int8 = read_int8_folder(folder, state_dict, section)
    return Checkpoint(config, state_dict, find_tokenizer(folder), kind, folder, int8)


def _read_sharded(folder: Path) -> dict[str, np.ndarray]:
    index_path = folder / "model.safetensors.index.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{str(index_path)!r} is not a valid shard index: {exc}") from None
    out: dict[str, np.ndarray] = {}
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise CheckpointError(
                f"{str(index_path)!r} names shard {shard!r} outside the model folder; refusing it"
            )
        out.update(read_safetensors(folder / shard))
    missing = sorted(set(weight_map) - set(out))
    if missing:
        raise CheckpointError(f"shards listed in {str(index_path)!r} lack tensors {missing[:5]}")
    return out


def _read_onnx(onnx_path: Path, folder: Path) -> Checkpoint:
    from .onnx_reader import read_onnx

    ckpt = read_onnx(onnx_path)
    inferred = dict(ckpt.config)
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        config = BertConfig.from_json_file(cfg_path)
        clashes = {
            k: (getattr(config, k), v)
            for k, v in inferred.items()
            if hasattr(config, k) and k != "hidden_act" and getattr(config, k) != v
            and not (k == "layer_norm_eps" and np.isclose(getattr(config, k), v, rtol=1e-3))
        }
        if clashes:
            raise CheckpointError(
                f"{str(cfg_path)!r} disagrees with the ONNX graph {str(onnx_path)!r} on "
                + ", ".join(f"{k} (config {a!r}, graph {b!r})" for k, (a, b) in clashes.items())
                + "; use the config.json the model was exported with"
            )
    else:
        if "num_attention_heads" not in inferred:
            raise CheckpointError(
                f"cannot tell the number of attention heads from {str(onnx_path)!r}; put the "
                "model's config.json next to it"
            )
        try:
            config = BertConfig.from_dict(inferred)
        except ConfigError as exc:
            raise CheckpointError(f"ONNX graph {str(onnx_path)!r} implies a bad config: {exc}") from exc
    tokenizer = find_tokenizer(folder) if (folder / "model.onnx").exists() or cfg_path.is_file() else None
    # --- task heads (pipelines owner): classifier / qa_outputs / MLM after the encoder, HF-named ---
    from .onnx_heads import read_onnx_heads

    heads = read_onnx_heads(ckpt.graph, config.hidden_size,
                            ckpt.state_dict["embeddings.word_embeddings.weight"])
    state_dict = {**ckpt.state_dict, **heads}
    # --- end task heads ---
    return Checkpoint(config, state_dict, tokenizer, "onnx", onnx_path, ckpt.int8)
