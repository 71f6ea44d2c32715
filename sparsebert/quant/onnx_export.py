"""QDQ ONNX export of a quantized folder, so ONNX Runtime can run the same int8 model.

The float graph comes from `sparsebert.export` (torch legacy exporter, opset 17; needs the `[dev]`
extra) run on the dequantized weights; then every encoder MatMul is rewritten:

    weight:      int8 codes (in, out) -> DequantizeLinear(scale (out,), axis=1)
    activation:  X -> Z = X * (1 / smooth)            (only for SmoothQuant-calibrated folders)
                 s = ReduceMax(|Z|, last axis) / 127,  q = Clip(Round(Z * (1 / s)), -127, 127)
                 (1 / s replaced by 0 where s = 0),    Zq = q * s
    MatMul(Zq, dequantized weight)

which is the arithmetic of `kernels/int8.py` written with standard ONNX operators: the weights are
true QDQ int8 initializers; the per-token activation quantization, which QuantizeLinear cannot
express with a runtime per-row scale, is the same rounding in float ops. With basic graph
optimizations ONNX Runtime computes the file as written, in float32: the accuracy reference
(tests/test_quant.py). Its extended optimizations (the default) rewrite each DequantizeLinear ->
MatMul pair into MatMulNBits (8-bit weights), its own int8 kernel: that is ONNX Runtime's int8
speed on this file, with its own activation rounding.
Encoder MatMuls are found by their weight initializer's values (the float export stores W.T).

Left out: the pooler and task heads stay float; no static QuantizeLinear graph.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..errors import CheckpointError


def export_qdq(folder, out_path) -> Path:
    """Write the QDQ ONNX of the quantized `folder` to `out_path`; returns the path."""
    import onnx
    from onnx import helper, numpy_helper
    from safetensors.numpy import save_file

    from ..export import export_bert_onnx
    from ..loaders import read_checkpoint

    folder, out_path = Path(folder), Path(out_path)
    ckpt = read_checkpoint(folder)
    if ckpt.kind != "safetensors" or not ckpt.int8:
        raise CheckpointError(f"{str(folder)!r} is not a quantized folder (no quantization section)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_file({k: np.ascontiguousarray(v) for k, v in ckpt.state_dict.items()
                   if v.dtype.kind == "f" and not k.startswith(("classifier.", "qa_outputs.", "cls."))},
                  str(tmp / "model.safetensors"))
        cfg = ckpt.config.to_dict()
        cfg["architectures"] = ["BertModel"]
        (tmp / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        export_bert_onnx(tmp, tmp / "model.onnx", flavour="legacy17")
        model = onnx.load(str(tmp / "model.onnx"))

    by_bytes = {}
    for name in ckpt.int8:
        w = ckpt.state_dict[name + ".weight"]
        by_bytes[np.ascontiguousarray(w.T).tobytes()] = name
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes, rewritten = [], 0
    f127 = numpy_helper.from_array(np.array(127.0, np.float32), "qdq_127")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "qdq_zero")
    lo = numpy_helper.from_array(np.array(-127.0, np.float32), "qdq_lo")
    graph.initializer.extend([f127, zero, lo])
    for node in graph.node:
        init = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        name = by_bytes.get(numpy_helper.to_array(init).astype(np.float32).tobytes()) if init is not None else None
        if name is None:
            new_nodes.append(node)
            continue
        p = f"qdq{rewritten}"
        codes, scale, smooth = ckpt.int8[name].codes, ckpt.int8[name].scale, ckpt.int8[name].smooth
        graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(codes.T), f"{p}_w_int8"),
            numpy_helper.from_array(scale, f"{p}_w_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{p}_w_zero"),
        ])
        x = node.input[0]
        if smooth is not None:
            graph.initializer.append(numpy_helper.from_array(
                (np.float32(1.0) / smooth).astype(np.float32), f"{p}_inv_smooth"))
            new_nodes.append(helper.make_node("Mul", [x, f"{p}_inv_smooth"], [f"{p}_z"]))
            x = f"{p}_z"
        new_nodes += [
            helper.make_node("DequantizeLinear", [f"{p}_w_int8", f"{p}_w_scale", f"{p}_w_zero"],
                             [f"{p}_w"], axis=1),
            helper.make_node("Abs", [x], [f"{p}_abs"]),
            helper.make_node("ReduceMax", [f"{p}_abs"], [f"{p}_amax"], axes=[-1], keepdims=1),
            helper.make_node("Div", [f"{p}_amax", "qdq_127"], [f"{p}_s"]),
            helper.make_node("Greater", [f"{p}_s", "qdq_zero"], [f"{p}_pos"]),
            helper.make_node("Reciprocal", [f"{p}_s"], [f"{p}_rs"]),
            helper.make_node("Where", [f"{p}_pos", f"{p}_rs", "qdq_zero"], [f"{p}_inv"]),
            helper.make_node("Mul", [x, f"{p}_inv"], [f"{p}_xs"]),
            helper.make_node("Round", [f"{p}_xs"], [f"{p}_r"]),
            helper.make_node("Clip", [f"{p}_r", "qdq_lo", "qdq_127"], [f"{p}_q"]),
            helper.make_node("Mul", [f"{p}_q", f"{p}_s"], [f"{p}_xq"]),
            helper.make_node("MatMul", [f"{p}_xq", f"{p}_w"], list(node.output), name=node.name),
        ]
        rewritten += 1
    if rewritten != len(ckpt.int8):
        raise CheckpointError(f"found {rewritten} of {len(ckpt.int8)} encoder MatMuls in the float export")
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    onnx.checker.check_model(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_path))
    return out_path
