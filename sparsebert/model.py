"""The BERT encoder forward pass, top to bottom.

Shape letters: B batch, T tokens per sequence (padded), H hidden size, NH heads, D = H / NH head size,
I FFN size, V vocabulary. Activations between steps use the (B, F, T) feature-major layout of
`sparsebert.kernels` (F = H or I); inputs and outputs use the familiar (B, T, H).

What it leaves out: dropout (inference only), relative positions, decoders, past key/values.
Weight matmuls go through `sparsebert.dispatch`, which builds each one dense, CSR, BSR or int8.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time

import numba
import numpy as np

from .config import BertConfig
from .errors import CheckpointError, InputError
from .kernels import attention, ops
from .dispatch import check_formats, make_linear
from . import precompile, tuning
from .ffn import FusedFFN, fuse_ffn, layer_pays, worth_fusing
from .hugepages import move_to_huge_pages
from .quant.fused import attends_int8, fuse_ffn8
from .weights import BertWeights

# Additive attention bias for padding keys: large enough that exp() underflows to 0, small enough
# that scale * score + bias never overflows, so a row whose keys are all padding stays finite.
_MASKED = np.float32(-1e30)

_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}


@dataclasses.dataclass(frozen=True)
class EncoderOutput:
    last_hidden_state: np.ndarray  # (B, T, H) float32
    pooler_output: np.ndarray | None  # (B, H) float32, None without a pooler


class Layer:
    """One encoder layer: self-attention, then the feed-forward block, each with residual + LayerNorm."""

    def __init__(self, w, config: BertConfig, formats, int8_attention=None):
        """formats: (internal name, weight) -> format name (`sparsebert.dispatch`); int8_attention:
        see `BertEncoder`."""
        def build(name):
            weight = getattr(w, f"{name}_w")
            return make_linear(weight, getattr(w, f"{name}_b"), formats(name, weight), w.int8.get(name))

        self.qkv = build("qkv")
        self.attn_out = build("attn_out")
        self.ffn_in = build("ffn_in")
        self.ffn_out = build("ffn_out")
        self.attn_norm = w.attn_norm
        self.ffn_norm = w.ffn_norm
        self.heads = config.num_attention_heads
        self.scale = np.float32(1.0 / np.sqrt(config.head_dim))
        self.eps = np.float32(config.layer_norm_eps)
        self.act = _ACTIVATION[config.hidden_act]
        # Both FFN linears CSR or 4x1 blocks (sparsebert.ffn), or both int8 gemm / bsr1x4
        # (sparsebert.quant.fused): one fused call per token tile, else None.
        self.fused_ffn = fuse_ffn(self.ffn_in, self.ffn_out, self.act) or fuse_ffn8(
            self.ffn_in, self.ffn_out, self.act)
        if isinstance(self.fused_ffn, FusedFFN) and all(
                getattr(lin, "choice", {}).get("by") in ("measured", "cache") for lin in (self.ffn_in, self.ffn_out)):
            # formats the tuner chose: so is the token tile, on the first batch that could use it
            self.fused_ffn.tune_tile_on_first_use(tuning.choose_ffn_tile)
        # The attention output linear joins the fused call when the kernel runs its kind too.
        self.fused_tail = self.fused_ffn is not None and self.fused_ffn.can_tail(self.attn_out)
        # The qkv linear too: the whole layer per sequence in one call.
        self.fused_layer = self.fused_tail and self.fused_ffn.can_layer(self.qkv, self.attn_out)
        # QK^T and PV in int8 (kernels/attention_int8.py) when qkv is an int8 VNNI linear.
        self.int8_attention = attends_int8(self.qkv) if int8_attention is None else bool(int8_attention)
        if self.int8_attention and not attends_int8(self.qkv):
            raise InputError(f"int8 attention needs int8 query/key/value weights on a CPU with "
                             f"AVX512-VNNI; this layer's run {self.qkv.format!r}: quantize the model "
                             f"(sparsebert quantize) or pass int8_attention=None")

    @property
    def linears(self) -> dict:
        return {"qkv": self.qkv, "attn_out": self.attn_out, "ffn_in": self.ffn_in, "ffn_out": self.ffn_out}

    def __call__(self, x: np.ndarray, key_bias: np.ndarray, scratch: "_Scratch", tick) -> np.ndarray:
        """One layer on x (B, H, T); the result overwrites x, which is dead by then."""
        B, H, T = x.shape
        norms = ((self.attn_norm.gamma, self.attn_norm.beta, self.eps),
                 (self.ffn_norm.gamma, self.ffn_norm.beta, self.eps))
        if self.fused_layer and layer_pays(B, T):
            precompile.wait()
            kw = {"int8_attention": True} if self.int8_attention else {}
            y = self.fused_ffn.layer(x, key_bias, self.qkv, self.attn_out, self.heads, self.scale, *norms, **kw)
            tick("layer_fused")
            return y
        qkv = self.qkv(x, out=scratch.get("qkv", (B, 3 * H, T)))  # (B, 3H, T): Q, K, V row blocks
        tick("qkv")
        ctx = scratch.get("ctx", (B, H, T))  # per head, V_h @ softmax(Q_hᵀ K_h / √D + mask)ᵀ
        precompile.wait()  # on a cold cache the attention kernel compiles in a second process
        if self.int8_attention:
            from .kernels import attention_int8  # compiled only on VNNI CPUs

            attention_int8.attention_int8(qkv, key_bias, self.heads, self.scale, ctx)
        else:
            attention.attention(qkv, key_bias, self.heads, self.scale, ctx)
        tick("attention")
        if self.fused_tail and worth_fusing(B, T):
            # attn_out + residual + LayerNorm + FFN + residual + LayerNorm per token tile, in place
            # in x: h never leaves L2 (sparsebert.ffn.FusedFFN.tail)
            norms = ((self.attn_norm.gamma, self.attn_norm.beta, self.eps),
                     (self.ffn_norm.gamma, self.ffn_norm.beta, self.eps))
            y = self.fused_ffn.tail(ctx, x, self.attn_out, *norms)
            tick("attn_out_ffn_fused")
            return y
        h = self.attn_out(ctx, residual=x, out=scratch.get("h", (B, H, T)))  # (B, H, T)
        tick("attn_out")
        ops.layer_norm(h, self.attn_norm.gamma, self.attn_norm.beta, self.eps)
        tick("layer_norm")
        if self.fused_ffn is not None:
            # (B, H, T): the (I, tile) intermediate stays in L2, the LayerNorm runs in the epilogue
            norm = (self.ffn_norm.gamma, self.ffn_norm.beta, self.eps)
            y = self.fused_ffn(h, residual=h, out=x, norm=norm)
            tick("ffn_fused")
            return y
        f = self.ffn_in(h, activation=self.act, out=scratch.get("f", (B, self.ffn_in.out_features, T)))
        tick("ffn_in")  # f: (B, I, T)
        y = self.ffn_out(f, residual=h, out=x)  # (B, H, T)
        tick("ffn_out")
        ops.layer_norm(y, self.ffn_norm.gamma, self.ffn_norm.beta, self.eps)
        tick("layer_norm")
        return y


class _Scratch(threading.local):
    """Per-thread activation buffers, reused across layers and calls. Fresh arrays of this size
    come from mmap, and their page faults cost ~5-10 ms per 50 MB layer output; buffers only grow,
    so length-bucketed batches of varying T reuse the largest."""

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        buf = self.__dict__.get(name)
        if buf is None or buf.size < size:
            buf = np.empty(size, dtype=np.float32)
            self.__dict__[name] = buf
        return buf[:size].reshape(shape)


def _no_tick(name: str) -> None:
    pass


class _Clock:
    """Accumulates wall time between ticks under (layer, step) names, for `BertEncoder.profile`."""

    def __init__(self):
        self.layer = "embeddings"
        self.times: dict[str, float] = {}
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        key = f"{self.layer}.{name}"
        self.times[key] = self.times.get(key, 0.0) + now - self.last
        self.last = now


class BertEncoder:
    """Tensors in, tensors out. Holds read-only weights; activations live in per-thread scratch
    buffers (returned arrays are always fresh copies), so one encoder may serve many threads at once. Under Numba's "omp" (GNU OpenMP, the layer used
    here) or "tbb" threading layers, concurrent calls run in parallel, each with its own team of
    Numba threads, and give bitwise the same results as serial calls (tests/test_threads.py).
    The "workqueue" layer aborts the process on concurrent parallel regions, so under it calls
    serialise on a lock (`_kernel_lock`)."""

    def __init__(self, weights: BertWeights, formats=None, int8_attention=None):
        """`formats` picks each encoder linear's format: None ("auto"), a format name, or a function
        (internal name, weight) -> format name; see `sparsebert.dispatch`. `int8_attention`: None
        runs QK^T and PV in int8 (`kernels/attention_int8.py`) in the layers whose query/key/value
        linear runs int8 on VNNI, float32 elsewhere; False keeps float32 attention everywhere; True
        requires int8 attention in every layer (InputError where it cannot run)."""
        formats = check_formats(formats)
        # Cold cache: the shared kernels compile meanwhile in a second process (sparsebert.precompile).
        precompile.start(tuning.cache_dir(), (tuning.kernel_version(), tuning.machine_key()))
        self.config = weights.config
        self.weights = weights
        self.layers = tuple(Layer(w, weights.config, formats, int8_attention) for w in weights.layers)
        self.pooler = (
            make_linear(weights.pooler_w, weights.pooler_b, "dense") if weights.pooler_w is not None else None
        )
        # The linears' own arrays; float weights a dense linear runs on as loaded stay in place.
        moved = [lin for layer in self.layers for lin in layer.linears.values()]
        held = [a for lw in weights.layers for a in vars(lw).values() if isinstance(a, np.ndarray)]
        move_to_huge_pages(moved + ([self.pooler] if self.pooler is not None else []),
                           keep=held + [weights.pooler_w])
        self._scratch = _Scratch()
        # No token-type path: an empty table tells the embedding kernel to add nothing.
        H = self.config.hidden_size
        self._type_table = weights.type_emb if weights.type_emb is not None else np.zeros((0, H), np.float32)
        self._type_table.flags.writeable = False

    def sparsity_report(self) -> dict:
        rows = []
        for i, (layer, src) in enumerate(zip(self.layers, self.weights.source_layers)):
            for name, lin in layer.linears.items():
                rows.append({"layer": i, "source_layer": src, "name": name, **lin.describe()})
        dense_flops = sum(2 * r["shape"][0] * r["shape"][1] for r in rows)
        run_flops = sum(r["flops_per_token"] for r in rows)
        total = {
            "layers": len(self.layers),
            "params": sum(r["shape"][0] * r["shape"][1] for r in rows),
            "nnz": sum(r["nnz"] for r in rows),
            "nbytes": sum(r["nbytes"] for r in rows),
            "dense_nbytes": sum(r["dense_nbytes"] for r in rows),
            "flops_per_token": run_flops,
            "dense_flops_per_token": dense_flops,
        }
        # which kernel runs attention's two matmuls: "int8-vnni" (kernels/attention_int8.py) or
        # "float32", per layer
        total["attention"] = ["int8-vnni" if layer.int8_attention else "float32" for layer in self.layers]
        # the token-tile width of each layer's fused float32 FFN (None: not fused in float32), and how
        # it was chosen (sparsebert.tuning.choose_ffn_tile; None: the default, or not chosen yet)
        total["fused_ffn_tile"] = [layer.fused_ffn.tile if isinstance(layer.fused_ffn, FusedFFN) else None
                                   for layer in self.layers]
        total["fused_ffn_tile_choice"] = [getattr(layer.fused_ffn, "tile_choice", None) for layer in self.layers]
        total["sparsity"] = 1.0 - total["nnz"] / total["params"]
        total["flops_skipped"] = 1.0 - run_flops / dense_flops
        return {"linears": rows, "total": total}

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> EncoderOutput:
        with _kernel_lock():
            return self._forward(input_ids, attention_mask, token_type_ids, None)

    def profile(self, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, float]:
        """Run one forward pass and return seconds spent per step, keyed "layer{i}.{step}"
        (steps: qkv, attention, attn_out, layer_norm, ffn_in, ffn_out), plus "embeddings.*" and
        "output.*". Timing is per kernel call, so it includes each call's thread start-up."""
        clock = _Clock()
        with _kernel_lock():
            self._forward(input_ids, attention_mask, token_type_ids, clock)
        return clock.times

    def _forward(self, input_ids, attention_mask, token_type_ids, clock) -> EncoderOutput:
        tick = clock or _no_tick
        ids, mask, types = self.check_inputs(input_ids, attention_mask, token_type_ids)
        B, T = ids.shape
        w = self.weights

        # Embeddings: word + position + token type, written feature-major, then LayerNorm.  (B, H, T)
        x = self._scratch.get("x", (B, self.config.hidden_size, T))
        ops.embed(ids, types, w.word_emb, w.pos_emb, self._type_table, x)
        ops.layer_norm(x, w.emb_norm.gamma, w.emb_norm.beta, np.float32(self.config.layer_norm_eps))

        key_bias = np.where(mask > 0, np.float32(0), _MASKED).astype(np.float32)  # (B, T)
        tick("embed")
        for i, layer in enumerate(self.layers):
            if clock is not None:
                clock.layer = f"layer{i}"
            try:
                x = layer(x, key_bias, self._scratch, tick)  # (B, H, T)
            except (ZeroDivisionError, SystemError) as exc:
                # A kernel's float division met overflowed activations (inside a parallel region
                # that surfaces as SystemError). Inputs are validated, so weights are the cause.
                raise CheckpointError(_overflow_message(w)) from exc
        if clock is not None:
            clock.layer = "output"

        pooled = None
        if self.pooler is not None:
            pooled = _pool_first_token(x, self.pooler.weight, self.pooler.bias)  # (B, H)
        # A fresh array: x is a scratch buffer the next call overwrites. The copy also counts
        # non-finite values: never hand back NaN as an answer.
        hidden = np.empty((B, T, self.config.hidden_size), dtype=np.float32)  # (B, T, H)
        if ops.to_token_major(x, hidden) or (pooled is not None and not np.isfinite(pooled).all()):
            raise CheckpointError(_overflow_message(w))
        tick("pooler_and_transpose")
        return EncoderOutput(hidden, pooled)

    def check_inputs(self, input_ids, attention_mask, token_type_ids):
        """Validate ids, mask and type ids at the public boundary; return int arrays (B, T)."""
        c = self.config
        ids = _int_matrix(input_ids, "input_ids")
        B, T = ids.shape
        if T > c.max_position_embeddings:
            raise InputError(
                f"sequence length {T} exceeds max_position_embeddings {c.max_position_embeddings}; "
                "truncate the inputs (the tokenizer does this for texts)"
            )
        _check_memory(B, T, c)
        _check_range(ids, 0, c.vocab_size, "input_ids", "the vocabulary size")
        if attention_mask is None:
            mask = np.ones((B, T), dtype=np.int64)
        else:
            mask = _int_matrix(attention_mask, "attention_mask", (B, T))
            _check_range(mask, 0, 2, "attention_mask", "2 (values must be 0 or 1)")
        if token_type_ids is None:
            types = np.zeros((B, T), dtype=np.int64)
        else:
            types = _int_matrix(token_type_ids, "token_type_ids", (B, T))
            limit = c.type_vocab_size if self.weights.type_emb is not None else 1
            _check_range(types, 0, limit, "token_type_ids", f"type_vocab_size ({limit})")
        return ids, mask, types


