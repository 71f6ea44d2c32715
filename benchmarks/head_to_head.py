"""Head to head: sparsebert vs ONNX Runtime, DeepSparse 1.8 and OpenVINO on the same checkpoints.

Every engine runs in its own process (benchmarks/h2h_worker.py, started with the Python of the
engine's venv), so no engine's thread pool or allocator shares a process with another. Models
are the BERT-base-shaped random checkpoints of models/make_bench_models.py: sparsebert loads the
Hugging Face folder, the other engines its legacy opset-17 torch ONNX export (written here, once,
under bench-models/onnx-legacy17/). For each model, every engine loads it (load and graph compile
time reported apart, then one untimed call), then in each of `rounds` interleaved rounds, in an
order rotated per round, ONNX Runtime on the dense 12-layer model (the baseline, kept loaded all
run) and each engine on the model are timed back to back. Reported per (model, engine): median
items/s, median over rounds of the ratio to the baseline of the same round, and per model the
median of per-round sparsebert / DeepSparse ratios. A few output values of every engine are
compared with sparsebert's (bf16 OpenVINO differs by ~1e-2; float32 engines agree to ~1e-4).

    python benchmarks/head_to_head.py        # writes bench-results/head_to_head.json
    python benchmarks/head_to_head.py --models "12L dense,12L 90%" --rounds 2   # quick baseline

Peers: DeepSparse 1.8 (`python3.11 -m venv V && V/bin/pip install deepsparse==1.8.0`; 1.9 does
not build) and OpenVINO (`pip install openvino` in a venv) are found at --deepsparse-python /
--openvino-python (default: /root/.cache/sparsebert-peers/{deepsparse,openvino}/bin/python);
an engine whose Python is missing is skipped with a line saying how to install it. OpenVINO runs
twice: in f32 and in its default precision (bf16 on CPUs with AMX or AVX512-BF16).

INT8 (`--engines` default includes them): sparsebert's `quantize` of every model, and on the dense
rows the int8 peers ONNX Runtime `quantize_dynamic` (per-channel QInt8) and OpenVINO on an ORT
static QDQ export (benchmarks/int8_files.py). Per row the table adds sparsebert int8 / its own
fp32 on the same model (median of per-round ratios) and sparsebert int8 / the best dense int8 peer
at the same batch size (ratio of their ratios to the shared ORT fp32 baseline).

    python benchmarks/head_to_head.py --models "12L dense,12L 80% 1x4,12L 90% 1x4,12L 90%"

Left out: tokenization, multi-stream serving, accuracy (the weights are random; int8 accuracy on
the real MiniLM is measured by benchmarks/accuracy_speed.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_bench_models import ONNX_NAME, VARIANTS, _build, build_all, model_name  # noqa: E402

from int8_files import prepare_int8  # noqa: E402

from sparsebert import tuning  # noqa: E402

WORKER = Path(__file__).resolve().parent / "h2h_worker.py"
MARK = "@@h2h "
PEERS = Path("/root/.cache/sparsebert-peers")
INSTALL = {
    "deepsparse": "python3.11 -m venv V && V/bin/pip install deepsparse==1.8.0, then "
                  "--deepsparse-python V/bin/python",
    "openvino": "python3 -m venv V && V/bin/pip install openvino onnx numpy, then "
                "--openvino-python V/bin/python",
}
# label -> (layers, variant of make_bench_models, batch size); the table, then batch 1.
MODELS = {
    "12L dense": (12, "dense", 32),
    "12L 80%": (12, "unstructured80", 32),
    "12L 90%": (12, "unstructured90", 32),
    "12L 90% 4x1": (12, "block4x1-90", 32),
    "6L 90%": (6, "unstructured90", 32),
    "3L 90%": (3, "unstructured90", 32),
    "3L 70%": (3, "unstructured70", 32),
    "12L 90% batch 1": (12, "unstructured90", 1),
    # int8 rows (issue: sparse int8 vs the best dense int8 peer, same run)
    "12L 80% 1x4": (12, "block1x4-80", 32),
    "12L 90% 1x4": (12, "block1x4-90", 32),
    "12L dense batch 1": (12, "dense", 1),
    "12L 80% 1x4 batch 1": (12, "block1x4-80", 1),
}
FP32_ENGINES = ("sparsebert", "onnxruntime", "deepsparse", "openvino-f32", "openvino-default")
# Each engine's int8 route (benchmarks/int8_files.py): sparsebert's `quantize` on every model;
# ONNX Runtime's quantize_dynamic and OpenVINO on a static QDQ export only on dense models,
# since neither gains from zeros.
INT8_ENGINES = ("sparsebert-int8", "onnxruntime-int8", "openvino-int8")
DENSE_ONLY = ("onnxruntime-int8", "openvino-int8")
ENGINE_ORDER = ("sparsebert", "sparsebert-int8", "deepsparse", "openvino-f32", "openvino-default",
                "onnxruntime-int8", "openvino-int8")
BASELINE = "onnxruntime 12L dense"


def export_onnx(models_dir: Path, layers: int, variant: str, log) -> Path:
    """The legacy opset-17 ONNX export of a benchmark checkpoint (built once, atomically)."""
    if (layers, variant) == (12, "dense"):
        return models_dir / ONNX_NAME / "model.onnx"
    final = models_dir / "onnx-legacy17" / model_name(layers, variant)

    def make(d: Path):
        from sparsebert.export import export_bert_onnx

        export_bert_onnx(models_dir / model_name(layers, variant), d / "model.onnx", "legacy17")

    final.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    status = _build(final, make)
    log(f"ONNX {final.name}: {status} ({time.perf_counter() - t0:.1f} s)")
    return final / "model.onnx"


class Worker:
    """A long-lived engine process speaking h2h_worker's line protocol."""

    def __init__(self, engine: str, python: str, threads: int, log_dir: Path, tuning_cache=None):
        self.engine = engine
        self.log_path = log_dir / f"{engine}.log"
        env = dict(os.environ, NM_DISABLE_ANALYTICS="1", PYTHONUNBUFFERED="1")
        if tuning_cache is not None:
            env["SPARSEBERT_CACHE_DIR"] = str(tuning_cache)
        self.proc = subprocess.Popen([python, str(WORKER), engine, str(threads)], cwd=str(ROOT),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log_path, "w"), text=True, env=env)

    def call(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"{self.engine} worker exited (code {self.proc.wait()}); see {self.log_path}")

    def close(self):
        try:
            self.call(op="quit")
        except (RuntimeError, OSError, ValueError):
            pass
        self.proc.wait(timeout=60)


