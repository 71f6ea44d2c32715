"""Quantized checkpoints: `quantize(src, dst)` writes one; `sparsebert.loaders` reads it back exactly
(`loaders/int8_folder.py`); `quantize_model` quantizes a loaded model in memory.

A quantized folder is a Hugging Face folder whose model.safetensors holds every encoder linear
weight as `<name>.weight_int8` (int8 codes, (out, in)) + `<name>.weight_scale` (float32, (out,))
instead of `<name>.weight` (plus `<name>.input_smooth` (in,) when calibrated with SmoothQuant, see
`calibrate.py`; the codes then stand for W * smooth), every other tensor unchanged (float32), and
whose config.json carries

    "quantization": {"method": "sparsebert-int8", "version": 1,
                     "weights": "symmetric-per-channel", "activations": "dynamic-per-token",
                     "linears": ["encoder.layer.0.attention.self.query", ...]}

Loading validates that section and every listed tensor, and hands the model int8 linears built
from the stored codes and scales, so nothing passes through a lossy round trip. Other readers (transformers) will not load this folder: the
QDQ ONNX beside it (`sparsebert.quant.onnx_export`) is the portable form.

Left out: static per-token activation scales, quantized pooler and task heads
(they stay float32), sharded output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..loaders.int8_folder import METHOD, SECTION
from ..weights import normalize_names
from .linear import FORMATS, quantize_weight
# Encoder linears (within encoder.layer.{i}.) and the internal linear each feeds (Q, K, V stack).
LINEARS = {
    "attention.self.query": "qkv",
    "attention.self.key": "qkv",
    "attention.self.value": "qkv",
    "attention.output.dense": "attn_out",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
}
# Files a model folder carries besides its weights and config, copied as they are.
_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json",
               "sentence_bert_config.json", "modules.json", "1_Pooling")


def linear_names(state_dict) -> list[str]:
    """Encoder linear names (`encoder.layer.{i}.attention.self.query`, ...) present as `.weight`."""
    names = []
    for key in state_dict:
        if key.startswith("encoder.layer.") and key.endswith(".weight"):
            base = key[: -len(".weight")]
            if base.split(".", 3)[3] in LINEARS:
                names.append(base)
    return sorted(names, key=lambda n: (int(n.split(".")[2]), n))


def quantize(src, dst, *, calibration_texts=None, alpha: float = 0.6, overwrite: bool = False,
             onnx: bool = True) -> dict:
    """Post-training int8 quantization of a dense or pruned checkpoint `src` (anything
    `sparsebert.load` reads) into the folder `dst`: int8 encoder weights (symmetric, per output
    channel; zeros stay zeros), activations quantized per token at run time; with
    calibration_texts, SmoothQuant factors (strength alpha) measured on them. With onnx=True also
    writes dst/model_qdq.onnx. Returns a summary dict."""
    from safetensors.numpy import save_file

    from ..loaders import read_checkpoint

    src, dst = Path(src), Path(dst)
    ckpt = read_checkpoint(src)
    smooth = {}
    if calibration_texts is not None:
        from ..api import load
        from .calibrate import smoothing_factors

        factors = smoothing_factors(load(src), calibration_texts, alpha)
        for (layer, internal), vec in factors.items():
            for sub, target in LINEARS.items():
                if target == internal:
                    smooth[f"encoder.layer.{layer}.{sub}"] = vec
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{str(dst)!r} exists and is not empty; pass overwrite=True (--overwrite)")
    state = normalize_names(ckpt.state_dict)
    names = linear_names(state)
    if not names:
        raise CheckpointError(f"{str(src)!r} holds no encoder linear weights to quantize")
    out: dict[str, np.ndarray] = {}
    zeros_kept = True
    for key, value in state.items():
        base = key[: -len(".weight")] if key.endswith(".weight") else None
        if base in names:
            w = np.asarray(value, dtype=np.float32)
            codes, scale = quantize_weight(w, smooth.get(base))
            zeros_kept &= not codes[w == 0].any()
            out[base + ".weight_int8"] = codes
            out[base + ".weight_scale"] = scale
            if base in smooth:
                out[base + ".input_smooth"] = smooth[base]
        elif value.dtype.kind == "f":
            out[key] = np.ascontiguousarray(value, dtype=np.float32)
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "np", "quantization": METHOD})
    config = ckpt.config.to_dict()
    config["quantization"] = {**SECTION, "linears": names,
                              "smoothing": {"method": "smoothquant", "alpha": alpha} if smooth else None}
    (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    folder = src if src.is_dir() else src.parent
    for name in _SIDE_FILES:
        p = folder / name
        if p.is_dir():
            shutil.copytree(p, dst / name, dirs_exist_ok=True)
        elif p.is_file():
            shutil.copy2(p, dst / name)
    summary = {
        "source": str(src), "destination": str(dst), "linears": len(names),
        "int8_bytes": int(sum(out[n + ".weight_int8"].nbytes for n in names)),
        "float_bytes": int(sum(4 * out[n + ".weight_int8"].size for n in names)),
        "sparsity": float(1 - sum(np.count_nonzero(out[n + ".weight_int8"]) for n in names)
                          / sum(out[n + ".weight_int8"].size for n in names)),
        "zeros_kept": zeros_kept,
    }
    if onnx:
        from .onnx_export import export_qdq

        summary["onnx"] = str(export_qdq(dst, dst / "model_qdq.onnx"))
    return summary


def quantize_model(model, fmt: str = "auto"):
    """An in-memory int8 copy of a loaded `sparsebert.Model` (same weights, quantized as
    `quantize` would write them; the original model is untouched)."""
    from ..api import Model
    from ..model import BertEncoder

    if fmt not in FORMATS:
        raise ValueError(f"int8 linear format must be one of {FORMATS}, got {fmt!r}")
    encoder = BertEncoder(model.encoder.weights, "int8" if fmt == "auto" else f"int8-{fmt}")
    return Model(encoder, model.tokenizer, model.source)
