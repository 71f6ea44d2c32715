"""Throughput and latency of one model on one engine: sparsebert, ONNX Runtime, or ONNX Runtime's
dynamic int8, same inputs.

`benchmark_model(path, engine=...)` loads the model, times loading and the first call apart from
steady state, warms up, then runs fixed random batches for `time_s` seconds and returns a dict:
items/s, batch latency statistics (ms), batch count, load / JIT / first-call / warm-up seconds,
threads, library versions and the model's shape and sparsity. The pieces (`load_runner`,
`random_inputs`, `measure`) are public so a suite can load many models once and interleave their
timed runs (benchmarks/run_suite.py).

Inputs are seeded random token ids in [1000, vocab) with a full attention mask and zero token
types: speed does not depend on the values, and ids above 1000 avoid special tokens.
ONNX Runtime runs with every graph optimisation (ORT_ENABLE_ALL), sequential execution and
`intra_op_num_threads = threads` (default 2), on the ONNX file `sparsebert.ort_files` gives it: the
.onnx file itself, or for a Hugging Face folder an export made once and cached (its seconds reported
as `export_s`, apart from `load_s`); "onnxruntime-int8" runs that file's `quantize_dynamic` int8
(`quantize_s` when built). What this deliberately leaves out: tokenization time, multi-stream
serving, memory measurement.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import CheckpointError, MissingDependencyError

ENGINES = ("sparsebert", "onnxruntime", "onnxruntime-int8")
DEFAULT_ORT_THREADS = 2
_ORT_PIP = "pip install onnxruntime"


@dataclass
class Runner:
    """A loaded model: `run(inputs)` computes one batch; `info` describes the model and engine."""

    engine: str
    run: Callable[[dict], object]
    vocab_size: int
    info: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)  # load_s, jit_compile_s, export_s, ...


def library_versions() -> dict:
    import numba

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    from . import __version__

    return {"sparsebert": __version__, "numpy": np.__version__, "numba": numba.__version__,
            "onnxruntime": ort, "python": platform.python_version()}


def random_inputs(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """input_ids in [1000, vocab) (or [0, vocab) for tiny vocabularies), full mask, zero types."""
    _check_positive(batch_size, "batch_size")
    _check_positive(seq_len, "seq_len")
    rng = np.random.default_rng(seed)
    low = 1000 if vocab_size > 1000 else 0
    ids = rng.integers(low, vocab_size, size=(batch_size, seq_len), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def load_runner(path, engine: str = "sparsebert", *, threads: int | None = None, layers=None,
                formats="auto") -> Runner:
    if engine == "sparsebert":
        return _sparsebert_runner(path, threads, layers, formats)
    if engine in ("onnxruntime", "onnxruntime-int8"):
        if layers is not None:
            raise ValueError("layers (layer dropping) is a sparsebert option; ONNX Runtime runs the "
                             "graph as exported")
        return _ort_runner(path, threads, engine)
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def measure(runner: Runner, inputs: dict, time_s: float, warmup_s: float = 0.0,
            min_batches: int = 3) -> dict:
    """Warm up for `warmup_s`, then run batches until `time_s` has passed (at least `min_batches`);
    returns throughput and latency statistics of the timed batches."""
    if not time_s > 0:
        raise ValueError(f"time_s must be positive, got {time_s!r}")
    if warmup_s < 0:
        raise ValueError(f"warmup_s must be >= 0, got {warmup_s!r}")
    start = time.perf_counter()
    while time.perf_counter() - start < warmup_s:
        runner.run(inputs)
    warm = time.perf_counter() - start
    lat = []
    start = time.perf_counter()
    while time.perf_counter() - start < time_s or len(lat) < min_batches:
        t0 = time.perf_counter()
        runner.run(inputs)
        lat.append(time.perf_counter() - t0)
    ms = np.array(lat) * 1e3
    batch = int(inputs["input_ids"].shape[0])
    return {
        "items_per_s": batch * len(lat) / float(np.sum(lat)),
        "latency_ms": {
            "mean": float(ms.mean()),
            "median": float(np.median(ms)),
            "std": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
            "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)),
            "min": float(ms.min()),
        },
        "batches": len(lat),
        "warmup_s": warm,
    }


def benchmark_model(
    path,
    *,
    engine: str = "sparsebert",
    batch_size: int = 32,
    seq_len: int = 128,
    time_s: float = 10.0,
    warmup_s: float | None = None,
    threads: int | None = None,
    layers=None,
    formats="auto",
    seed: int = 0,
) -> dict:
    """Load `path` on `engine`, time the first call, warm up, and measure for `time_s` seconds."""
    _check_positive(batch_size, "batch_size")
    _check_positive(seq_len, "seq_len")
    if isinstance(time_s, bool) or not isinstance(time_s, (int, float)) or not time_s > 0:
        raise ValueError(f"time_s must be a positive number of seconds, got {time_s!r}")
    if warmup_s is None:
        warmup_s = min(2.0, 0.2 * time_s)
    runner = load_runner(path, engine, threads=threads, layers=layers, formats=formats)
    inputs = random_inputs(runner.vocab_size, batch_size, seq_len, seed)
    t0 = time.perf_counter()
    runner.run(inputs)
    first_call = time.perf_counter() - t0
    stats = measure(runner, inputs, time_s, warmup_s)
    return {
        "engine": engine,
        "path": str(path),
        "batch_size": batch_size,
        "seq_len": seq_len,
        **stats,
        **runner.timings,
        "first_call_s": first_call,
        "threads": runner.info.get("threads"),
        "model": {k: v for k, v in runner.info.items() if k != "threads"},
        "versions": library_versions(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor()},
    }


# ----------------------------------------------------------------------------- engines


def _sparsebert_runner(path, threads, layers, formats) -> Runner:
    import numba

    from . import linear
    from .api import load

    if threads is not None:
        _check_positive(threads, "threads")
        if threads > numba.config.NUMBA_NUM_THREADS:
            raise ValueError(
                f"threads={threads} exceeds Numba's pool of {numba.config.NUMBA_NUM_THREADS}; set "
                "NUMBA_NUM_THREADS before starting Python to use more"
            )
        numba.set_num_threads(threads)
    t0 = time.perf_counter()
    jit = linear.warmup()
    jit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = load(path, layers=layers, formats=formats)
    load_s = time.perf_counter() - t0
    report = model.sparsity_report()
    total = report["total"]
    fmts: dict[str, int] = {}
    for row in report["linears"]:
        fmts[row["format"]] = fmts.get(row["format"], 0) + 1
    c = model.config
    info = {
        "layers": c.num_hidden_layers, "hidden": c.hidden_size, "intermediate": c.intermediate_size,
        "heads": c.num_attention_heads, "vocab": c.vocab_size,
        "sparsity": total["sparsity"], "flops_skipped": total["flops_skipped"],
        "weight_nbytes": total["nbytes"], "dense_weight_nbytes": total["dense_nbytes"],
        "formats": fmts, "threads": numba.get_num_threads(),
    }

    def run(inputs):
        return model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])

    timings = {"load_s": load_s, "jit_compile_s": jit_s,
               "jit_compile_by_format_s": {k: round(v, 4) for k, v in jit.items()}}
    return Runner("sparsebert", run, c.vocab_size, info, timings)


def _ort_runner(path, threads, engine: str) -> Runner:
    from .ort_files import ort_model_file

    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError(
            f"the {engine} engine needs the optional package 'onnxruntime'; install it with "
            f"`{_ORT_PIP}`"
        ) from exc
    threads = DEFAULT_ORT_THREADS if threads is None else threads
    _check_positive(threads, "threads")
    # Exporting or quantizing happens here, once per model (then cached), never in a timed call.
    onnx_path, made = ort_model_file(path, int8=engine == "onnxruntime-int8")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    names = [i.name for i in session.get_inputs()]
    unknown = set(names) - {"input_ids", "attention_mask", "token_type_ids"}
    if unknown:
        raise CheckpointError(
            f"{str(onnx_path)!r} has inputs {names}; expected input_ids, attention_mask and "
            "optionally token_type_ids"
        )
    info = _onnx_model_info(onnx_path)
    info["onnx_file"] = str(onnx_path)
    info["threads"] = threads

    def run(inputs):
        return session.run(None, {n: inputs[n] for n in names})

    return Runner(engine, run, info["vocab"], info, {"load_s": load_s, **made})


def _onnx_model_info(onnx_path: Path) -> dict:
    """Shape facts for the report: from config.json beside the graph if there is one, else the
    vocabulary and hidden size from the word-embedding Gather on input_ids."""
    cfg_path = onnx_path.parent / "config.json"
    if cfg_path.is_file():
        try:
            raw = json.loads(cfg_path.read_text(encoding="utf-8"))
            return {"layers": raw.get("num_hidden_layers"), "hidden": raw.get("hidden_size"),
                    "intermediate": raw.get("intermediate_size"),
                    "heads": raw.get("num_attention_heads"), "vocab": int(raw["vocab_size"]),
                    "sparsity": None}
        except (OSError, ValueError, KeyError, TypeError):
            pass
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == "input_ids":
            dims = inits.get(node.input[0])
            if dims and len(dims) == 2:
                return {"layers": None, "hidden": dims[1], "vocab": dims[0], "sparsity": None}
    raise CheckpointError(
        f"cannot find the vocabulary size of {str(onnx_path)!r}; put the model's config.json "
        "next to it"
    )


def _check_positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def summary_line(result: dict) -> str:
    lat = result["latency_ms"]
    return (f"{result['engine']:<16} {result['items_per_s']:9.2f} items/s  median "
            f"{lat['median']:8.2f} ms  p90 {lat['p90']:8.2f} ms  ({result['batches']} batches)")

