"""The metrics users choose a model by, against answers computed by hand in the tests:
top_k_overlap (neighbour sets), evaluate_model's held-out cosine, accuracy (label order) and Lee
Spearman (pair order), the retrieval scores, train/points.py (speed medians, which runs are
measured, re-measured or reused) and train/committed.py (rows and structures of committed results,
one stand-in per structure).

Embeddings come from a stand-in for `sparsebert.load` that returns fixed vectors, so every expected
value is known exactly; accuracy runs a real tiny classifier whose head always answers one label.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sparsebert.train import evaluate, points
from sparsebert.train.evaluate import evaluate_model, retrieval_scores, top_k_overlap


def _circle(degrees):
    a = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def test_top_k_overlap_by_hand():
    # Points on the unit circle; cosine neighbours are the nearest angles. b swaps points 3 and 4.
    a = _circle([0, 10, 35, 65, 110])
    b = _circle([0, 10, 35, 110, 65])
    # k=2, a: {1,2} {0,2} {1,3} {2,4} {3,2};  b: {1,2} {0,2} {1,4} {4,2} {2,3}
    assert top_k_overlap(a, b, k=2) == pytest.approx((1 + 1 + 0.5 + 1 + 1) / 5)
    # k=1, a: 1 0 1 2 3;  b: 1 0 1 4 2
    assert top_k_overlap(a, b, k=1) == pytest.approx(3 / 5)
    assert top_k_overlap(a, a, k=3) == 1.0


class _FakeModel:
    def __init__(self, table):
        self.table = table

    def encode(self, texts):
        return np.stack([self.table[t] for t in texts]).astype(np.float32)


def _fake_load(monkeypatch, by_path):
    import sparsebert

    monkeypatch.setattr(sparsebert, "load", lambda path, **kw: _FakeModel(by_path[str(path)]))
    monkeypatch.setattr(evaluate, "_TEACHER_CACHE", {})


def test_heldout_cosine_by_hand(tmp_path, monkeypatch):
    texts = [f"sentence {i}" for i in range(12)]
    (tmp_path / "heldout.txt").write_text("\n".join(texts) + "\n")
    t_deg = np.arange(12) * 30.0
    s_deg = t_deg + np.array([0, 60, 90, 0, 0, 0, 0, 0, 0, 0, 0, 180])
    _fake_load(monkeypatch, {"student": dict(zip(texts, _circle(s_deg))),
                             "teacher": dict(zip(texts, _circle(t_deg)))})
    out = evaluate_model("student", teacher="teacher", kind="embeddings", eval_data=tmp_path / "heldout.txt")
    # cosines: nine 1s, cos 60 = 0.5, cos 90 = 0, cos 180 = -1
    assert out["cosine_to_teacher"] == pytest.approx((9 + 0.5 + 0 - 1) / 12, abs=1e-6)
    assert out["heldout_sentences"] == 12
    assert out["top10_overlap"] == pytest.approx(top_k_overlap(_circle(s_deg), _circle(t_deg)), abs=1e-6)


def test_lee_spearman_pair_order(tmp_path, monkeypatch):
    # Human scores = the ranks of the model's cosines over the pairs i < j in row order, with two
    # adjacent ranks swapped: Spearman 1 - 6 * 2 / (n (n^2 - 1)), n = 1225. Any other pair order
    # scrambles the ranks.
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 6))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    iu = np.triu_indices(50, 1)
    sims = (emb @ emb.T)[iu]
    ranks = np.empty(len(sims))
    ranks[np.argsort(sims)] = np.arange(len(sims))
    lo, hi = np.argsort(sims)[600], np.argsort(sims)[601]
    ranks[lo], ranks[hi] = ranks[hi], ranks[lo]
    human = np.zeros((50, 50))
    human[iu] = ranks / len(ranks)
    human = human + human.T  # the file holds the full symmetric matrix
    docs = [f"document {i}" for i in range(50)]
    (tmp_path / "lee.cor").write_text("\n".join(docs) + "\n")
    np.savetxt(tmp_path / "similarities0-1.txt", human)
    _fake_load(monkeypatch, {"m": dict(zip(docs, emb))})
    n = len(sims)
    want = 1 - 6 * 2 / (n * (n * n - 1))
    assert evaluate.lee_spearman("m", tmp_path) == pytest.approx(want, abs=1e-9)


def test_retrieval_scores_by_hand():
    # 3 queries, 4 documents (query i's answer is document i); cosine ranks by hand:
    q = _circle([0, 90, 200])
    d = _circle([5, 150, 100, 270])
    # q0: d0 (5) first -> rank 1.  q1 (90): d2 (10 away), d1 (60), d0 (85) -> rank 2.
    # q2 (200): d1 (50), d3 (70), d2 (100) -> rank 3.
    got = retrieval_scores(q, d)
    assert got["recall_at_1"] == pytest.approx(1 / 3)
    assert got["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    assert got["recall_at_10"] == 1.0 and got["pairs"] == 3


def test_retrieval_metric_in_evaluate(tmp_path, monkeypatch):
    pairs = [("car, automobile", "a motor vehicle"), ("dog", "a domestic animal"), ("red", "a colour")]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps({"query": q, "document": d}) + "\n"
                                                  for q, d in pairs))
    student = {"car, automobile": [1, 0], "dog": [0, 1], "red": [0, 1],
               "a motor vehicle": [1, 0], "a domestic animal": [0.6, 0.8], "a colour": [0.8, 0.6]}
    teacher = {**student, "red": [0.8, 0.6]}
    _fake_load(monkeypatch, {"s": {k: np.asarray(v) for k, v in student.items()},
                             "t": {k: np.asarray(v) for k, v in teacher.items()}})
    out = evaluate_model("s", teacher="t", kind="embeddings", retrieval=tmp_path / "pairs.jsonl")
    # student: car -> vehicle (1); dog -> animal 0.8 > colour 0.6 (1); red -> animal first (rank 2)
    assert out["retrieval_recall_at_1"] == pytest.approx(2 / 3)
    assert out["retrieval_mrr"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert out["teacher_retrieval_recall_at_1"] == pytest.approx(1.0)


def _classifier(folder, bias):
    """A tiny BertForSequenceClassification whose head ignores the text: logits = bias."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from pipeline_models import VOCAB
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=2,
                     id2label={0: "rotten", 1: "fresh"}, label2id={"rotten": 0, "fresh": 1})
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(str(folder))
    return folder


