"""Reading int8 ONNX exports (sparsebert/loaders/onnx_quant.py) made by onnxruntime.quantization
(quantize_dynamic: MatMulInteger; quantize_static QDQ, per channel) and by hand (weight-only
Cast + Mul with per-column and per-row scales) from a small random BERT and from MiniLM.

Every check has a tolerance that does not depend on sparsebert's own output:
- weights: each linear the model runs is compared with the file's own int8 initializer and scale
  for that layer and projection, found independently here from the exporter's node names
  (`/encoder/layer.3/attention/self/key/MatMul`): codes and scales bit for bit, so a Q/K or a
  layer swap fails;
- outputs: against ONNX Runtime on the same file. Weight-only files compute in float, so they
  agree to float rounding (1e-4 on MiniLM). In w8a8 files the two engines quantize activations
  differently (ORT per tensor, uint8 or static scales; sparsebert per token at run time), so the
  bound is 2x ORT's own distance from the float model: an engine at least as precise as ORT lies
  within it by the triangle inequality.
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest

import sparsebert
from sparsebert.errors import CheckpointError

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402
from onnxruntime.quantization import (  # noqa: E402
    CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
import make_checkpoints  # noqa: E402

RNG = np.random.default_rng(7)
IDS = RNG.integers(0, 100, (3, 11))
MASK = np.ones_like(IDS)
MASK[1, 8:] = 0
TYPES = np.zeros_like(IDS)
FEED = {"input_ids": IDS, "attention_mask": MASK, "token_type_ids": TYPES}


class _Calibration(CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.batches = iter([{"input_ids": rng.integers(0, 100, (2, 11)),
                              "attention_mask": np.ones((2, 11), np.int64),
                              "token_type_ids": np.zeros((2, 11), np.int64)} for _ in range(4)])

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from sparsebert.export import export_bert_onnx

    d = tmp_path_factory.mktemp("qonnx")
    make_checkpoints.make_random_bert(d / "hf", hidden=32, layers=2, heads=4, intermediate=64)
    export_bert_onnx(d / "hf", d / "fp32.onnx", flavour="legacy17")
    quantize_dynamic(str(d / "fp32.onnx"), str(d / "dynamic.onnx"), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    quantize_dynamic(str(d / "fp32.onnx"), str(d / "dynamic_u8.onnx"), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["MatMul"])
    quantize_static(str(d / "fp32.onnx"), str(d / "qdq.onnx"), _Calibration(),
                    quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    for per in ("column", "row"):
        _weight_only(d / "fp32.onnx", d / f"weight_only_{per}.onnx", per)
    return d


def _weight_only(src, dst, per, tables=False):
    """Encoder MatMul weights (in, out) as int8 + Cast + Mul(scale per output column or input
    row); with tables, the Gathered embedding tables too (a scale per row)."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    nodes, done = [], {}
    for node in model.graph.node:
        slot = 1 if node.op_type == "MatMul" else 0 if tables and node.op_type == "Gather" else None
        w = inits.get(node.input[slot]) if slot is not None else None
        if w is not None and numpy_helper.to_array(w).ndim == 2:
            name = node.input[slot]
            if name not in done:
                a = numpy_helper.to_array(w).astype(np.float32)
                axis = 0 if per == "column" and node.op_type == "MatMul" else 1
                scale = (np.abs(a).max(axis=axis, keepdims=True) / 127).astype(np.float32)
                codes = np.clip(np.rint(a / scale), -127, 127).astype(np.int8)
                model.graph.initializer.extend([numpy_helper.from_array(codes, name + "_q"),
                                                numpy_helper.from_array(scale, name + "_s")])
                nodes += [helper.make_node("Cast", [name + "_q"], [name + "_c"], to=onnx.TensorProto.FLOAT),
                          helper.make_node("Mul", [name + "_c", name + "_s"], [name + "_w"])]
                done[name] = name + "_w"
            node.input[slot] = done[name]
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))


def _file_tables(path):
    """{"word": float32 table} the file computes from its int8 word-embedding rows and scales."""
    model = onnx.load(str(path))
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "Gather" and "word_embeddings" in node.name:
            mul = producer[node.input[0]]
            codes = arrays[producer[mul.input[0]].input[0]]
            return {"word": codes.astype(np.float32) * arrays[mul.input[1]]}
    raise AssertionError("no word-embedding Gather in the file")


def _ort(path, feed=None):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["last_hidden_state"], feed or FEED)[0]


def _masked_max(a, b, mask=MASK):
    return float((np.abs(a - b) * mask[:, :, None]).max())


PROJECTIONS = {"attention/self/query": ("qkv", 0), "attention/self/key": ("qkv", 1),
               "attention/self/value": ("qkv", 2), "attention/output/dense": ("attn_out", 0),
               "intermediate/dense": ("ffn_in", 0), "output/dense": ("ffn_out", 0)}


def _file_weights(path):
    """{(layer, projection): (codes int8 (in, out), scale)} read from the file on its own terms:
    the encoder matmul named by the exporter, then its weight's int8 initializer and scale
    (DequantizeLinear, Cast + Mul, or quantize_dynamic's MatMulInteger and `<weight>_scale`)."""
    model = onnx.load(str(path))
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for node in model.graph.node:
        m = re.search(r"/layer\.(\d+)/(.+)/MatMul(_quant)?$", node.name)
        if not m or m.group(2) not in PROJECTIONS or node.op_type not in ("MatMul", "MatMulInteger"):
            continue
        w = node.input[1]
        if node.op_type == "MatMulInteger":
            codes, scale = arrays[w], arrays[w.replace("_quantized", "_scale")]
        elif producer[w].op_type == "DequantizeLinear":
            codes, scale = arrays[producer[w].input[0]], arrays[producer[w].input[1]]
        else:  # Mul(Cast(codes), scale)
            mul = producer[w]
            cast = producer[mul.input[0]]
            codes, scale = arrays[cast.input[0]], arrays[mul.input[1]]
        assert codes.dtype == np.int8
        out[(int(m.group(1)), m.group(2))] = (codes, scale.astype(np.float32))
    return out


