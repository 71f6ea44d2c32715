"""The ONNX file an ONNX Runtime engine runs, made on the fly from a Hugging Face folder and cached,
so that comparing sparsebert with ONNX Runtime on one's own model is one command.

`ort_model_file(path, int8=...)` returns (file, timings of the steps it ran):
- float: an .onnx file or a folder's model.onnx as given; for a Hugging Face folder (config.json +
  weights, no ONNX), an export by `sparsebert.export.export_bert_onnx` (torch's legacy exporter,
  opset 17), which needs torch and transformers from the `[train]` extra;
- int8: ONNX Runtime's dynamic quantization of that float file (`quantize_dynamic_int8`: int8
  per-channel weights, activations quantized at run time, MatMulInteger + DynamicQuantizeLinear),
  the call the head-to-head runs too (benchmarks/int8_files.py).

Cache: `<tuning.cache_dir()>/onnx/<key>/` (so $SPARSEBERT_CACHE_DIR moves it), where the key hashes
the source's resolved path, its config.json and the names, sizes and mtimes of its weights files
(of the .onnx file and its external data for a given ONNX file): rewriting the weights makes a new
key, and two folders never share an entry even when their files match in size and time. Every file
is built under a temporary name and renamed when complete (`atomic_file`); only final names are
read, so an interrupted export or quantization is redone, never trusted.

Left out: evicting old entries (delete the folder), locking between concurrent runs (each builds its
own temporary file, and the last rename wins with an equal file), re-quantizing after an
onnxruntime upgrade (delete the entry), and quantizing an ONNX file that is already int8.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from .errors import CheckpointError, MissingDependencyError

CACHE_VERSION = 1  # bump when the export or quantization settings change
EXPORT_FLAVOUR = "legacy17"
EXPORT_EXTRA = "train"  # the extra that installs torch and transformers
FLOAT_NAME, INT8_NAME = "model.onnx", "model_int8_dynamic.onnx"
_WEIGHT_NAMES = ("pytorch_model.bin", "model.safetensors.index.json")  # and any *.safetensors


def ort_model_file(path, *, int8: bool = False) -> tuple[Path, dict]:
    """The ONNX file ONNX Runtime runs for `path` (float, or its dynamic int8 quantization), with
    `export_s` / `quantize_s` in the timings when this call had to build the file."""
    path = Path(path)
    given = _given_onnx(path)
    if given is not None:
        float_path, timings = given, {}
        folder = _entry(given, [given, *_external_data(given), given.parent / "config.json"])
    else:
        folder = _entry(path, [path / "config.json", *_weights_files(path)])
        float_path, timings = folder / FLOAT_NAME, {}
        if not float_path.is_file():
            _require_export_packages(path)
            from . import export

            folder.mkdir(parents=True, exist_ok=True)
            _copy_config(path / "config.json", folder)
            t0 = time.perf_counter()
            atomic_file(float_path, lambda tmp: export.export_bert_onnx(path, tmp, EXPORT_FLAVOUR))
            timings["export_s"] = time.perf_counter() - t0
    if not int8:
        return float_path, timings
    int8_path = folder / INT8_NAME
    if not int8_path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        _copy_config(float_path.parent / "config.json", folder)
        t0 = time.perf_counter()
        atomic_file(int8_path, lambda tmp: quantize_dynamic_int8(float_path, tmp))
        timings["quantize_s"] = time.perf_counter() - t0
    return int8_path, timings


def quantize_dynamic_int8(float_onnx, out) -> None:
    """ONNX Runtime's one-line int8 of a float BERT export: per-channel int8 weights, activations
    quantized per tensor at run time. MatMul only: the embedding Gathers stay float, as in the
    head-to-head's int8 row."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(float_onnx), str(out), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])


def atomic_file(final, make: Callable[[Path], object]) -> bool:
    """Build `final` by `make(tmp)` under a temporary name in the same folder, then rename it;
    False (nothing built) when `final` exists. A failed `make` removes its temporary file; a killed
    process leaves one under a name no reader looks for."""
    final = Path(final)
    if final.is_file():
        return False
    tmp = final.with_name(f"{final.stem}.partial-{os.getpid()}{final.suffix}")
    try:
        make(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def _given_onnx(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".onnx":
        return path
    if path.is_dir() and (path / "model.onnx").is_file():
        return path / "model.onnx"
    return None


def _weights_files(folder: Path) -> list[Path]:
    """The weights of a Hugging Face folder (single, sharded, or pytorch_model.bin); raises
    CheckpointError for anything else, naming what ONNX Runtime could run instead."""
    weights = (sorted(p for p in folder.iterdir()
                      if p.suffix == ".safetensors" or p.name in _WEIGHT_NAMES)
               if folder.is_dir() else [])
    if not (folder / "config.json").is_file() or not weights:
        raise CheckpointError(
            f"{str(folder)!r} is not an .onnx file, a folder with model.onnx, or a Hugging Face "
            "folder (config.json + model.safetensors or pytorch_model.bin) to export to ONNX"
        )
    from .loaders.int8_folder import quantization_section

    if quantization_section(folder) is not None:
        qdq = folder / "model_qdq.onnx"
        hint = (f"pass its QDQ export {str(qdq)!r}" if qdq.is_file() else
                "pass the float model it was quantized from (with --engine onnxruntime-int8 for "
                "ONNX Runtime's own int8)")
        raise CheckpointError(
            f"{str(folder)!r} is a `sparsebert quantize` folder (int8 codes transformers cannot "
            f"load), so it cannot be exported to ONNX; {hint}"
        )
    return weights


def _require_export_packages(folder: Path) -> None:
    for module in ("torch", "transformers"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingDependencyError(
                f"{str(folder)!r} is a Hugging Face folder, which the ONNX Runtime engines first "
                f"export to ONNX with {module!r}; install it with "
                f"`pip install 'sparsebert[{EXPORT_EXTRA}]'`, or pass an ONNX export of the model "
                "(an .onnx file or a folder with model.onnx)"
            ) from exc


def _external_data(onnx_path: Path) -> list[Path]:
    # The dynamo exporter's `<name>.onnx.data`: the weights live there, not in the graph file.
    return sorted(onnx_path.parent.glob(onnx_path.name + ".data"))


def _entry(source: Path, files: list[Path]) -> Path:
    """The cache folder of `source`, keyed by what would change its ONNX file."""
    from .tuning import cache_dir

    stamp = {"version": CACHE_VERSION, "flavour": EXPORT_FLAVOUR, "source": str(source.resolve()),
             "files": []}
    for f in files:
        if not f.is_file():
            continue
        st = f.stat()
        row = [f.name, st.st_size, st.st_mtime_ns]
        if f.name == "config.json":  # small, and edited in place by hand: hash the content
            row.append(hashlib.sha256(f.read_bytes()).hexdigest())
        stamp["files"].append(row)
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "onnx" / key


def _copy_config(config: Path, folder: Path) -> None:
    # The benchmark reads the model's shape from config.json beside the ONNX file.
    if config.is_file():
        atomic_file(folder / "config.json", lambda tmp: shutil.copyfile(config, tmp))
