"""The ONNX Runtime engines on a Hugging Face folder (sparsebert.ort_files): exported once and
cached, the export computes the folder's weights (checked against sparsebert on the same inputs),
the int8 engine runs ONNX Runtime's dynamic int8 of that export, a missing torch names the pip
line, and an interrupted export leaves nothing a later run trusts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from make_checkpoints import make_random_bert
from sparsebert import export
from sparsebert.benchmark import benchmark_model, load_runner, random_inputs
from sparsebert.errors import CheckpointError, MissingDependencyError

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SHAPE = dict(hidden=32, layers=2, heads=4, intermediate=64, vocab=100)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache root of this test's own, so each test starts with no export."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SPARSEBERT_CACHE_DIR", str(root))
    return root


@pytest.fixture
def hf(tmp_path):
    return make_random_bert(tmp_path / "hf", seed=0, **SHAPE)


def _inputs():
    x = random_inputs(SHAPE["vocab"], 2, 9, seed=3)
    x["attention_mask"][1, 6:] = 0  # a padded row, so the mask's path through the graph counts
    return x


def _sparsebert(path, x):
    out = load_runner(path, "sparsebert", formats="dense").run(x)
    return out.last_hidden_state, out.pooler_output


def _assert_same_model(ort_outputs, reference):
    for got, want, name in zip(ort_outputs, reference, ("last_hidden_state", "pooler_output")):
        assert got.shape == want.shape and got.dtype == np.float32, name
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)


def _onnx_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.onnx")) if root.exists() else []


def test_a_hugging_face_folder_is_exported_once(hf, cache):
    x = _inputs()
    first = load_runner(hf, "onnxruntime")
    onnx_file = Path(first.info["onnx_file"])
    assert first.timings["export_s"] > 0 and first.timings["load_s"] > 0
    assert onnx_file.is_relative_to(cache) and onnx_file.name == "model.onnx"
    _assert_same_model(first.run(x), _sparsebert(hf, x))

    stamp = onnx_file.stat().st_mtime_ns
    again = load_runner(hf, "onnxruntime")
    assert "export_s" not in again.timings  # the cached file, not a second export
    assert Path(again.info["onnx_file"]) == onnx_file and onnx_file.stat().st_mtime_ns == stamp
    assert _onnx_files(cache) == [onnx_file]


def test_new_weights_or_another_folder_get_their_own_export(hf, cache, tmp_path):
    x = _inputs()
    first = Path(load_runner(hf, "onnxruntime").info["onnx_file"])
    # Same config, same file size, other weights: a key without the source would reuse `first`.
    other = make_random_bert(tmp_path / "other", seed=1, **SHAPE)
    runner = load_runner(other, "onnxruntime")
    assert "export_s" in runner.timings and Path(runner.info["onnx_file"]) != first
    _assert_same_model(runner.run(x), _sparsebert(other, x))
    # Weights rewritten in place (same folder, same sizes): a new export of the new weights.
    make_random_bert(hf, seed=2, **SHAPE)
    runner = load_runner(hf, "onnxruntime")
    assert "export_s" in runner.timings
    _assert_same_model(runner.run(x), _sparsebert(hf, x))


def test_the_cached_export_needs_no_torch(hf, cache, monkeypatch):
    load_runner(hf, "onnxruntime")
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    assert "export_s" not in load_runner(hf, "onnxruntime").timings


def _cosine_per_token(a, b, mask):
    keep = mask.astype(bool)
    a, b = a[keep], b[keep]
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_int8_engine_runs_ort_dynamic_int8_of_the_export(hf, cache, tmp_path):
    x = _inputs()
    fp32 = load_runner(hf, "onnxruntime")
    int8 = load_runner(hf, "onnxruntime-int8")
    assert int8.engine == "onnxruntime-int8" and "export_s" not in int8.timings  # export reused
    assert int8.timings["quantize_s"] > 0
    int8_file = Path(int8.info["onnx_file"])
    assert int8_file.parent == Path(fp32.info["onnx_file"]).parent
    graph = onnx.load(str(int8_file)).graph
    weights = {t.name for t in graph.initializer}
    ops = [node.op_type for node in graph.node]
    # Q, K, V, attention out, FFN in and out per layer, and the pooler
    assert ops.count("MatMulInteger") == 6 * SHAPE["layers"] + 1
    assert "DynamicQuantizeLinear" in ops
    # No linear is left in float (attention's two activation MatMuls stay float, as ORT leaves them).
    assert not [n.name for n in graph.node if n.op_type == "MatMul" and set(n.input) & weights]

    want = fp32.run(x)[0]
    got = int8.run(x)[0]
    assert got.shape == want.shape and got.dtype == np.float32
    assert not np.array_equal(got, want)  # int8 rounding shows
    cos = _cosine_per_token(got, want, x["attention_mask"])
    assert cos.min() > 0.999, cos.min()  # 0.9999999 on this model
    # The bound a wrong model fails: another model of the same shape is far below it.
    other = make_random_bert(tmp_path / "other", seed=1, **SHAPE)
    wrong = load_runner(other, "onnxruntime").run(x)[0]
    assert _cosine_per_token(wrong, want, x["attention_mask"]).min() < 0.9

    stamp = int8_file.stat().st_mtime_ns
    again = load_runner(hf, "onnxruntime-int8")
    assert "quantize_s" not in again.timings and int8_file.stat().st_mtime_ns == stamp


def test_int8_engine_on_a_given_onnx_file(hf, cache, tmp_path):
    given = tmp_path / "given"
    given.mkdir()
    export.export_bert_onnx(hf, given / "model.onnx", "legacy17")
    before = sorted(p.name for p in given.iterdir())
    x = _inputs()
    runner = load_runner(given, "onnxruntime-int8")
    assert "export_s" not in runner.timings and runner.timings["quantize_s"] > 0
    assert Path(runner.info["onnx_file"]).is_relative_to(cache)
    assert sorted(p.name for p in given.iterdir()) == before  # the user's folder is left alone
    cos = _cosine_per_token(runner.run(x)[0], _sparsebert(hf, x)[0], x["attention_mask"])
    assert cos.min() > 0.999


def test_the_int8_engine_through_benchmark_model(hf, cache):
    r = benchmark_model(hf, engine="onnxruntime-int8", batch_size=2, seq_len=8, time_s=0.05,
                        warmup_s=0.0)
    assert r["engine"] == "onnxruntime-int8" and r["batches"] >= 3
    assert r["export_s"] > 0 and r["quantize_s"] > 0 and r["load_s"] > 0
    assert r["model"]["vocab"] == SHAPE["vocab"] and r["model"]["hidden"] == SHAPE["hidden"]


@pytest.mark.parametrize("module", ["torch", "transformers"])
def test_missing_torch_names_the_extra_and_the_onnx_alternative(hf, cache, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` fail
    for engine in ("onnxruntime", "onnxruntime-int8"):
        with pytest.raises(MissingDependencyError) as info:
            load_runner(hf, engine)
        message = str(info.value)
        assert "pip install 'sparsebert[train]'" in message and module in message
        assert ".onnx" in message and hf in message
    assert _onnx_files(cache) == []


def test_an_interrupted_export_is_never_trusted(hf, cache, monkeypatch):
    real_export = export.export_bert_onnx
    written = []

    def killed_midway(model_dir, out_path, flavour):
        real_export(model_dir, out_path, flavour)  # a complete file under the temporary name
        written.append(Path(out_path))
        raise KeyboardInterrupt("killed during the export")

    monkeypatch.setattr(export, "export_bert_onnx", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        load_runner(hf, "onnxruntime")
    assert written and written[0].is_relative_to(cache) and written[0].name != "model.onnx"
    assert _onnx_files(cache) == []  # the temporary file is removed, no model.onnx was made
    # A process killed outright leaves its temporary file: later runs must not read it.
    written[0].write_bytes(b"half an ONNX file")

    monkeypatch.setattr(export, "export_bert_onnx", real_export)
    x = _inputs()
    runner = load_runner(hf, "onnxruntime")
    assert runner.timings["export_s"] > 0
    assert Path(runner.info["onnx_file"]) != written[0]
    _assert_same_model(runner.run(x), _sparsebert(hf, x))


def test_an_interrupted_quantization_is_never_trusted(hf, cache, monkeypatch):
    from sparsebert import ort_files

    real_quantize = ort_files.quantize_dynamic_int8

    def killed_midway(float_onnx, out):
        Path(out).write_bytes(b"half an int8 file")
        raise RuntimeError("killed during quantize_dynamic")

    monkeypatch.setattr(ort_files, "quantize_dynamic_int8", killed_midway)
    with pytest.raises(RuntimeError, match="killed"):
        load_runner(hf, "onnxruntime-int8")
    assert [p.name for p in _onnx_files(cache)] == ["model.onnx"]  # the float export is complete
    monkeypatch.setattr(ort_files, "quantize_dynamic_int8", real_quantize)
    runner = load_runner(hf, "onnxruntime-int8")
    assert runner.timings["quantize_s"] > 0 and "export_s" not in runner.timings


def test_folders_that_cannot_be_exported(tmp_path, cache, hf):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="model.onnx"):
        load_runner(empty, "onnxruntime")
    (empty / "config.json").write_text((Path(hf) / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_runner(empty, "onnxruntime")  # a config without weights
    quantized = tmp_path / "quantized"
    quantized.mkdir()
    raw = json.loads((Path(hf) / "config.json").read_text())
    raw["quantization"] = {"method": "sparsebert-int8"}
    (quantized / "config.json").write_text(json.dumps(raw))
    (quantized / "model.safetensors").write_bytes((Path(hf) / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="sparsebert quantize"):
        load_runner(quantized, "onnxruntime-int8")