def random_ids(vocab: int, batch: int, seq: int, seed: int) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(1000, vocab, size=(batch, seq), dtype=np.int64).tolist()


def head_to_head(models_dir="bench-models", *, labels=None, engines=None, pythons=None, rounds=3,
                 time_s=5.0, min_batches=2, threads=2, seq_len=128, tuning_cache=None,
                 log=print) -> dict:
    t_start = time.perf_counter()
    models_dir = Path(models_dir)
    labels = list(labels or MODELS)
    build_all(models_dir, only_suite=True, log=log)
    pythons = pythons or {}
    skipped = {}
    workers = {}
    log_dir = Path(tempfile.mkdtemp(prefix="h2h-logs-"))
    for engine in engines or FP32_ENGINES + INT8_ENGINES:
        python = pythons.get(engine.split("-")[0], sys.executable)
        if not python or not Path(python).exists():
            peer = engine.split("-")[0]
            skipped[engine] = f"no Python for {peer}: {INSTALL[peer]}"
            log(f"skipping {engine}: {skipped[engine]}")
            continue
        # sparsebert times its formats at load into a cache of this run's own (unless one is
        # given), so its choices are made under this run's conditions and reported in load_s.
        workers[engine] = Worker(engine, python, threads, log_dir,
                                 tuning_cache if tuning_cache is not None else log_dir / "tuning")
    if "onnxruntime" not in workers:
        raise SystemExit("the onnxruntime engine is the baseline; it cannot be skipped")
    vocab = 30522
    base_path = str(export_onnx(models_dir, 12, "dense", log))
    base_ids = {}  # batch size -> ids of the baseline loaded at that batch size

    def baseline_key(batch):
        if batch not in base_ids:
            base_ids[batch] = random_ids(vocab, batch, seq_len, seed=batch)
            r = workers["onnxruntime"].call(op="load", key=f"base{batch}", path=base_path,
                                            ids=base_ids[batch])
            if not r["ok"]:
                raise SystemExit(f"baseline failed to load: {r['error']}")
        return f"base{batch}"

    results = {}
    for label in labels:
        layers, variant, batch = MODELS[label]
        onnx_path = str(export_onnx(models_dir, layers, variant, log))
        hf_path = str(models_dir / model_name(layers, variant))
        ids = random_ids(vocab, batch, seq_len, seed=batch)
        bkey = baseline_key(batch)
        sparsity = VARIANTS[variant][0]
        int8 = {}
        if any(e in workers for e in INT8_ENGINES):
            int8 = prepare_int8(models_dir, model_name(layers, variant), Path(onnx_path), log,
                                peers=sparsity == 0)
        paths = {"sparsebert": hf_path, "sparsebert-int8": str(int8.get("sparsebert")),
                 "onnxruntime-int8": str(int8.get("ort_dynamic")),
                 "openvino-int8": str(int8.get("ort_static_qdq"))}
        loads = {}
        for engine, w in workers.items():
            if engine == "onnxruntime":
                continue  # ORT gains nothing from zeros: timed on the dense baseline only
            if engine in DENSE_ONLY and sparsity:
                continue  # nor do the int8 peers: timed on the dense rows
            r = w.call(op="load", key=label, path=paths.get(engine, onnx_path), ids=ids)
            loads[engine] = r
            log(f"{label}: {engine} loaded" + (f" in {r['load_s']:.1f} s" if r["ok"] else
                                                f" FAILED: {r['error']}"))
        live = [e for e in loads if loads[e]["ok"]]
        runs = {e: [] for e in live}
        runs[BASELINE] = []
        for rnd in range(rounds):
            order = [BASELINE] + live
            order = order[rnd % len(order):] + order[:rnd % len(order)]
            for name in order:
                w, key = (workers["onnxruntime"], bkey) if name == BASELINE else (workers[name], label)
                m = w.call(op="measure", key=key, time_s=time_s, min_batches=min_batches)
                runs[name].append(m)
            log(f"{label} round {rnd}: " + ", ".join(
                f"{n} {runs[n][-1]['items_per_s']:.2f}/s" for n in order))
        for e in live:
            workers[e].call(op="unload", key=label)
        results[label] = summarise(label, batch, runs, loads)
        block = VARIANTS[variant][1]
        results[label].update(layers=layers, sparsity=sparsity,
                              structure="dense" if not sparsity else (block or "unstructured"))
        log(format_model(label, results[label]))
    for w in workers.values():
        w.close()
    compare_int8(results)
    return {
        "settings": {"rounds": rounds, "time_s": time_s, "min_batches": min_batches,
                     "threads": threads, "seq_len": seq_len, "models_dir": str(models_dir)},
        "machine": {"cpu": tuning.cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
        "skipped": skipped,
        "results": results,
        "worker_logs": str(log_dir),
        "wall_s": time.perf_counter() - t_start,
    }


def summarise(label, batch, runs, loads) -> dict:
    med = statistics.median
    base = [m["items_per_s"] for m in runs[BASELINE]]
    out = {"batch_size": batch, "baseline_items_per_s": med(base),
           "baseline_latency_ms_median": med(m["latency_ms"]["median"] for m in runs[BASELINE]),
           "engines": {}}
    ref = loads.get("sparsebert", {}).get("sample")
    for e, ms in runs.items():
        if e == BASELINE:
            continue
        row = {"items_per_s": med(m["items_per_s"] for m in ms),
               "latency_ms_median": med(m["latency_ms"]["median"] for m in ms),
               "ratio_vs_ort_dense": med(m["items_per_s"] / b for m, b in zip(ms, base)),
               "per_round_items_per_s": [m["items_per_s"] for m in ms]}
        row.update({k: v for k, v in loads[e].items() if k not in ("ok",)})
        if ref is not None:
            row["max_abs_diff_vs_sparsebert_sample"] = max(
                abs(a - b) for a, b in zip(row["sample"], ref))
        out["engines"][e] = row
    if "sparsebert" in runs and "deepsparse" in runs:
        out["sparsebert_vs_deepsparse"] = med(
            a["items_per_s"] / b["items_per_s"] for a, b in zip(runs["sparsebert"], runs["deepsparse"]))
    return out


def compare_int8(results: dict) -> None:
    """Per row: sparsebert int8 against the best dense int8 peer measured on the dense 12-layer
    model at the same batch size in this run (both as ratios to the same ORT fp32 baseline), and
    against sparsebert's own fp32 on the same model (median of per-round ratios)."""
    for label, r in results.items():
        mine = r["engines"].get("sparsebert-int8")
        if mine is None:
            continue
        if "sparsebert" in r["engines"]:
            own = r["engines"]["sparsebert"]["per_round_items_per_s"]
            r["sparsebert_int8_vs_own_fp32"] = statistics.median(
                a / b for a, b in zip(mine["per_round_items_per_s"], own))
        dense = next((d for d in results.values() if d["layers"] == 12 and d["sparsity"] == 0
                      and d["batch_size"] == r["batch_size"]), None)
        peers = {e: v for e, v in (dense or {"engines": {}})["engines"].items() if e in DENSE_ONLY}
        if peers:
            best = max(peers, key=lambda e: peers[e]["ratio_vs_ort_dense"])
            r["best_dense_int8_peer"] = best
            r["sparsebert_int8_vs_best_dense_int8_peer"] = (
                mine["ratio_vs_ort_dense"] / peers[best]["ratio_vs_ort_dense"])
            r["sparsebert_int8_latency_vs_ort_int8_dense"] = (
                mine["latency_ms_median"] / peers["onnxruntime-int8"]["latency_ms_median"]
                if "onnxruntime-int8" in peers else None)


def format_model(label, r) -> str:
    parts = [f"{e} {v['ratio_vs_ort_dense']:.2f}x" for e, v in r["engines"].items()]
    tail = (f"; sparsebert / DeepSparse {r['sparsebert_vs_deepsparse']:.2f}x"
            if "sparsebert_vs_deepsparse" in r else "")
    return f"{label} (vs ORT dense 12L {r['baseline_items_per_s']:.2f}/s): " + ", ".join(parts) + tail


def format_table(result) -> str:
    engines = sorted({e for r in result["results"].values() for e in r["engines"]},
                     key=ENGINE_ORDER.index)
    s = result["settings"]
    lines = [f"{result['machine']['cpu']}, {s['threads']} threads, seq {s['seq_len']}, "
             f"{s['rounds']} interleaved rounds, medians; ratios vs ONNX Runtime dense 12L, same batch",
             "| model | " + " | ".join(engines) + " | sparsebert / DeepSparse | sparsebert int8 / "
             "own fp32 | sparsebert int8 / best dense int8 peer |",
             "|---" * (len(engines) + 4) + "|"]

    def cell(r, key):
        return f"{r[key]:.2f}x" if r.get(key) is not None else "-"

    for label, r in result["results"].items():
        cells = [f"{r['engines'][e]['ratio_vs_ort_dense']:.2f}x" if e in r["engines"] else "-"
                 for e in engines]
        tail = [cell(r, "sparsebert_vs_deepsparse"), cell(r, "sparsebert_int8_vs_own_fp32"),
                cell(r, "sparsebert_int8_vs_best_dense_int8_peer")
                + (f" ({r['best_dense_int8_peer']})" if r.get("best_dense_int8_peer") else "")]
        lines.append(f"| {label} | " + " | ".join(cells + tail) + " |")
    lat = result["results"].get("12L 80% 1x4 batch 1")
    if lat and lat.get("sparsebert_int8_latency_vs_ort_int8_dense") is not None:
        lines.append("batch-1 latency, 12L 80% 1x4 sparsebert int8 / ORT int8 dynamic on 12L dense: "
                     f"{lat['sparsebert_int8_latency_vs_ort_int8_dense']:.2f}x")
    lat = result["results"].get("12L 90% batch 1")
    if lat:
        lines.append("batch-1 latency, 12L 90%, median ms: " + ", ".join(
            f"{e} {v['latency_ms_median']:.1f}" for e, v in lat["engines"].items())
            + f"; ORT dense 12L {lat['baseline_latency_ms_median']:.1f}"
            + (f"; sparsebert / DeepSparse latency {1 / lat['sparsebert_vs_deepsparse']:.2f}x"
               if "sparsebert_vs_deepsparse" in lat else ""))
    for e, why in result["skipped"].items():
        lines.append(f"skipped {e}: {why}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=str(ROOT / "bench-models"))
    parser.add_argument("--models", default=None,
                        help=f"comma-separated subset of: {', '.join(MODELS)}".replace("%", "%%"))
    parser.add_argument("--engines", default=None, help="comma-separated subset of the engines")
    parser.add_argument("--deepsparse-python", default=str(PEERS / "deepsparse/bin/python"))
    parser.add_argument("--openvino-python", default=str(PEERS / "openvino/bin/python"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--time", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--min-batches", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tuning-cache", default=None,
                        help="sparsebert's tuning cache folder (default: a fresh one, so formats are "
                             "timed in this run; pass ~/.cache/sparsebert to reuse `sparsebert tune`)")
    parser.add_argument("--json", default=str(ROOT / "bench-results" / "head_to_head.json"),
                        help="write the full result here (the speedup notebook reads this file)")
    args = parser.parse_args(argv)
    labels = [m.strip() for m in args.models.split(",")] if args.models else None
    for m in labels or []:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}; choose from {list(MODELS)}")
    engines = [e.strip() for e in args.engines.split(",")] if args.engines else None
    result = head_to_head(args.models_dir, labels=labels, engines=engines, rounds=args.rounds,
                          time_s=args.time, min_batches=args.min_batches, threads=args.threads,
                          tuning_cache=args.tuning_cache,
                          pythons={"deepsparse": args.deepsparse_python,
                                   "openvino": args.openvino_python},
                          log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
