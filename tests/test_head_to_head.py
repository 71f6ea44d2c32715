"""benchmarks/head_to_head.py: the engine worker protocol on a tiny model (sparsebert and ONNX
Runtime in their own processes, same ids, outputs agree), the summary arithmetic, and the
notebook's use of the head-to-head JSON. DeepSparse and OpenVINO need venvs of their own and are
exercised by running the benchmark, not here."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "models"))

import head_to_head as h2h  # noqa: E402
import sweep_sparsity  # noqa: E402


def test_workers_run_the_same_model_and_agree(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from export_onnx import export_bert_onnx
    from make_checkpoints import make_random_bert

    hf = make_random_bert(tmp_path / "m", hidden=32, layers=2, heads=4, intermediate=64, vocab=100)
    onnx = export_bert_onnx(hf, tmp_path / "onnx" / "model.onnx", "legacy17")
    ids = np.random.default_rng(0).integers(1, 100, size=(2, 9)).tolist()
    env_dir = tmp_path / "logs"
    env_dir.mkdir()
    workers = {e: h2h.Worker(e, sys.executable, 1, env_dir) for e in ("sparsebert", "onnxruntime")}
    try:
        loads = {e: w.call(op="load", key="m", path=hf if e == "sparsebert" else onnx, ids=ids)
                 for e, w in workers.items()}
        for e, r in loads.items():
            assert r["ok"], r
            assert r["load_s"] >= 0 and r["first_call_s"] > 0 and len(r["sample"]) == 12
        diff = np.abs(np.subtract(loads["sparsebert"]["sample"], loads["onnxruntime"]["sample"]))
        assert diff.max() <= 1e-4  # same weights, independent engines
        m = workers["sparsebert"].call(op="measure", key="m", time_s=0.05, min_batches=2)
        assert m["ok"] and m["batches"] >= 2 and m["items_per_s"] > 0
        bad = workers["onnxruntime"].call(op="load", key="x", path=str(tmp_path / "none.onnx"), ids=ids)
        assert not bad["ok"] and "none.onnx" in bad["error"]
        assert workers["onnxruntime"].call(op="measure", key="m", time_s=0.01, min_batches=1)["ok"]
        assert workers["sparsebert"].call(op="unload", key="m")["ok"]
    finally:
        for w in workers.values():
            w.close()
    assert all(w.proc.returncode == 0 for w in workers.values())


def _m(items):
    return {"items_per_s": items, "latency_ms": {"median": 1000.0 / items}}


def test_summary_takes_medians_of_same_round_ratios():
    runs = {h2h.BASELINE: [_m(2.0), _m(4.0), _m(5.0)],
            "sparsebert": [_m(8.0), _m(8.0), _m(25.0)],
            "deepsparse": [_m(4.0), _m(16.0), _m(10.0)]}
    loads = {"sparsebert": {"ok": True, "sample": [0.0, 1.0]},
             "deepsparse": {"ok": True, "sample": [0.0, 1.5]}}
    r = h2h.summarise("x", 32, runs, loads)
    assert r["baseline_items_per_s"] == 4.0
    assert r["engines"]["sparsebert"]["ratio_vs_ort_dense"] == 4.0  # per round: 4, 2, 5
    assert r["engines"]["deepsparse"]["ratio_vs_ort_dense"] == 2.0  # 2, 4, 2
    assert r["sparsebert_vs_deepsparse"] == 2.0  # 2, 0.5, 2.5
    assert r["engines"]["deepsparse"]["max_abs_diff_vs_sparsebert_sample"] == 0.5
    result = {"settings": {"threads": 2, "seq_len": 128, "rounds": 3},
              "machine": {"cpu": "Test CPU"}, "skipped": {"openvino-f32": "no Python"},
              "results": {"12L 90%": r}}
    table = h2h.format_table(result)
    assert "Test CPU" in table and "| 12L 90% | 4.00x | 2.00x | 2.00x |" in table
    assert "skipped openvino-f32" in table


def test_notebook_marks_measured_deepsparse_points(tmp_path):
    path = tmp_path / "h2h.json"
    path.write_text(json.dumps({"machine": {"cpu": "Test CPU"}, "results": {
        "12L 90%": {"batch_size": 32, "layers": 12, "sparsity": 0.9, "structure": "unstructured",
                    "engines": {"deepsparse": {"ratio_vs_ort_dense": 3.1}}},
        "12L 90% batch 1": {"batch_size": 1, "layers": 12, "sparsity": 0.9,
                            "structure": "unstructured",
                            "engines": {"deepsparse": {"ratio_vs_ort_dense": 9.0}}}}}))
    points = sweep_sparsity.reference_points(path)
    ds = [p for p in points if p["source"].startswith("DeepSparse")]
    assert ds == [{"source": "DeepSparse 1.8 (measured here: head_to_head.py, Test CPU)",
                   "layers": 12, "sparsity": 0.9, "structure": "unstructured", "speedup": 3.1}]
    assert any(not p["source"].startswith("DeepSparse") for p in points)
    path.write_text("{broken")
    assert sweep_sparsity.reference_points(path) == sweep_sparsity.PUBLISHED
    assert sweep_sparsity.reference_points(tmp_path / "missing.json") == sweep_sparsity.PUBLISHED
