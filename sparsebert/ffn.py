"""The feed-forward block as one fused call when both of its linears are sparse: `fuse_ffn`.

`fuse_ffn(ffn_in, ffn_out, activation)` returns a `FusedFFN` computing

    Y[b] (H, S) = ffn_out(act(ffn_in(X[b]))) (+ residual[b])

per token tile in one kernel (`kernels/ffn_fused.py`), the (I, tile) intermediate never leaving
L2, optionally with the LayerNorm that follows fused into its epilogue, or None when the pair does
not qualify (either linear not `fusable`: CSR or 4x1 blocks; shapes that do not chain).
Batches the kernel would run slowly (`worth_fusing`: short sequences, too few tiles for the
threads) take the two calls instead.
The linears' own compressed arrays are used as they are: they were validated when built.

Int8 pairs: `sparsebert.quant.fused.FusedInt8FFN`, the same `FusedPair` over the int8 kernel.
Left out: other block shapes and dense linears (they keep the two-call path).
"""

from __future__ import annotations

import threading
import warnings

import numba
import numpy as np

from .errors import InputError
from .kernels import ffn_fused, ops
from .linear import BSRLinear, CSRLinear
from .linear_contract import act_code

_NO_RESIDUAL = np.zeros((1, 1, 1), dtype=np.float32)
_NO_NORM = np.zeros(1, dtype=np.float32)


class FusedPair:
    """ffn_out(act(ffn_in(x))) (+ residual) in one kernel call per token tile, and the layer tail
    after attention; the checks and the two-call fallbacks shared by `FusedFFN` (float32) and
    `sparsebert.quant.fused.FusedInt8FFN`. A subclass names the linears its kernel runs (`fits`,
    `needs` for the error message) and runs the kernel (`_run`)."""

    needs = ""  # the linears `fits` accepts, as the tail's error message names them

    def __init__(self, ffn_in, ffn_out, activation):
        self.ffn_in, self.ffn_out = ffn_in, ffn_out
        self.act = act_code(activation)
        self.activation = activation
        self.hidden = ffn_in.in_features

    @staticmethod
    def fits(lin) -> bool:
        raise NotImplementedError

    def _run(self, x, residual, has_residual, norm, has_norm, y, attn_out, pre) -> None:
        """The kernel: y = LayerNorm(ffn(h) + residual) per token tile (the norm when has_norm),
        h = x, or with attn_out h = LayerNorm_pre(attn_out(x) + residual) and residual = h."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray, *, residual=None, out=None, norm=None) -> np.ndarray:
        """norm: None, or (gamma, beta, eps) of a LayerNorm over H applied to the result (float32
        (H,) arrays and a float32 scalar), fused into the kernel's epilogue."""
        H = self.hidden
        y = checked_tile_inputs(x, H, residual, out)
        if y.size == 0:
            return y
        gamma, beta, eps = (_NO_NORM, _NO_NORM, np.float32(0)) if norm is None else checked_norm(norm, H)
        if not worth_fusing(x.shape[0], x.shape[2]):
            f = self.ffn_in(x, activation=self.activation)  # (B, I, S)
            self.ffn_out(f, residual=residual, out=y)
            if norm is not None:
                ops.layer_norm(y, gamma, beta, eps)
            return y
        self._run(x, _NO_RESIDUAL if residual is None else residual, residual is not None,
                  (gamma, beta, eps), norm is not None, y, None, None)
        return y

    def can_tail(self, attn_out) -> bool:
        """Whether `tail` can fuse this attention output linear too."""
        return self.fits(attn_out) and attn_out.in_features == attn_out.out_features == self.hidden

    def can_layer(self, qkv, attn_out) -> bool:
        """Whether `layer` can run a whole encoder layer with these query/key/value and attention
        output linears."""
        H = self.hidden
        return self.can_tail(attn_out) and self.fits(qkv) and qkv.in_features == H and qkv.out_features == 3 * H

    def tail(self, ctx: np.ndarray, x: np.ndarray, attn_out, attn_norm, norm) -> np.ndarray:
        """The rest of an encoder layer after attention, in place in x (B, H, S):
        h = LayerNorm_attn(attn_out(ctx) + x), then x = LayerNorm(ffn(h) + h). attn_norm and norm
        are (gamma, beta, eps). One kernel call per token tile when `worth_fusing` (h never leaves
        L2), else the separate calls."""
        H = self.hidden
        checked_tail_inputs(ctx, x, H)
        if not self.can_tail(attn_out):
            raise InputError(f"fused layer tail needs a ({H}, {H}) attention output linear of kind {self.needs}")
        pre, post = checked_norm(attn_norm, H), checked_norm(norm, H)
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


