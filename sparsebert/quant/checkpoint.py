"""Quantized checkpoints: `quantize(src, dst)` writes one, `read_quantization` reads one back exactly.

A quantized folder is a Hugging Face folder whose model.safetensors holds every encoder linear
weight as `<name>.weight_int8` (int8 codes, (out, in)) + `<name>.weight_scale` (float32, (out,))
instead of `<name>.weight` (plus `<name>.input_smooth` (in,) when calibrated with SmoothQuant, see
`calibrate.py`; the codes then stand for W * smooth), every other tensor unchanged (float32), and
whose config.json carries

    "quantization": {"method": "sparsebert-int8", "version": 1,
                     "weights": "symmetric-per-channel", "activations": "dynamic-per-token",
                     "linears": ["encoder.layer.0.attention.self.query", ...]}

Loading validates that section and every listed tensor, rebuilds float weights codes * scale
for the shape checks of `sparsebert.weights`, and hands the model int8 linears built from the
stored codes and scales (checked to reproduce those float weights bit for bit), so nothing
passes through a lossy round trip. Other readers (transformers) will not load this folder: the
QDQ ONNX beside it (`sparsebert.quant.onnx_export`) is the portable form.

Left out: static per-token activation scales, quantized pooler and task heads
(they stay float32), sharded output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..weights import normalize_names
from .linear import FORMATS, Int8Linear, quantize_weight

METHOD = "sparsebert-int8"
VERSION = 1
SECTION = {"method": METHOD, "version": VERSION, "weights": "symmetric-per-channel",
           "activations": "dynamic-per-token"}
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


@dataclasses.dataclass(frozen=True)
class QuantizedCheckpoint:
    state_dict: dict  # float view: `<name>.weight` = codes * scale, for sparsebert.weights
    codes: dict  # linear name -> int8 (out, in)
    scales: dict  # linear name -> float32 (out,)
    smooth: dict  # linear name -> float32 (in,), for calibrated checkpoints

    def formats(self, weights, fmt="auto"):
        """A `formats` callable for BertEncoder that builds each encoder linear from the stored
        codes and scales (Q, K and V stacked as `sparsebert.weights` stacks them)."""
        fmt = "auto" if fmt is None else fmt
        if fmt not in FORMATS:
            raise ValueError(f"a quantized checkpoint takes formats in {FORMATS}, got {fmt!r}")
        by_id = {}
        for layer, src in zip(weights.layers, weights.source_layers):
            parts: dict[str, list[str]] = {}
            for sub, internal in LINEARS.items():
                parts.setdefault(internal, []).append(f"encoder.layer.{src}.{sub}")
            for internal, names in parts.items():
                w = getattr(layer, f"{internal}_w")
                if not all(n in self.codes for n in names):
                    continue  # float in the file (e.g. a per-input-channel weight scale): stays float
                codes = np.concatenate([self.codes[n] for n in names])
                scale = np.concatenate([self.scales[n] for n in names])
                sm = [self.smooth.get(n) for n in names]
                if any(v is None for v in sm) and any(v is not None for v in sm) or \
                        any(not np.array_equal(v, sm[0]) for v in sm if v is not None):
                    raise CheckpointError(f"layer {src} {internal}: the linears sharing this input "
                                          "must all carry the same input_smooth, or none")
                if not np.array_equal(_dequantize(codes, scale, sm[0]), w):
                    raise CheckpointError(f"layer {src} {internal}: stored codes do not reproduce the "
                                          "weights the model was built from")
                by_id[id(w)] = (codes, scale, sm[0])

        def formats(name, w):
            if id(w) not in by_id:
                return "auto"
            codes, scale, sm = by_id[id(w)]
            return lambda weight, bias: Int8Linear(codes, scale, bias, fmt, sm)

        return formats


def _dequantize(codes, scale, smooth):
    w = codes.astype(np.float32) * scale[:, None]
    return w if smooth is None else w / smooth[None, :]


def read_quantization(ckpt) -> QuantizedCheckpoint | None:
    """The quantized view of a checkpoint from `sparsebert.loaders.read_checkpoint`, or None when
    its config.json has no "quantization" section. Raises CheckpointError on any inconsistency."""
    if ckpt.kind == "onnx" and ckpt.int8:  # an int8 ONNX export (loaders/onnx_quant.py)
        codes = {n: c for n, (c, _) in ckpt.int8.items()}
        scales = {n: s.astype(np.float32) for n, (_, s) in ckpt.int8.items()}
        return QuantizedCheckpoint(normalize_names(ckpt.state_dict), codes, scales, {})
    if ckpt.kind != "safetensors":
        return None
    cfg = Path(ckpt.source) / "config.json"
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the config reader already accepted or refused this file
    section = raw.get("quantization") if isinstance(raw, dict) else None
    if section is None:
        return None
    if not isinstance(section, dict) or section.get("method") != METHOD:
        raise CheckpointError(
            f"{os.fspath(cfg)!r} has a quantization section sparsebert does not know "
            f"({section!r:.200}); expected method {METHOD!r} written by `sparsebert quantize`"
        )
    for key, want in SECTION.items():
        if section.get(key) != want:
            raise CheckpointError(f"{os.fspath(cfg)!r}: quantization {key} is {section.get(key)!r}, "
                                  f"this sparsebert reads {want!r}")
    names = section.get("linears")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{os.fspath(cfg)!r}: quantization linears must be a non-empty list of names")
    state = normalize_names(ckpt.state_dict)
    codes, scales, smooth, float_view = {}, {}, {}, {}
    listed = set(names)
    for key, value in state.items():
        base = key.rsplit(".", 1)[0]
        if key.endswith((".weight_int8", ".weight_scale", ".input_smooth")):
            if base not in listed:
                raise CheckpointError(f"tensor {key!r} is not among the quantized linears of config.json")
            continue
        if key.endswith(".weight") and base in listed:
            raise CheckpointError(f"{key!r} is stored in float although config.json lists it as int8")
        float_view[key] = value
    for n in names:
        q, s = state.get(n + ".weight_int8"), state.get(n + ".weight_scale")
        if q is None or s is None:
            raise CheckpointError(f"quantized linear {n!r} lacks {n}.weight_int8 or {n}.weight_scale")
        if q.dtype != np.int8 or q.ndim != 2:
            raise CheckpointError(f"{n}.weight_int8 must be a 2-D int8 tensor, got {q.dtype} {q.shape}")
        if s.shape != (q.shape[0],) or s.dtype != np.float32 or not np.isfinite(s).all() or (s < 0).any():
            raise CheckpointError(f"{n}.weight_scale must be finite, non-negative float32 of shape "
                                  f"({q.shape[0]},), got {s.dtype} {s.shape}")
        if q.min(initial=0) < -127:
            raise CheckpointError(f"{n}.weight_int8 holds -128; symmetric codes lie in [-127, 127]")
        sm = state.get(n + ".input_smooth")
        if sm is not None and (sm.shape != (q.shape[1],) or sm.dtype != np.float32
                               or not np.isfinite(sm).all() or not (sm > 0).all()):
            raise CheckpointError(f"{n}.input_smooth must be finite, positive float32 of shape "
                                  f"({q.shape[1]},), got {sm.dtype} {sm.shape}")
        codes[n], scales[n] = q, s
        if sm is not None:
            smooth[n] = sm
        float_view[n + ".weight"] = _dequantize(q, s, sm)
    return QuantizedCheckpoint(float_view, codes, scales, smooth)


def quantize_model(model, fmt: str = "auto"):
    """An in-memory int8 copy of a loaded `sparsebert.Model` (same weights, quantized as
    `quantize` would write them; the original model is untouched)."""
    from ..api import Model
    from ..model import BertEncoder

    def formats(name, w):
        return lambda weight, bias: Int8Linear.from_float(weight, bias, fmt)

    encoder = BertEncoder(model.encoder.weights, formats)
    return Model(encoder, model.tokenizer, model.source)
