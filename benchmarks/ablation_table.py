"""The compound-sparsification ablation table, from the committed run results.

Reads notebooks/results/ablations/NAME.{recipe.toml,metrics.json} (copied there from each run's
output folder as soon as the run ends) and writes notebooks/results/ablations/README.md: one row
per run with what its recipe changes, its steps, wall time, torch threads and metrics, so the next
person sees what was tried and what it bought.

    python benchmarks/ablation_table.py
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

DIR = Path(__file__).resolve().parent.parent / "notebooks" / "results" / "ablations"
# Recipe keys shown as columns: (section, key).
KEYS = [("pruning", "final_sparsity"), ("pruning", "block"), ("pruning", "initial_sparsity"),
        ("pruning", "end"), ("pruning", "update_every"), ("distillation", "hidden_weight"),
        ("distillation", "hidden_norm"), ("distillation", "attention_weight"), ("pruning", "init_method"),
        ("pruning", "score"), ("student", "freeze_embeddings"), ("training", "lr"), ("training", "lr_schedule")]


def rows() -> list[dict]:
    out = []
    for m in sorted(DIR.glob("*.metrics.json")):
        name = m.name[: -len(".metrics.json")]
        metrics = json.loads(m.read_text())
        recipe = tomllib.loads((DIR / f"{name}.recipe.toml").read_text())
        train = metrics.get("train", {})
        row = {"run": name, "steps": f"{train.get('step')}/{train.get('total_steps')}",
               "wall_min": round(train.get("wall_seconds", 0) / 60, 1),
               "threads": train.get("torch_threads")}
        for section, key in KEYS:
            row[key] = recipe.get(section, {}).get(key, "-")
        for key in ("cosine_to_teacher", "top10_overlap", "lee_spearman", "retrieval_recall_at_1",
                    "retrieval_mrr", "accuracy"):
            if key in metrics:
                row[key] = round(metrics[key], 4)
        out.append(row)
    return out


def main() -> None:
    table = rows()
    cols = list(dict.fromkeys(k for r in table for k in r))
    lines = ["# Compound-sparsification ablations (all-MiniLM-L6-v2 teacher)", "",
             "Written by `python benchmarks/ablation_table.py` from the files beside it. Metrics on",
             "2,000 held-out sentences (cosine of mean-pooled embeddings to the teacher's, top-10",
             "neighbour overlap), the Lee 50-document similarity set (teacher 0.508) and, where measured,",
             "the WordNet retrieval task (1,072 word -> definition pairs; teacher recall@1 0.484,",
             "MRR 0.554). Sentiment runs (`sent-*`, `abl-sent-*`): accuracy on the Rotten Tomatoes test",
             "split (1,328 snippets); `sent-teacher` is the dense teacher they distil from.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |" for r in table]
    (DIR / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
