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
`onnx_graph` (the graph index, constants and no-op bypass) and this module (the BERT walker), which
matches with `onnx_patterns` and leaves the embeddings, from the `input_ids` Gather to their
LayerNorm, to `onnx_embeddings`; this module walks the layers and the pooler from there, checks
that nothing was skipped and assembles the config. Int8 exports are first turned back into their
float graph by `onnx_quant`, which keeps the exact codes and scales aside (`OnnxCheckpoint.int8`).

What this module deliberately leaves out: graphs rewritten by onnxruntime's transformer optimizer
(fused Attention, SkipLayerNormalization, EmbedLayerNormalization, FastGelu), quantized patterns
`onnx_quant` does not know, and task heads (see `onnx_heads`). They raise `CheckpointError`
instead of yielding a partial model.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque

import numpy as np

from ..errors import CheckpointError
from ..weights import Int8Weight
from .onnx_embeddings import read_embeddings
from .onnx_graph import _HOW_TO_EXPORT, _Graph, _in, _out, _reached
from .onnx_patterns import MatchedLayerNorm, MatchedLinear, Patterns
from .onnx_quant import activation_quantization, dequantize_graph, is_quantized
from .onnx_tensors import _parse_model, _tensor_to_array

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
    # The parsed, indexed graph, for the task-head reader (onnx_heads) to match on without re-parsing.
    graph: _Graph | None = dataclasses.field(default=None, repr=False, compare=False)


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
    return dataclasses.replace(ckpt, graph=graph)


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


class _BertWalker(Patterns):
    """Walks one graph from the word-embedding Gather to the pooler, collecting weights."""

    def __init__(self, graph: _Graph):
        super().__init__(graph, 0)
        self.sd: dict[str, np.ndarray] = {}
        self.eps: list[tuple[str, float]] = []
        self.used_linears: set[int] = set()

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
            projections = self.linear_users(x, (self.hidden, self.hidden))
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

    # -- embeddings (onnx_embeddings) -------------------------------------------------------

    def _embeddings(self, config: dict) -> str:
        emb = read_embeddings(self.g)
        self.hidden = emb.hidden
        self.sd.update(emb.tables)
        config.update(emb.config)
        self._store_ln("embeddings.LayerNorm", emb.layer_norm)
        return emb.layer_norm.out

    # -- LayerNorm ---------------------------------------------------------------------------

    def _store_ln(self, prefix: str, ln: MatchedLayerNorm) -> None:
        self.sd[f"{prefix}.weight"] = ln.weight
        self.sd[f"{prefix}.bias"] = ln.bias
        self.eps.append((prefix, ln.eps))

    def _store_linear(self, prefix: str, linear: MatchedLinear) -> None:
        self.sd[f"{prefix}.weight"] = linear.weight
        self.sd[f"{prefix}.bias"] = linear.bias
        self.used_linears.add(id(linear.matmul))

    def _residual(self, y: str, residual: str, what: str) -> str:
        for add, _ in self.g.users(y, "Add"):
            if self.g.other_input(add, y) == residual:
                return _out(add)
        raise self.fail(f"{what}: the residual Add of {y!r} and {residual!r} was not found")

    # -- one encoder layer -------------------------------------------------------------------

    def _layer(self, i: int, x: str, projections: list[MatchedLinear]):
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
        n_heads = self.heads(projections[q].out, where)

        hits, _ = g.walk_to(_out(context), {"MatMul", "Gemm"})
        outs = [lin for node, slot in hits if slot == 0
                for lin in [self.linear(node)] if lin is not None]
        if len(outs) != 1 or outs[0].weight.shape != (self.hidden, self.hidden):
            raise self.fail(f"{where}: the attention output MatMul ({self.hidden}x{self.hidden}) "
                            f"after the attention context was not found")
        attn_out = outs[0]
        attn_res = self._residual(attn_out.out, x, f"{where} attention output")
        attn_ln = self.layer_norm(attn_res, f"{where} attention output LayerNorm")

        ffn_ins = self.linear_users(attn_ln.out, (None, self.hidden))
        if len(ffn_ins) != 1:
            raise self.fail(f"{where}: the FFN input MatMul consuming {attn_ln.out!r} was not found")
        ffn_in = ffn_ins[0]
        intermediate = ffn_in.weight.shape[0]
        hits, crossed = g.walk_to(ffn_in.out, {"MatMul", "Gemm"})
        ffn_outs = [lin for node, slot in hits if slot == 0
                    for lin in [self.linear(node)] if lin is not None]
        if len(ffn_outs) != 1 or ffn_outs[0].weight.shape != (self.hidden, intermediate):
            raise self.fail(f"{where}: the FFN output MatMul ({intermediate}->{self.hidden}) after "
                            f"the activation was not found")
        ffn_out = ffn_outs[0]
        act = self.activation(crossed, where)
        ffn_res = self._residual(ffn_out.out, attn_ln.out, f"{where} FFN output")
        out_ln = self.layer_norm(ffn_res, f"{where} output LayerNorm")

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
            linear = self.linear(node)
            if linear is None or linear.weight.shape != (self.hidden, self.hidden):
                continue
            if not self.g.users(linear.out, "Tanh"):
                continue
            self._store_linear("pooler.dense", linear)
            return
