"""One-shot magnitude pruning of a BERT checkpoint into a Hugging Face folder with exact zeros.

`prune_checkpoint(src, dst, sparsity=0.9)` reads any checkpoint sparsebert can read, zeroes the
smallest-magnitude weights of the six encoder linears of every layer (query, key, value, attention
output, intermediate, output), optionally keeps only some layers, and writes `dst` as a Hugging Face
folder: config.json, model.safetensors (exact zeros, dense storage) and the tokenizer /
sentence-transformers files. The result loads in sparsebert, in transformers' `BertModel` and
exports through torch.onnx like any other BERT checkpoint.

Granularity: unstructured (one weight at a time) or aligned R x C blocks of W (out, in), ranked by
the block's L2 norm, the shape sparsebert's BSR kernels exploit. Scope: "per-layer" prunes every
linear to the target on its own; "global" ranks all encoder linears together under one threshold,
so layers with small weights lose more. The count of zeroed units is round(sparsity * units),
exactly (ties at the threshold are broken arbitrarily).

Deliberately left out: embeddings, LayerNorms, biases, the pooler and task heads stay dense;
no fine-tuning or recovery (accuracy after one-shot pruning of a real model drops: this is a tool
for producing sparse checkpoints and for benchmarks, not a training recipe); no movement or
second-order pruning. Tensor names are kept as in the source (a `bert.` prefix survives), so task
heads stay attached.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import CheckpointError
from .loaders import read_checkpoint
from .weights import select_layers

SCOPES = ("per-layer", "global")

# The six encoder linears, by their name inside `encoder.layer.{i}.`.
ENCODER_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
_LAYER_RE = re.compile(r"^(?P<prefix>(?:bert\.)?encoder\.layer\.)(?P<idx>\d+)\.(?P<rest>.+)$")

# Files beside the weights that describe tokenization or sentence-transformers pooling.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "modules.json",
)
_MODULE_DIR_RE = re.compile(r"^\d+_[A-Za-z]+$")  # sentence-transformers module folders: 1_Pooling


def parse_block(block) -> tuple[int, int]:
    """'4x1' / (4, 1) / None → (R, C); (1, 1) means unstructured."""
    if block is None:
        return (1, 1)
    if isinstance(block, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", block)
        if not m:
            raise ValueError(f"block must look like '4x1' (rows x columns of W), got {block!r}")
        block = (int(m.group(1)), int(m.group(2)))
    try:
        R, C = (int(v) for v in block)
    except (TypeError, ValueError):
        raise ValueError(f"block must be 'RxC' or a pair of integers, got {block!r}") from None
    if R < 1 or C < 1:
        raise ValueError(f"block dimensions must be positive, got {(R, C)}")
    return R, C


def check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating)):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {s!r}; 0.9 zeroes 90% of the weights")
    return s


def block_scores(weight: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """L2 norm of each aligned R x C block of W (N, K) → (N/R, K/C); |w| for 1x1."""
    R, C = block
    N, K = weight.shape
    w = np.asarray(weight, dtype=np.float32)
    if (R, C) == (1, 1):
        return np.abs(w)
    if N % R or K % C:
        raise ValueError(
            f"block {R}x{C} does not divide the weight shape {(N, K)}; pick a block whose rows "
            f"divide {N} and whose columns divide {K}"
        )
    blocks = w.reshape(N // R, R, K // C, C)
    return np.sqrt(np.einsum("arbc,arbc->ab", blocks, blocks))


def lowest_mask(scores: np.ndarray, n_zero: int) -> np.ndarray:
    """Boolean keep-mask over `scores` (any shape) that drops exactly the n_zero lowest entries."""
    flat = scores.ravel()
    keep = np.ones(flat.size, dtype=bool)
    if n_zero >= flat.size:
        keep[:] = False
    elif n_zero > 0:
        keep[np.argpartition(flat, n_zero - 1)[:n_zero]] = False
    return keep.reshape(scores.shape)


def expand_mask(keep_blocks: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Block keep-mask (N/R, K/C) → element mask (N, K)."""
    R, C = block
    if (R, C) == (1, 1):
        return keep_blocks
    return np.repeat(np.repeat(keep_blocks, R, axis=0), C, axis=1)


def prune_weights(
    weights: Mapping[str, np.ndarray],
    sparsity: float,
    *,
    block=None,
    scope: str = "per-layer",
) -> dict[str, np.ndarray]:
    """Magnitude-prune a name → (N, K) weight dict; returns new float arrays with exact zeros.

    per-layer: each weight loses round(sparsity * units) of its units (weights or R x C blocks);
    global: round(sparsity * all units) units with the lowest scores over every weight together."""
    s = check_sparsity(sparsity)
    blk = parse_block(block)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    scores = {name: block_scores(w, blk) for name, w in weights.items()}
    if scope == "per-layer":
        keeps = {name: lowest_mask(sc, int(round(s * sc.size))) for name, sc in scores.items()}
    else:
        names = list(scores)
        flat = np.concatenate([scores[n].ravel() for n in names]) if names else np.zeros(0)
        keep_flat = lowest_mask(flat, int(round(s * flat.size)))
        keeps, start = {}, 0
        for n in names:
            size = scores[n].size
            keeps[n] = keep_flat[start:start + size].reshape(scores[n].shape)
            start += size
    out = {}
    for name, w in weights.items():
        w = np.asarray(w)
        out[name] = np.where(expand_mask(keeps[name], blk), w, np.zeros((), dtype=w.dtype))
    return out