class FusedFFN(FusedPair):
    """The float32 pair: CSR or 4x1-block linears (`kernels/ffn_fused.py`). Equal to the separate
    calls on whole 64-token tiles (a partial tile can differ in the last place: the separate calls'
    8-token tail tiles sum in another order).

    `tile` is the token-tile width the kernels run where a batch fills it (`tile_for`): 64, or on
    AVX-512 also 128 (`ffn_fused.TILES`). Models built with formats="auto" take the tuner's
    measured choice (`sparsebert.tuning.choose_ffn_tile`, recorded in `tile_choice`), made on the
    first batch that could run the wide tile (`tune_tile_on_first_use`), or ahead of time by
    `settle_tile` (`sparsebert tune`): a model that never sees long batches never pays for it."""

    needs = "CSR or 4x1 blocks"

    def __init__(self, ffn_in, ffn_out, activation, tile: int = ffn_fused.TILE):
        super().__init__(ffn_in, ffn_out, activation)
        self.tile = tile
        self.tile_choice = None  # how `tile` was chosen, when the tuner chose it
        self._tuner = None  # called once with this pair before the first wide-enough batch
        self._tuner_lock = threading.RLock()

    def tune_tile_on_first_use(self, tuner) -> None:
        """Have `tuner(self)` set `tile` before the first batch that could run a wider tile
        (concurrent callers with such batches wait for it; until then `tile` stays 64)."""
        self._tuner = tuner if len(ffn_fused.TILES) > 1 else None

    def settle_tile(self) -> None:
        """Run the pending tuner now, if any, once: a tuner that fails leaves the width at 64 with
        a warning rather than failing this call and every later one."""
        with self._tuner_lock:
            tuner, self._tuner = self._tuner, None
            if tuner is None:
                return
            try:
                tuner(self)
            except Exception as exc:  # noqa: BLE001 - a failed timing must not fail inference
                self.tile = ffn_fused.TILE
                warnings.warn(f"choosing the fused FFN's token tile failed ({exc!r}); it stays "
                              f"{ffn_fused.TILE}", stacklevel=2)

    def run_at(self, x: np.ndarray, tile: int) -> np.ndarray:
        """ffn(x) + x in one kernel call per `tile`-token tile, whatever the batch: for the tuner,
        which must time each width it compares (not the width a batch would fall back to)."""
        tile = checked_tile(tile)
        y = checked_tile_inputs(x, self.hidden, x, None)
        if y.size:
            self._run(x, x, True, (_NO_NORM, _NO_NORM, np.float32(0)), False, y, None, None, tile)
        return y

    @property
    def tile(self) -> int:
        return self._tile

    @tile.setter
    def tile(self, value) -> None:
        self._tile = checked_tile(value)

    def tile_for(self, B: int, S: int) -> int:
        """The width a (B, *, S) batch runs: `tile` when the batch fills it as `worth_fusing`
        asks of 64-token tiles (little padding, tiles enough for the threads), else 64."""
        if self._tuner is not None and tiles_fill(B, S, ffn_fused.TILES[-1]):
            self.settle_tile()
        tile = self.tile  # read once: a tuner elsewhere may be setting it
        return tile if tile != ffn_fused.TILE and tiles_fill(B, S, tile) else ffn_fused.TILE

    @staticmethod
    def fits(lin) -> bool:
        return fusable(lin)

    def _run(self, x, residual, has_residual, norm, has_norm, y, attn_out, pre, tile=None) -> None:
        a, b = self.ffn_in, self.ffn_out
        o = a if attn_out is None else attn_out
        g0, be0 = (_NO_NORM, _NO_NORM) if pre is None else pre[:2]
        ffn_fused.ffn_csr(*_weight(a), self.act, *_weight(b), x, residual, has_residual, *norm, has_norm, y,
                          *_weight(o), g0, be0, attn_out is not None, _rows(a), _rows(b), _rows(o),
                          self.tile_for(x.shape[0], x.shape[2]) if tile is None else tile)

    def layer(self, x, key_bias, qkv, attn_out, heads: int, scale, attn_norm, norm) -> np.ndarray:
        """A whole encoder layer in place in x (B, H, S), one sequence per task
        (`kernels/ffn_fused.layer_csr`): qkv (3H, S) and the attention context stay in the task's
        caches. key_bias (B, S) float32: 0 for real keys, very negative for padding. Equal to the
        per-step calls to float rounding (their spmm drivers sum in other tile orders)."""
        pre, post = checked_layer_inputs(self, x, key_bias, qkv, attn_out, heads, attn_norm, norm)
        if x.size == 0:
            return x
        a, b = self.ffn_in, self.ffn_out
        S = x.shape[2]  # tasks are whole sequences: only the padding of the last tile matters
        if self._tuner is not None and pads_little(S, ffn_fused.TILES[-1]):
            self.settle_tile()
        tile = self.tile  # read once: a tuner elsewhere may be setting it
        tile = tile if pads_little(S, tile) else ffn_fused.TILE
        ffn_fused.layer_csr(*_weight(qkv), _rows(qkv), key_bias, heads, np.float32(scale),
                            *_weight(attn_out), *pre[:2], _rows(attn_out), *_weight(a), self.act, _rows(a),
                            *_weight(b), _rows(b), *post, x, tile)
        return x


