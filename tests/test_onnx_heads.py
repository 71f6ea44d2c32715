"""ONNX exports of BertFor... task models: encoder + head read back bit for bit, pipelines unchanged.

The small seeded task models of pipeline_models.py (masked LM, sequence / token classification,
question answering) are exported with `sparsebert.export.export_task_onnx` as legacy opset 17 and
as dynamo opset 18 with the export wrapper left in train mode, which writes a Dropout node
(training_mode=True) after every dropout module; the masked LM also as legacy opset 14 (decomposed
LayerNorm in the head). `read_checkpoint` on each must give every tensor of the torch state dict
with np.array_equal (the tied MLM decoder excepted, as in save_pretrained), and the task pipeline
on the ONNX folder must return exactly what it returns on the safetensors folder. The refusals check
that ending the encoder at the last LayerNorm did not make a damaged layer read as the end.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

import sparsebert
from sparsebert.errors import CheckpointError
from sparsebert.loaders import read_checkpoint

from pipeline_models import make_models, save_model

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from sparsebert.export import export_task_onnx  # noqa: E402

QA_CONTEXT = (
    "paris is the capital of france. the river flows through paris and many countries. john "
    "works at google in new york city. the cat does live in the house of john."
)
TASKS = {
    "mlm": ("fill-mask", ["the quick [MASK] fox.", "the [MASK] fox jumps over the [MASK] dog"]),
    "cls": ("text-classification", ["the quick brown fox", "paris is the capital of france!"]),
    "ner": ("token-classification", ["John works at Google in New York City."]),
    "qa": ("question-answering", [{"question": "who works at google?", "context": QA_CONTEXT}]),
}
# (model key, flavour, eval_mode): "dynamo" exports carry Dropout nodes (wrapper in train mode).
CASES = [(key, "legacy17", True) for key in TASKS] + [(key, "dynamo", False) for key in TASKS]
CASES.append(("mlm", "legacy14", True))
CASE_IDS = [f"{key}-{flavour}" for key, flavour, _ in CASES]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("task_models")
    found = make_models(root)
    # An MLM whose decoder is its own tensor, not the word embeddings.
    transformers.logging.set_verbosity_error()
    untied = save_model(root / "untied", transformers.BertForMaskedLM, 7, tie_word_embeddings=False)
    model = transformers.BertForMaskedLM.from_pretrained(str(untied))
    with torch.no_grad():
        model.cls.predictions.decoder.weight.mul_(-0.5)
    model.save_pretrained(str(untied))
    found["untied"] = untied
    return found


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("task_onnx")
    return {
        (key, flavour): export_task_onnx(models[key], root / f"{key}-{flavour}", flavour,
                                         eval_mode=eval_mode)
        for key, flavour, eval_mode in CASES + [("untied", "legacy17", True)]
    }


def _reference(folder) -> dict[str, np.ndarray]:
    """The torch state dict with `bert.`-free names, without the decoder aliases of a tied MLM."""
    transformers.logging.set_verbosity_error()
    config = transformers.AutoConfig.from_pretrained(str(folder))
    model = getattr(transformers, config.architectures[0]).from_pretrained(str(folder)).eval()
    state = {k.removeprefix("bert."): v.detach().numpy() for k, v in model.state_dict().items()
             if v.is_floating_point()}
    if "cls.predictions.decoder.weight" in state:
        # The decoder bias is always cls.predictions.bias; the weight is the word embeddings when tied.
        assert np.array_equal(state.pop("cls.predictions.decoder.bias"), state["cls.predictions.bias"])
        if config.tie_word_embeddings:
            tied = state.pop("cls.predictions.decoder.weight")
            assert np.array_equal(tied, state["embeddings.word_embeddings.weight"])
    return state


def _assert_exact(got: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
    assert set(got) == set(state), (
        f"missing {sorted(set(state) - set(got))}, extra {sorted(set(got) - set(state))}")
    for name, expected in state.items():
        assert got[name].dtype == np.float32, name
        assert got[name].shape == expected.shape, (name, got[name].shape, expected.shape)
        assert np.array_equal(got[name], expected), name


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_reads_encoder_and_head_exactly(case, models, exports):
    key, flavour, _ = case
    path = exports[(key, flavour)]
    if flavour == "dynamo":  # the case this flavour exists for: Dropout nodes in the dataflow
        ops = {n.op_type for n in onnx.load(path, load_external_data=False).graph.node}
        assert "Dropout" in ops
    ck = read_checkpoint(path)
    _assert_exact(ck.state_dict, _reference(models[key]))
    assert ck.kind == "onnx"


def test_untied_decoder_comes_back_as_its_own_tensor(models, exports):
    state = _reference(models["untied"])
    assert "cls.predictions.decoder.weight" in state
    ck = read_checkpoint(exports[("untied", "legacy17")])
    _assert_exact(ck.state_dict, state)
    folder = exports[("untied", "legacy17")].rsplit("/", 1)[0]
    text = "the quick [MASK] fox."
    assert sparsebert.pipeline("fill-mask", folder)(text) == \
        sparsebert.pipeline("fill-mask", models["untied"])(text)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_pipeline_on_onnx_equals_safetensors(case, models, exports):
    key, flavour, _ = case
    task, inputs = TASKS[key]
    folder = exports[(key, flavour)].rsplit("/", 1)[0]
    from_onnx = sparsebert.pipeline(task, folder)
    from_safetensors = sparsebert.pipeline(task, models[key])
    # Bit-equal weights and the same config run the same arithmetic: results are equal, not close.
    assert from_onnx(inputs) == from_safetensors(inputs)


# --- refusals: the encoder ends at the last LayerNorm only when no layer follows --------------


def _edited(path: str, tmp_path, edit) -> str:
    model = onnx.load(path)
    edit(model.graph)
    out = tmp_path / "edited.onnx"
    onnx.save(model, out)
    return str(out)


def test_mlm_export_with_a_hidden_layer_is_refused(exports, tmp_path):
    # A float64 round trip after layer 0 hides layer 1: the MLM head must not let the reader take
    # layer 0's output for the end of the encoder.
    def edit(graph):
        boundary = [n for n in graph.node if n.op_type == "LayerNormalization"][2].output[0]
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == boundary:
                    node.input[i] = boundary + "_back"
        graph.node.extend([
            helper.make_node("Cast", [boundary], [boundary + "_f64"], to=onnx.TensorProto.DOUBLE),
            helper.make_node("Cast", [boundary + "_f64"], [boundary + "_back"],
                             to=onnx.TensorProto.FLOAT),
        ])
    with pytest.raises(CheckpointError, match="attention block.*could not be followed"):
        read_checkpoint(_edited(exports[("mlm", "legacy17")], tmp_path, edit))


def test_layer_with_a_lost_projection_is_refused(exports, tmp_path):
    # Layer 1's key projection reads a graph input instead of a constant weight: two HxH linears
    # remain on layer 0's output, which must not be read as a head after a one-layer encoder.
    def edit(graph):
        matmuls = [n for n in graph.node if n.op_type == "MatMul"
                   and "layer.1/attention/self/key" in n.name]
        assert len(matmuls) == 1
        weight = matmuls[0].input[1]
        matmuls[0].input[1] = "free_weight"
        graph.input.append(helper.make_tensor_value_info("free_weight", onnx.TensorProto.FLOAT,
                                                         [32, 32]))
        assert weight
    with pytest.raises(CheckpointError, match="could not be followed"):
        read_checkpoint(_edited(exports[("cls", "legacy17")], tmp_path, edit))
