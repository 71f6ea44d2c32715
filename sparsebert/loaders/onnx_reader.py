"""Recover BERT encoder weights and configuration from an ONNX export by following its graph.

Exports store linear weights transposed, (in, out), under generated names (`onnx::MatMul_886` from
the legacy exporter, `val_83` from the dynamo one), and exporters deduplicate equal tensors, so
initializer names cannot be trusted. This reader ignores them: it finds the word-embedding Gather
on `input_ids`, then walks the dataflow forward the way the encoder computes:

    embeddings: Gather(word) + Gather(position) [+ Gather(token type) | + folded constant] -> LN
    per layer:  x -> three MatMul(+Add) projections; Q and K meet in the scores MatMul (Q left),
                which feeds Softmax; V feeds the MatMul after Softmax -> attention output
                MatMul+Add -> Add(x) -> LN -> FFN MatMul+Add -> activation -> MatMul+Add
                -> Add(residual) -> LN -> next layer
    pooler:     (optional) first token -> Gemm or MatMul+Add -> Tanh

The encoder ends at the first layer-output LayerNorm that is not consumed by three HxH linears:
what follows (pooler, the MLM transform's one HxH dense, classifiers) is head territory, read by
`onnx_heads`. A layer that is there but could not be followed still fails, because an attention
block (Softmax feeding a MatMul) after the last recognised LayerNorm is refused. Inference no-ops
(Dropout, Identity, Cast to the type the tensor already has) are bypassed before any walk, so
dynamo exports of BertFor... models, which carry Dropout nodes, read like plain ones.

LayerNorm is recognised as one `LayerNormalization` node (opset >= 17) or its opset-14
decomposition (ReduceMean, Sub, Pow, ReduceMean, Add eps, Sqrt, Div, Mul, Add); GELU as a `Gelu`
node or the Div/Erf/Add/Mul/Mul pattern; Constant and Identity nodes holding weights are followed.
External data (`.onnx.data`) is read here, with every location checked to stay inside the model's
folder. A biasless Gemm/MatMul (exporters drop all-zero biases) gets an explicit zero bias.

What this module deliberately leaves out: graphs rewritten by onnxruntime's transformer optimizer
(fused Attention, SkipLayerNormalization, EmbedLayerNormalization, FastGelu), quantized graphs,
and task heads (see `onnx_heads`). They raise `CheckpointError` instead of yielding a partial model.
A folded token-type constant (export without `token_type_ids`, table reduced to its row 0) comes
back as a one-row `embeddings.token_type_embeddings.weight` with `type_vocab_size` 1.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import deque

import numpy as np

from ..errors import CheckpointError
from .onnx_quant import dequantize_graph, is_quantized

# onnx is a hard dependency (pyproject) but imported lazily so `import sparsebert` stays cheap.

_HOW_TO_EXPORT = (
    "export the plain Hugging Face BertModel with torch.onnx.export (see models/export_onnx.py), "
    "without onnxruntime graph optimisations or quantization"
)

# Ops that mean the graph was fused or quantized after export: reading weights from such a graph
# through the plain-export patterns would either fail obscurely or silently miss parameters.
_UNSUPPORTED_OPS = {
    "Attention": "fused attention",
    "MultiHeadAttention": "fused attention",
    "SkipLayerNormalization": "fused residual + LayerNorm",
    "SkipSimplifiedLayerNormalization": "fused residual + LayerNorm",
    "EmbedLayerNormalization": "fused embeddings",
    "FastGelu": "fused bias + GELU",
    "BiasGelu": "fused bias + GELU",
    "QuantizeLinear": "quantization",
    "DequantizeLinear": "quantization",
    "DynamicQuantizeLinear": "quantization",
    "MatMulInteger": "quantization",
    "QLinearMatMul": "quantization",
    "MatMulNBits": "quantization",
    "QAttention": "quantization",
}

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


@dataclasses.dataclass(frozen=True)
class OnnxCheckpoint:
    """Weights (Hugging Face BertModel names, no `bert.` prefix) and config recovered from ONNX."""

    state_dict: dict[str, np.ndarray]
    config: dict
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    # Linears read from int8 ONNX weights (onnx_quant): name -> (codes (out, in), scale (out,)).
    int8: dict = dataclasses.field(default_factory=dict)


def read_onnx(path: str | os.PathLike) -> OnnxCheckpoint:
    """Read a BERT encoder ONNX export; raise CheckpointError if it is not one or is damaged."""
    path = os.fspath(path)
    model = _parse_model(path)
    int8 = {}
    if is_quantized(model):  # int8 weights back to float for the walk; exact codes kept aside
        base = os.path.dirname(os.path.abspath(path))
        int8 = dequantize_graph(model, lambda t: _tensor_to_array(t, base, path))
    graph = _Graph(model, path)
    ckpt = _BertWalker(graph).read()
    if int8:
        ckpt = dataclasses.replace(ckpt, int8=_int8_by_name(ckpt.state_dict, int8))
    return ckpt


def _int8_by_name(state_dict, int8) -> dict:
    """{linear name: (codes (out, in), scale (out,))} for the walker's weights that came from int8
    codes: matched by value, since the walker stores each weight transposed to (out, in)."""
    by_bytes = {np.ascontiguousarray(codes.astype(np.float32) * scale[None, :]).T.tobytes(): (codes, scale)
                for codes, scale in int8.values()}
    out = {}
    for name, w in state_dict.items():
        if name.endswith(".weight") and w.ndim == 2:
            hit = by_bytes.get(np.ascontiguousarray(w).tobytes())
            if hit is not None:
                out[name[: -len(".weight")]] = (np.ascontiguousarray(hit[0].T), hit[1])
    return out


# --------------------------------------------------------------------------------------------
# File parsing and tensor decoding
# --------------------------------------------------------------------------------------------


def _parse_model(path: str):
    import onnx

    if not os.path.isfile(path):
        raise CheckpointError(
            f"ONNX file {path!r} does not exist or is not a file; pass the path of the .onnx file"
        )
    with open(path, "rb") as fh:
        data = fh.read()
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - only protobuf decoding happens here; chained below
        raise CheckpointError(
            f"{path!r} is not a readable ONNX model (protobuf decoding failed: {exc}); the file is "
            f"truncated or not ONNX: re-export or re-download it"
        ) from exc
    if len(model.graph.node) == 0:
        raise CheckpointError(
            f"{path!r} holds no ONNX graph nodes ({len(data)} bytes); it is not an ONNX model or is "
            f"truncated: re-export or re-download it"
        )
    return model


def _external_bytes(tensor, base_dir: str, model_path: str) -> bytes:
    """Read an external-data tensor's bytes, refusing locations outside the model's folder."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if not location:
        raise CheckpointError(
            f"tensor {tensor.name!r} in {model_path!r} is marked as external data but names no "
            f"file; re-export the model"
        )
    if os.path.isabs(location) or os.path.splitdrive(location)[0]:
        raise CheckpointError(
            f"tensor {tensor.name!r} in {model_path!r} points to the absolute path {location!r}; "
            f"external data must be a relative path inside the model's folder: move the data file "
            f"next to the .onnx file and re-save with a relative location"
        )
    root = os.path.realpath(base_dir)
    target = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, target]) != root:
        raise CheckpointError(
            f"tensor {tensor.name!r} in {model_path!r} points to {location!r}, outside the model's "
            f"folder {root!r}; refusing to read it (path traversal). Keep the external data file "
            f"inside the model's folder"
        )
    if not os.path.isfile(target):
        raise CheckpointError(
            f"external data file {location!r} for tensor {tensor.name!r} is missing (looked for "
            f"{target!r}); copy the .onnx.data file that was exported with {model_path!r} next to it"
        )
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError as exc:
        raise CheckpointError(
            f"tensor {tensor.name!r} in {model_path!r} has a malformed external data offset/length "
            f"{info!r}; re-export the model"
        ) from exc
    size = os.path.getsize(target)
    if length is None:
        length = size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise CheckpointError(
            f"tensor {tensor.name!r} wants bytes [{offset}, {offset + length}) of {target!r}, which "
            f"holds {size} bytes; the data file is truncated or belongs to another export"
        )
    with open(target, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def _tensor_to_array(tensor, base_dir: str, model_path: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raw = _external_bytes(tensor, base_dir, model_path)
        inline = onnx.TensorProto()
        inline.CopyFrom(tensor)
        del inline.external_data[:]
        inline.data_location = onnx.TensorProto.DEFAULT
        inline.raw_data = raw
        tensor = inline
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as exc:  # noqa: BLE001 - decoding one tensor proto; chained below
        raise CheckpointError(
            f"tensor {tensor.name!r} in {model_path!r} cannot be decoded (dims {list(tensor.dims)}, "
            f"data type {tensor.data_type}): {exc}. The file is truncated or corrupt: re-export it"
        ) from exc
    return array


def _as_float32(array: np.ndarray, what: str) -> np.ndarray:
    """float32 copy of a weight; float16 / bfloat16 widen exactly, float64 only if lossless."""
    name = str(array.dtype)
    if array.dtype == np.float32:
        return np.array(array, dtype=np.float32, order="C", copy=True)
    if name in ("float16", "bfloat16"):
        return np.ascontiguousarray(array.astype(np.float32))
    if array.dtype == np.float64:
        narrowed = array.astype(np.float32)
        if np.array_equal(narrowed.astype(np.float64), array, equal_nan=True):
            return np.ascontiguousarray(narrowed)
        raise CheckpointError(
            f"{what} is float64 with values float32 cannot hold exactly; export the model in "
            f"float32 (model.float() before torch.onnx.export)"
        )
    raise CheckpointError(
        f"{what} has dtype {name}, which cannot be converted to float32 weights without "
        f"dequantization; export the model in float32"
    )


# --------------------------------------------------------------------------------------------
# Graph index: producers, consumers, constants
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Pattern matchers
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Linear:
    weight: np.ndarray  # (out, in), PyTorch orientation
    bias: np.ndarray  # (out,)
    out: str  # output tensor name (after the bias, if any)
    matmul: object  # the MatMul or Gemm node


@dataclasses.dataclass
class _LayerNorm:
    weight: np.ndarray
    bias: np.ndarray
    eps: float
    out: str


class _BertWalker:
    """Walks one graph from the word-embedding Gather to the pooler, collecting weights."""

    def __init__(self, graph: _Graph):
        self.g = graph
        self.sd: dict[str, np.ndarray] = {}
        self.hidden = 0
        self.eps: list[tuple[str, float]] = []
        self.used_linears: set[int] = set()

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.g.path!r} is not a BERT encoder export: {what}. To fix: "
                               f"{_HOW_TO_EXPORT}")

    # -- entry point -------------------------------------------------------------------------

    def read(self) -> OnnxCheckpoint:
        self._reject_unsupported_ops()
        config: dict = {}
        x = self._embeddings(config)
        layers = 0
        heads: set[int] = set()
        intermediate: set[int] = set()
        acts: set[str] = set()
        layer_inputs: set[str] = set()
        while True:
            projections = self._linear_users(x, (self.hidden, self.hidden))
            if layers and len(projections) < 3:
                # The encoder ends at this LayerNorm; one or two HxH linears on it are a head's
                # (the MLM transform dense). A layer that is really there but could not be
                # followed leaves an attention block downstream, which _check_nothing_skipped
                # refuses.
                break
            if x in layer_inputs:
                raise self.fail(f"the encoder layers form a cycle at {x!r}")
            layer_inputs.add(x)
            x, n_heads, ffn, act = self._layer(layers, x, projections)
            if n_heads is not None:
                heads.add(n_heads)
            intermediate.add(ffn)
            acts.add(act)
            layers += 1
        if layers == 0:
            raise self.fail(
                "no Q/K/V MatMuls consume the embedding LayerNorm output "
                f"({x!r}), so no encoder layer was found"
            )
        self._pooler(x)
        self._check_nothing_skipped(x)
        if len(intermediate) != 1 or len(acts) != 1 or len(heads) > 1:
            raise CheckpointError(
                f"{self.g.path!r} has layers of different shapes (intermediate sizes "
                f"{sorted(intermediate)}, activations {sorted(acts)}, head counts {sorted(heads)}); "
                f"a BERT encoder has identical layers, so this export cannot be read"
            )
        eps_values = {eps for _, eps in self.eps}
        if len(eps_values) != 1:
            raise CheckpointError(
                f"{self.g.path!r} uses different LayerNorm epsilons {self.eps!r}; a BERT config "
                f"has a single layer_norm_eps, so this export cannot be represented"
            )
        config.update(
            hidden_size=self.hidden,
            num_hidden_layers=layers,
            intermediate_size=intermediate.pop(),
            layer_norm_eps=eps_values.pop(),
            hidden_act=acts.pop(),
        )
        if heads:
            config["num_attention_heads"] = heads.pop()
        return OnnxCheckpoint(
            state_dict=self.sd,
            config=config,
            input_names=self.g.input_names,
            output_names=self.g.output_names,
        )

    def _reject_unsupported_ops(self) -> None:
        found = sorted({n.op_type for n in self.g.nodes if n.op_type in _UNSUPPORTED_OPS})
        if found:
            kinds = sorted({_UNSUPPORTED_OPS[op] for op in found})
            raise CheckpointError(
                f"{self.g.path!r} contains {found} ({', '.join(kinds)}), which this reader does not "
                f"unpack; {_HOW_TO_EXPORT}"
            )

    # -- embeddings --------------------------------------------------------------------------

    def _table(self, node) -> np.ndarray | None:
        """The float table of an embedding Gather (axis 0, constant 2-D data), else None."""
        if node.op_type != "Gather" or len(node.input) < 2 or _attr(node, "axis", 0) != 0:
            return None
        table = self.g.float_const(_in(node, 0), "embedding table")
        if table is None or table.ndim != 2:
            return None
        return table

    def _word_gather(self):
        candidates = []
        for node in self.g.nodes:
            if node.op_type != "Gather" or len(node.input) < 2:
                continue
            source = self.g.source_input(_in(node, 1))
            if source is None:
                continue
            if self.g.const(_in(node, 0)) is None:
                continue
            candidates.append((source, node))
        named = [n for s, n in candidates if s == "input_ids"]
        if not named:
            named = [n for s, n in candidates
                     if not any(k in s.lower() for k in ("token_type", "mask", "position", "segment"))]
        if len(named) != 1:
            raise self.fail(
                f"the word-embedding Gather was not found (expected one Gather of a constant table "
                f"indexed by the graph input 'input_ids'; graph inputs are {list(self.g.input_names)},"
                f" candidate Gathers {[n.name for _, n in candidates]})"
            )
        node = named[0]
        table = self._table(node)
        if table is None:
            raise self.fail(
                f"the word-embedding Gather {node.name!r} does not read a 2-D float table along "
                f"axis 0"
            )
        return node, table

    def _add_terms(self, tensor: str, depth: int = 0) -> list[str]:
        node = self.g.producer.get(tensor)
        if node is not None and node.op_type == "Add" and depth < 8 and self.g.const(tensor) is None:
            return [t for i in node.input for t in self._add_terms(i, depth + 1)]
        return [tensor]

    def _embeddings(self, config: dict) -> str:
        word_node, word = self._word_gather()
        vocab, self.hidden = word.shape
        if vocab == 0 or self.hidden == 0:
            raise CheckpointError(
                f"{self.g.path!r}: the word-embedding table has shape {word.shape}; an empty "
                f"table cannot be a trained model: re-export it"
            )
        self.sd["embeddings.word_embeddings.weight"] = word

        # Climb the chain of Adds that sums the embedding terms; it ends at the LayerNorm.
        cur = _out(word_node)
        terms: list[str] = []
        for _ in range(8):
            adds = self.g.users(cur, "Add")
            if len(adds) != 1 or len(self.g.users(cur)) != 1:
                break
            add = adds[0][0]
            other = self.g.other_input(add, cur)
            if other is None:
                raise self.fail(f"embedding Add {add.name!r} is not binary")
            terms.extend(self._add_terms(other))
            cur = _out(add)
        if not terms:
            raise self.fail(
                f"the word embeddings ({_out(word_node)!r}) are not summed with position "
                f"embeddings before a LayerNorm"
            )

        tables: list[tuple[object, np.ndarray]] = []
        folded: list[np.ndarray] = []
        for term in terms:
            node = self.g.producer.get(term)
            table = self._table(node) if node is not None else None
            if table is not None:
                tables.append((node, table))
                continue
            value = self.g.float_const(term, "embedding constant")
            if value is not None and value.size == self.hidden:
                folded.append(value.reshape(1, self.hidden))
                continue
            if value is not None:
                raise CheckpointError(
                    f"{self.g.path!r}: the embedding term {term!r} is a constant of shape "
                    f"{value.shape}, i.e. position embeddings folded for one fixed sequence length; "
                    f"the position table cannot be recovered from it. Re-export with a dynamic "
                    f"sequence axis (dynamic_axes / dynamic_shapes on dimension 1)"
                )
            raise self.fail(
                f"embedding term {term!r} added to the word embeddings is neither a Gather of a "
                f"constant table nor a folded constant of {self.hidden} values"
            )
        for node, table in tables:
            if table.shape[1] != self.hidden:
                raise CheckpointError(
                    f"{self.g.path!r}: embedding table {_in(node, 0)!r} has shape {table.shape}, "
                    f"but the word embeddings have width {self.hidden}; the export is inconsistent"
                )

        # Tables indexed by a graph input are named by that input (position_ids -> position,
        # anything else -> token type); tables indexed by computed ids are the module defaults:
        # arange positions and all-zero token types.
        position, token_type, computed = [], [], []
        for node, table in tables:
            source = self.g.source_input(_in(node, 1))
            if source is None:
                computed.append((node, table))
            elif "position" in source.lower():
                position.append((node, table))
            else:
                token_type.append((node, table))
        if not position and computed:
            if len(computed) == 2 and not token_type and not folded:
                # Position tables have max_position_embeddings rows, token-type tables a handful.
                computed.sort(key=lambda nt: nt[1].shape[0])
                if computed[0][1].shape[0] == computed[1][1].shape[0]:
                    raise self.fail(
                        "two embedding tables of equal size are indexed by computed ids; position "
                        "and token-type embeddings cannot be told apart"
                    )
            position.append(computed.pop())
        token_type.extend(computed)
        if len(position) != 1:
            raise self.fail(
                f"expected one position-embedding Gather added to the word embeddings, found "
                f"{len(position)} (terms {terms!r})"
            )
        if len(folded) + len(token_type) > 1:
            raise self.fail(f"more than one token-type term added to the word embeddings ({terms!r})")

        position_table = position[0][1]
        self.sd["embeddings.position_embeddings.weight"] = position_table
        config.update(vocab_size=int(vocab), max_position_embeddings=int(position_table.shape[0]))
        if token_type:
            table = token_type[0][1]
            self.sd["embeddings.token_type_embeddings.weight"] = table
            config["type_vocab_size"] = int(table.shape[0])
        elif folded:
            self.sd["embeddings.token_type_embeddings.weight"] = np.ascontiguousarray(folded[0])
            config["type_vocab_size"] = 1

        ln = self._layer_norm(cur, "embeddings LayerNorm")
        self._store_ln("embeddings.LayerNorm", ln)
        return ln.out

    # -- LayerNorm ---------------------------------------------------------------------------

    def _store_ln(self, prefix: str, ln: _LayerNorm) -> None:
        self.sd[f"{prefix}.weight"] = ln.weight
        self.sd[f"{prefix}.bias"] = ln.bias
        self.eps.append((prefix, ln.eps))

    def _ln_param(self, name: str, what: str) -> np.ndarray:
        value = self.g.float_const(name, what)
        if value is None or value.size != self.hidden:
            shape = None if value is None else value.shape
            raise CheckpointError(
                f"{self.g.path!r}: {what} {name!r} is not a constant of {self.hidden} values "
                f"(got shape {shape}); the export is inconsistent"
            )
        return np.ascontiguousarray(value.reshape(self.hidden))

    def _layer_norm(self, x: str, what: str) -> _LayerNorm:
        fused = self.g.users(x, "LayerNormalization")
        if fused:
            node, slot = fused[0]
            axis = _attr(node, "axis", -1)
            if slot != 0 or axis not in (-1, 2) or len(node.input) < 2:
                raise self.fail(f"{what}: LayerNormalization {node.name!r} does not normalise the "
                                f"last axis of {x!r} (axis={axis})")
            weight = self._ln_param(_in(node, 1), f"{what} weight")
            if len(node.input) > 2 and _in(node, 2):
                bias = self._ln_param(_in(node, 2), f"{what} bias")
            else:
                bias = np.zeros(self.hidden, np.float32)
            eps = _nice_float(_attr(node, "epsilon", 1e-5))
            return _LayerNorm(weight, bias, eps, _out(node))
        return self._decomposed_layer_norm(x, what)

    def _decomposed_layer_norm(self, x: str, what: str) -> _LayerNorm:
        g = self.g
        not_found = self.fail(
            f"{what} was not found after {x!r} (expected a LayerNormalization node, or ReduceMean, "
            f"Sub, Pow, ReduceMean, Add eps, Sqrt, Div, Mul weight, Add bias)"
        )
        means = {_out(n) for n, s in g.users(x, "ReduceMean") if s == 0 and self._over_last_axis(n)}
        subs = [n for n, s in g.users(x, "Sub") if s == 0 and _in(n, 1) in means]
        if len(subs) != 1:
            raise not_found
        centred = _out(subs[0])
        for div, slot in g.users(centred, "Div"):
            if slot != 0:
                continue
            eps = self._variance_eps(centred, _in(div, 1))
            if eps is None:
                continue
            scaled = self._affine(_out(div), "Mul", f"{what} weight")
            if scaled is None:
                raise not_found
            weight, after_mul = scaled
            shifted = self._affine(after_mul, "Add", f"{what} bias")
            if shifted is None:
                raise not_found
            bias, out = shifted
            return _LayerNorm(weight, bias, _nice_float(eps), out)
        raise not_found

    def _over_last_axis(self, reduce_mean) -> bool:
        """Whether a ReduceMean averages over the last axis only, keeping dims (opset 14 or 18)."""
        axes = _attr(reduce_mean, "axes", None)
        if axes is None and _in(reduce_mean, 1):
            value = self.g.const(_in(reduce_mean, 1))
            axes = None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
        # A BERT hidden state is (batch, sequence, hidden): the last axis is -1 or 2.
        return axes is not None and list(axes) in ([-1], [2]) and _attr(reduce_mean, "keepdims", 1) == 1

    def _variance_eps(self, centred: str, std: str) -> float | None:
        """If `std` is Sqrt(ReduceMean(centred ** 2) + eps), return eps."""
        g = self.g
        sqrt = g.producer.get(std)
        if sqrt is None or sqrt.op_type != "Sqrt":
            return None
        add = g.producer.get(_in(sqrt, 0))
        if add is None or add.op_type != "Add" or len(add.input) != 2:
            return None
        for var, eps_name in (add.input, reversed(add.input)):
            eps = g.const(eps_name)
            mean = g.producer.get(var)
            if (eps is None or eps.size != 1 or mean is None or mean.op_type != "ReduceMean"
                    or not self._over_last_axis(mean)):
                continue
            square = g.producer.get(_in(mean, 0))
            if square is None:
                continue
            if square.op_type == "Pow":
                exponent = g.const(_in(square, 1)) if len(square.input) > 1 else None
                ok = (_in(square, 0) == centred and exponent is not None
                      and exponent.size == 1 and float(exponent.reshape(())) == 2.0)
            elif square.op_type == "Mul":
                ok = list(square.input) == [centred, centred]
            else:
                ok = False
            if ok:
                return float(eps.reshape(()))
        return None

    def _affine(self, x: str, op: str, what: str) -> tuple[np.ndarray, str] | None:
        for node, _ in self.g.users(x, op):
            other = self.g.other_input(node, x)
            if other is None:
                continue
            value = self.g.float_const(other, what)
            if value is not None:
                if value.size != self.hidden:
                    raise CheckpointError(
                        f"{self.g.path!r}: {what} {other!r} has {value.size} values, expected "
                        f"{self.hidden}; the export is inconsistent"
                    )
                return np.ascontiguousarray(value.reshape(self.hidden)), _out(node)
        return None

    # -- linear layers -----------------------------------------------------------------------

    def _linear_users(self, x: str, shape: tuple[int | None, int | None]) -> list[_Linear]:
        """Linear layers (MatMul/Gemm with a constant weight) applied directly to tensor `x`."""
        found = []
        for node, slot in self.g.users(x):
            if slot != 0 or node.op_type not in ("MatMul", "Gemm"):
                continue
            linear = self._linear(node)
            if linear is None:
                continue
            out_f, in_f = linear.weight.shape
            if (shape[0] is None or shape[0] == out_f) and (shape[1] is None or shape[1] == in_f):
                found.append(linear)
        return found

    def _linear(self, node) -> _Linear | None:
        g = self.g
        if len(node.input) < 2:
            return None
        raw = g.float_const(_in(node, 1), f"weight of {node.op_type} {node.name!r}")
        if raw is None or raw.ndim != 2:
            return None
        if node.op_type == "Gemm":
            if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0:
                raise CheckpointError(
                    f"{g.path!r}: Gemm {node.name!r} has transA/alpha set; a BERT linear layer "
                    f"exports as Gemm(x, W, b) with transA=0, alpha=1: {_HOW_TO_EXPORT}"
                )
            # transB=1 stores W as (out, in) already; transB=0 stores it (in, out).
            weight = raw if _attr(node, "transB", 0) else raw.T
            weight = np.ascontiguousarray(weight)
            out = _out(node)
            if len(node.input) > 2 and _in(node, 2):
                bias = g.float_const(_in(node, 2), f"bias of Gemm {node.name!r}")
                if bias is None or bias.size != weight.shape[0] or _attr(node, "beta", 1.0) != 1.0:
                    raise CheckpointError(
                        f"{g.path!r}: Gemm {node.name!r} has a bias that is not a constant of "
                        f"{weight.shape[0]} values with beta=1; the export is inconsistent"
                    )
                bias = np.ascontiguousarray(bias.reshape(-1))
            else:
                bias = np.zeros(weight.shape[0], np.float32)
            return _Linear(weight, bias, out, node)
        # MatMul(x, W) computes x @ W with W stored (in, out): the PyTorch weight is its transpose.
        weight = np.ascontiguousarray(raw.T)
        out = _out(node)
        bias = None
        for add, _ in g.users(out, "Add"):
            other = g.other_input(add, out)
            value = g.float_const(other, f"bias after {node.name!r}") if other else None
            if value is not None and value.size == weight.shape[0] and value.ndim <= 1:
                bias = np.ascontiguousarray(value.reshape(-1))
                out = _out(add)
                break
        if bias is None:
            # Exporters drop an all-zero bias Add; the layer still has a (zero) bias.
            bias = np.zeros(weight.shape[0], np.float32)
        return _Linear(weight, bias, out, node)

    def _store_linear(self, prefix: str, linear: _Linear) -> None:
        self.sd[f"{prefix}.weight"] = linear.weight
        self.sd[f"{prefix}.bias"] = linear.bias
        self.used_linears.add(id(linear.matmul))

    def _residual(self, y: str, residual: str, what: str) -> str:
        for add, _ in self.g.users(y, "Add"):
            if self.g.other_input(add, y) == residual:
                return _out(add)
        raise self.fail(f"{what}: the residual Add of {y!r} and {residual!r} was not found")

    # -- one encoder layer -------------------------------------------------------------------

    def _layer(self, i: int, x: str, projections: list[_Linear]):
        g = self.g
        where = f"encoder layer {i}"
        if len(projections) != 3:
            raise self.fail(
                f"{where}: expected three Q/K/V MatMuls ({self.hidden}x{self.hidden}) consuming "
                f"{x!r}, found {len(projections)}"
            )
        # Where each projection's activations first meet another MatMul, and at which operand.
        reach = [g.walk_to(p.out, {"MatMul", "Gemm"})[0] for p in projections]
        q = k = v = None
        scores = context = softmax_out = None
        for qi, q_hits in enumerate(reach):
            for node, slot in q_hits:
                if slot != 0:
                    continue
                for ki, k_hits in enumerate(reach):
                    if ki != qi and _reached(k_hits, node, 1):
                        scores, q, k = node, qi, ki
        if scores is None:
            raise self.fail(
                f"{where}: the attention scores MatMul (Q times K-transposed) was not found among "
                f"the MatMuls reached from the three projections of {x!r}"
            )
        hits, _ = g.walk_to(_out(scores), {"MatMul", "Gemm", "Softmax"})
        softmaxes = [n for n, _ in hits if n.op_type == "Softmax"]
        if len(softmaxes) != 1:
            raise self.fail(f"{where}: no Softmax follows the attention scores MatMul {scores.name!r}")
        softmax_out = _out(softmaxes[0])
        hits, _ = g.walk_to(softmax_out, {"MatMul", "Gemm"})
        contexts = [n for n, s in hits if s == 0 and n.op_type == "MatMul"]
        if len(contexts) != 1:
            raise self.fail(f"{where}: no MatMul applies the attention probabilities to V")
        context = contexts[0]
        remaining = [j for j in range(3) if j not in (q, k)]
        v = remaining[0]
        if not _reached(reach[v], context, 1):
            raise self.fail(
                f"{where}: the third projection does not feed the MatMul after Softmax as V"
            )
        n_heads = self._heads(projections[q].out, where)

        hits, _ = g.walk_to(_out(context), {"MatMul", "Gemm"})
        outs = [lin for node, slot in hits if slot == 0
                for lin in [self._linear(node)] if lin is not None]
        if len(outs) != 1 or outs[0].weight.shape != (self.hidden, self.hidden):
            raise self.fail(f"{where}: the attention output MatMul ({self.hidden}x{self.hidden}) "
                            f"after the attention context was not found")
        attn_out = outs[0]
        attn_res = self._residual(attn_out.out, x, f"{where} attention output")
        attn_ln = self._layer_norm(attn_res, f"{where} attention output LayerNorm")

        ffn_ins = self._linear_users(attn_ln.out, (None, self.hidden))
        if len(ffn_ins) != 1:
            raise self.fail(f"{where}: the FFN input MatMul consuming {attn_ln.out!r} was not found")
        ffn_in = ffn_ins[0]
        intermediate = ffn_in.weight.shape[0]
        hits, crossed = g.walk_to(ffn_in.out, {"MatMul", "Gemm"})
        ffn_outs = [lin for node, slot in hits if slot == 0
                    for lin in [self._linear(node)] if lin is not None]
        if len(ffn_outs) != 1 or ffn_outs[0].weight.shape != (self.hidden, intermediate):
            raise self.fail(f"{where}: the FFN output MatMul ({intermediate}->{self.hidden}) after "
                            f"the activation was not found")
        ffn_out = ffn_outs[0]
        act = self._activation(crossed, where)
        ffn_res = self._residual(ffn_out.out, attn_ln.out, f"{where} FFN output")
        out_ln = self._layer_norm(ffn_res, f"{where} output LayerNorm")

        prefix = f"encoder.layer.{i}"
        self._store_linear(f"{prefix}.attention.self.query", projections[q])
        self._store_linear(f"{prefix}.attention.self.key", projections[k])
        self._store_linear(f"{prefix}.attention.self.value", projections[v])
        self._store_linear(f"{prefix}.attention.output.dense", attn_out)
        self._store_ln(f"{prefix}.attention.output.LayerNorm", attn_ln)
        self._store_linear(f"{prefix}.intermediate.dense", ffn_in)
        self._store_linear(f"{prefix}.output.dense", ffn_out)
        self._store_ln(f"{prefix}.output.LayerNorm", out_ln)
        return out_ln.out, n_heads, intermediate, act

    def _activation(self, nodes: list, where: str) -> str:
        """Name the FFN activation from the nodes between the two FFN MatMuls.

        The whole subgraph must be one known pattern with its known constants, so a graph that
        computes something else is refused rather than read as GELU.
        """
        ops = sorted(n.op_type for n in nodes)
        consts = []
        for node in nodes:
            for name in node.input:
                value = self.g.const(name)
                if value is not None:
                    consts.append(float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
                                  if value.size == 1 else math.nan)

        def only(allowed: tuple[float, ...]) -> bool:
            return all(any(math.isclose(c, a, rel_tol=1e-6) for a in allowed) for c in consts)

        if ops == ["Gelu"]:
            mode = _attr(nodes[0], "approximate", "none")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            if mode in ("none", "tanh"):
                return "gelu_new" if mode == "tanh" else "gelu"
        if ops == ["Relu"]:
            return "relu"
        # 0.5 * x * (1 + erf(x / sqrt(2))), the division possibly as a product with 1/sqrt(2).
        erf_ops = {"Div", "Mul", "Erf", "Add"}
        if (ops.count("Erf") == 1 and set(ops) <= erf_ops and len(ops) == 5 and len(consts) == 3
                and only((math.sqrt(2.0), math.sqrt(0.5), 1.0, 0.5))):
            return "gelu"
        # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))
        tanh_ops = {"Pow", "Mul", "Add", "Tanh"}
        if (ops.count("Tanh") == 1 and set(ops) <= tanh_ops and 6 <= len(ops) <= 9
                and only((3.0, 0.044715, math.sqrt(2.0 / math.pi), 1.0, 0.5))):
            return "gelu_new"
        raise self.fail(
            f"{where}: the FFN activation was not recognised (ops between the two FFN MatMuls: "
            f"{ops}, constants {consts}; expected a Gelu node, the Erf GELU pattern, the Tanh GELU "
            f"pattern or Relu)"
        )

    def _heads(self, q_out: str, where: str) -> int | None:
        """Head count from the Reshape that splits Q into (batch, seq, heads, head_dim)."""
        hits, _ = self.g.walk_to(q_out, {"Reshape"})
        reshapes = [n for n, s in hits if s == 0]
        if not reshapes:
            return None
        dims = self._shape_tail(_in(reshapes[0], 1) if len(reshapes[0].input) > 1 else "")
        if dims is None:
            return None
        heads, head_dim = dims
        if head_dim is not None and head_dim > 0:
            if self.hidden % head_dim:
                raise CheckpointError(
                    f"{self.g.path!r}: {where} splits Q into heads of size {head_dim}, which does "
                    f"not divide the hidden size {self.hidden}; the export is inconsistent"
                )
            if heads is not None and heads > 0 and heads * head_dim != self.hidden:
                raise CheckpointError(
                    f"{self.g.path!r}: {where} splits Q into {heads} heads of {head_dim}, which "
                    f"does not give the hidden size {self.hidden}; the export is inconsistent"
                )
            return self.hidden // head_dim
        if heads is not None and heads > 0 and self.hidden % heads == 0:
            return heads
        return None

    def _shape_tail(self, shape: str) -> tuple[int | None, int | None] | None:
        """The last two entries of a Reshape target shape, where they are constants."""
        value = self.g.const(shape)
        if value is not None:
            flat = [int(v) for v in np.asarray(value).reshape(-1)]
            return (flat[-2], flat[-1]) if len(flat) >= 2 else None
        node = self.g.producer.get(shape)
        if node is None or node.op_type != "Concat" or _attr(node, "axis", 0) not in (0, -1):
            return None
        tail: list[int | None] = []
        for name in reversed(list(node.input)):
            piece = self.g.const(name)
            if piece is None:
                tail.insert(0, None)  # a runtime dimension (batch or sequence length)
            else:
                tail[:0] = [int(v) for v in np.asarray(piece).reshape(-1)]
            if len(tail) >= 2:
                break
        if len(tail) < 2:
            return None
        return tail[-2], tail[-1]

    def _check_nothing_skipped(self, last_hidden: str) -> None:
        """Refuse graphs with weight MatMuls the walk did not account for.

        Everything after the last hidden state (pooler, task heads, pooling) may stay unread, but a
        weight MatMul before it, or an attention block (Softmax feeding a MatMul) after it, means
        the walk stopped early at a layer it could not follow, and the recovered model would be
        silently shorter than the exported one.
        """
        downstream: set[int] = set()
        queue = deque([last_hidden])
        seen = {last_hidden}
        while queue:
            for node, _ in self.g.users(queue.popleft()):
                if id(node) in downstream:
                    continue
                downstream.add(id(node))
                for out in node.output:
                    if out and out not in seen:
                        seen.add(out)
                        queue.append(out)
        for node in self.g.nodes:
            if node.op_type == "Softmax" and id(node) in downstream:
                hits, _ = self.g.walk_to(_out(node), {"MatMul"}, strict=False)
                if any(slot == 0 for _, slot in hits):
                    raise self.fail(
                        f"an attention block (Softmax {node.name!r} feeding a MatMul) follows the "
                        f"last recognised encoder layer output {last_hidden!r}; the layer after "
                        f"it could not be followed, so the encoder would be read short"
                    )
            if node.op_type not in ("MatMul", "Gemm") or id(node) in self.used_linears:
                continue
            if id(node) in downstream:
                continue
            weight = self.g.const(_in(node, 1))
            if weight is not None and weight.ndim == 2:
                raise self.fail(
                    f"{node.op_type} {node.name!r} with a constant {tuple(weight.shape)} weight lies "
                    f"before the last hidden state {last_hidden!r} but is not part of any "
                    f"recognised embedding/attention/FFN pattern; the encoder has parts this "
                    f"reader could not follow"
                )

    # -- pooler ------------------------------------------------------------------------------

    def _pooler(self, x: str) -> None:
        hits, _ = self.g.walk_to(x, {"MatMul", "Gemm"}, strict=False)
        for node, slot in hits:
            if slot != 0:
                continue
            linear = self._linear(node)
            if linear is None or linear.weight.shape != (self.hidden, self.hidden):
                continue
            if not self.g.users(linear.out, "Tanh"):
                continue
            self._store_linear("pooler.dense", linear)
            return