def _pool_first_token(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """tanh(W @ x[b, :, 0] + bias) for every b: (B, H). One small single-threaded SciPy BLAS
    call (jit.py caps that BLAS to one thread) rather than the Numba gemm kernel, whose compile
    (~1.3 s) a model with only sparse linears would otherwise pay at its first call just for this."""
    from scipy.linalg.blas import sgemm

    cls = np.ascontiguousarray(x[:, :, 0])  # (B, H)
    # weight.T is a Fortran-order view, which the wrapper passes as it is; weight with trans_b
    # made it copy the whole (H, H) matrix to Fortran order first: 700 vs 28 us at H = 768.
    return np.tanh(sgemm(1.0, cls, weight.T) + bias).astype(np.float32, copy=False)


# Numba's "workqueue" threading layer terminates the process when two Python threads run parallel
# kernels at once; "omp" and "tbb" are threadsafe. Calls take this lock only under workqueue, or
# until the first parallel kernel has run and the layer is known.
_WORKQUEUE_LOCK = threading.RLock()
_NO_LOCK = contextlib.nullcontext()


def _kernel_lock():
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run in this process yet
        return _WORKQUEUE_LOCK
    return _WORKQUEUE_LOCK if layer == "workqueue" else _NO_LOCK


def call_bytes(B: int, T: int, c: BertConfig) -> int:
    """Estimated peak working memory of one forward call, in bytes.

    Live float32 activations: embeddings and their (B, H, T) copy, qkv (3H), attention context,
    attention output, FFN input (I) and output, and the (B, T, H) result: about B*T*(9H + I)*4;
    int64 ids/mask/types 24*B*T; attention scores T*T*4 per concurrently running (sequence, head)."""
    H, I = c.hidden_size, c.intermediate_size
    heads_live = min(B * c.num_attention_heads, max(1, numba.get_num_threads()))
    return 4 * B * T * (9 * H + I) + 24 * B * T + 4 * T * T * heads_live


def available_bytes() -> int:
    """Memory the OS can hand out now: MemAvailable (Linux), else free physical pages."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 1 << 62  # unknown: do not refuse


# Below this estimate a call is not worth a look at /proc/meminfo.
_CHECK_MEMORY_ABOVE = 256 << 20


def _check_memory(B: int, T: int, c: BertConfig) -> None:
    need = call_bytes(B, T, c)
    if need < _CHECK_MEMORY_ABOVE:
        return
    have = available_bytes()
    if need > have:
        raise InputError(
            f"a batch of {B} sequences x {T} tokens needs about {need / 2**30:.2f} GiB of working "
            f"memory, but only {have / 2**30:.2f} GiB is available; pass fewer sequences per call "
            f"(e.g. batch_size={max(1, int(B * have / need / 2))}) or shorter sequences"
        )


def _overflow_message(w: BertWeights) -> str:
    """Explain non-finite activations from finite inputs: some weight is far outside any trained
    model's range (inputs are validated, and LayerNorm keeps sane weights from overflowing)."""
    named = {"word_emb": w.word_emb, "pos_emb": w.pos_emb, "type_emb": w.type_emb,
             "pooler_w": w.pooler_w, "pooler_b": w.pooler_b, "emb_norm gamma": w.emb_norm.gamma,
             "emb_norm beta": w.emb_norm.beta}
    for i, layer in enumerate(w.layers):
        for field in ("qkv_w", "qkv_b", "attn_out_w", "attn_out_b", "ffn_in_w", "ffn_in_b",
                      "ffn_out_w", "ffn_out_b"):
            named[f"layer {i} {field}"] = getattr(layer, field)
        for norm in ("attn_norm", "ffn_norm"):
            named[f"layer {i} {norm} gamma"] = getattr(layer, norm).gamma
            named[f"layer {i} {norm} beta"] = getattr(layer, norm).beta
    sizes = {k: float(np.abs(v).max()) for k, v in named.items() if v is not None and v.size}
    worst = max(sizes, key=sizes.get)
    return (
        f"the forward pass overflowed to NaN/Inf; the largest weight magnitude is {sizes[worst]:.3g} "
        f"in {worst} (trained BERT weights stay below ~100): the checkpoint is corrupt, re-download "
        "or re-export it"
    )


def _int_matrix(value, name: str, shape=None) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as exc:
        raise InputError(f"{name} cannot be read as an array: {exc}") from None
    if arr.dtype == bool and name == "attention_mask":
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise InputError(
            f"{name} must be an integer array, got dtype {arr.dtype}; convert with "
            f"np.asarray({name}, dtype=np.int64)"
        )
    if arr.ndim == 1 and (shape is None or shape[0] == 1):
        arr = arr[None]
    if arr.ndim != 2:
        raise InputError(f"{name} must have shape (batch, tokens), got {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise InputError(f"{name} has shape {arr.shape} but input_ids has shape {shape}")
    if arr.size == 0:
        raise InputError(f"{name} is empty (shape {arr.shape}); pass at least one token")
    return arr.astype(np.int64, copy=False)


def _check_range(arr, low, high, name, what):
    lo, hi = int(arr.min()), int(arr.max())
    if lo < low or hi >= high:
        bad = lo if lo < low else hi
        raise InputError(f"{name} holds {bad}, outside [{low}, {high}) set by {what}")
