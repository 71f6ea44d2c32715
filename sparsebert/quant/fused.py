"""The int8 feed-forward block (and the layer tail after attention) as one call per token tile:
`FusedInt8FFN`, a `sparsebert.ffn.FusedPair` over the int8 kernel (the model tries
`sparsebert.ffn.fuse_ffn`, then `fuse_ffn8`).

`fuse_ffn8(ffn_in, ffn_out, activation)` returns one, or None when the pair does not qualify.
Both linears must run a VNNI kind the fused kernel has (`fusable8`: gemm, bsr1x4 or gather); the
kernel (`kernels/ffn_int8.py`) keeps the intermediate and its int8 codes in the task's cache and
gives the unfused calls' outputs bit for bit. Where fusing does not pay (`sparsebert.ffn.
worth_fusing`) the calls run separately (`FusedPair`'s fallbacks).

Left out: "amx", "vnni" and the portable int8 kinds (those pairs keep the separate calls).
"""

from __future__ import annotations

import numpy as np

from ..ffn import FusedPair, checked_layer_inputs
from .linear import Int8Linear

_FUSED_FORMATS = {"int8-gemm": 0, "int8-bsr1x4": 1, "int8-gather": 2}
_VNNI_FORMATS = ("int8-gemm", "int8-bsr1x4", "int8-vnni", "int8-amx", "int8-gather")
_NO_G = np.zeros(1, dtype=np.uint16)
_NO_P = np.zeros((1, 1), dtype=np.int64)
# Read-only like the linears' own arrays: every kind then has one Numba signature (one compile).
_NO_G.flags.writeable = _NO_P.flags.writeable = False
_NO_NORM = np.zeros(1, dtype=np.float32)


def attends_int8(qkv) -> bool:
    """Whether a layer with this query/key/value linear runs its attention in int8
    (`kernels/attention_int8.py`): the linear runs a VNNI kind, so the CPU has AVX512-VNNI."""
    return type(qkv) is Int8Linear and qkv.format in _VNNI_FORMATS


def fusable8(lin) -> bool:
    """Whether the fused int8 kernel runs this linear: an Int8Linear of kind "gemm", "bsr1x4" or
    "gather"."""
    return type(lin) is Int8Linear and lin.format in _FUSED_FORMATS


def _weight(lin) -> tuple:
    # The kernel's nine arguments for one weight: kind, words (flat), quad indices, K-chunked
    # pointer, quads per chunk (gemm: quads per row), row sums, scales, bias, smoothing factors.
    kind = _FUSED_FORMATS[lin.format]
    if kind == 0:
        words, g, p, cq = lin.packed.reshape(-1), _NO_G, _NO_P, lin.packed.shape[1]
    elif kind == 2:
        words, g, p, cq = lin.quads, lin.gather_index, lin.indptr.reshape(1, -1), 0
    else:
        words, g, p, cq = lin.quads, lin.quad_index, lin.indptr, lin.chunk_quads
    return kind, words, g, p, int(cq), lin.rowsum, lin.scale, lin.bias, lin.smooth


class FusedInt8FFN(FusedPair):
    """ffn_out(act(ffn_in(x))) (+ residual) for two int8 linears, one kernel call per token tile;
    bit for bit the separate calls' result. The interface is `sparsebert.ffn.FusedPair`'s."""

    needs = "int8 gemm, bsr1x4 or gather"

    def __init__(self, ffn_in, ffn_out, activation):
        super().__init__(ffn_in, ffn_out, activation)
        # Tokens per tile of the whole-layer kernel, 64 or 128 (same bits). Zen 4, 12L 32 x 128:
        # 128 ran 1x4-block FFNs 9-11% faster (the 8-accumulator block tile, half the per-row
        # work per token), dense gemm FFNs ~10% slower (its register tile is 64 tokens wide).
        self.layer_tile = 128 if ffn_in.format in ("int8-bsr1x4", "int8-gather") else 64

    @staticmethod
    def fits(lin) -> bool:
        return fusable8(lin)

    def layer(self, x, key_bias, qkv, attn_out, heads: int, scale, attn_norm, norm, *,
              int8_attention: bool = False) -> np.ndarray:
        """A whole encoder layer in place in x (B, H, S), one sequence per task
        (`kernels/ffn_int8.layer_int8`): qkv (3H, S) and the attention context stay in the
        task's caches. Bit for bit the separate calls' result (the same kernels' arithmetic; the
        attention `kernels/attention_int8.py`'s with int8_attention, else attention.py's).
        key_bias (B, S) float32: 0 for real keys, very negative for padding."""
        from ..kernels import ffn_int8

        pre, post = checked_layer_inputs(self, x, key_bias, qkv, attn_out, heads, attn_norm, norm)
        if x.size == 0:
            return x
        ffn_int8.layer_int8(*_weight(qkv), key_bias, heads, np.float32(scale), bool(int8_attention),
                            *_weight(attn_out), *pre[:2],
                            *_weight(self.ffn_in), self.act, *_weight(self.ffn_out), *post, x,
                            self.layer_tile)
        return x

    def _run(self, x, residual, has_residual, norm, has_norm, y, attn_out, pre) -> None:
        from ..kernels import ffn_int8

        first = self.ffn_in if attn_out is None else attn_out
        g0, be0 = (_NO_NORM, _NO_NORM) if pre is None else pre[:2]
        ffn_int8.ffn_int8(*_weight(self.ffn_in), self.act, *_weight(self.ffn_out),
                          x, residual, has_residual, *norm, has_norm, y,
                          *_weight(first), g0, be0, attn_out is not None)


def fuse_ffn8(ffn_in, ffn_out, activation) -> FusedInt8FFN | None:
    """A FusedInt8FFN for this pair of int8 linears, or None when it does not qualify."""
    if not (fusable8(ffn_in) and fusable8(ffn_out)):
        return None
    if ffn_out.in_features != ffn_in.out_features or ffn_out.out_features != ffn_in.in_features:
        return None
    return FusedInt8FFN(ffn_in, ffn_out, activation)
