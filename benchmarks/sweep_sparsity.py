"""Speedup over ONNX Runtime vs sparsity: BERT encoders pruned to many sparsities, layer counts and
block structures, each timed back to back with ONNX Runtime on the dense full-depth model.

`sweep_sparsity(base, onnx, ...)` prunes the dense checkpoint `base` (sparsebert.prune, per layer,
unstructured or aligned RxC blocks, keeping the first n layers for the shallower models) into a
temporary folder, loads it, deletes the folder, and measures it in `rounds` rounds; each round is
one ONNX Runtime measurement immediately followed by one sparsebert measurement, so machine noise
hits both. Reported per configuration: median items/s and the median of the per-round ratios
sparsebert / ORT (with their range). Models are measured one at a time, so memory holds one
candidate plus the baseline. The sparsity-0 model is measured once per layer count (structure
"dense") and starts both the unstructured and the block line of a plot.

`profile_steps(model, inputs)` is the per-layer time breakdown of one model (median over runs of
`BertEncoder.profile`). `PUBLISHED` holds the reference points the notebook marks: published
figures, not measurements of this project.

    python benchmarks/sweep_sparsity.py --json bench-results/sweep.json            # full set
    python benchmarks/sweep_sparsity.py --quick --json /tmp/sweep.json             # tiny model

Left out: accuracy (the full set uses random weights; see benchmarks/accuracy_speed.py), batch-1
latency (benchmarks/run_suite.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "models"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import sparsebert  # noqa: E402
from sparsebert import benchmark  # noqa: E402
from sparsebert.prune import prune_checkpoint  # noqa: E402


# Published reference points (speedup over a dense ONNX Runtime / baseline BERT-base, batch 32,
# seq 128): not measured by this project. DeepSparse's numbers are the FACTS.md measurements of
# DeepSparse 1.8 on this machine type (90% unstructured vs ORT 7.1 items/s); the "compound
# sparsification" points are the headline figures quoted by the project's mission (pruned and
# distilled models, with quantization-free speedups as published).
PUBLISHED = [
    {"source": "DeepSparse 1.8 (published, this machine type)", "layers": 12, "sparsity": 0.90,
     "speedup": 3.4},
    {"source": "DeepSparse 1.8 (published, this machine type)", "layers": 6, "sparsity": 0.90,
     "speedup": 6.8},
    {"source": "DeepSparse 1.8 (published, this machine type)", "layers": 3, "sparsity": 0.90,
     "speedup": 13.8},
    {"source": "compound sparsification headline (published)", "layers": 12, "sparsity": 0.90,
     "speedup": 4.0},
    {"source": "compound sparsification headline (published)", "layers": 6, "sparsity": 0.90,
     "speedup": 7.7},
    {"source": "compound sparsification headline (published)", "layers": 3, "sparsity": 0.70,
     "speedup": 9.2},
]

FULL = dict(sparsities=(0.0, 0.7, 0.8, 0.9, 0.95), layer_counts=(12, 6, 3),
            structures=("unstructured", "4x1"), batch_size=32, seq_len=128, rounds=3, time_s=2.0,
            min_batches=1, profile=(12, 0.9, "unstructured"))
QUICK = dict(sparsities=(0.0, 0.9), layer_counts=(2, 1), structures=("unstructured", "4x1"),
             batch_size=4, seq_len=32, rounds=2, time_s=0.3, min_batches=1,
             profile=(2, 0.9, "unstructured"))


def _block(structure: str):
    return None if structure in ("unstructured", "dense") else structure


def configurations(sparsities, layer_counts, structures) -> list[dict]:
    """Every (layers, sparsity, structure) to measure; sparsity 0 once per layer count."""
    out = []
    for n in layer_counts:
        if 0.0 in sparsities:
            out.append({"layers": n, "sparsity": 0.0, "structure": "dense"})
        for structure in structures:
            for s in sparsities:
                if s > 0:
                    out.append({"layers": n, "sparsity": float(s), "structure": structure})
    return out


def load_pruned(base, cfg: dict, workdir: Path, threads: int, keep_model: bool = False):
    """Prune `base` as `cfg` says into a temporary folder, load it (a benchmark runner, plus the
    sparsebert Model itself when `keep_model`), remove the folder."""
    dst = workdir / f"{cfg['layers']}L-{cfg['structure']}-{cfg['sparsity']:.2f}"
    t0 = time.perf_counter()
    summary = prune_checkpoint(base, dst, sparsity=cfg["sparsity"], block=_block(cfg["structure"]),
                               layers=list(range(cfg["layers"])), overwrite=True)
    prune_s = time.perf_counter() - t0
    try:
        runner = benchmark.load_runner(dst, "sparsebert", threads=threads)
        model = sparsebert.load(dst) if keep_model else None
    finally:
        shutil.rmtree(dst, ignore_errors=True)
    return runner, model, {"prune_s": prune_s,
                           "encoder_linear_sparsity": summary["encoder_linear_sparsity"]}


HEAD_TO_HEAD_JSON = Path(__file__).resolve().parent.parent / "bench-results" / "head_to_head.json"


def reference_points(head_to_head_json=HEAD_TO_HEAD_JSON) -> list:
    """The points the notebook marks: DeepSparse 1.8 as measured on this machine by
    benchmarks/head_to_head.py (speedup vs ORT dense 12L in that run) when its JSON exists, in
    place of the published DeepSparse figures; the compound-sparsification headline stays."""
    try:
        h2h = json.loads(Path(head_to_head_json).read_text(encoding="utf-8"))
        measured = [
            {"source": f"DeepSparse 1.8 (measured here: head_to_head.py, {h2h['machine']['cpu']})",
             "layers": r["layers"], "sparsity": r["sparsity"], "structure": r["structure"],
             "speedup": r["engines"]["deepsparse"]["ratio_vs_ort_dense"]}
            for r in h2h["results"].values()
            if r.get("batch_size") == 32 and "deepsparse" in r.get("engines", {})]
    except (OSError, ValueError, KeyError, TypeError):
        measured = []
    if not measured:
        return PUBLISHED
    return measured + [p for p in PUBLISHED if not p["source"].startswith("DeepSparse")]


def profile_steps(model, inputs: dict, runs: int = 3) -> dict:
    """Median seconds per "layer{i}.{step}" (and embeddings/output) over `runs` profiled passes,
    after one unprofiled warm-up pass."""
    args = (inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    model(*args)
    passes = [model.encoder.profile(*args) for _ in range(runs)]
    return {k: statistics.median(p.get(k, 0.0) for p in passes) for k in passes[0]}


def sweep_sparsity(base, onnx, *, sparsities, layer_counts, structures=("unstructured", "4x1"),
                   batch_size=32, seq_len=128, rounds=3, time_s=4.0, min_batches=1, threads=2,
                   warmup_s=None, profile=None, workdir=None, log=print) -> dict:
    """Measure every configuration against ORT on `onnx` (the dense baseline); returns a dict with
    "settings", "baseline", "results" (one row per configuration), "profile" and "published"."""
    import numba

    t_start = time.perf_counter()
    warmup_s = time_s if warmup_s is None else warmup_s
    numba.set_num_threads(threads)
    own_tmp = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="sparsebert-sweep-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ort = benchmark.load_runner(onnx, "onnxruntime", threads=threads)
    inputs = benchmark.random_inputs(ort.vocab_size, batch_size, seq_len, seed=0)
    ort.run(inputs)
    jit_s = None
    ort_all, rows, prof = [], [], None
    try:
        for cfg in configurations(sparsities, layer_counts, structures):
            wanted = profile is not None and \
                (cfg["layers"], cfg["sparsity"]) == (profile[0], profile[1]) and \
                cfg["structure"] in (profile[2], "dense")
            runner, model, extra = load_pruned(base, cfg, workdir, threads, keep_model=wanted)
            jit_s = jit_s if jit_s is not None else runner.timings["jit_compile_s"]
            # First calls compile shape-specialised kernels and page in weights: not timed.
            benchmark.measure(runner, inputs, warmup_s, 0.0, 1)
            pairs = []
            for _ in range(rounds):
                b = benchmark.measure(ort, inputs, time_s, 0.0, min_batches)
                c = benchmark.measure(runner, inputs, time_s, 0.0, min_batches)
                pairs.append((b["items_per_s"], c["items_per_s"]))
            ort_all += [b for b, _ in pairs]
            ratios = [c / b for b, c in pairs]
            row = {**cfg, **extra,
                   "items_per_s": statistics.median(c for _, c in pairs),
                   "ort_items_per_s": statistics.median(b for b, _ in pairs),
                   "speedup_vs_ort": statistics.median(ratios),
                   "speedup_range": [min(ratios), max(ratios)],
                   "formats": runner.info["formats"], "weight_nbytes": runner.info["weight_nbytes"],
                   "dense_weight_nbytes": runner.info["dense_weight_nbytes"],
                   "load_s": runner.timings["load_s"]}
            rows.append(row)
            log(f"{cfg['layers']:>2}L {cfg['structure']:<12} {cfg['sparsity']:4.0%}: "
                f"{row['items_per_s']:8.2f} items/s, {row['speedup_vs_ort']:.2f}x ORT "
                f"({row['ort_items_per_s']:.2f} items/s)")
            if model is not None:
                prof = {"layers": cfg["layers"], "sparsity": cfg["sparsity"],
                        "structure": cfg["structure"], "steps": profile_steps(model, inputs)}
            del runner, model
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "settings": {"base": str(base), "onnx": str(onnx), "batch_size": batch_size,
                     "seq_len": seq_len, "rounds": rounds, "time_s": time_s,
                     "min_batches": min_batches, "threads": threads,
                     "sparsities": list(sparsities), "layer_counts": list(layer_counts),
                     "structures": list(structures)},
        "baseline": {"engine": "onnxruntime", "layers": ort.info.get("layers"),
                     "items_per_s": statistics.median(ort_all) if ort_all else None},
        "results": rows,
        "profile": prof,
        "published": reference_points(),
        "jit_compile_s": jit_s,
        "versions": benchmark.library_versions(),
        "wall_s": time.perf_counter() - t_start,
    }


def format_table(result: dict) -> str:
    s = result["settings"]
    lines = [f"batch {s['batch_size']}, seq {s['seq_len']}, {s['threads']} threads; ORT dense "
             f"{result['baseline']['layers']}L median {result['baseline']['items_per_s']:.2f} items/s; "
             f"speedup = median of {s['rounds']} back-to-back ratios",
             f"{'layers':>6} {'structure':<12} {'sparsity':>8} {'items/s':>9} {'vs ORT':>7} "
             f"{'range':>11} {'formats':<24}"]
    for r in result["results"]:
        fm = ",".join(f"{k}:{v}" for k, v in sorted(r["formats"].items()))
        lines.append(f"{r['layers']:>6} {r['structure']:<12} {r['sparsity']:>8.0%} "
                     f"{r['items_per_s']:>9.2f} {r['speedup_vs_ort']:>6.2f}x "
                     f"{r['speedup_range'][0]:>5.2f}-{r['speedup_range'][1]:<5.2f} {fm:<24}")
    return "\n".join(lines)


def tiny_models(out, *, hidden=256, layers=2, heads=4, intermediate=1024, vocab=2000) -> tuple:
    """A small random BERT (HF folder) and its ONNX export, for smoke runs; idempotent."""
    from make_checkpoints import make_random_bert

    from sparsebert.export import export_bert_onnx

    out = Path(out)
    base, onnx_dir = out / "tiny-dense", out / "onnx-tiny-dense"
    if not (base / "config.json").exists():
        make_random_bert(base, hidden=hidden, layers=layers, heads=heads,
                         intermediate=intermediate, vocab=vocab, max_position=128)
    if not (onnx_dir / "model.onnx").exists():
        export_bert_onnx(base, onnx_dir / "model.onnx", "legacy17")
        shutil.copyfile(base / "config.json", onnx_dir / "config.json")
    return base, onnx_dir


def bench_models(models_dir) -> tuple:
    """The dense 12-layer BERT-base checkpoint and its ORT export (models/make_bench_models.py)."""
    from make_bench_models import ONNX_NAME, build_all, model_name

    models_dir = Path(models_dir)
    base = models_dir / model_name(12, "dense")
    onnx_dir = models_dir / ONNX_NAME
    if not base.exists() or not (onnx_dir / "model.onnx").exists():
        build_all(models_dir, only_suite=True)
    return base, onnx_dir


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the result here")
    p.add_argument("--quick", action="store_true", help="tiny random model, short timings")
    p.add_argument("--models", default=str(ROOT / "bench-models"),
                   help="benchmark model folder (full set) or tiny model folder (--quick)")
    args = p.parse_args(argv)
    params = QUICK if args.quick else FULL
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    base, onnx = tiny_models(args.models) if args.quick else bench_models(args.models)
    result = sweep_sparsity(base, onnx, **params, log=log)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