def _rows(model, layer, projection):
    """The rows of the model's linear that `projection` of `layer` feeds: (linear, row slice)."""
    internal, part = PROJECTIONS[projection]
    lin = model.encoder.layers[layer].linears[internal]
    n = lin.out_features // (3 if internal == "qkv" else 1)
    return lin, slice(part * n, (part + 1) * n)


@pytest.mark.parametrize("name", ["dynamic", "qdq"])
def test_int8_weights_are_the_files_own(files, name):
    model = sparsebert.load(files / f"{name}.onnx")
    weights = _file_weights(files / f"{name}.onnx")
    assert len(weights) == 6 * len(model.encoder.layers)
    for (layer, projection), (codes, scale) in weights.items():
        lin, rows = _rows(model, layer, projection)
        assert lin.format.startswith("int8-"), (layer, projection, lin.format)
        np.testing.assert_array_equal(lin.to_codes()[rows], codes.T, err_msg=f"{layer} {projection}")
        np.testing.assert_array_equal(lin.scale[rows], np.broadcast_to(scale.reshape(-1), codes.shape[1:]),
                                      err_msg=f"{layer} {projection} scale")


@pytest.mark.parametrize("name", ["dynamic", "qdq"])
def test_w8a8_exports_agree_with_ort_within_its_own_rounding(files, name):
    ours = sparsebert.load(files / f"{name}.onnx")(IDS, MASK, TYPES).last_hidden_state
    ref = _ort(files / f"{name}.onnx")
    fp32 = _ort(files / "fp32.onnx")
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert _masked_max(ours, ref) <= 2 * _masked_max(ref, fp32)


@pytest.mark.parametrize("per", ["column", "row"])
def test_weight_only_runs_the_files_float_weights(files, per):
    path = files / f"weight_only_{per}.onnx"
    model = sparsebert.load(path, formats="dense")
    weights = _file_weights(path)
    assert len(weights) == 6 * len(model.encoder.layers)
    for (layer, projection), (codes, scale) in weights.items():
        lin, rows = _rows(model, layer, projection)
        assert lin.format == "dense"
        np.testing.assert_array_equal(lin.weight[rows], (codes.astype(np.float32) * scale).T,
                                      err_msg=f"{layer} {projection}")
    ours = sparsebert.load(path)(IDS, MASK, TYPES).last_hidden_state
    assert _masked_max(ours, _ort(path)) <= 1e-5 * np.abs(ours).max()


def test_weight_only_int8_activations_are_an_explicit_choice(files):
    path = files / "weight_only_column.onnx"
    default = sparsebert.load(path)
    assert not any(r["format"].startswith("int8") for r in default.sparsity_report()["linears"])
    w8a8 = sparsebert.load(path, formats="int8")
    assert all(r["format"].startswith("int8-") for r in w8a8.sparsity_report()["linears"])
    for (layer, projection), (codes, scale) in _file_weights(path).items():
        lin, rows = _rows(w8a8, layer, projection)
        np.testing.assert_array_equal(lin.to_codes()[rows], codes.T)
    # Its accuracy cost: float rounding no more, int8 rounding of the activations instead.
    ours = w8a8(IDS, MASK, TYPES).last_hidden_state
    ref = _ort(path)
    assert 1e-4 < _masked_max(ours, ref) < 0.05 * np.abs(ref).max()


@pytest.fixture(scope="module")
def minilm_weight_only(minilm_path, tmp_path_factory):
    from sparsebert.export import export_bert_onnx

    d = tmp_path_factory.mktemp("minilm_q")
    export_bert_onnx(minilm_path, d / "fp32.onnx", flavour="legacy17")
    for per in ("column", "row"):
        _weight_only(d / "fp32.onnx", d / f"{per}.onnx", per, tables=True)
    return d


@pytest.mark.parametrize("per", ["column", "row"])
def test_minilm_weight_only_export_agrees_with_ort(minilm_weight_only, per):
    path = minilm_weight_only / f"{per}.onnx"
    model = sparsebert.load(path)
    assert not any(r["format"].startswith("int8") for r in model.sparsity_report()["linears"])
    rng = np.random.default_rng(3)
    ids = rng.integers(1000, 20000, (2, 16))
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    ours = model(ids, mask, feed["token_type_ids"]).last_hidden_state
    ref = _ort(path, feed)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert _masked_max(ours, ref, mask) <= 1e-4
    # The embedding tables are the file's int8 rows times their scales, exactly.
    tables = _file_tables(path)
    np.testing.assert_array_equal(model.encoder.weights.word_emb, tables["word"])


def test_asymmetric_weights_are_refused_by_node(files):
    with pytest.raises(CheckpointError, match=r"MatMul_quant.*MatMulInteger.*2-D int8 initializer"):
        sparsebert.load(files / "dynamic_u8.onnx")


def test_unknown_quantized_pattern_is_refused(files, tmp_path):
    # A QuantizeLinear whose output nothing dequantizes: not a pattern the reader knows.
    model = onnx.load(str(files / "qdq.onnx"))
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear"
              and n.input[0] not in {i.name for i in model.graph.initializer})
    dq.op_type = "Identity"
    del dq.input[1:]
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(CheckpointError, match="QuantizeLinear"):
        sparsebert.load(tmp_path / "bad.onnx")