def checked_tile_inputs(x, H: int, residual, out) -> np.ndarray:
    """The output array of a fused FFN call on x (B, H, S), after checking x, residual and out
    (float32, C-contiguous, x's shape; out, new when None, overlapping neither x nor residual)."""
    if not (isinstance(x, np.ndarray) and x.ndim == 3 and x.shape[1] == H and x.dtype == np.float32
            and x.flags.c_contiguous):
        raise InputError(f"fused FFN expects float32 C-contiguous x of shape (B, {H}, S), got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    for name, a in (("residual", residual), ("out", out)):
        if a is not None and not (isinstance(a, np.ndarray) and a.shape == x.shape
                                  and a.dtype == np.float32 and a.flags.c_contiguous):
            raise InputError(f"{name} must be a float32 C-contiguous array of shape {x.shape}")
    y = np.empty_like(x) if out is None else out
    if np.may_share_memory(y, x) or (residual is not None and np.may_share_memory(y, residual)):
        raise InputError("out must not overlap x or residual: the kernel reads them while writing out")
    return y


def checked_tail_inputs(ctx, x, H: int) -> None:
    """Checks a fused layer tail's ctx and x: float32, C-contiguous, (B, H, S) alike, apart."""
    for name, a in (("ctx", ctx), ("x", x)):
        if not (isinstance(a, np.ndarray) and a.ndim == 3 and a.shape[1] == H and a.dtype == np.float32
                and a.flags.c_contiguous and a.shape == ctx.shape):
            raise InputError(f"fused layer tail expects float32 C-contiguous {name} of shape (B, {H}, S) "
                             f"like ctx, got {getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if np.may_share_memory(ctx, x):
        raise InputError("ctx must not overlap x: the kernel reads ctx while it writes x")


def checked_layer_inputs(fused, x, key_bias, qkv, attn_out, heads, attn_norm, norm):
    """Checks a whole-layer call's inputs (x (B, H, S) float32 C-contiguous, key_bias (B, S),
    linears the kernel runs, heads dividing H, both LayerNorms with one eps); returns the norms."""
    H = fused.hidden
    if not (isinstance(x, np.ndarray) and x.ndim == 3 and x.shape[1] == H and x.dtype == np.float32
            and x.flags.c_contiguous):
        raise InputError(f"fused layer expects float32 C-contiguous x of shape (B, {H}, S), got "
                         f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
    if not fused.can_layer(qkv, attn_out):
        raise InputError(f"fused layer needs ({3 * H}, {H}) and ({H}, {H}) linears of a kind its kernel runs")
    B, _, S = x.shape
    if not (isinstance(key_bias, np.ndarray) and key_bias.shape == (B, S) and key_bias.dtype == np.float32
            and key_bias.flags.c_contiguous):
        raise InputError(f"key_bias must be a float32 C-contiguous array of shape {(B, S)}")
    if heads < 1 or H % heads:
        raise InputError(f"hidden size {H} is not a multiple of the {heads} heads")
    pre, post = checked_norm(attn_norm, H), checked_norm(norm, H)
    if pre[2] != post[2]:
        raise InputError("fused layer: both LayerNorms must share one eps")
    return pre, post


def layer_pays(B: int, S: int) -> bool:
    """Whether a whole layer per sequence (`FusedFFN.layer`, `FusedInt8FFN.layer`) beats the
    per-step calls on a (B, *, S) batch: its tasks are whole sequences, so every thread needs
    several of them (the per-step calls split rows and tiles instead), and S bounds the task's
    buffers."""
    threads = numba.get_num_threads()
    return S <= 512 and B >= 2 * threads and (B % threads == 0 or B >= 8 * threads)


def checked_norm(norm, H: int):
    """(gamma, beta, eps) of a LayerNorm over H, checked before a kernel reads H values of each."""
    gamma, beta, eps = norm
    for name, a in (("gamma", gamma), ("beta", beta)):
        if not (isinstance(a, np.ndarray) and a.shape == (H,) and a.dtype == np.float32 and a.flags.c_contiguous):
            raise InputError(f"LayerNorm {name} must be a float32 C-contiguous array of shape ({H},), got "
                             f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    return gamma, beta, np.float32(eps)


def worth_fusing(B: int, S: int) -> bool:
    """Whether the fused kernel beats the two-call path on a (B, *, S) batch. Its tasks are whole
    64-token tiles of one sequence: short sequences would run mostly padding (the two-call path
    packs several into one tile), and too few tasks leave threads idle (the two-call path also
    splits rows). Measured 1.3-1.4x per FFN block at B=8 x 128 (BERT-base, 80-90%, one core).
    A tile count the threads share evenly is enough. On 2 threads (Sapphire Rapids), BERT-base 12L
    at batch 1 x 128 (2 tiles) took 38.2 ms fused vs 47.7 ms as two calls at 90%, and 54.9 vs
    70.1 ms at 80%. Uneven counts below two per thread lose: 3 x 64 took 60.9 vs 43.1 ms, 1 x 192
    71.2 vs 68.8 ms."""
    return tiles_fill(B, S, ffn_fused.TILE)


def tiles_fill(B: int, S: int, tile: int) -> bool:
    """Whether tile-wide tasks suit a (B, *, S) batch: at most 1/8 padding, and a task count the
    threads share evenly or at least two per thread (`worth_fusing`, which asks it of 64)."""
    n, threads = B * -(-S // tile), numba.get_num_threads()
    return pads_little(S, tile) and (n >= 2 * threads or n % threads == 0)


def pads_little(S: int, tile: int) -> bool:
    """Whether tile-wide tiles cover S tokens with at most 1/8 padding."""
    return -(-S // tile) * tile <= 1.125 * S


def checked_tile(value) -> int:
    """A token-tile width the fused kernels take on this CPU (`ffn_fused.TILES`), else InputError:
    they trust it (it sizes their panels and picks their register tiles)."""
    if value not in ffn_fused.TILES or isinstance(value, bool):
        raise InputError(f"fused FFN token tile must be one of {ffn_fused.TILES} on this CPU, got {value!r}")
    return int(value)


def fusable(lin) -> bool:
    """Whether the fused kernel runs this linear's weight: CSR, or BSR in 4x1 blocks."""
    return type(lin) is CSRLinear or (type(lin) is BSRLinear and lin.block_shape == (4, 1))


def _rows(lin) -> int:
    return 1 if type(lin) is CSRLinear else 4


def _weight(lin) -> tuple:
    # The kernel's five arguments for one weight: data flat (a view: (nnz,) for CSR, (nblocks * 4,)
    # for 4x1 blocks), indices, K-chunked pointer, chunk columns, bias.
    return lin.data.reshape(-1), lin.indices, lin.indptr, lin.chunk_cols, lin.bias


def fuse_ffn(ffn_in, ffn_out, activation) -> FusedFFN | None:
    """A FusedFFN for this pair, or None when it does not qualify (see the module docstring)."""
    if not (fusable(ffn_in) and fusable(ffn_out)):
        return None
    if ffn_out.in_features != ffn_in.out_features or ffn_out.out_features != ffn_in.in_features:
        return None
    return FusedFFN(ffn_in, ffn_out, activation)


def warmup() -> float:
    """Compile (or load from Numba's cache) the fused kernel on a tiny CSR pair; returns seconds.
    Models reach it only on batches `worth_fusing`, which a small warm-up call may not be."""
    import time

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)
    pair = FusedFFN(CSRLinear.from_dense(w1, np.zeros(8, np.float32)),
                    CSRLinear.from_dense(w2, np.zeros(4, np.float32)), "gelu")
    x = np.zeros((1, 4, 3), np.float32)
    a, b = pair.ffn_in, pair.ffn_out
    ffn_fused.ffn_csr(*_weight(a), pair.act, *_weight(b), x, x, True,
                      _NO_NORM, _NO_NORM, np.float32(1e-12), False, np.empty_like(x),
                      *_weight(a), _NO_NORM, _NO_NORM, False, 1, 1, 1, ffn_fused.TILE)
    return time.perf_counter() - start
