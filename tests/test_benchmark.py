"""sparsebert.benchmark on a tiny random model: the documented keys for both engines, inputs,
and the errors for bad arguments or a missing onnxruntime."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models"))

from make_checkpoints import make_random_bert  # noqa: E402
from sparsebert.benchmark import benchmark_model, load_runner, random_inputs  # noqa: E402
from sparsebert.errors import MissingDependencyError  # noqa: E402
from sparsebert.prune import prune_checkpoint  # noqa: E402

COMMON_KEYS = {"engine", "path", "batch_size", "seq_len", "items_per_s", "latency_ms", "batches",
               "warmup_s", "load_s", "first_call_s", "threads", "model", "versions", "machine"}
LATENCY_KEYS = {"mean", "median", "std", "p90", "p99", "min"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    dense = make_random_bert(root / "dense", hidden=32, layers=2, heads=4, intermediate=64, vocab=100)
    sparse = root / "sparse"
    prune_checkpoint(dense, sparse, sparsity=0.9, block="4x1")
    onnx_dir = root / "onnx"
    onnx_dir.mkdir()
    from export_onnx import export_bert_onnx

    export_bert_onnx(dense, onnx_dir / "model.onnx", "legacy17")
    return {"dense": dense, "sparse": str(sparse), "onnx": str(onnx_dir)}


def _check_common(r, engine):
    assert COMMON_KEYS <= set(r)
    assert r["engine"] == engine
    assert set(r["latency_ms"]) == LATENCY_KEYS
    assert r["batches"] >= 3 and r["items_per_s"] > 0
    lat = r["latency_ms"]
    assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"]
    assert r["batch_size"] == 4 and r["seq_len"] == 16
    assert {"numpy", "numba", "onnxruntime"} <= set(r["versions"])


def test_sparsebert_engine_reports_load_jit_and_sparsity(models):
    r = benchmark_model(models["sparse"], batch_size=4, seq_len=16, time_s=0.05, warmup_s=0.01,
                        threads=1)
    _check_common(r, "sparsebert")
    assert r["jit_compile_s"] >= 0 and r["threads"] == 1
    m = r["model"]
    assert (m["layers"], m["hidden"], m["intermediate"]) == (2, 32, 64)
    assert m["sparsity"] == pytest.approx(0.9, abs=0.01)
    assert sum(m["formats"].values()) == 8  # 4 linears x 2 layers
    assert m["weight_nbytes"] < m["dense_weight_nbytes"]


def test_sparsebert_layer_dropping(models):
    r = benchmark_model(models["dense"], batch_size=4, seq_len=16, time_s=0.05, layers=[1])
    assert r["model"]["layers"] == 1 and r["model"]["sparsity"] == 0.0


def test_onnxruntime_engine(models):
    pytest.importorskip("onnxruntime")
    r = benchmark_model(models["onnx"], engine="onnxruntime", batch_size=4, seq_len=16, time_s=0.05)
    _check_common(r, "onnxruntime")
    assert r["threads"] == 2  # the documented default
    assert r["model"]["vocab"] == 100 and r["model"]["hidden"] == 32


def test_engines_compute_the_same_model(models):
    pytest.importorskip("onnxruntime")
    x = random_inputs(100, 2, 8, seed=5)
    a = load_runner(models["dense"], "sparsebert").run(x).last_hidden_state
    b = load_runner(models["onnx"], "onnxruntime").run(x)[0]
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_random_inputs_are_seeded_and_in_range():
    a, b = random_inputs(30522, 3, 7, seed=1), random_inputs(30522, 3, 7, seed=1)
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    assert a["input_ids"].min() >= 1000 and a["input_ids"].max() < 30522
    assert a["attention_mask"].all() and not a["token_type_ids"].any()


def test_missing_onnxruntime_names_the_pip_line(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        benchmark_model(models["onnx"], engine="onnxruntime", time_s=0.05)


@pytest.mark.parametrize("kwargs, match", [
    (dict(engine="torch"), "engine"),
    (dict(batch_size=0), "batch_size"),
    (dict(seq_len=1.5), "seq_len"),
    (dict(time_s=0), "time_s"),
    (dict(threads=0), "threads"),
])
def test_bad_arguments(models, kwargs, match):
    with pytest.raises(ValueError, match=match):
        benchmark_model(models["dense"], **{"time_s": 0.05, **kwargs})


def test_onnxruntime_refuses_a_folder_without_a_model(models, tmp_path):
    # A Hugging Face folder is exported on the fly (tests/test_benchmark_engines.py).
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match="model.onnx"):
        benchmark_model(tmp_path, engine="onnxruntime", time_s=0.05)
    with pytest.raises(ValueError, match="layers"):
        benchmark_model(models["onnx"], engine="onnxruntime", time_s=0.05, layers=[0])
