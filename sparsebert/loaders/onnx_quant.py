"""Quantized ONNX exports: turn their int8 weights back into the float graph the BERT walker reads,
keeping the exact int8 codes and scales for sparsebert's int8 linears.

Forms understood (what onnxruntime.quantization and weight-only exporters write):
- QDQ: weight `DequantizeLinear(int8 initializer, scale, zero point 0, axis)` feeding MatMul, and
  activation `QuantizeLinear -> DequantizeLinear` pairs (static scales) in front of it;
- dynamic (`quantize_dynamic`): `DynamicQuantizeLinear(x)` -> `MatMulInteger(x_q, W int8, x_zp)`
  -> `Cast(float)` -> `Mul(., Mul(x_scale, w_scale))`;
- weight-only: `Cast(int8 initializer -> float) -> Mul(scale)` with a scalar, per-column or per-row
  scale, or a DequantizeLinear of an int8 initializer as above.

Each weight becomes a float initializer holding exactly what the graph computes, codes * scale in
float32 (so the walker and every shape check run unchanged), and the codes and scales of weights
quantized per output channel or per tensor (in the (in, out) layout of exports: per column) are
returned, keyed by that initializer's name, for `sparsebert.quant` to rebuild bit-identical int8
linears. Activation quantization is dropped: sparsebert quantizes activations per token at run
time instead of the file's static per-tensor scales (ORT's dynamic form is per tensor too), so
outputs differ from ONNX Runtime's by int8 rounding, not by weights.

Refused, naming the node: nonzero or uint8 weight zero points (asymmetric weights), blocked
quantization, int4 and other weight types, MatMulInteger with a non-constant or non-int8 weight,
and patterns other than those above. Per-row (per input channel) weight scales are read exactly as
float weights, which then run in FP32.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..errors import CheckpointError

QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger"}
_FLOAT = 1  # onnx.TensorProto.FLOAT


def is_quantized(model) -> bool:
    """Quantization nodes, or a Cast of an int8 initializer (weight-only exports)."""
    int8 = {t.name for t in model.graph.initializer if t.data_type == 3}  # TensorProto.INT8
    return any(n.op_type in QUANT_OPS or (n.op_type == "Cast" and n.input and n.input[0] in int8)
               for n in model.graph.node)


def activation_quantization(model) -> str:
    """"per-token" when the graph quantizes activations (QDQ pairs, DynamicQuantizeLinear): the
    file is w8a8, and sparsebert's int8 linears quantize activations per token instead; "float" for
    a weight-only export, whose activations stay float (Cast + Mul or DequantizeLinear of weights
    only), so the model runs the float weights it computes."""
    quantizes = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger"}
    return "per-token" if any(n.op_type in quantizes for n in model.graph.node) else "float"


def dequantize_graph(model, to_array) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Rewrite `model` (an onnx ModelProto, in place) into its float equivalent; `to_array(tensor)`
    decodes an initializer (external data included). Returns {float initializer name: (codes int8
    (in, out), scale float32 (out,))} for weights with per-output-channel or per-tensor scales."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consts = {}
    producers = {o: n for n in g.node for o in n.output}
    users = defaultdict(list)
    for n in g.node:
        for i in n.input:
            users[i].append(n)
    removed, rename, added, table, replacements = set(), {}, [], {}, {}

    def const(name):
        if name not in consts:
            consts[name] = to_array(inits[name]) if name in inits else None
        return consts[name]

    def fail(node, why):
        return CheckpointError(f"quantized ONNX node {node.name or node.op_type!r} ({node.op_type}): {why}; "
                               "sparsebert reads symmetric int8 weights (QDQ, dynamic MatMulInteger, "
                               "weight-only DequantizeLinear or Cast + Mul)")

    def weight(node, codes, scale, zero, axis):
        if codes is None or codes.dtype != np.int8 or codes.ndim != 2:
            raise fail(node, f"weight must be a 2-D int8 initializer, got "
                             f"{None if codes is None else (codes.dtype, codes.shape)}")
        if scale is None or not np.issubdtype(scale.dtype, np.floating):
            raise fail(node, "scale must be a float initializer")
        if zero is not None and (zero.dtype != np.int8 or zero.any()):
            raise fail(node, f"weight zero point must be int8 zeros (symmetric), got {zero.dtype} "
                             f"max {int(np.abs(zero).max()) if zero.size else 0}")
        K, N = codes.shape
        scale = scale.astype(np.float32)
        if scale.size == 1:
            per_out, full = np.full(N, scale.reshape(()), np.float32), scale.reshape(1, 1)
        elif axis in (1, -1) and scale.size == N:
            per_out, full = scale.reshape(N), scale.reshape(1, N)
        elif axis in (0, -2) and scale.size == K:
            per_out, full = None, scale.reshape(K, 1)
        else:
            raise fail(node, f"scale of shape {scale.shape} fits neither per tensor, per column "
                             f"({N}) nor per row ({K}) of the {codes.shape} weight")
        return codes.astype(np.float32) * full, per_out

    def replace_with_initializer(name, value, codes, per_out):
        added.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        if per_out is not None:
            table[name] = (codes, per_out)

    for node in g.node:
        if node.op_type == "DequantizeLinear":
            if any(a.name == "block_size" and a.i for a in node.attribute):
                raise fail(node, "blocked quantization is not supported")
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            src = node.input[0]
            if src in inits:
                zero = const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
                value, per_out = weight(node, const(src), const(node.input[1]), zero, axis)
                replace_with_initializer(node.output[0], value, const(src), per_out)
                removed.add(id(node))
            else:
                q = producers.get(src)
                if q is None or q.op_type != "QuantizeLinear":
                    raise fail(node, "an activation DequantizeLinear must follow a QuantizeLinear")
                rename[node.output[0]] = q.input[0]
                removed.add(id(node))
        elif node.op_type == "Cast" and node.input[0] in inits and const(node.input[0]).dtype == np.int8:
            mul = users[node.output[0]]
            if len(mul) != 1 or mul[0].op_type != "Mul":
                raise fail(node, "an int8 weight cast to float must feed one Mul by its scale")
            mul = mul[0]
            other = mul.input[1] if mul.input[0] == node.output[0] else mul.input[0]
            codes, scale = const(node.input[0]), const(other)
            axis = 1 if scale is not None and scale.ndim >= 1 and scale.shape[-1] == codes.shape[-1] \
                and scale.size > 1 else 0
            value, per_out = weight(mul, codes, scale, None, axis)
            replace_with_initializer(mul.output[0], value, codes, per_out)
            removed.update((id(node), id(mul)))
        elif node.op_type == "MatMulInteger":
            dql = producers.get(node.input[0])
            if dql is None or dql.op_type != "DynamicQuantizeLinear":
                raise fail(node, "its activation input must come from DynamicQuantizeLinear")
            if node.input[1] not in inits:
                raise fail(node, "its weight must be a constant (attention matmuls stay float)")
            cast = users[node.output[0]]
            if len(cast) != 1 or cast[0].op_type != "Cast":
                raise fail(node, "its int32 output must feed one Cast to float")
            cast = cast[0]
            final = users[cast.output[0]]
            if len(final) != 1 or final[0].op_type != "Mul":
                raise fail(node, "the float product must be scaled by one Mul")
            final = final[0]
            sname = final.input[1] if final.input[0] == cast.output[0] else final.input[0]
            smul = producers.get(sname)
            if smul is None or smul.op_type != "Mul" or dql.output[1] not in smul.input:
                raise fail(node, "the scale must be Mul(activation scale, weight scale)")
            wscale = const(smul.input[1] if smul.input[0] == dql.output[1] else smul.input[0])
            wzero = const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            codes = const(node.input[1])
            value, per_out = weight(node, codes, wscale, wzero, 1)
            wname = node.input[1] + "_sparsebert_float"
            replace_with_initializer(wname, value, codes, per_out)
            replacements[id(final)] = helper.make_node(
                "MatMul", [dql.input[0], wname], [final.output[0]], name=node.name + "_float")
            removed.update((id(node), id(cast)))
    return _finish(model, removed, rename, added, table, replacements)


def _finish(model, removed, rename, added, table, replacements):
    g = model.graph
    keep = []
    for n in g.node:
        if id(n) in replacements:
            keep.append(replacements[id(n)])
        elif id(n) not in removed:
            keep.append(n)
    for n in keep:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    for o in g.output:
        if o.name in rename:
            raise CheckpointError(f"graph output {o.name!r} is a quantized activation; not a BERT export")
    # Drop nodes nothing reads any more (the activation QuantizeLinear / DynamicQuantizeLinear /
    # scale Mul of rewritten pairs), repeatedly, keeping everything the graph outputs need.
    needed = {o.name for o in g.output}
    live = []
    for n in reversed(keep):
        if any(o in needed for o in n.output):
            live.append(n)
            needed.update(n.input)
    live.reverse()
    del g.node[:]
    g.node.extend(live)
    g.initializer.extend(added)
    for n in live:
        if n.op_type in QUANT_OPS:
            raise CheckpointError(
                f"quantized ONNX node {n.name or n.op_type!r} ({n.op_type}) is in a pattern sparsebert "
                "does not read; supported: QDQ around MatMul weights, quantize_dynamic's "
                "MatMulInteger, weight-only DequantizeLinear or Cast + Mul")
    return table
