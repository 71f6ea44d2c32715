"""Recover BertFor... task-head weights from an ONNX export, as Hugging Face-named tensors.

`sparsebert.loaders.onnx_reader` recovers the encoder and pooler; the head after them is found here
by walking back from each graph output through shape-only ops (Squeeze, Split, Identity, Dropout,
Reshape) to the linear that produced it:

    sequence classifier: Tanh (pooler) -> Gemm | MatMul+Add       -> classifier.weight/bias
    token classifier:    hidden states -> MatMul+Add              -> classifier.weight/bias
    question answering:  hidden states -> MatMul+Add -> Split     -> qa_outputs.weight/bias (2, H)

Weights come back in PyTorch (out, in) orientation (MatMul initializers are (in, out); Gemm honours
transB). What it leaves out: the masked-LM head (the encoder reader does not accept graphs with the
MLM transform after the last layer), and heads with hidden layers of their own.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CheckpointError

# Ops that only move or select values between the head linear and a graph output.
_PASS_THROUGH = {"Squeeze", "Split", "Identity", "Dropout", "Reshape", "Cast", "Unsqueeze"}


def read_onnx_heads(path: str | os.PathLike, hidden_size: int) -> dict[str, np.ndarray]:
    """Head tensors ({} for a bare encoder export) with `bert.`-free Hugging Face names."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.fspath(path), load_external_data=False)
    g = model.graph
    consts: dict[str, np.ndarray] = {}
    for init in g.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            consts[init.name] = numpy_helper.to_array(init)
    producer = {}
    for node in g.node:
        for out in node.output:
            producer[out] = node
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)

    def const(name):
        node = producer.get(name)
        while name not in consts and node is not None and node.op_type == "Identity":
            name = node.input[0]
            node = producer.get(name)
        return consts.get(name)

    heads: dict[str, np.ndarray] = {}
    for output in g.output:
        name, through_split = output.name, False
        node = producer.get(name)
        while node is not None and node.op_type in _PASS_THROUGH:
            through_split |= node.op_type == "Split"
            name = node.input[0]
            node = producer.get(name)
        linear = _linear(node, producer, const, hidden_size)
        if linear is None:
            continue
        weight, bias, x = linear
        src = producer.get(x)
        if through_split and weight.shape[0] == 2:
            prefix = "qa_outputs"
        elif src is not None and src.op_type == "Tanh":
            prefix = "classifier"  # sequence classifier on the pooler output
        elif src is not None and src.op_type in ("Gather", "Slice"):
            continue  # a linear on the first token without the pooler's Tanh: not a known head
        else:
            prefix = "classifier"  # token classifier on the hidden states
        found = {f"{prefix}.weight": weight, f"{prefix}.bias": bias}
        for key, value in found.items():
            if key in heads and not np.array_equal(heads[key], value):
                raise CheckpointError(
                    f"{os.fspath(path)!r} has two different {prefix} heads; export one task head per model"
                )
        heads.update(found)
    return heads


def _linear(node, producer, const, hidden_size):
    """(weight (out, in) float32, bias (out,), input name) if `node` ends a linear layer on H features."""
    if node is None:
        return None
    if node.op_type == "Gemm":
        w, b = const(node.input[1]), const(node.input[2]) if len(node.input) > 2 else None
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        if w is None or w.ndim != 2:
            return None
        w = w if trans_b else w.T
        x = node.input[0]
    elif node.op_type == "Add":
        b = None
        for i in (0, 1):
            mm = producer.get(node.input[i])
            cand = const(node.input[1 - i])
            if mm is not None and mm.op_type == "MatMul" and cand is not None and cand.ndim == 1:
                b = cand
                break
        if b is None:
            return None
        w = const(mm.input[1])
        if w is None or w.ndim != 2:
            return None
        w, x = w.T, mm.input[0]
    else:
        return None
    if w.shape[1] != hidden_size:
        return None
    if b is None:
        b = np.zeros(w.shape[0], dtype=np.float32)
    if b.shape != (w.shape[0],):
        return None
    return np.ascontiguousarray(w, dtype=np.float32), np.asarray(b, dtype=np.float32), x
