"""Recover BertFor... task-head weights from an ONNX export, as Hugging Face-named tensors.

`sparsebert.loaders.onnx_reader` recovers the encoder and pooler; the head after them is found here
by walking back from each graph output through shape-only ops (Squeeze, Split, Reshape, Unsqueeze)
to the linear that produced it. It runs on the graph `onnx_reader` already parsed and indexed, with
the same pattern matchers (`onnx_patterns`: linear, LayerNorm, activation), so external data,
Constant/Identity weights, inference no-ops (Dropout, Identity, same-type Cast) and Gemm attributes
are handled exactly as for the encoder:

    sequence classifier: Tanh (pooler) -> Gemm | MatMul+Add       -> classifier.weight/bias
    token classifier:    hidden states -> MatMul+Add              -> classifier.weight/bias
    question answering:  hidden states -> MatMul+Add -> Split     -> qa_outputs.weight/bias (2, H)
    masked LM:           hidden states -> MatMul+Add (H x H) -> activation -> LayerNorm
                         -> MatMul (V x H) + Add                  -> cls.predictions.transform.dense,
                                                                     .transform.LayerNorm, .bias

The MLM decoder is tied to the word embeddings in BertForMaskedLM: exporters store it as a
transposed copy, which is compared bit for bit with the encoder's table and left out when equal
(as transformers' save_pretrained does); a decoder that differs comes back as
`cls.predictions.decoder.weight`. Weights come back in PyTorch (out, in) orientation (MatMul
initializers are (in, out); Gemm honours transB). What it leaves out: heads with other hidden
layers than the MLM transform.
"""

from __future__ import annotations

import numpy as np

from ..errors import CheckpointError
from .onnx_graph import _Graph, _in, _out
from .onnx_patterns import Patterns

# Ops that only move or select values between the head linear and a graph output (Dropout,
# Identity and same-type Casts are already bypassed by _Graph).
_PASS_THROUGH = {"Squeeze", "Split", "Reshape", "Unsqueeze", "Flatten", "Cast"}

# Backward search from the MLM transform LayerNorm to its dense layer crosses only the activation
# (five nodes for erf GELU, up to nine for tanh GELU).
_MAX_ACTIVATION_NODES = 16


