"""The compound-sparsification ablation table, from the committed run results.

Reads notebooks/results/ablations/NAME.{recipe.toml,metrics.json} (copied there from each run's
output folder as soon as the run ends) and writes notebooks/results/ablations/README.md: one row
per run with what its recipe changes, its steps, wall time, torch threads and metrics, so the next
person sees what was tried and what it bought. A second table lists every shipped recipe
(sparsebert/train/recipes/) with the committed runs of exactly its body (same parsed recipe, comments
and thread count aside; from ablations/ or runs/), so whether a recipe was run to the end, and what
it reached, is read from the results, not kept by hand.

    python benchmarks/ablation_table.py
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path

from sparsebert.train.recipe import RECIPES_DIR, parse_recipe

DIR = Path(__file__).resolve().parent.parent / "notebooks" / "results" / "ablations"
RUNS_DIR = DIR.parent / "runs"
# Recipe keys shown as columns: (section, key).
KEYS = [("pruning", "final_sparsity"), ("pruning", "block"), ("pruning", "initial_sparsity"),
        ("pruning", "end"), ("pruning", "update_every"), ("distillation", "hidden_weight"),
        ("distillation", "hidden_norm"), ("distillation", "attention_weight"), ("pruning", "init_method"),
        ("pruning", "score"), ("student", "freeze_embeddings"), ("training", "lr"), ("training", "lr_schedule"),
        ("training", "batch_size"), ("training", "precision"), ("distillation", "cache_teacher"),
        ("pruning", "permute")]


def rows() -> list[dict]:
    out = []
    for m in sorted(DIR.glob("*.metrics.json")):
        name = m.name[: -len(".metrics.json")]
        metrics = json.loads(m.read_text())
        recipe = tomllib.loads((DIR / f"{name}.recipe.toml").read_text())
        train = metrics.get("train", {})
        row = {"run": name, "steps": f"{train.get('step')}/{train.get('total_steps')}",
               "wall_min": round(train.get("wall_seconds", 0) / 60, 1),
               "cache_build_min": _cache_build_min(train), "threads": train.get("torch_threads")}
        for section, key in KEYS:
            row[key] = recipe.get(section, {}).get(key, "-")
        for key in ("cosine_to_teacher", "top10_overlap", "lee_spearman", "retrieval_recall_at_1",
                    "retrieval_mrr", "accuracy"):
            if key in metrics:
                row[key] = _fmt(metrics[key], 4)
        out.append(row)
    return out


def _cache_build_min(train: dict):
    """Minutes the run spent building its teacher cache ([distillation] cache_teacher; 0.0 when it
    reused one), "-" without one; wall_min leaves it out."""
    cache = train.get("teacher_cache")
    return "-" if not cache else 0.0 if cache["reused"] else round(cache["build_seconds"] / 60, 1)


def body(text: str):
    """What decides a recipe's result: the parsed recipe without its comments and thread count."""
    r = parse_recipe(text)
    training = dataclasses.replace(r.training, threads=0, checkpoint_minutes=0.0)
    return dataclasses.replace(r, text="", training=training)


def _fmt(value, digits=4):
    """Rounded down (the 1e-9 absorbs binary fractions such as 0.93 = 0.92999...): every metric here is
    better higher, so a shortfall never rounds up to a target (0.94997 reads 0.9499, not 0.9500)."""
    return "-" if value is None else f"{math.floor(value * 10**digits + 1e-9) / 10**digits:.{digits}f}"


def _int8(q: dict | None, key: str) -> str:
    """The int8 figure; marked when its primary quantization was calibrated (the column means without)."""
    if q is None:
        return "-"
    primary = str(q.get("quantized_with", "")).split(";")[0]  # what follows ';' is a second, noted variant
    return _fmt(q.get(key)) + (" (SmoothQuant)" if "--calibration" in primary else "")


def shipped_rows(recipes_dir: Path = RECIPES_DIR, result_dirs=(DIR, RUNS_DIR)) -> list[dict]:
    """One row per shipped recipe: the committed runs of its body that ran to the end, and the best one's metrics."""
    runs = []  # (name, body, metrics, int8 metrics or None)
    for d in result_dirs:
        for m in sorted(Path(d).glob("*.metrics.json")):
            name = m.name[: -len(".metrics.json")]  # NAME.int8-metrics.json does not match the glob
            metrics = json.loads(m.read_text())
            train = metrics.get("train", {})
            if train.get("step") is None or train.get("step") != train.get("total_steps"):
                continue  # stopped early: not a run of the recipe to its end
            q = m.with_name(f"{name}.int8-metrics.json")
            runs.append((name, body((m.with_name(f"{name}.recipe.toml")).read_text()), metrics,
                         json.loads(q.read_text()) if q.is_file() else None))
    out = []
    for path in sorted(Path(recipes_dir).glob("*.toml")):
        b = body(path.read_text(encoding="utf-8"))
        row = {"recipe": path.stem, "task": b.task.kind, "runs": "not yet run"}
        matches = [r for r in runs if r[1] == b]
        if matches:
            key = "accuracy" if b.task.kind == "classification" else "cosine_to_teacher"
            name, _, metrics, q = max(matches, key=lambda r: r[2].get(key) or 0.0)
            train = metrics["train"]
            row.update(runs=", ".join(r[0] for r in matches), steps=train["step"],
                       wall_min=round(train.get("wall_seconds", 0) / 60, 1),
                       cache_build_min=_cache_build_min(train), threads=train.get("torch_threads"),
                       fp32=_fmt(metrics.get(key)), int8=_int8(q, key),
                       lee=_fmt(metrics.get("lee_spearman"), 3),
                       recall_at_1=_fmt(metrics.get("retrieval_recall_at_1"), 3))
        out.append(row)
    return out


def markdown(cols: list[str], table: list[dict]) -> list[str]:
    return (["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            + ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in table])


def main() -> None:
    table = rows()
    lines = ["# Compound-sparsification ablations (all-MiniLM-L6-v2 teacher)", "",
             "Written by `python benchmarks/ablation_table.py` from the files beside it. Metrics on",
             "2,000 held-out sentences (cosine of mean-pooled embeddings to the teacher's, top-10",
             "neighbour overlap), the Lee 50-document similarity set (teacher 0.508) and, where measured,",
             "the WordNet retrieval task (1,072 word -> definition pairs; teacher recall@1 0.484,",
             "MRR 0.554). Sentiment runs (`sent-*`, `abl-sent-*`): accuracy on the Rotten Tomatoes test",
             "split (1,328 snippets); `sent-teacher` is the dense teacher they distil from.", ""]
    lines += markdown(list(dict.fromkeys(k for r in table for k in r)), table)
    lines += ["", "## Shipped recipes and their committed runs", "",
              "Each shipped recipe (`sparsebert/train/recipes/`) with the committed runs (here and in",
              "`../runs/`) of exactly its body (the same parsed recipe; comments and thread count aside)",
              "that ran to the end; the",
              "metrics are the best of them: `fp32` is the held-out cosine to the teacher (embeddings) or",
              "the test accuracy (classification), `int8` the same after `sparsebert quantize` without",
              "calibration, where measured (marked where only a SmoothQuant-calibrated figure was kept).", ""]
    lines += markdown(["recipe", "task", "runs", "steps", "wall_min", "cache_build_min", "threads", "fp32", "int8",
                       "lee", "recall_at_1"], shipped_rows())
    (DIR / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
