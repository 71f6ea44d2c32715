"""notebooks/compound_sparsification.ipynb runs on a `sparsebert.train.points` result and draws its figures.

The notebook measures nothing (the full runs take hours on a CPU). These tests check that every row
has the fields the notebook plots and sorts by (precision, speed_from, structure), that the figure
and the loss curves come out as PNG outputs, and that the targets table picks the best committed run
of each category. They run on a small result written here: the committed runs read by
`sparsebert.train.committed` from notebooks/results/{ablations,runs}, with speeds made up from their
structure, plus hand-written dense, one-shot and ONNX Runtime rows; and, once it is in this format,
on the committed notebooks/results/compound_sparsification.json.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "notebooks" / "results"
COMMITTED = RESULTS / "compound_sparsification.json"
REGENERATE = ("python -m sparsebert.train.points --runs train-runs --cache data-cache "
              "--sentiment-teacher train-runs/sent-teacher --results notebooks/results/ablations "
              "--results notebooks/results/runs --json notebooks/results/compound_sparsification.json")

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")


def _speed(ratio: float) -> dict:
    return {"items_per_s": 25.0 * ratio, "ort_items_per_s": 25.0, "speedup_vs_ort": ratio,
            "speedup_range": [0.95 * ratio, 1.05 * ratio]}


def _made_up_ratio(structure) -> float:
    """Faster with fewer layers, more zeros and int8: enough for a frontier with steps."""
    layers = 6 if structure.layers is None else len(structure.layers)
    int8 = 1.6 if structure.precision == "int8" else 1.0
    return round(6 / layers * int8 / (1.0 - 0.6 * structure.sparsity), 3)


def _row(task, label, kind, metrics, ratio, precision="fp32", layers=None, sparsity=0.0, block=None, **extra):
    return {"task": task, "label": label, "kind": kind, "precision": precision, "layers": layers,
            "final_sparsity": sparsity, "block": block, "scope": "per-layer", **metrics, **_speed(ratio),
            "speed_from": "this model", **extra}


def _fake_result() -> dict:
    from sparsebert.train.committed import committed_rows

    emb, cls = "embeddings", "classification"
    teacher = {"cosine_to_teacher": 1.0, "top10_overlap": 1.0, "lee_spearman": 0.508,
               "teacher_lee_spearman": 0.508}
    ort = {"engine": "onnxruntime", "accuracy_from": "the dense teacher row",
           "speed_from": "the baseline itself"}
    rows = [
        _row(emb, "dense teacher", "dense", teacher, 1.2),
        _row(emb, "dense teacher int8", "dense", {"cosine_to_teacher": 0.997, "lee_spearman": 0.51}, 2.0,
             precision="int8"),
        _row(emb, "dense, layers 0 2 4", "layer-dropped", {"cosine_to_teacher": 0.41, "lee_spearman": 0.47},
             2.4, layers=[0, 2, 4]),
        _row(emb, "one-shot 80%", "one-shot", {"cosine_to_teacher": 0.31, "lee_spearman": 0.44}, 2.5,
             sparsity=0.8, block="1x1"),
        _row(emb, "dense teacher, ORT fp32", "dense", teacher, 1.0, **ort),
        _row(emb, "dense teacher, ORT int8 dynamic", "dense", {"cosine_to_teacher": 0.9926}, 1.7,
             precision="int8", engine="onnxruntime-int8", accuracy_from="an int8_accuracy JSON"),
        _row(cls, "dense teacher", "dense", {"accuracy": 0.8622}, 1.2),
        _row(cls, "one-shot 80%", "one-shot", {"accuracy": 0.60}, 2.5, sparsity=0.8, block="1x1"),
        _row(cls, "dense teacher, ORT fp32", "dense", {"accuracy": 0.8622}, 1.0, **ort)]
    teachers = {emb: "the dense teacher", cls: "the sentiment teacher"}
    for row, structure in committed_rows([RESULTS / "ablations", RESULTS / "runs"], log=lambda s: None):
        stand_in = f"stand-in: {teachers[structure.task]} pruned one-shot to {structure.describe()}"
        rows.append({**row, **_speed(_made_up_ratio(structure)), "speed_from": stand_in})
    settings = {"cpu": "a made-up CPU (AVX-512)", "threads": 2, "batch_size": 32, "seq_len": 128, "rounds": 3,
                "time_s": 2.0, "baseline": "onnxruntime, dense MiniLM (legacy17 export)",
                "shared_machine": False, "results": ["notebooks/results/ablations", "notebooks/results/runs"]}
    return {"settings": settings, "versions": {}, "results": rows, "wall_s": 0.0}


def _committed_or_skip() -> dict:
    result = json.loads(COMMITTED.read_text())
    if not all("speed_from" in r for r in result["results"]):
        pytest.skip(f"{COMMITTED.name} predates the precision / speed_from fields; regenerate it on a quiet "
                    f"machine with: {REGENERATE}")
    return result


@pytest.fixture(params=["made-up", "committed"])
def result_file(request, tmp_path) -> Path:
    if request.param == "committed":
        _committed_or_skip()
        return COMMITTED
    path = tmp_path / "compound_sparsification.json"
    path.write_text(json.dumps(_fake_result(), indent=1))
    return path


def test_results_have_the_plotted_fields(result_file):
    result = json.loads(result_file.read_text())
    assert result["settings"]["cpu"] and result["settings"]["shared_machine"] in (True, False)
    rows = result["results"]
    kinds = {(r["task"], r["kind"]) for r in rows}
    assert ("embeddings", "dense") in kinds and ("embeddings", "compound") in kinds
    labels = {(r["task"], r["label"]) for r in rows}
    assert len(labels) == len(rows), "a (task, label) pair names one row"
    assert ("embeddings", "dense teacher, ORT fp32") in labels
    for r in rows:
        assert r["speedup_vs_ort"] > 0 and r["ort_items_per_s"] > 0
        assert r["precision"] in ("fp32", "int8")
        assert r["precision"] == "int8" or not r["label"].endswith(" int8")
        assert r["speed_from"] == "this model" or r["speed_from"].startswith(("stand-in: ", "the baseline"))
        assert r["layers"] is None or all(isinstance(i, int) for i in r["layers"])
        assert 0.0 <= r["final_sparsity"] < 1.0 and (r["block"] is None or "x" in r["block"])
        metric = "cosine_to_teacher" if r["task"] == "embeddings" else "accuracy"
        assert 0.0 <= r[metric] <= 1.0
        if r.get("engine") == "onnxruntime":
            assert r["speedup_vs_ort"] == 1.0
        if r.get("train"):  # the budget the targets table prints
            assert {"step", "total_steps", "wall_seconds"} <= set(r["train"])


def test_notebook_executes(result_file, tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "notebooks"))
    from run_full import execute_notebook

    monkeypatch.setenv("SPARSEBERT_FRONTIER_JSON", str(result_file))
    nb = execute_notebook(ROOT / "notebooks" / "compound_sparsification.ipynb", full=False,
                          results_dir=tmp_path / "results", cwd=tmp_path, timeout=120)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    pngs = [base64.b64decode(o["data"]["image/png"]) for c in nb.cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
    assert len(pngs) == 3 and all(p.startswith(b"\x89PNG") for p in pngs)  # frontier, loss, budget
    targets = next(c for c in nb.cells if c.cell_type == "code" and "TARGETS = {" in c.source)
    table = "".join(o.get("text", "") for o in targets.outputs if o.get("output_type") == "stream")
    lines = table.splitlines()
    assert len(lines) == 2 + 4 * 2  # header, rule, then one line per target and task
    for name in ("80% unstructured", "90% unstructured", "80% 1x4 + int8", "3 layers + 80%"):
        assert sum(line.startswith(name) for line in lines) == 2
    if result_file != COMMITTED:
        # The best committed run of each category, by hand from notebooks/results/ablations/README.md.
        picks = {("80% unstructured", "embeddings"): "abl-80-24k-bf16-cache",
                 ("80% unstructured", "classification"): "abl-sent-80-new-lr1e-3",
                 ("90% unstructured", "embeddings"): "abl-90-10x-lr2e-3-sgpt",
                 ("90% unstructured", "classification"): "abl-sent-90-new",
                 ("80% 1x4 + int8", "embeddings"): "abl-80-1x4-23k-perm-cache int8",
                 ("80% 1x4 + int8", "classification"): "abl-sent-80-1x4-2x-sgpt int8",
                 ("3 layers + 80%", "embeddings"): "abl-3l-80-20k-sgpt",
                 ("3 layers + 80%", "classification"): "abl-sent-3l-80-new"}
        for (name, task), run in picks.items():
            line = next(line for line in lines if line.startswith(name) and f" {task} " in line)
            assert f" {run} " in line and (" met" in line or " missed" in line), line
        # abl-80-24k-bf16-cache: 24,000 steps in 108.6 min with a teacher cache built by an earlier
        # run (so none of its build counts), held-out cosine 0.95122, the 0.95 target met;
        # abl-sent-80-new-lr1e-3: 0.8532 against the teacher's 0.8622, 0.90 points down
        line = next(line for line in lines if " abl-80-24k-bf16-cache " in line)
        assert "24000/24000" in line and " 109 " in line and "0.95122 (>= 0.95) met" in line
        line = next(line for line in lines if " abl-sent-80-new-lr1e-3 " in line)
        assert "0.8532, -0.90 pt (<= 1.0) met" in line
        # abl-80-1x4-23k-perm-cache after quantize: held-out cosine 0.91947, short of 0.94; Lee 0.551,
        # 1.085x the made-up teacher row's 0.508
        # (the 12,000-step abl-80-1x4-int8-10x-sgpt's 0.91652 is below it)
        line = next(line for line in lines if " abl-80-1x4-23k-perm-cache int8 " in line)
        assert "23000/23000" in line and "0.91947 (>= 0.94) missed" in line and "1.085x (>= 0.96x) met" in line
        # abl-sent-80-1x4-2x-sgpt after quantize: 0.8479 (1,126 of 1,328) against 0.8622, 1.43 points down
        line = next(line for line in lines if " abl-sent-80-1x4-2x-sgpt int8 " in line)
        assert "2552/2552" in line and "0.8479, -1.43 pt (<= 1.5) met" in line
        # abl-90-10x-lr2e-3-sgpt: 12,000 steps, held-out cosine 0.9039, Lee 0.546 (1.07x the teacher)
        line = next(line for line in lines if " abl-90-10x-lr2e-3-sgpt " in line)
        assert "12000/12000" in line and "0.90389 (>= 0.9) met" in line and "(>= 0.95x) met" in line