def drop_layers(state_dict: Mapping[str, np.ndarray], layers: Sequence[int], num_layers: int):
    """Keep encoder layers `layers` (checkpoint indices, in this order) renumbered 0.. ; other
    tensors unchanged."""
    kept = select_layers(layers, num_layers)
    new_index = {old: new for new, old in enumerate(kept)}
    out = {}
    for name, value in state_dict.items():
        m = _LAYER_RE.match(name)
        if m is None:
            out[name] = value
        elif int(m.group("idx")) in new_index:
            out[f"{m.group('prefix')}{new_index[int(m.group('idx'))]}.{m.group('rest')}"] = value
    return out, kept


def encoder_linear_names(state_dict: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the encoder linear weights (six per layer), in checkpoint order."""
    names = []
    for name in state_dict:
        m = _LAYER_RE.match(name)
        if m and m.group("rest").endswith(".weight") and m.group("rest")[:-7] in ENCODER_LINEARS:
            names.append(name)
    return names


def prune_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    sparsity: float,
    block=None,
    scope: str = "per-layer",
    layers: Sequence[int] | None = None,
    overwrite: bool = False,
) -> dict:
    """Prune `src` into the Hugging Face folder `dst`; returns a summary dict (achieved sparsity per
    linear and overall, layers kept, files written)."""
    start = time.perf_counter()
    s = check_sparsity(sparsity)
    blk = parse_block(block)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    src, dst = Path(src), Path(dst)
    src_folder = src if src.is_dir() else src.parent
    _check_destination(src, src_folder, dst, overwrite)

    ckpt = read_checkpoint(src)
    n_layers = ckpt.config.num_hidden_layers
    state = dict(ckpt.state_dict)
    kept = tuple(range(n_layers))
    if layers is not None:
        state, kept = drop_layers(state, layers, n_layers)

    names = encoder_linear_names(state)
    if len(names) != 6 * len(kept):
        raise CheckpointError(
            f"expected 6 encoder linear weights per layer ({6 * len(kept)} in all), found "
            f"{len(names)} in {str(src)!r}; is this a BERT encoder checkpoint?"
        )
    for name in names:
        if np.asarray(state[name]).dtype.kind != "f":
            raise CheckpointError(f"tensor {name!r} has dtype {state[name].dtype}; expected floats")
    pruned = prune_weights({n: state[n] for n in names}, s, block=blk, scope=scope)
    state.update(pruned)

    dst.mkdir(parents=True, exist_ok=True)
    config = _config_dict(src_folder, ckpt, len(kept))
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    _save_safetensors(state, dst / "model.safetensors")
    copied = _copy_tokenizer_files(src_folder, dst)

    rows = []
    for name in names:
        w = pruned[name]
        rows.append({"name": name, "shape": list(w.shape),
                     "sparsity": 1.0 - np.count_nonzero(w) / w.size})
    total = sum(r["shape"][0] * r["shape"][1] for r in rows)
    zeros = sum(w.size - np.count_nonzero(w) for w in pruned.values())
    return {
        "source": str(src),
        "output": str(dst),
        "target_sparsity": s,
        "block": f"{blk[0]}x{blk[1]}",
        "scope": scope,
        "layers_kept": list(kept),
        "num_hidden_layers": len(kept),
        "encoder_linear_sparsity": zeros / total if total else 0.0,
        "linears": rows,
        "copied": copied,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _check_destination(src: Path, src_folder: Path, dst: Path, overwrite: bool) -> None:
    d = dst.resolve()
    if d == src.resolve() or d == src_folder.resolve():
        raise ValueError(
            f"destination {str(dst)!r} is the source; write the pruned model to a new folder"
        )
    if d.exists() and not d.is_dir():
        raise ValueError(f"destination {str(dst)!r} exists and is not a folder")
    if d.is_dir() and any(d.iterdir()) and not overwrite:
        raise ValueError(
            f"destination {str(dst)!r} is not empty; choose an empty folder or pass --overwrite"
        )


def _config_dict(src_folder: Path, ckpt, num_layers: int) -> dict:
    """The source config.json with the new layer count (unknown keys kept), or, for a checkpoint
    without one (a bare ONNX file), the config sparsebert inferred."""
    cfg_path = src_folder / "config.json"
    raw = None
    if cfg_path.is_file():
        try:
            raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raw = None  # read_checkpoint accepted the checkpoint without it (ONNX): infer below
    if not isinstance(raw, dict):
        raw = ckpt.config.to_dict()
    raw["num_hidden_layers"] = num_layers
    return raw


def _save_safetensors(state: Mapping[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file

    tensors = {name: np.ascontiguousarray(value) for name, value in state.items()}
    # transformers refuses safetensors files without format metadata ("pt" as torch writes it).
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def _copy_tokenizer_files(src_folder: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src_folder / name).is_file():
            shutil.copyfile(src_folder / name, dst / name)
            copied.append(name)
    for sub in sorted(src_folder.iterdir()):
        if sub.is_dir() and _MODULE_DIR_RE.match(sub.name):
            shutil.copytree(sub, dst / sub.name, dirs_exist_ok=True)
            copied.append(sub.name + "/")
    return copied