def test_accuracy_follows_the_config_label_order(tmp_path):
    # Label ids follow config.json (0 rotten, 1 fresh), not the alphabet (fresh < rotten).
    data = tmp_path / "test.jsonl"
    labels = [1, 1, 0, 1]
    data.write_text("".join(json.dumps({"text": f"the dog {i}", "label": y}) + "\n" for i, y in enumerate(labels)))
    always_fresh = _classifier(tmp_path / "fresh", [0.0, 3.0])
    always_rotten = _classifier(tmp_path / "rotten", [3.0, 0.0])
    assert evaluate_model(always_fresh, kind="classification", eval_data=data)["accuracy"] == 0.75
    assert evaluate_model(always_rotten, kind="classification", eval_data=data)["accuracy"] == 0.25


# --- points.py -------------------------------------------------------------------------------


def test_speed_ratio_takes_medians_of_paired_rounds(monkeypatch):
    from sparsebert import benchmark

    # rounds alternate ORT, candidate: (10, 20), (10, 30), (20, 20) -> ratios 2, 3, 1
    speeds = iter([999.0, 10.0, 20.0, 10.0, 30.0, 20.0, 20.0])  # first: the untimed warm-up
    timed = []

    def measure(runner, *a, **k):
        timed.append(runner)
        return {"items_per_s": next(speeds)}

    monkeypatch.setattr(benchmark, "measure", measure)
    got = points.speed_ratio("candidate", "ort", {}, rounds=3)
    assert timed == ["candidate"] + ["ort", "candidate"] * 3
    assert got == {"items_per_s": 20.0, "ort_items_per_s": 10.0, "speedup_vs_ort": 2.0,
                   "speedup_range": [1.0, 3.0]}


def _run_folder(root, name, *, step, sparsity, task="embeddings", metrics_step=None, fake_quant=None):
    f = root / name
    f.mkdir(parents=True)
    (f / "train.json").write_text(json.dumps({"task": task, "step": step, "finished": True,
                                              "encoder_linear_sparsity": sparsity, "loss_curve": [[1, 0.5]],
                                              "fake_quant_from_step": fake_quant}))
    if metrics_step is not None:
        (f / "metrics.json").write_text(json.dumps({"cosine_to_teacher": 0.5, "train": {"step": metrics_step}}))
    return f


