"""Reading a `sparsebert quantize` folder: int8 codes and scales beside the float tensors.

A quantized folder is a Hugging Face folder whose model.safetensors holds every encoder linear
weight as `<name>.weight_int8` (int8 codes, (out, in)) + `<name>.weight_scale` (float32, (out,))
instead of `<name>.weight` (plus `<name>.input_smooth` (in,) when calibrated with SmoothQuant; the
codes then stand for W * smooth), every other tensor unchanged (float32), and whose config.json
carries

    "quantization": {"method": "sparsebert-int8", "version": 1,
                     "weights": "symmetric-per-channel", "activations": "dynamic-per-token",
                     "linears": ["encoder.layer.0.attention.self.query", ...]}

`read_int8_folder` validates that section and every listed tensor and returns the float view
(`<name>.weight` = codes * scale / smooth, for the shape checks of `sparsebert.weights`) with the
exact `Int8Weight` of each linear beside it, so the model's int8 linears are built from the stored
codes, never from a lossy round trip. The writer is `sparsebert.quant.checkpoint.quantize`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..weights import Int8Weight, normalize_names

METHOD = "sparsebert-int8"
VERSION = 1
SECTION = {"method": METHOD, "version": VERSION, "weights": "symmetric-per-channel",
           "activations": "dynamic-per-token"}


def quantization_section(folder: Path) -> dict | None:
    """config.json's "quantization" section, None when absent (or the file unreadable: the config
    reader accepts or refuses it on its own)."""
    cfg = Path(folder) / "config.json"
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw.get("quantization") if isinstance(raw, dict) else None


def read_int8_folder(folder: Path, state_dict, section) -> tuple[dict, dict[str, Int8Weight]]:
    """(float state dict, {linear name: Int8Weight}) of a quantized folder whose config.json holds
    `section`. Raises CheckpointError on any inconsistency."""
    cfg = os.fspath(Path(folder) / "config.json")
    if not isinstance(section, dict) or section.get("method") != METHOD:
        raise CheckpointError(
            f"{cfg!r} has a quantization section sparsebert does not know ({section!r:.200}); "
            f"expected method {METHOD!r} written by `sparsebert quantize`"
        )
    for key, want in SECTION.items():
        if section.get(key) != want:
            raise CheckpointError(f"{cfg!r}: quantization {key} is {section.get(key)!r}, "
                                  f"this sparsebert reads {want!r}")
    names = section.get("linears")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{cfg!r}: quantization linears must be a non-empty list of names")
    state = normalize_names(state_dict)
    int8, float_view = {}, {}
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
        int8[n] = Int8Weight(q, s, sm, "per-token")
        float_view[n + ".weight"] = int8[n].dequantized()
    return float_view, int8
