"""Pattern matchers on a parsed ONNX graph: the pieces a BERT export is made of.

Each matcher recognises one exported form and returns its weights in PyTorch orientation, or None
(or a CheckpointError naming the node) when the graph holds something else:
- `linear(node)`: MatMul(+Add bias) or Gemm (transB honoured; transA and alpha refused), weights
  (out, in); a dropped all-zero bias comes back as zeros; `linear_users(x, shape)` finds them on x;
- `layer_norm(x)`: one LayerNormalization node, or the opset-14 decomposition (ReduceMean, Sub, Pow,
  ReduceMean, Add eps, Sqrt, Div, Mul, Add);
- `activation(nodes)`: GELU (Gelu node, erf or tanh decomposition) or ReLU between two linears;
- `heads(q_out)`: the attention head count from the reshape of a Q projection.

They are stateless apart from the graph and the hidden width they check against; the BERT walker
(`onnx_reader`, with its embeddings stage `onnx_embeddings`) and the task-head reader (`onnx_heads`)
all use them on the same parsed graph.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..errors import CheckpointError
from .onnx_graph import _HOW_TO_EXPORT, _Graph, _attr, _in, _nice_float, _out


@dataclasses.dataclass
class MatchedLinear:
    weight: np.ndarray  # (out, in), PyTorch orientation
    bias: np.ndarray  # (out,)
    out: str  # output tensor name (after the bias, if any)
    matmul: object  # the MatMul or Gemm node


@dataclasses.dataclass
class MatchedLayerNorm:
    weight: np.ndarray
    bias: np.ndarray
    eps: float
    out: str


class Patterns:
    """The matchers over one graph; `hidden` is the model width they check shapes against."""

    def __init__(self, graph: _Graph, hidden: int):
        self.g = graph
        self.hidden = hidden

    def fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"{self.g.path!r} is not a BERT encoder export: {what}. To fix: "
                               f"{_HOW_TO_EXPORT}")

    def ln_param(self, name: str, what: str) -> np.ndarray:
        value = self.g.float_const(name, what)
        if value is None or value.size != self.hidden:
            shape = None if value is None else value.shape
            raise CheckpointError(
                f"{self.g.path!r}: {what} {name!r} is not a constant of {self.hidden} values "
                f"(got shape {shape}); the export is inconsistent"
            )
        return np.ascontiguousarray(value.reshape(self.hidden))

    def layer_norm(self, x: str, what: str) -> MatchedLayerNorm:
        fused = self.g.users(x, "LayerNormalization")
        if fused:
            node, slot = fused[0]
            axis = _attr(node, "axis", -1)
            if slot != 0 or axis not in (-1, 2) or len(node.input) < 2:
                raise self.fail(f"{what}: LayerNormalization {node.name!r} does not normalise the "
                                f"last axis of {x!r} (axis={axis})")
            weight = self.ln_param(_in(node, 1), f"{what} weight")
            if len(node.input) > 2 and _in(node, 2):
                bias = self.ln_param(_in(node, 2), f"{what} bias")
            else:
                bias = np.zeros(self.hidden, np.float32)
            eps = _nice_float(_attr(node, "epsilon", 1e-5))
            return MatchedLayerNorm(weight, bias, eps, _out(node))
        return self.decomposed_layer_norm(x, what)

    def decomposed_layer_norm(self, x: str, what: str) -> MatchedLayerNorm:
        g = self.g
        not_found = self.fail(
            f"{what} was not found after {x!r} (expected a LayerNormalization node, or ReduceMean, "
            f"Sub, Pow, ReduceMean, Add eps, Sqrt, Div, Mul weight, Add bias)"
        )
        means = {_out(n) for n, s in g.users(x, "ReduceMean") if s == 0 and self.over_last_axis(n)}
        subs = [n for n, s in g.users(x, "Sub") if s == 0 and _in(n, 1) in means]
        if len(subs) != 1:
            raise not_found
        centred = _out(subs[0])
        for div, slot in g.users(centred, "Div"):
            if slot != 0:
                continue
            eps = self.variance_eps(centred, _in(div, 1))
            if eps is None:
                continue
            scaled = self.affine(_out(div), "Mul", f"{what} weight")
            if scaled is None:
                raise not_found
            weight, after_mul = scaled
            shifted = self.affine(after_mul, "Add", f"{what} bias")
            if shifted is None:
                raise not_found
            bias, out = shifted
            return MatchedLayerNorm(weight, bias, _nice_float(eps), out)
        raise not_found

    def over_last_axis(self, reduce_mean) -> bool:
        """Whether a ReduceMean averages over the last axis only, keeping dims (opset 14 or 18)."""
        axes = _attr(reduce_mean, "axes", None)
        if axes is None and _in(reduce_mean, 1):
            value = self.g.const(_in(reduce_mean, 1))
            axes = None if value is None else [int(a) for a in np.asarray(value).reshape(-1)]
        # A BERT hidden state is (batch, sequence, hidden): the last axis is -1 or 2.
        return axes is not None and list(axes) in ([-1], [2]) and _attr(reduce_mean, "keepdims", 1) == 1

    def variance_eps(self, centred: str, std: str) -> float | None:
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
                    or not self.over_last_axis(mean)):
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

    def affine(self, x: str, op: str, what: str) -> tuple[np.ndarray, str] | None:
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

    def linear_users(self, x: str, shape: tuple[int | None, int | None]) -> list[MatchedLinear]:
        """Linear layers (MatMul/Gemm with a constant weight) applied directly to tensor `x`."""
        found = []
        for node, slot in self.g.users(x):
            if slot != 0 or node.op_type not in ("MatMul", "Gemm"):
                continue
            linear = self.linear(node)
            if linear is None:
                continue
            out_f, in_f = linear.weight.shape
            if (shape[0] is None or shape[0] == out_f) and (shape[1] is None or shape[1] == in_f):
                found.append(linear)
        return found

    def linear(self, node) -> MatchedLinear | None:
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
            return MatchedLinear(weight, bias, out, node)
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
        return MatchedLinear(weight, bias, out, node)

    def activation(self, nodes: list, where: str) -> str:
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

    def heads(self, q_out: str, where: str) -> int | None:
        """Head count from the Reshape that splits Q into (batch, seq, heads, head_dim)."""
        hits, _ = self.g.walk_to(q_out, {"Reshape"})
        reshapes = [n for n, s in hits if s == 0]
        if not reshapes:
            return None
        dims = self.shape_tail(_in(reshapes[0], 1) if len(reshapes[0].input) > 1 else "")
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

    def shape_tail(self, shape: str) -> tuple[int | None, int | None] | None:
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