def _no_measuring(tmp_path, monkeypatch) -> dict:
    """points.gather with every export, prune, quantization, evaluation and timing faked; returns
    the teacher folder and the lists the fakes record their calls in."""
    import sparsebert.export
    import sparsebert.ort_files
    import sparsebert.prune
    import sparsebert.quant
    from sparsebert import benchmark

    class _Ort:
        vocab_size = 10

        def run(self, inputs):
            pass

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text("{}")
    calls = {"teacher": teacher, "pruned": [], "quantized": [], "measured": []}
    monkeypatch.setattr(sparsebert.export, "export_bert_onnx", lambda *a, **k: None)
    monkeypatch.setattr(sparsebert.prune, "prune_checkpoint", lambda src, dst, **k: calls["pruned"].append(
        (str(dst).rsplit("/", 1)[-1], k)))
    monkeypatch.setattr(benchmark, "load_runner", lambda *a, **k: _Ort())
    monkeypatch.setattr(benchmark, "random_inputs", lambda *a, **k: {})
    monkeypatch.setattr(benchmark, "library_versions", lambda: {})
    monkeypatch.setattr(sparsebert.quant, "quantize", lambda src, dst, **k: calls["quantized"].append(
        (str(src).rsplit("/", 1)[-1], str(dst).rsplit("/", 1)[-1], k)))

    def fake_eval(path, **kw):
        calls["measured"].append(str(path).rsplit("/", 1)[-1])
        return {"model": str(path), "task": kw["kind"], "cosine_to_teacher": 0.9}

    monkeypatch.setattr(points, "evaluate_model", fake_eval)
    speed = {"items_per_s": 15.0, "ort_items_per_s": 10.0, "speedup_vs_ort": 1.5, "speedup_range": [1.4, 1.6]}
    monkeypatch.setattr(points, "speed_ratio", lambda runner, *a, **k: dict(speed))
    monkeypatch.setattr(points, "baseline_speed", lambda ort, *a, **k: 12.0)
    monkeypatch.setattr(sparsebert.ort_files, "quantize_dynamic_int8",
                        lambda *a, **k: calls["quantized"].append(("ort-int8",)))
    return calls


