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
A biasless Gemm/MatMul (exporters drop all-zero biases) gets an explicit zero bias.

The reader is three stages, one module each: `onnx_tensors` (protobuf and tensor decoding,
external `.onnx.data` with every location checked to stay inside the model's folder),
`onnx_graph` (the graph index, constants and no-op bypass) and this module (the BERT walker).
Int8 exports are first turned back into their float graph by `onnx_quant`, which keeps the exact
codes and scales aside (`OnnxCheckpoint.int8`).

What this module deliberately leaves out: graphs rewritten by onnxruntime's transformer optimizer
(fused Attention, SkipLayerNormalization, EmbedLayerNormalization, FastGelu), quantized patterns
`onnx_quant` does not know, and task heads (see `onnx_heads`). They raise `CheckpointError` instead of yielding a partial model.
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
from .onnx_graph import (  # noqa: F401  (_parse_model, _Graph, _in, _out: onnx_heads)
    _HOW_TO_EXPORT, _MAX_WALK, _Graph, _attr, _in, _nice_float, _out, _reached)
from ..weights import Int8Weight
from .onnx_quant import activation_quantization, dequantize_graph, is_quantized
from .onnx_tensors import _parse_model, _tensor_to_array  # noqa: F401

# onnx is a hard dependency (pyproject) but imported lazily so `import sparsebert` stays cheap.


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
    int8, activations = {}, "float"
    if is_quantized(model):  # int8 weights back to float for the walk; exact codes kept aside
        base = os.path.dirname(os.path.abspath(path))
        activations = activation_quantization(model)
        int8 = dequantize_graph(model, lambda t: _tensor_to_array(t, base, path))
    graph = _Graph(model, path)
    ckpt = _BertWalker(graph).read()
    if int8:
        ckpt = dataclasses.replace(ckpt, int8=_int8_by_name(ckpt.state_dict, int8, activations))
    return ckpt


def _int8_by_name(state_dict, int8, activations: str) -> dict:
    """{linear name: Int8Weight (codes (out, in), scale (out,))} for the walker's weights that came
    from int8 codes: matched by value, since the walker stores each weight transposed to (out, in).
    This stays inside the reader: below the loaders every int8 weight travels by name."""
    by_bytes = {np.ascontiguousarray(codes.astype(np.float32) * scale[None, :]).T.tobytes(): (codes, scale)
                for codes, scale in int8.values()}
    out = {}
    for name, w in state_dict.items():
        if name.endswith(".weight") and w.ndim == 2:
            hit = by_bytes.get(np.ascontiguousarray(w).tobytes())
            if hit is not None:
                out[name[: -len(".weight")]] = Int8Weight(np.ascontiguousarray(hit[0].T),
                                                          hit[1].astype(np.float32), None, activations)
    return out


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
