"""The ONNX graph index the BERT walker follows (stage two of `onnx_reader`).

`_Graph` indexes producers and consumers, resolves constants (initializers, Constant and Identity
nodes, float Casts of weights) and bounded forward walks between anchors; `_bypass_no_ops` removes
inference no-ops (Dropout, Identity, Casts to the type a tensor already has) before any walk, using
the element types `_elem_types` infers. Left out: recognising BERT patterns (`onnx_patterns`,
`onnx_embeddings`, `onnx_reader`).
"""

from __future__ import annotations

import os
from collections import deque

import numpy as np

from ..errors import CheckpointError
from .onnx_tensors import _as_float32, _tensor_to_array

_HOW_TO_EXPORT = (
    "export the plain Hugging Face BertModel with torch.onnx.export (see models/export_onnx.py), "
    "without onnxruntime graph optimisations or quantization"
)

# Inputs of these ops that carry shapes or indices rather than activations: the forward walks do
# not follow them, so a shape computation never links two unrelated parts of the graph.
_NON_DATA_SLOTS = {
    "Reshape": {1},
    "Expand": {1},
    "Slice": {1, 2, 3, 4},
    "Tile": {1},
    "Unsqueeze": {1},
    "Squeeze": {1},
    "Gather": {1},
    "GatherElements": {1},
    "GatherND": {1},
    "Pad": {1, 2, 3},
    "Where": {0},
    "ReduceMean": {1},
}
_SHAPE_OPS = {"Shape", "Size", "ConstantOfShape", "Range", "NonZero", "EyeLike"}

# A walk between two recognised anchors (e.g. Q projection -> scores MatMul) crosses fewer than a
# dozen nodes in every known export; the bound keeps a hostile or unrelated graph from making the
# search quadratic.
_MAX_WALK = 256


# Ops whose output has the element type of their first input (enough to tell which Casts are
# no-ops on the activations of a float export; anything else is "unknown", and an unknown Cast
# is kept, i.e. treated strictly).
_SAME_TYPE_OPS = {
    "Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "LayerNormalization", "Softmax", "Gelu", "Erf",
    "Tanh", "Relu", "Sigmoid", "Sqrt", "Pow", "Neg", "Abs", "Exp", "ReduceMean", "Reshape",
    "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Slice", "Concat", "Split", "Tile",
    "Identity", "Dropout", "Gather", "GatherND", "Max", "Min",
}


