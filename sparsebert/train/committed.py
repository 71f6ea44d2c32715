"""Committed training results as rows of the accuracy-vs-speed figure, read without their weights.

A run's output folder is not kept, but its results are, in a results folder such as
notebooks/results/ablations/:

    NAME.metrics.json       what `sparsebert sparsify --eval-data` measured (the task's metrics)
    NAME.recipe.toml        the recipe, which fixes the run's structure
    NAME.train.json         steps, wall time, loss curve (optional: else metrics.json's "train")
    NAME.int8-metrics.json  the same metrics after `sparsebert quantize` (optional)

Speed depends on shapes and sparsity pattern, not on weight values, so `sparsebert.train.points`
times such a run on a stand-in of the same `Structure`: the teacher pruned one-shot to it. This
module only reads files and builds rows without speed: no model is loaded, nothing is timed.

Left out: runs that do not prune (dense fine-tuning such as sent-teacher; the dense rows of the
figure cover them), and a second row for a run committed twice under two names (the first name
read keeps the row and lists the other under "also_committed_as").
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import ConfigError
from .recipe import load_recipe

METRICS, INT8_METRICS, RECIPE, TRAIN = ".metrics.json", ".int8-metrics.json", ".recipe.toml", ".train.json"
_NOT_METRICS = ("model", "task", "train")  # metrics.json keys that are not measurements


@dataclasses.dataclass(frozen=True)
class Structure:
    """What a model's speed depends on; the key of the stand-in speed cache."""

    task: str
    layers: tuple | None  # the teacher layers kept, in order; None: all of them
    sparsity: float  # of the encoder linears
    block: str  # "1x1" (unstructured), "1x4", "4x1", ...
    scope: str = "per-layer"  # "global": the sparsity varies between linears
    precision: str = "fp32"  # "int8": after `sparsebert quantize`

    def describe(self) -> str:
        out = f"{self.sparsity:g} {self.block}"
        if self.layers is not None:
            out += ", layers " + " ".join(map(str, self.layers))
        if self.scope != "per-layer":
            out += f", {self.scope} scope"
        return out + (", int8 (sparsebert quantize)" if self.precision == "int8" else "")

    def fields(self) -> dict:
        """The row fields the notebook picks target categories by."""
        return {"layers": None if self.layers is None else list(self.layers), "final_sparsity": self.sparsity,
                "block": self.block, "scope": self.scope}

    @classmethod
    def of_row(cls, row: dict) -> Structure:
        layers = row.get("layers")
        return cls(row["task"], None if layers is None else tuple(layers), row["final_sparsity"],
                   row["block"], row.get("scope", "per-layer"), row.get("precision", "fp32"))


def structure_of(recipe, train: dict | None = None) -> Structure | None:
    """The fp32 structure a run of `recipe` ends with; None for a recipe that does not prune. A run
    stopped during its sparsity ramp (train.json's encoder_linear_sparsity short of the recipe's
    final_sparsity) has the sparsity it reached, to 0.01."""
    p = recipe.pruning
    if p is None or p.final_sparsity == 0:
        return None
    sparsity = p.final_sparsity
    reached = (train or {}).get("encoder_linear_sparsity")
    if reached is not None and abs(reached - sparsity) > 0.005:
        sparsity = round(reached, 2)
    return Structure(recipe.task.kind, recipe.student.layers, sparsity, p.block, p.scope)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _row(name, task, kind, structure, int8_aware, metrics, train, source) -> dict:
    row = {"task": task, "label": name, "kind": kind, "precision": structure.precision, **structure.fields(),
           "int8_aware": int8_aware,
           **{k: v for k, v in metrics.items() if k not in _NOT_METRICS}, "results_file": str(source)}
    if train:
        row["train"] = {k: v for k, v in train.items() if k != "loss_curve"}
    return row


def committed_rows(dirs, skip_names=(), log=print) -> list[tuple[dict, Structure]]:
    """(row without speed, structure to time it on) for every pruned run committed in `dirs`, in
    folder order then name order; an int8 row follows its run's row when NAME.int8-metrics.json
    exists. Runs named in `skip_names` (measured from their own folders) are left out."""
    out, seen, by_metrics = [], set(skip_names), {}
    for folder in map(Path, dirs):
        if not folder.is_dir():
            raise ConfigError(f"results folder {str(folder)!r} does not exist; pass a folder of "
                              f"NAME{METRICS} + NAME{RECIPE} files (e.g. notebooks/results/ablations)")
        for mpath in sorted(folder.glob("*" + METRICS)):
            name = mpath.name[: -len(METRICS)]
            recipe_path = folder / (name + RECIPE)
            if name in seen:
                log(f"skipped {mpath}: {name} is already a row")
                continue
            if not recipe_path.is_file():
                log(f"skipped {mpath}: no {recipe_path.name} beside it")
                continue
            metrics, recipe = _read_json(mpath), load_recipe(recipe_path)
            tpath = folder / (name + TRAIN)
            train = _read_json(tpath) if tpath.is_file() else metrics.get("train", {})
            task = metrics.get("task", recipe.task.kind)
            if task != recipe.task.kind:
                raise ConfigError(f"{mpath} is a {task!r} result but {recipe_path.name} is a "
                                  f"{recipe.task.kind!r} recipe; fix whichever file was copied wrongly")
            structure = structure_of(recipe, train)
            if structure is None:  # a dense run: the teacher rows cover it
                continue
            seen.add(name)
            twin = by_metrics.get(json.dumps(metrics, sort_keys=True))
            if twin is not None:
                twin.setdefault("also_committed_as", []).append(name)
                continue
            kind = "gmp-only" if "gmp-only" in name else "compound"
            int8_aware = recipe.quantization is not None  # trained with fake-quantized steps
            row = _row(name, task, kind, structure, int8_aware, metrics, train, mpath)
            row["loss_curve"] = train.get("loss_curve")
            by_metrics[json.dumps(metrics, sort_keys=True)] = row
            out.append((row, structure))
            qpath = folder / (name + INT8_METRICS)
            if qpath.is_file():
                int8 = dataclasses.replace(structure, precision="int8")
                q_row = _row(f"{name} int8", task, kind, int8, int8_aware, _read_json(qpath), train, qpath)
                out.append((q_row, int8))
    return out


def still_current(old: dict | None, row: dict) -> bool:
    """Whether `old` (a row of an earlier result) was made from the same committed files as `row`:
    same train step, metrics and structure, so its speed still stands."""
    return old is not None and all(old.get(k) == v for k, v in row.items())


def ort_int8_cosine(path) -> dict | None:
    """ONNX Runtime dynamic int8's cosine to the dense teacher from a benchmarks/int8_accuracy.py
    JSON: the entry of the model that is the teacher (its fp32 cosine to the teacher is 1), as row
    fields with "accuracy_from"; None when the file has no such entry."""
    data = _read_json(Path(path))
    for model in data.get("models", {}).values():
        ort = model.get("ort_int8_dynamic")
        if abs(model.get("fp32_cos_to_teacher_mean", 0.0) - 1.0) < 1e-6 and isinstance(ort, dict):
            return {"cosine_to_teacher": ort["cos_to_teacher_mean"],
                    "accuracy_from": f"{path} (ort_int8_dynamic cos_to_teacher_mean, first "
                                     f"{data.get('sentences')} held-out sentences)"}
    return None