def test_gather_measures_reuses_and_skips_the_right_runs(tmp_path, monkeypatch):
    calls = _no_measuring(tmp_path, monkeypatch)
    teacher, quantized, measured = calls["teacher"], calls["quantized"], calls["measured"]
    runs = tmp_path / "runs"
    _run_folder(runs, "emb-80", step=100, sparsity=0.8, metrics_step=100)  # current metrics: reused
    _run_folder(runs, "emb-90", step=100, sparsity=0.9, metrics_step=50, fake_quant=90)  # stale: measured
    _run_folder(runs, "emb-90-gmp-only", step=10, sparsity=0.9)  # no metrics: measured
    _run_folder(runs, "emb-dense", step=10, sparsity=0.0)  # dense: not a point
    previous = {"results": [{"task": "embeddings", "label": "dense teacher", "kind": "dense", "kept": True,
                             "speed_from": "this model"},
                            {"task": "embeddings", "label": "one-shot 80%", "kind": "one-shot",
                             "old_format": True},  # no speed_from: measured again
                            {"task": "embeddings", "label": "emb-90", "kind": "compound",
                             "train": {"step": 60}, "stale": True}]}
    result = points.gather(runs, tmp_path / "cache", teacher, None, previous=previous, log=lambda s: None)
    rows = {r["label"]: r for r in result["results"]}
    assert rows["dense teacher"].get("kept") is True  # reused from the previous result
    assert "old_format" not in rows["one-shot 80%"]
    assert "stale" not in rows["emb-90"]  # its step moved on: measured again
    assert rows["emb-80"]["cosine_to_teacher"] == 0.5 and rows["emb-80"]["kind"] == "compound"
    assert rows["emb-90-gmp-only"]["kind"] == "gmp-only" and "emb-dense" not in rows
    assert rows["emb-80"]["loss_curve"] == [[1, 0.5]] and "loss_curve" not in rows["emb-80"]["train"]
    assert sorted(m for m in measured if m.startswith("emb-")) == ["emb-90", "emb-90-gmp-only"]
    # int8 rows: the dense teacher and the run trained with int8-aware steps, quantized without
    # calibration and measured from the quantized folder
    assert [(src, k) for src, _, k in quantized] == [("teacher", {"onnx": False}), ("emb-90", {"onnx": False})]
    assert {q[1] for q in quantized} <= {m for m in measured}
    assert rows["emb-90 int8"]["precision"] == "int8" and rows["emb-90 int8"]["kind"] == "compound"
    assert rows["dense teacher int8"]["precision"] == "int8" and rows["emb-80"]["precision"] == "fp32"
    assert "emb-80 int8" not in rows
    one_shot = [label for label, *_ in points.EMB_ONESHOT]
    assert set(one_shot) <= set(rows) and "dense, layers 0 2 4" in rows
    assert all(math.isclose(r["speedup_vs_ort"], 1.5) for r in result["results"]
               if "kept" not in r and r.get("engine") is None)
    assert all(r["speed_from"] == "this model" for r in result["results"] if "kept" not in r
               and r.get("engine") is None)
    assert rows["one-shot 3 layers + 80%"]["layers"] == [0, 2, 4]  # kept layers, not runtime dropping
    assert rows["emb-90"]["final_sparsity"] == 0.9 and rows["emb-90 int8"]["precision"] == "int8"
    # ORT fp32 is the baseline (1x, the dense teacher's metrics); no int8 accuracy file: no int8 row,
    # and ORT int8 is neither made nor timed (the baseline is timed alone)
    ort_fp32 = rows["dense teacher, ORT fp32"]
    assert ort_fp32["speedup_vs_ort"] == 1.0 and ort_fp32["engine"] == "onnxruntime"
    assert ort_fp32["items_per_s"] == ort_fp32["ort_items_per_s"] == 12.0
    assert "dense teacher, ORT int8 dynamic" not in rows
    assert result["settings"]["shared_machine"] is False

    # Once the cache has retrieval pairs, rows and metrics measured without them are measured again.
    (tmp_path / "cache" / "retrieval").mkdir(parents=True)
    (tmp_path / "cache" / "retrieval" / "wordnet.jsonl").write_text("")
    measured.clear()
    again = points.gather(runs, tmp_path / "cache", teacher, None, previous=result, log=lambda s: None)
    assert sorted(m for m in measured if m.startswith("emb-")) == ["emb-80", "emb-90", "emb-90-gmp-only"]
    assert sorted(m for m in measured if m.startswith("int8_")) == ["int8_embeddings_dense_teacher_int8",
                                                                    "int8_embeddings_emb-90_int8"]
    assert "teacher" in measured and len(again["results"]) == len(result["results"])


# --- committed results (train/committed.py) and their stand-ins --------------------------------------


def _recipe(kind="embeddings", sparsity=0.8, block="1x1", layers=None, scope="per-layer", fake_quant=None):
    lines = ["[task]", f'kind = "{kind}"']
    lines += ['labels = ["neg", "pos"]'] if kind == "classification" else []
    lines += ["[student]", f"layers = {layers}"] if layers else []
    if sparsity:
        lines += ["[pruning]", f"final_sparsity = {sparsity}", "end = 10", f'block = "{block}"',
                  f'scope = "{scope}"']
    lines += ["[distillation]", "hidden_weight = 1.0", "[training]", "steps = 20"]
    lines += ["[quantization]", f"fake_quant_start = {fake_quant}"] if fake_quant is not None else []
    return "\n".join(lines) + "\n"


