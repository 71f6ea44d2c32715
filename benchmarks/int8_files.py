"""The int8 files the head-to-head runs: each engine's own int8 route from the same float model.

For a benchmark checkpoint (models/make_bench_models.py) and its legacy opset-17 float export,
built once under bench-models/int8/NAME/ (git-ignored), each step written to a temporary name and
renamed when complete:
  sparsebert/        `sparsebert.quant.quantize` of the Hugging Face folder (symmetric per-channel
                     int8 weights, zeros kept, so a pruned model stays sparse), without the QDQ export
  ort_dynamic.onnx   onnxruntime `quantize_dynamic(per_channel=True, weight_type=QInt8)`: ONNX
                     Runtime's one-line int8 (MatMulInteger + DynamicQuantizeLinear), the same
                     call as `sparsebert benchmark --engine onnxruntime-int8`
                     (`sparsebert.ort_files.quantize_dynamic_int8`)
  ort_static_qdq.onnx  onnxruntime `quantize_static` in QDQ format (per-channel QInt8 weights, QUInt8
                     activations, MatMul only) calibrated on a few batches of random token ids:
                     the file OpenVINO runs as int8 (its int8 route for ONNX models)
Random ids calibrate well enough for speed (the weights are random too); accuracy of the int8
routes is measured on the real MiniLM elsewhere (benchmarks/accuracy_speed.py, tests).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from sparsebert.ort_files import atomic_file, quantize_dynamic_int8


def _atomic_file(final: Path, make) -> str:
    return "built" if atomic_file(final, make) else "exists"


class _RandomIds:
    """onnxruntime CalibrationDataReader over a few seeded batches of random token ids."""

    def __init__(self, names, batches=4, batch=8, seq=128, vocab=30522):
        rng = np.random.default_rng(0)
        self.feeds = []
        for _ in range(batches):
            ids = rng.integers(1000, vocab, (batch, seq), dtype=np.int64)
            full = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                    "token_type_ids": np.zeros_like(ids)}
            self.feeds.append({n: full[n] for n in names})

    def get_next(self):
        return self.feeds.pop() if self.feeds else None


def prepare_int8(models_dir: Path, name: str, float_onnx: Path, log, *, peers: bool) -> dict:
    """Paths {sparsebert, ort_dynamic, ort_static_qdq} for model `name` (peers only if `peers`)."""
    import time

    out = Path(models_dir) / "int8" / name
    out.mkdir(parents=True, exist_ok=True)
    paths = {"sparsebert": out / "sparsebert"}
    if not (paths["sparsebert"] / "config.json").is_file():
        from sparsebert.quant import quantize

        t0 = time.perf_counter()
        tmp = out / "sparsebert.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        quantize(Path(models_dir) / name, tmp, overwrite=True, onnx=False)
        os.replace(tmp, paths["sparsebert"])
        log(f"{name}: sparsebert quantize {time.perf_counter() - t0:.0f} s")
    if not peers:
        return paths
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    paths["ort_dynamic"] = out / "ort_dynamic.onnx"
    t0 = time.perf_counter()
    status = _atomic_file(paths["ort_dynamic"], lambda tmp: quantize_dynamic_int8(float_onnx, tmp))
    log(f"{name}: ORT quantize_dynamic {status} ({time.perf_counter() - t0:.0f} s)")

    def static(tmp):
        import onnx

        graph = onnx.load(str(float_onnx), load_external_data=False).graph
        inits = {t.name for t in graph.initializer}
        names = [i.name for i in graph.input if i.name not in inits]
        quantize_static(str(float_onnx), str(tmp), _RandomIds(names), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                        calibrate_method=CalibrationMethod.MinMax)

    paths["ort_static_qdq"] = out / "ort_static_qdq.onnx"
    t0 = time.perf_counter()
    status = _atomic_file(paths["ort_static_qdq"], static)
    log(f"{name}: ORT quantize_static QDQ {status} ({time.perf_counter() - t0:.0f} s)")
    return paths