def _elem_types(graph, initializers) -> dict[str, int]:
    """Element types of the tensors whose type follows from inputs, initializers and op rules.

    One pass in node order (ONNX requires topological order; an unsorted graph just leaves some
    types unknown).
    """
    import onnx

    types: dict[str, int] = {name: t.data_type for name, t in initializers.items()}
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types.setdefault(info.name, info.type.tensor_type.elem_type)
    for node in graph.node:
        out = _out(node)
        if not out or out in types:
            continue
        if node.op_type == "Cast":
            found = _attr(node, "to", None)
        elif node.op_type == "Constant":
            found = next((a.t.data_type for a in node.attribute
                          if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
            if found is None and any(a.name in ("value_float", "value_floats") for a in node.attribute):
                found = onnx.TensorProto.FLOAT
        elif node.op_type == "Where":
            found = types.get(_in(node, 1))
        elif node.op_type in _SAME_TYPE_OPS:
            found = types.get(_in(node, 0))
        else:
            found = None
        if found:
            types[out] = int(found)
    return types


def _bypass_no_ops(graph, initializers) -> dict[str, str]:
    """Rewire the graph around inference no-ops; return {no-op output: the tensor it stands for}.

    No-ops: Identity, Cast to the type its input already has, and Dropout whose mask output is
    unused. A Dropout is skipped whatever its training_mode input says: exporters emit
    training_mode=True when the module they traced was left in train mode (a wrapper without
    .eval()), onnxruntime's graph optimiser removes such nodes for inference, and the weights are
    the same. Consumers' inputs are renamed in place (the proto is this reader's own parse), so
    every walk follows the dataflow as if the no-ops were not there.
    """
    types = _elem_types(graph, initializers)
    used = {name for node in graph.node for name in node.input if name}
    raw: dict[str, str] = {}
    for node in graph.node:
        out, src = _out(node), _in(node, 0)
        if not out or not src or out == src:
            continue
        if node.op_type == "Identity" and len(node.input) == 1 and len(node.output) == 1:
            raw[out] = src
        elif node.op_type == "Dropout" and not (len(node.output) > 1 and node.output[1] in used):
            raw[out] = src
        elif (node.op_type == "Cast" and len(node.input) == 1 and src in types
              and _attr(node, "to", None) == types[src]):
            raw[out] = src
    alias: dict[str, str] = {}
    for name in raw:
        target, hops = raw[name], 0
        while target in raw and hops < len(raw):  # chains of no-ops; the bound stops cycles
            target, hops = raw[target], hops + 1
        alias[name] = target
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in alias:
                node.input[slot] = alias[name]
    return alias


class _Graph:
    """Producer/consumer maps and lazy constant resolution over one ONNX graph."""

    def __init__(self, model, path: str):
        import onnx

        self._onnx = onnx
        self.path = path
        self.base_dir = os.path.dirname(os.path.abspath(path))
        graph = model.graph
        self.initializers = {t.name: t for t in graph.initializer}
        self.input_names = tuple(i.name for i in graph.input if i.name not in self.initializers)
        self.output_names = tuple(o.name for o in graph.output)
        self.alias = _bypass_no_ops(graph, self.initializers)
        self.nodes = [n for n in graph.node if not any(o in self.alias for o in n.output if o)]
        self.producer: dict[str, object] = {}
        self.consumers: dict[str, list[tuple[object, int]]] = {}
        for node in self.nodes:
            for out in node.output:
                if out:
                    self.producer[out] = node
            for slot, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, slot))
        self._cache: dict[str, np.ndarray | None] = {}

    # -- constants ---------------------------------------------------------------------------

    def const(self, name: str) -> np.ndarray | None:
        """The value of tensor `name` if it is a constant (initializer, Constant, aliases)."""
        if not name:
            return None
        if name not in self._cache:
            self._cache[name] = None  # guards against cycles in malformed graphs
            self._cache[name] = self._resolve_const(name)
        return self._cache[name]

    def _resolve_const(self, name: str) -> np.ndarray | None:
        onnx = self._onnx
        if name in self.initializers:
            return _tensor_to_array(self.initializers[name], self.base_dir, self.path)
        node = self.producer.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    return _tensor_to_array(attr.t, self.base_dir, self.path)
                if attr.name == "value_float":
                    return np.array(attr.f, dtype=np.float32)
                if attr.name == "value_floats":
                    return np.array(list(attr.floats), dtype=np.float32)
                if attr.name == "value_int":
                    return np.array(attr.i, dtype=np.int64)
                if attr.name == "value_ints":
                    return np.array(list(attr.ints), dtype=np.int64)
            return None
        if node.op_type == "Identity" and len(node.input) == 1:
            return self.const(_in(node, 0))
        if node.op_type == "Cast" and len(node.input) == 1:
            # fp16 / bf16 weights widened in-graph: the float32 the model computes with is exact.
            source = self.const(_in(node, 0))
            if source is None:
                return None
            to = _attr(node, "to", None)
            if to == onnx.TensorProto.FLOAT:
                return _as_float32(source, f"Cast input {_in(node, 0)!r}")
            return None
        return None

    def canonical(self, name: str) -> str:
        """The tensor `name` stands for once inference no-ops (Dropout, Identity, ...) are skipped."""
        return self.alias.get(name, name)

    def float_const(self, name: str, what: str) -> np.ndarray | None:
        """A constant read as float32 weights; a non-float constant in a weight slot raises."""
        value = self.const(name)
        if value is None:
            return None
        return _as_float32(value, f"{what} ({name!r})")

    # -- navigation --------------------------------------------------------------------------

    def users(self, name: str, op_type: str | None = None) -> list[tuple[object, int]]:
        found = self.consumers.get(name, [])
        if op_type is None:
            return list(found)
        return [(n, s) for n, s in found if n.op_type == op_type]

    def other_input(self, node, name: str) -> str | None:
        """For a binary node fed by `name`, the other input's name (None if not binary)."""
        inputs = [i for i in node.input]
        if len(inputs) != 2 or name not in inputs:
            return None
        return inputs[1] if inputs[0] == name else inputs[0]

    def walk_to(
        self, start: str, stop_ops: set[str], strict: bool = True
    ) -> tuple[list[tuple[object, int]], list]:
        """Follow activations forward from tensor `start` until nodes of `stop_ops`.

        Returns the (node, input slot) pairs where the walk reached a stop node, and the nodes
        crossed on the way. Shape computations and index inputs are not followed. A walk longer
        than _MAX_WALK nodes raises when `strict`, else it just stops (optional parts).
        """
        hits: list[tuple[object, int]] = []
        crossed: list = []
        seen_nodes: set[int] = set()
        queue = deque([start])
        seen_tensors = {start}
        while queue:
            tensor = queue.popleft()
            for node, slot in self.consumers.get(tensor, []):
                if node.op_type in stop_ops:
                    if not _reached(hits, node, slot):
                        hits.append((node, slot))
                    continue
                if node.op_type in _SHAPE_OPS or slot in _NON_DATA_SLOTS.get(node.op_type, ()):
                    continue
                if id(node) in seen_nodes:
                    continue
                seen_nodes.add(id(node))
                if len(seen_nodes) > _MAX_WALK:
                    if not strict:
                        return hits, crossed
                    raise CheckpointError(
                        f"the dataflow after {start!r} does not reach a {sorted(stop_ops)} node "
                        f"within {_MAX_WALK} steps; this graph is not a BERT encoder export: "
                        f"{_HOW_TO_EXPORT}"
                    )
                crossed.append(node)
                for out in node.output:
                    if out and out not in seen_tensors:
                        seen_tensors.add(out)
                        queue.append(out)
        return hits, crossed

    def source_input(self, name: str) -> str | None:
        """The graph input that tensor `name` is (through Cast / Identity / Reshape), if any."""
        for _ in range(16):
            if name in self.input_names:
                return name
            node = self.producer.get(name)
            if node is None or node.op_type not in ("Cast", "Identity", "Reshape", "Unsqueeze",
                                                    "Squeeze", "Flatten"):
                return None
            name = _in(node, 0) if node.input else ""
        return None


def _in(node, i: int) -> str:
    """Name of input `i` of `node`, or "" if the node has fewer inputs (malformed graphs)."""
    return node.input[i] if len(node.input) > i else ""


def _out(node) -> str:
    """Name of the first output of `node`, or "" if it has none."""
    return node.output[0] if len(node.output) else ""


def _reached(hits: list[tuple[object, int]], node, slot: int) -> bool:
    """Whether (node, slot) is among `hits`, by node identity (protobuf == compares contents)."""
    return any(n is node and s == slot for n, s in hits)


def _attr(node, name: str, default):
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _nice_float(value: float) -> float:
    """A float32 attribute as the shortest decimal that round-trips (9.99999996e-13 -> 1e-12)."""
    return float(str(np.float32(value)))
