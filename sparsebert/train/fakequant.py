"""int8-aware training: encoder linears run fake-quantized as `sparsebert quantize` will run them.

`sparsebert quantize` (without --calibration; see sparsebert/quant/linear.py and kernels/int8.py)
turns every encoder linear y = x W^T + b into

    W (N, K)  -> codes = clip(rint(W / s_w), -127, 127), s_w[n] = max_k |W[n, k]| / 127
    x (.., K) -> codes = clip(rint(x * (1 / s_x)), -127, 127), s_x = max_k |x[.., k]| / 127 per token

(symmetric, no zero point, ties to even; an all-zero row or token gets scale 0 and zero codes), with
the attention products, LayerNorms, GELU, pooler and task head left in float. `install` replaces
the forward of each encoder linear (query, key, value, attn_out, ffn_in, ffn_out of every layer,
whatever the recipe prunes) by the same arithmetic in float: dequantized weights and activations,
so the training loss sees the rounding the int8 runtime will make. Gradients pass straight through
the rounding (Bengio et al. 2013; Jacob et al. 2018): the forward value is the quantized one, the
gradient that of the identity. Nothing is stored: the parameters stay float (exact zeros stay
zero, since rint(0) = 0), the state dict keeps its names, and `remove` restores the plain forward.

Left out: SmoothQuant factors (`quantize --calibration` moves outliers into the weights; a model
trained here is quantized without them), learned scales (LSQ), int8 attention products.
"""

from __future__ import annotations

import types

QMAX = 127.0
LINEAR_NAMES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")


def quantize_weight(w):
    """(N, K) float -> dequantized per-output-channel int8 weight, straight-through gradient."""
    import torch

    with torch.no_grad():
        scale = w.abs().amax(dim=1, keepdim=True) / QMAX
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(w / safe), -QMAX, QMAX) * scale
    return q + (w - w.detach())


def quantize_tokens(x):
    """(..., K) float -> dequantized per-token int8 activations, straight-through gradient."""
    import torch

    with torch.no_grad():
        scale = x.abs().amax(dim=-1, keepdim=True) / QMAX
        inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
        q = torch.clamp(torch.round(x * inv), -QMAX, QMAX) * scale
    return q + (x - x.detach())


def _forward(self, x):
    import torch.nn.functional as F

    return F.linear(quantize_tokens(x), quantize_weight(self.weight), self.bias)


def encoder_linear_modules(model) -> dict:
    """{module name: nn.Linear} of every encoder linear the int8 runtime quantizes."""
    from .distill import encoder_linears

    names = encoder_linears(model, LINEAR_NAMES)
    return {n[: -len(".weight")]: model.get_submodule(n[: -len(".weight")]) for n in names}


def install(model) -> list:
    """Fake-quantize the encoder linears of `model` in place; returns the modules, for `remove`."""
    modules = list(encoder_linear_modules(model).values())
    for m in modules:
        m.forward = types.MethodType(_forward, m)
    return modules


def remove(modules) -> None:
    for m in modules:
        if "forward" in m.__dict__:
            del m.forward