def _commit(folder, name, metrics, recipe=None, train=None, int8=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.metrics.json").write_text(json.dumps(metrics))
    for suffix, content in ((".recipe.toml", recipe), (".train.json", train), (".int8-metrics.json", int8)):
        if content is not None:
            text = content if isinstance(content, str) else json.dumps(content)
            (folder / f"{name}{suffix}").write_text(text)


def test_committed_rows_by_hand(tmp_path):
    from sparsebert.train.committed import Structure, committed_rows, still_current

    a, b = tmp_path / "a", tmp_path / "b"
    curve = [[1, 0.5], [2, 0.25]]
    emb80 = {"model": "train-runs/emb-80", "task": "embeddings", "cosine_to_teacher": 0.93,
             "lee_spearman": 0.5, "train": {"step": 1}}
    _commit(a, "emb-80", emb80, _recipe(), train={"task": "embeddings", "step": 100, "total_steps": 100,
                                                  "wall_seconds": 600.0, "encoder_linear_sparsity": 0.8,
                                                  "loss_curve": curve})
    _commit(a, "emb-3l-90-global", {"task": "embeddings", "cosine_to_teacher": 0.8,
                                    "train": {"step": 5, "encoder_linear_sparsity": 0.9}},
            _recipe(sparsity=0.9, layers=[0, 2, 4], scope="global"))  # no train.json: metrics' "train"
    _commit(a, "emb-stopped", {"cosine_to_teacher": 0.7}, _recipe(sparsity=0.9),
            train={"step": 3, "encoder_linear_sparsity": 0.6123})  # stopped mid-ramp: reached 0.61
    _commit(a, "emb-measured", {"cosine_to_teacher": 0.6}, _recipe())  # a --runs folder: skipped
    _commit(a, "orphan", {"cosine_to_teacher": 0.6})  # no recipe: skipped
    _commit(a, "sent-1x4-int8", {"task": "classification", "accuracy": 0.85},
            _recipe("classification", block="1x4", fake_quant=15), train={"step": 20},
            int8={"model": "/tmp/q", "task": "classification", "accuracy": 0.84})
    _commit(a, "teacher", {"task": "classification", "accuracy": 0.86},
            _recipe("classification", sparsity=0))  # dense: the teacher rows cover it
    _commit(b, "emb-80", {"cosine_to_teacher": 0.1}, _recipe())  # the name is a row already
    _commit(b, "emb-80-copy", emb80, _recipe())  # the same result under a second name
    _commit(b, "sent-90-gmp-only", {"task": "classification", "accuracy": 0.8},
            _recipe("classification", 0.9))
    logged = []
    got = committed_rows([a, b], skip_names={"emb-measured"}, log=logged.append)

    assert [r["label"] for r, _ in got] == ["emb-3l-90-global", "emb-80", "emb-stopped", "sent-1x4-int8",
                                            "sent-1x4-int8 int8", "sent-90-gmp-only"]  # folder, name order
    rows, structures = {r["label"]: r for r, _ in got}, {r["label"]: s for r, s in got}
    assert structures == {
        "emb-3l-90-global": Structure("embeddings", (0, 2, 4), 0.9, "1x1", "global"),
        "emb-80": Structure("embeddings", None, 0.8, "1x1"),
        "emb-stopped": Structure("embeddings", None, 0.61, "1x1"),
        "sent-1x4-int8": Structure("classification", None, 0.8, "1x4"),
        "sent-1x4-int8 int8": Structure("classification", None, 0.8, "1x4", precision="int8"),
        "sent-90-gmp-only": Structure("classification", None, 0.9, "1x1")}
    assert rows["emb-80"] == {
        "task": "embeddings", "label": "emb-80", "kind": "compound", "precision": "fp32", "layers": None,
        "final_sparsity": 0.8, "block": "1x1", "scope": "per-layer", "int8_aware": False,
        "cosine_to_teacher": 0.93, "lee_spearman": 0.5, "results_file": str(a / "emb-80.metrics.json"),
        "train": {"task": "embeddings", "step": 100, "total_steps": 100, "wall_seconds": 600.0,
                  "encoder_linear_sparsity": 0.8},
        "loss_curve": curve, "also_committed_as": ["emb-80-copy"]}
    assert rows["emb-3l-90-global"]["layers"] == [0, 2, 4] and rows["emb-3l-90-global"]["scope"] == "global"
    assert rows["emb-3l-90-global"]["train"] == {"step": 5, "encoder_linear_sparsity": 0.9}
    assert rows["sent-1x4-int8"]["accuracy"] == 0.85 and rows["sent-1x4-int8"]["int8_aware"] is True
    q = rows["sent-1x4-int8 int8"]
    assert (q["precision"], q["accuracy"], q["int8_aware"], q["train"]) == ("int8", 0.84, True, {"step": 20})
    assert "loss_curve" not in q and q["results_file"].endswith("sent-1x4-int8.int8-metrics.json")
    assert rows["sent-90-gmp-only"]["kind"] == "gmp-only"
    assert rows["sent-90-gmp-only"]["task"] == "classification"
    assert any("orphan" in m for m in logged) and any(str(b / "emb-80.metrics.json") in m for m in logged)
    assert structures["emb-3l-90-global"].describe() == "0.9 1x1, layers 0 2 4, global scope"
    assert structures["sent-1x4-int8 int8"].describe() == "0.8 1x4, int8 (sparsebert quantize)"
    # A row read back from the JSON gives the same structure, and stays current while its files do.
    for row, structure in got:
        back = json.loads(json.dumps({**row, "speedup_vs_ort": 2.0}))
        assert Structure.of_row(back) == structure and still_current(back, row)
    moved_on = {**rows["emb-80"], "train": {**rows["emb-80"]["train"], "step": 101}}
    assert not still_current(moved_on, rows["emb-80"]) and not still_current(None, rows["emb-80"])


def test_ort_int8_cosine_comes_from_the_teacher_entry(tmp_path):
    from sparsebert.train.committed import ort_int8_cosine

    student = {"fp32_cos_to_teacher_mean": 0.3, "ort_int8_dynamic": {"cos_to_teacher_mean": 0.29}}
    teacher = {"fp32_cos_to_teacher_mean": 1.0, "ort_int8_dynamic": {"cos_to_teacher_mean": 0.99}}
    path = tmp_path / "int8_accuracy.json"
    path.write_text(json.dumps({"sentences": 1000, "models": {"/s": student, "/t": teacher}}))
    got = ort_int8_cosine(path)
    assert got["cosine_to_teacher"] == 0.99 and str(path) in got["accuracy_from"]
    path.write_text(json.dumps({"sentences": 1000, "models": {"/s": student}}))
    assert ort_int8_cosine(path) is None


def test_gather_times_committed_runs_on_one_stand_in_per_structure(tmp_path, monkeypatch):
    calls = _no_measuring(tmp_path, monkeypatch)
    results = tmp_path / "results"
    for name, cosine in (("emb-80", 0.9), ("emb-80-b", 0.91), ("emb-80-c", 0.92)):
        _commit(results, name, {"task": "embeddings", "cosine_to_teacher": cosine}, _recipe(),
                train={"step": 10})
    _commit(results, "emb-1x4-int8", {"task": "embeddings", "cosine_to_teacher": 0.88},
            _recipe(block="1x4", fake_quant=15), int8={"cosine_to_teacher": 0.87})
    _commit(results, "sent-90", {"task": "classification", "accuracy": 0.8},
            _recipe("classification", 0.9))
    runs = tmp_path / "runs"
    _run_folder(runs, "emb-80", step=100, sparsity=0.8, metrics_step=100)  # measured from its folder
    accuracy = tmp_path / "int8_accuracy.json"
    accuracy.write_text(json.dumps({"sentences": 5, "models": {"/t": {
        "fp32_cos_to_teacher_mean": 1.0, "ort_int8_dynamic": {"cos_to_teacher_mean": 0.99}}}}))
    logged = []
    result = points.gather(runs, tmp_path / "cache", calls["teacher"], None, results=[results],
                           ort_int8_accuracy=accuracy, shared_machine=True, log=logged.append)
    rows = {r["label"]: r for r in result["results"]}
    stand_ins = [(dst, k) for dst, k in calls["pruned"] if dst.startswith("stand-in")]
    assert stand_ins == [  # emb-1x4-int8 (fp32, then int8), then emb-80-b for emb-80-b and -c
        ("stand-in-0", {"sparsity": 0.8, "block": "1x4", "scope": "per-layer", "layers": None}),
        ("stand-in-1", {"sparsity": 0.8, "block": "1x4", "scope": "per-layer", "layers": None}),
        ("stand-in-2", {"sparsity": 0.8, "block": "1x1", "scope": "per-layer", "layers": None})]
    assert ("stand-in-1", "stand-in-1-int8", {"onnx": False}) in calls["quantized"]
    assert rows["emb-80"]["speed_from"] == "this model" and "results_file" not in rows["emb-80"]
    assert rows["emb-80-b"]["speed_from"] == rows["emb-80-c"]["speed_from"] == \
        "stand-in: the dense teacher pruned one-shot to 0.8 1x1"
    assert rows["emb-80-c"]["cosine_to_teacher"] == 0.92 and rows["emb-80-c"]["speedup_vs_ort"] == 1.5
    assert rows["emb-1x4-int8 int8"]["speed_from"].endswith("0.8 1x4, int8 (sparsebert quantize)")
    assert rows["emb-1x4-int8 int8"]["cosine_to_teacher"] == 0.87
    assert "sent-90" not in rows and any("sent-90" in m and "--sentiment-teacher" in m for m in logged)
    ort_int8 = rows["dense teacher, ORT int8 dynamic"]
    assert (ort_int8["engine"], ort_int8["precision"], ort_int8["cosine_to_teacher"]) == (
        "onnxruntime-int8", "int8", 0.99)
    assert ort_int8["speedup_vs_ort"] == 1.5 and str(accuracy) in ort_int8["accuracy_from"]
    assert ("ort-int8",) in calls["quantized"]  # made in the run's work folder, timed against ORT fp32
    assert rows["dense teacher, ORT fp32"]["items_per_s"] == 10.0  # ORT's rounds of that timing
    assert rows["dense teacher, ORT fp32"]["cosine_to_teacher"] == 0.9  # the (faked) dense teacher's
    assert result["settings"]["shared_machine"] is True and result["settings"]["results"] == [str(results)]

    # Again on that result: committed rows are current, so nothing is pruned; a changed metric makes
    # a new row that takes the speed its structure already has.
    calls["pruned"].clear()
    _commit(results, "emb-80-c", {"task": "embeddings", "cosine_to_teacher": 0.95}, _recipe(),
            train={"step": 10})
    again = points.gather(runs, tmp_path / "cache", calls["teacher"], None, results=[results],
                          ort_int8_accuracy=accuracy, previous=json.loads(json.dumps(result)),
                          log=lambda s: None)
    rows = {r["label"]: r for r in again["results"]}
    assert calls["pruned"] == [] and rows["emb-80-c"]["cosine_to_teacher"] == 0.95
    assert rows["emb-80-c"]["speed_from"] == "stand-in: the dense teacher pruned one-shot to 0.8 1x1"


# --- the retrieval pairs -----------------------------------------------------------------------


def test_wordnet_pairs_keep_held_out_definitions_once(tmp_path, monkeypatch):
    from sparsebert.errors import InputError
    from sparsebert.train import data

    wn = tmp_path / "usr/share/wordnet"
    wn.mkdir(parents=True)
    header = "  1 This software and database is being provided | to you\n"
    (wn / "data.noun").write_text(header + (
        "00001 03 n 02 recovery 0 retrieval 0 000 | the act of regaining or saving something lost; \"an example\"\n"
        "00002 03 n 01 bank 0 000 | sloping land beside a body of water\n"
        "00003 03 n 01 bank 1 000 | a financial institution that accepts deposits\n"
        "00004 03 n 01 cat 0 000 | a small domesticated carnivorous mammal\n"), encoding="latin-1")
    (wn / "data.verb").write_text(header)
    (wn / "data.adv").write_text(header)
    (wn / "data.adj").write_text(header + "00005 00 s 02 outback(a) 0 remote 0 000 | inaccessible and sparsely populated\n")
    synsets = data._wordnet_synsets(tmp_path)
    assert synsets[0] == (["recovery", "retrieval"], "the act of regaining or saving something lost")
    assert synsets[-1] == (["outback", "remote"], "inaccessible and sparsely populated")
    heldout = {"the act of regaining or saving something lost", "sloping land beside a body of water",
               "a financial institution that accepts deposits", "inaccessible and sparsely populated"}
    pairs = data._retrieval_pairs(synsets, heldout)
    # "bank" answers two definitions: dropped; "cat"'s definition is a training text: dropped
    assert pairs == [{"query": "recovery, retrieval", "document": "the act of regaining or saving something lost"},
                     {"query": "outback, remote", "document": "inaccessible and sparsely populated"}]
    data._write_pairs(tmp_path, pairs)
    assert data.read_pairs(tmp_path / "retrieval" / "wordnet.jsonl") == (
        ["recovery, retrieval", "outback, remote"], [p["document"] for p in pairs])
    (tmp_path / "bad.jsonl").write_text('{"query": "a", "document": "b"}\n{"query": "c"}\n')
    with pytest.raises(InputError, match="line 2"):
        data.read_pairs(tmp_path / "bad.jsonl")
    # a cache fetched before the retrieval set gets it on the next fetch-data, nothing else refetched
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "fetched.json").write_text(json.dumps({"lee/lee.cor": 50}))
    monkeypatch.setattr(data, "fetch_retrieval", lambda c: 7)
    assert data.fetch_data(cache) == {"lee/lee.cor": 50, "retrieval/wordnet.jsonl": 7}
    assert json.loads((cache / "fetched.json").read_text())["retrieval/wordnet.jsonl"] == 7
