"""Reading int8 ONNX exports (sparsebert/loaders/onnx_quant.py) made by onnxruntime.quantization
(quantize_dynamic: MatMulInteger; quantize_static QDQ, per channel) and by hand (weight-only
Cast + Mul with per-column and per-row scales) from a small random BERT.

Weights must come back exactly: the int8 codes and scales the model runs are the file's own
initializers. Outputs are compared with ONNX Runtime on the same file; the two engines quantize
activations differently (ORT per tensor with uint8 or static scales, sparsebert per token at run
time), so they agree to int8 rounding: the bound is 3x the larger of the two engines' distances
from the float model. Where the file has no activation quantization to disagree on (weight-only
with per-row scales, which sparsebert runs in float), agreement is float rounding (1e-5).
"""

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


def _weight_only(src, dst, per):
    """Encoder MatMul weights (in, out) as int8 + Cast + Mul(scale per output column or row)."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        w = inits.get(node.input[1]) if node.op_type == "MatMul" else None
        if w is not None and numpy_helper.to_array(w).ndim == 2:
            a = numpy_helper.to_array(w).astype(np.float32)
            axis = 0 if per == "column" else 1
            scale = (np.abs(a).max(axis=axis, keepdims=True) / 127).astype(np.float32)
            codes = np.clip(np.rint(a / scale), -127, 127).astype(np.int8)
            name = node.input[1]
            model.graph.initializer.extend([numpy_helper.from_array(codes, name + "_q"),
                                            numpy_helper.from_array(scale, name + "_s")])
            nodes += [helper.make_node("Cast", [name + "_q"], [name + "_c"], to=onnx.TensorProto.FLOAT),
                      helper.make_node("Mul", [name + "_c", name + "_s"], [name + "_w"])]
            node.input[1] = name + "_w"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(dst))


def _ort(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["last_hidden_state"], FEED)[0]


def _masked_max(a, b):
    return float((np.abs(a - b) * MASK[:, :, None]).max())


def _file_codes(path):
    """{(in, out) weight shape and bytes of the float32 dequantized weight}: the file's int8
    initializers with their scales, for comparison with what the model runs."""
    model = onnx.load(str(path))
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [a for a in arrays.values() if a.dtype == np.int8 and a.ndim == 2]


@pytest.mark.parametrize("name", ["dynamic", "qdq", "weight_only_column"])
def test_int8_exports_load_exactly_and_agree_with_ort(files, name):
    model = sparsebert.load(files / f"{name}.onnx")
    linears = [lin for layer in model.encoder.layers for lin in layer.linears.values()]
    assert all(lin.format.startswith("int8-") for lin in linears)
    # Exact weights: every code the model runs is one of the file's int8 initializers (transposed
    # back to (out, in); Q, K and V stacked), bit for bit.
    file_codes = [c.T for c in _file_codes(files / f"{name}.onnx")]
    for lin in linears:
        codes = lin.to_codes()
        parts = np.split(codes, codes.shape[0] // 32) if codes.shape[0] == 96 else [codes]
        for part in parts:
            assert any(f.shape == part.shape and np.array_equal(f, part) for f in file_codes)
    ours = model(IDS, MASK, TYPES).last_hidden_state
    ref = _ort(files / f"{name}.onnx")
    fp32 = _ort(files / "fp32.onnx")
    assert ours.shape == ref.shape and ours.dtype == np.float32
    bound = 3 * max(_masked_max(ref, fp32), _masked_max(ours, fp32))
    assert _masked_max(ours, ref) <= bound
    assert _masked_max(ours, fp32) < 0.05 * np.abs(fp32).max()


def test_per_row_scales_read_exactly_as_float(files):
    model = sparsebert.load(files / "weight_only_row.onnx")
    formats = {r["format"] for r in model.sparsity_report()["linears"]}
    assert not any(f.startswith("int8") for f in formats)
    ours = model(IDS, MASK, TYPES).last_hidden_state
    ref = _ort(files / "weight_only_row.onnx")
    assert _masked_max(ours, ref) <= 1e-5 * np.abs(ref).max()


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