def read_onnx_heads(
    g: _Graph, hidden_size: int, word_embeddings: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Head tensors ({} for a bare encoder export) with `bert.`-free Hugging Face names, from the
    graph `onnx_reader.read_onnx` parsed (`OnnxCheckpoint.graph`).

    `word_embeddings` (V, H) is the encoder's table: an MLM decoder equal to it is tied and not
    returned; without it, the decoder weight is always returned.
    """
    patterns = Patterns(g, hidden_size)  # the LayerNorm / linear / activation matchers check this width

    heads: dict[str, np.ndarray] = {}
    for output in g.output_names:
        name, through_split = g.canonical(output), False
        node = g.producer.get(name)
        while node is not None and node.op_type in _PASS_THROUGH and node.input:
            through_split |= node.op_type == "Split"
            name = _in(node, 0)
            node = g.producer.get(name)
        linear = _linear(node, patterns)
        if linear is None:
            continue
        weight, bias, x = linear
        src = g.producer.get(x)
        mlm = None if through_split else _mlm_transform(patterns, x)
        if mlm is not None:
            prefix = "cls.predictions"
            found = dict(mlm)
            found["cls.predictions.bias"] = bias
            tied = (word_embeddings is not None and weight.shape == word_embeddings.shape
                    and np.array_equal(weight, word_embeddings))
            if not tied:
                found["cls.predictions.decoder.weight"] = weight
        elif through_split and weight.shape[0] == 2:
            prefix = "qa_outputs"
            found = {"qa_outputs.weight": weight, "qa_outputs.bias": bias}
        elif src is not None and src.op_type in ("Gather", "Slice"):
            continue  # a linear on the first token without the pooler's Tanh: not a known head
        else:
            # On the pooler's Tanh: sequence classifier; on the hidden states: token classifier.
            prefix = "classifier"
            found = {"classifier.weight": weight, "classifier.bias": bias}
        for key, value in found.items():
            if key in heads and not np.array_equal(heads[key], value):
                raise CheckpointError(
                    f"{g.path!r} has two different {prefix} heads; export one task head per model"
                )
        heads.update(found)
    return heads


def _linear(node, patterns: Patterns):
    """(weight (out, in) float32, bias (out,), input name) if `node` ends a linear layer on H
    features: a Gemm, a MatMul (exporters drop an all-zero bias), or the bias Add after a MatMul."""
    if node is None or len(node.input) < 2:
        return None
    g = patterns.g
    mm = node
    if node.op_type == "Add":
        mm = next((p for p in (g.producer.get(_in(node, i)) for i in (0, 1))
                   if p is not None and p.op_type == "MatMul"), None)
    if mm is None or mm.op_type not in ("MatMul", "Gemm"):
        return None
    lin = patterns.linear(mm)
    if lin is None or lin.weight.shape[1] != patterns.hidden:
        return None
    bias = lin.bias
    if lin.out != _out(node):
        if node.op_type == "Add":
            return None  # this Add is not the MatMul's bias
        bias = np.zeros(lin.weight.shape[0], dtype=np.float32)  # the head ends at its biasless MatMul
    return (np.ascontiguousarray(lin.weight, dtype=np.float32),
            np.ascontiguousarray(bias, dtype=np.float32), _in(mm, 0))


def _mlm_transform(patterns: Patterns, x: str) -> dict[str, np.ndarray] | None:
    """The MLM transform (dense H x H -> activation -> LayerNorm) whose output is `x`, if it is one."""
    g = patterns.g
    ln_in = _layer_norm_input(g, x)
    if ln_in is None:
        return None
    # The LayerNorm's input must come, through activation nodes only, from an H x H linear; the
    # encoder's last LayerNorm instead sums a residual (its producers end at a LayerNorm and an
    # H x intermediate linear), so a token classifier on it is not taken for an MLM head.
    dense = None
    queue, seen = [ln_in], set()
    while queue and len(seen) < _MAX_ACTIVATION_NODES:
        tensor = queue.pop(0)
        node = g.producer.get(tensor)
        if node is None or id(node) in seen or g.const(tensor) is not None:
            continue
        seen.add(id(node))
        if node.op_type in ("MatMul", "Gemm", "Add"):
            linear = _linear(node, patterns)
            if linear is not None:
                if linear[0].shape == (patterns.hidden, patterns.hidden) and dense is None:
                    dense = (node, linear)
                continue
        if node.op_type in ("MatMul", "Gemm", "LayerNormalization", "Softmax"):
            continue
        queue.extend(i for i in node.input if i)
    if dense is None:
        return None
    node, (weight, bias, _) = dense
    hits, crossed = g.walk_to(_out(node), {"LayerNormalization", "ReduceMean", "Sub"}, strict=False)
    if not any(_in(n, s) == ln_in for n, s in hits):
        return None
    patterns.activation(crossed, "masked-LM head transform")  # raises on an unknown activation
    ln = patterns.layer_norm(ln_in, "masked-LM head transform LayerNorm")
    if ln.out != x:
        return None
    return {
        "cls.predictions.transform.dense.weight": weight,
        "cls.predictions.transform.dense.bias": bias,
        "cls.predictions.transform.LayerNorm.weight": ln.weight,
        "cls.predictions.transform.LayerNorm.bias": ln.bias,
    }


def _layer_norm_input(g: _Graph, x: str) -> str | None:
    """The input of the LayerNorm whose output is `x` (fused node or opset-14 decomposition)."""
    node = g.producer.get(x)
    if node is None:
        return None
    if node.op_type == "LayerNormalization":
        return _in(node, 0)
    # Decomposed: Add(Mul(Div(Sub(t, ReduceMean(t)), std), weight), bias).
    if node.op_type != "Add":
        return None
    for name in node.input:
        mul = g.producer.get(name)
        if mul is None or mul.op_type != "Mul":
            continue
        for inner in mul.input:
            div = g.producer.get(inner)
            if div is None or div.op_type != "Div":
                continue
            sub = g.producer.get(_in(div, 0))
            if sub is not None and sub.op_type == "Sub":
                return _in(sub, 0)
    return None
