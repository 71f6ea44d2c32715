"""The int8 feed-forward block (and the layer tail after attention) as one call per token tile:
`FusedInt8FFN`, built by `sparsebert.ffn.fuse_ffn` for a pair of int8 linears.

`fuse_ffn8(ffn_in, ffn_out, activation)` returns one, or None when the pair does not qualify.
Both linears must run a VNNI kind the fused kernel has (`fusable8`: "gemm" or "bsr1x4"); the
kernel (`kernels/ffn_int8.py`) keeps the intermediate and its int8 codes in the task's cache and
gives the unfused calls' outputs bit for bit. Where fusing does not pay (`sparsebert.ffn.
worth_fusing`) the calls run separately. The interface is `sparsebert.ffn.FusedFFN`'s.

Left out: "amx", "vnni" and the portable int8 kinds (those pairs keep the separate calls).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..ffn import checked_layer_inputs, checked_norm, checked_tail_inputs, checked_tile_inputs, worth_fusing
from ..kernels import ops
from ..linear_contract import act_code
from .linear import Int8Linear

_FUSED_FORMATS = {"int8-gemm": 0, "int8-bsr1x4": 1, "int8-gather": 2}
_VNNI_FORMATS = ("int8-gemm", "int8-bsr1x4", "int8-vnni", "int8-amx", "int8-gather")
_NO_G = np.zeros(1, dtype=np.uint16)
_NO_P = np.zeros((1, 1), dtype=np.int64)
# Read-only like the linears' own arrays: every kind then has one Numba signature (one compile).
_NO_G.flags.writeable = _NO_P.flags.writeable = False
_NO_RESIDUAL = np.zeros((1, 1, 1), dtype=np.float32)
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


class FusedInt8FFN:
    """ffn_out(act(ffn_in(x))) (+ residual) for two int8 linears, one kernel call per token tile."""

    def __init__(self, ffn_in, ffn_out, activation):
        self.ffn_in, self.ffn_out = ffn_in, ffn_out
        self.act = act_code(activation)
        self.activation = activation
        self.hidden = ffn_in.in_features
        # Tokens per tile of the whole-layer kernel, 64 or 128 (same bits). Zen 4, 12L 32 x 128:
        # 128 ran 1x4-block FFNs 9-11% faster (the 8-accumulator block tile, half the per-row
        # work per token), dense gemm FFNs ~10% slower (its register tile is 64 tokens wide).
        self.layer_tile = 128 if ffn_in.format in ("int8-bsr1x4", "int8-gather") else 64

    def can_tail(self, attn_out) -> bool:
        """Whether `tail` can fuse this attention output linear too."""
        return fusable8(attn_out) and attn_out.in_features == attn_out.out_features == self.hidden

    def __call__(self, x: np.ndarray, *, residual=None, out=None, norm=None) -> np.ndarray:
        """As `sparsebert.ffn.FusedFFN.__call__`."""
        y = checked_tile_inputs(x, self.hidden, residual, out)
        if y.size == 0:
            return y
        gamma, beta, eps = (_NO_NORM, _NO_NORM, np.float32(0)) if norm is None else checked_norm(norm, self.hidden)
        if not worth_fusing(x.shape[0], x.shape[2]):
            f = self.ffn_in(x, activation=self.activation)
            self.ffn_out(f, residual=residual, out=y)
            if norm is not None:
                ops.layer_norm(y, gamma, beta, eps)
            return y
        self._run(x, _NO_RESIDUAL if residual is None else residual, residual is not None,
                  (gamma, beta, eps), norm is not None, y, None, None)
        return y

    def tail(self, ctx: np.ndarray, x: np.ndarray, attn_out, attn_norm, norm) -> np.ndarray:
        """As `sparsebert.ffn.FusedFFN.tail`: h = LayerNorm_attn(attn_out(ctx) + x), then
        x = LayerNorm(ffn(h) + h), in place in x; bit for bit the separate calls' result."""
        checked_tail_inputs(ctx, x, self.hidden)
        if not self.can_tail(attn_out):
            raise InputError(f"fused int8 layer tail needs a ({self.hidden}, {self.hidden}) int8 attention "
                             f"output linear of kind gemm or bsr1x4")
        pre = checked_norm(attn_norm, self.hidden)
        post = checked_norm(norm, self.hidden)
        if pre[2] != post[2]:
            raise InputError("fused layer tail: both LayerNorms must share one eps")
        if x.size == 0:
            return x
        if not worth_fusing(x.shape[0], x.shape[2]):
            h = attn_out(ctx, residual=x)
            ops.layer_norm(h, *pre)
            return self(h, residual=h, out=x, norm=norm)
        self._run(ctx, x, False, post, True, x, attn_out, pre)
        return x

    def can_layer(self, qkv, attn_out) -> bool:
        """Whether `layer` can run a whole encoder layer with these query/key/value and attention
        output linears."""
        return (self.can_tail(attn_out) and fusable8(qkv) and qkv.in_features == self.hidden
                and qkv.out_features == 3 * self.hidden)

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

    def _run(self, x, residual, has_residual, norm, has_norm, y, attn_out, pre):
        from ..kernels import ffn_int8

        gamma, beta, eps = norm
        first = self.ffn_in if attn_out is None else attn_out
        g0, be0 = (_NO_NORM, _NO_NORM) if pre is None else pre[:2]
        ffn_int8.ffn_int8(*_weight(self.ffn_in), self.act, *_weight(self.ffn_out),
                          x, residual, has_residual, gamma, beta, eps, has_norm, y,
                          *_weight(first), g0, be0, attn_out is not None)


def fuse_ffn8(ffn_in, ffn_out, activation) -> FusedInt8FFN | None:
    """A FusedInt8FFN for this pair of int8 linears, or None when it does not qualify."""
    if not (fusable8(ffn_in) and fusable8(ffn_out)):
        return None
    if ffn_out.in_features != ffn_in.out_features or ffn_out.out_features != ffn_in.in_features:
        return None
    return FusedInt8FFN(ffn_in, ffn_out, activation)
