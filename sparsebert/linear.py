"""Weight matmuls on sparsebert's activation layout, and the choice of format for each one.

A `Linear` computes `Y[b] (N, S) = W (N, K) @ X[b] (K, S) + bias`, optionally followed by an
activation and a residual add, on activations laid out `(B, F, S)` (see `sparsebert.kernels`);
`lin(x, activation=None, residual=None, out=None)` returns a new array, or fills `out`.
This module owns every decision about weight formats: the dense path goes through BLAS
(single-threaded gemms inside Numba's thread pool, `kernels/dense.py`); sparse paths call the Numba kernels in `sparsebert.kernels.spmm`:

- `CSRLinear`: any sparsity pattern (unstructured pruning).
- `BSRLinear`: block-pruned weights whose nonzeros fill aligned R x C blocks (4x1, 8x1, 2x2, 1x4);
  one activation load then feeds R output rows, so it runs ~2x the CSR rate per nonzero.

`build_linear(weight, bias, format)` builds one of them by name. Which format a model's linear gets
is decided above this module, in `sparsebert.dispatch` ("auto": the format and K-chunk width
measured fastest on this machine by `sparsebert.tuning`); the cost model below, calibrated by hand
on one dev machine (benchmarks/bench_linear.py), only prunes hopeless candidates before timing, and
`choose_format` still gives its prediction. `from_arrays` constructors validate raw compressed
arrays (from a checkpoint) once, so the kernels can trust them.
`warmup()` compiles (or loads from Numba's cache) every kernel signature the model uses, so JIT
time is paid, and measured, at load rather than at the first call.

The helpers the int8 linears share (`act_code`, `check_out`, `check_call`, `describe`,
`index_dtype`) are public. Int8 weights live in `sparsebert.quant.linear`.

Left out: per-call re-tuning.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from .errors import CheckpointError, InputError
from .kernels import dense, spmm

# Activation names the model passes to a Linear's epilogue.
EPILOGUES = (None, "gelu", "gelu_tanh", "relu")
_ACT_CODES = {None: 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}
_NO_RESIDUAL = np.zeros((1, 1, 1), dtype=np.float32)

BLOCK_SHAPES = spmm.BLOCK_SHAPES  # (R, C) pairs with a kernel, e.g. (4, 1)
FORMATS = ("auto", "dense", "csr", "bsr") + tuple(f"bsr{r}x{c}" for r, c in BLOCK_SHAPES)

# Cost model: throughput per *stored* multiply-add relative to numpy's BLAS sgemm on the same
# layer, from benchmarks/bench_linear.py on the 2-core Zen 4 dev machine (B=32, S=128, BERT-base
# shapes; sgemm ~150-190 GFLOP/s there), plus a per-(block) row cost in stored values (each row
# starts once per K-chunk). CSR measured 0.6-0.7 at 50-80% sparsity and 0.35-0.5 at 90-95% (the
# row term), so CSR already beats dense from ~40-50% sparsity (1.1-1.3x at 50%, 2x at 70%);
# 4x1 blocks ~1.0 with a larger row term (0.5-0.8 at 90%), 8x1 and 2x2 somewhat below 4x1, 1x4 ~0.55.
RELATIVE_RATE = {"dense": 1.0, "csr": 0.65, (4, 1): 1.0, (8, 1): 0.9, (2, 2): 0.8, (1, 4): 0.55}
_ROW_OVERHEAD = {"csr": 30.0, (4, 1): 100.0, (8, 1): 150.0, (2, 2): 100.0, (1, 4): 60.0}


def index_dtype(columns: int):
    """Column indices as uint16 when they fit: at 90% sparsity CSR then stores 6 bytes per nonzero
    instead of 8 (0.15x the dense bytes, not 0.2x), and the kernels read less index traffic."""
    return np.uint16 if columns <= 1 << 16 else np.int32


def check_out(out, shape, x, residual) -> np.ndarray:
    """`out=` lets a caller reuse a workspace: a fresh 50 MB output costs ~5-10 ms of page
    faults per call here, a third of a 90%-sparse BSR layer. It must not overlap the inputs."""
    if not (isinstance(out, np.ndarray) and out.shape == shape and out.dtype == np.float32
            and out.flags.c_contiguous and out.flags.writeable):
        raise InputError(
            f"out must be a writeable C-contiguous float32 array of shape {shape}, got "
            f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
        )
    for name, a in (("x", x), ("residual", residual)):
        if a is not None and np.may_share_memory(out, a):
            raise InputError(f"out must not overlap {name}: the kernel reads {name} while writing out")
    return out


def check_call(lin, x, residual, out):
    """A linear call's inputs, checked once before its kernel trusts them: x (B, K, S), residual
    and out (B, N, S); returns x and residual as C-contiguous float32."""
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[1] != lin.in_features:
        raise InputError(
            f"{lin.format} linear expects x of shape (B, {lin.in_features}, S), got "
            f"{getattr(x, 'shape', type(x).__name__)}"
        )
    x = np.ascontiguousarray(x, dtype=np.float32)
    if residual is not None:
        want = (x.shape[0], lin.out_features, x.shape[2])
        if not isinstance(residual, np.ndarray) or residual.shape != want:
            raise InputError(
                f"residual must have shape {want}, got {getattr(residual, 'shape', residual)}"
            )
        residual = np.ascontiguousarray(residual, dtype=np.float32)
    if out is not None:
        check_out(out, (x.shape[0], lin.out_features, x.shape[2]), x, residual)
    return x, residual


def act_code(activation) -> int:
    try:
        return _ACT_CODES[activation]
    except KeyError:
        raise InputError(
            f"unknown activation {activation!r}; expected one of {EPILOGUES}"
        ) from None


class DenseLinear:
    """Dense weight through BLAS; the baseline every sparse format must beat to be chosen."""

    format = "dense"
    block_shape = None

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.weight.flags.writeable = False
        self.bias.flags.writeable = False
        self.out_features, self.in_features = self.weight.shape

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + self.bias.nbytes

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.weight))

    @property
    def stored_macs(self) -> int:
        """Multiply-adds per token the kernel performs (dense: all of them)."""
        return self.out_features * self.in_features

    def __call__(self, x: np.ndarray, *, activation=None, residual=None, out=None) -> np.ndarray:
        # BLAS inside Numba's thread pool (see kernels/dense.py for why not np.matmul).
        B, _, S = x.shape
        if out is None:
            y = np.empty((B, self.out_features, S), dtype=np.float32)
        else:
            y = check_out(out, (B, self.out_features, S), x, residual)
        res, has_res = (_NO_RESIDUAL, False) if residual is None else (residual, True)
        # Enough row chunks that every thread gets a few gemms, even at batch size 1. Sized from the
        # pool size, not the thread-local get_num_threads(): BLAS rounds differently per row split,
        # and results must not depend on set_num_threads.
        chunks = -(-4 * numba.config.NUMBA_NUM_THREADS // B)
        rows = max(16, -(-self.out_features // chunks))
        dense.gemm(self.weight, x, self.bias, _ACT_CODES[activation], res, has_res, rows, y)
        return y

    def describe(self) -> dict:
        return describe_linear(self)


class _SparseLinear:
    """Shared call path of the compressed formats: input checks, then one fused kernel call."""

    format = ""
    block_shape = None

    def _store(self, data, indices, indptr, shape, bias, block, chunk_cols):
        """Keep a (trusted) CSR/BSR structure with its entries regrouped by K-chunk of
        `chunk_cols` block columns (default: `spmm.k_chunk_columns` for its density), read-only."""
        self.out_features, self.in_features = shape
        n_cols = self.in_features // block[1]
        if chunk_cols is None:
            density = data.shape[0] / max(1, (indptr.shape[0] - 1) * n_cols)
            chunk_cols = spmm.k_chunk_columns(block, density) // block[1]
        self.chunk_cols = int(min(chunk_cols, max(n_cols, 1)))
        order, self.indices, self.indptr = spmm.chunk_entries(indptr, indices, n_cols, self.chunk_cols)
        self.data, self.bias = data[order], bias
        for a in (self.data, self.indices, self.indptr, self.bias):
            a.flags.writeable = False

    def _entry_coords(self):
        """(Block) row and absolute (block) column of every stored entry, in storage order."""
        rows = np.arange(self.indptr.shape[1] - 1)
        counts = [np.diff(p) for p in self.indptr]
        row = np.concatenate([np.repeat(rows, n) for n in counts])
        chunk = np.repeat(np.arange(len(counts)), [int(n.sum()) for n in counts])
        return row, self.indices + chunk * self.chunk_cols

    @property
    def k_chunks(self) -> int:
        return int(self.indptr.shape[0])

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.indices.nbytes + self.indptr.nbytes + self.bias.nbytes

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.data))

    @property
    def stored_macs(self) -> int:
        return int(self.data.size)

    def describe(self) -> dict:
        return describe_linear(self)



class CSRLinear(_SparseLinear):
    """Compressed sparse rows, stored K-chunked (see `spmm.chunk_entries`): `data` (nnz,),
    `indices` column ids within their chunk, `indptr` (k_chunks, N + 1)."""

    format = "csr"

    def __init__(self, data, indices, indptr, shape, bias, chunk_cols=None):
        """Trusts its arguments (CSR with indptr (N + 1,)); build with `from_dense` or the
        validating `from_arrays`."""
        self._store(data, indices, indptr, shape, bias, (1, 1), chunk_cols)

    @classmethod
    def from_dense(cls, weight: np.ndarray, bias: np.ndarray, chunk_cols=None) -> "CSRLinear":
        """Keep the exact nonzeros of an (N, K) weight, row by row, columns sorted; K-chunks of
        `chunk_cols` columns (default: `spmm.k_chunk_columns`)."""
        w = check_dense(weight, bias)
        rows, cols = np.nonzero(w)
        indptr = np.zeros(w.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
        return cls(w[rows, cols], cols.astype(index_dtype(w.shape[1])), indptr, w.shape,
                   np.ascontiguousarray(bias, dtype=np.float32), chunk_cols)

    @classmethod
    def from_arrays(cls, data, indices, indptr, shape, bias) -> "CSRLinear":
        """Validate raw CSR arrays (e.g. from a checkpoint); raises CheckpointError naming the fault."""
        N, K = _check_shape(shape)
        data, indices, indptr = _check_compressed(data, indices, indptr, N, K, (1, 1), "CSR")
        return cls(data, indices, indptr, (N, K), _check_bias(bias, N))

    def to_dense(self) -> np.ndarray:
        w = np.zeros((self.out_features, self.in_features), dtype=np.float32)
        np.add.at(w, self._entry_coords(), self.data)
        return w

    def __call__(self, x: np.ndarray, *, activation=None, residual=None, out=None) -> np.ndarray:
        x, residual = check_call(self, x, residual, out)
        return spmm.spmm_csr(self.data, self.indices, self.indptr, x, self.bias,
                             act=act_code(activation), residual=residual, out=out,
                             chunk_cols=self.chunk_cols)


class BSRLinear(_SparseLinear):
    """Aligned R x C blocks, stored K-chunked like CSRLinear: `data` (nblocks, R, C), `indices`
    block-column ids within their chunk, `indptr` (k_chunks, N / R + 1)."""

    format = "bsr"

    def __init__(self, data, indices, indptr, shape, bias, chunk_cols=None):
        """Trusts its arguments (BSR with indptr (N / R + 1,)); build with `from_dense` or the
        validating `from_arrays`."""
        self.block_shape = (int(data.shape[1]), int(data.shape[2]))
        self._store(data, indices, indptr, shape, bias, self.block_shape, chunk_cols)

    @classmethod
    def from_dense(cls, weight: np.ndarray, bias: np.ndarray, block_shape=(4, 1),
                   chunk_cols=None) -> "BSRLinear":
        """Store every aligned block holding a nonzero (zeros inside kept blocks are stored too);
        K-chunks of `chunk_cols` block columns (default: `spmm.k_chunk_columns`)."""
        w = check_dense(weight, bias)
        R, C = _check_block_shape(block_shape, *w.shape, CheckpointError)
        blocks = _blocks(w, R, C)  # (N/R, K/C, R, C)
        brow, bcol = np.nonzero(blocks.any(axis=(2, 3)))
        indptr = np.zeros(w.shape[0] // R + 1, dtype=np.int64)
        np.cumsum(np.bincount(brow, minlength=w.shape[0] // R), out=indptr[1:])
        data = np.ascontiguousarray(blocks[brow, bcol])
        return cls(data, bcol.astype(index_dtype(w.shape[1] // C)), indptr, w.shape,
                   np.ascontiguousarray(bias, dtype=np.float32), chunk_cols)

    @classmethod
    def from_arrays(cls, data, indices, indptr, shape, bias) -> "BSRLinear":
        """Validate raw BSR arrays, data (nblocks, R, C); raises CheckpointError naming the fault."""
        N, K = _check_shape(shape)
        if not isinstance(data, np.ndarray) or data.ndim != 3:
            raise CheckpointError(
                f"BSR data must be a 3-D array (nblocks, R, C), got "
                f"{getattr(data, 'shape', type(data).__name__)}"
            )
        block = _check_block_shape(data.shape[1:], N, K, CheckpointError)
        data, indices, indptr = _check_compressed(data, indices, indptr, N, K, block, "BSR")
        return cls(data, indices, indptr, (N, K), _check_bias(bias, N))

    def to_dense(self) -> np.ndarray:
        R, C = self.block_shape
        blocks = np.zeros((self.out_features // R, self.in_features // C, R, C), dtype=np.float32)
        np.add.at(blocks, self._entry_coords(), self.data)
        return blocks.transpose(0, 2, 1, 3).reshape(self.out_features, self.in_features)

    def __call__(self, x: np.ndarray, *, activation=None, residual=None, out=None) -> np.ndarray:
        x, residual = check_call(self, x, residual, out)
        return spmm.spmm_bsr(self.data, self.indices, self.indptr, x, self.bias,
                             act=act_code(activation), residual=residual, out=out,
                             chunk_cols=self.chunk_cols)


# ----------------------------------------------------------------------------- format choice


def block_fill(weight: np.ndarray, block_shape) -> float:
    """nnz / (values stored by BSR with this block shape); 1.0 means the pruning fits the blocks
    exactly, 0.0 for an all-zero weight. The shape must divide the weight's shape."""
    w = np.asarray(weight)
    R, C = block_shape
    nnz = np.count_nonzero(w)
    if nnz == 0:
        return 0.0
    n_blocks = np.count_nonzero(_blocks(w, R, C).any(axis=(2, 3)))
    return nnz / (n_blocks * R * C)


def fitting_block_shapes(weight: np.ndarray) -> list:
    """Block shapes whose aligned blocks hold every nonzero with no stored zero (fill == 1)."""
    return fitting_block_shapes_of_mask(np.asarray(weight) != 0)


def fitting_block_shapes_of_mask(mask: np.ndarray) -> list:
    """`fitting_block_shapes` of a weight given its nonzero mask (weight != 0)."""
    N, K = mask.shape
    if not mask.any():
        return []
    return [(R, C) for R, C in BLOCK_SHAPES if N % R == 0 and K % C == 0 and _blocks_full(mask, R, C)]


def _blocks_full(mask: np.ndarray, R: int, C: int) -> bool:
    # Every aligned block with a nonzero is all nonzero. The first rows reject unstructured
    # weights at once: this runs for every linear at load, where block_fill took ~80 ms each.
    K = mask.shape[1]
    for m in (mask[: 16 * R], mask):
        b = m.reshape(m.shape[0] // R, R, K // C, C)
        if not np.array_equal(b.any(axis=(1, 3)), b.all(axis=(1, 3))):
            return False
    return True


def predicted_cost(weight: np.ndarray, fmt) -> float:
    """Predicted time of one layer call relative to dense BLAS (< 1: faster than dense).

    fmt is "dense", "csr" or a block shape (R, C)."""
    N, K = np.shape(weight)
    if fmt == "dense":
        return 1.0
    if fmt == "csr":
        stored, rows = np.count_nonzero(weight), N
    else:
        R, C = fmt
        fill = block_fill(weight, fmt)
        stored = np.count_nonzero(weight) / fill if fill else 0
        rows = N // R
    return (stored + _ROW_OVERHEAD[fmt] * rows) / (N * K) / RELATIVE_RATE[fmt]


def choose_format(weight: np.ndarray) -> str:
    """The cost model's pick: "dense", "csr" or "bsrRxC" (the tuner times the close ones)."""
    candidates = ["dense", "csr"] + fitting_block_shapes(weight)
    best = min(candidates, key=lambda f: predicted_cost(weight, f))
    return best if isinstance(best, str) else f"bsr{best[0]}x{best[1]}"


def build_linear(weight: np.ndarray, bias: np.ndarray, format: str, chunk_cols=None):
    """The Linear for one (N, K) weight and (N,) bias in a named format: "dense", "csr", "bsr"
    (the cheapest block shape by the cost model that fits the nonzeros exactly; ValueError if none
    does), or "bsrRxC" (that block shape, storing any zeros inside kept blocks), with K-chunks of
    `chunk_cols` (block) columns for the sparse formats (default: `spmm.k_chunk_columns`).
    "auto" is not decided here: `sparsebert.dispatch.make_linear` asks the tuner."""
    if format not in FORMATS or format == "auto":
        raise ValueError(f"unknown linear format {format!r}; expected one of {FORMATS[1:]}")
    if chunk_cols is not None and (isinstance(chunk_cols, bool) or not isinstance(chunk_cols, int)
                                   or chunk_cols < 1):
        raise ValueError(f"chunk_cols must be a positive integer or None, got {chunk_cols!r}")
    if format == "dense":
        return DenseLinear(weight, bias)
    if format == "csr":
        return CSRLinear.from_dense(weight, bias, chunk_cols)
    if format == "bsr":
        shapes = fitting_block_shapes(check_dense(weight, bias))
        if not shapes:
            raise ValueError(
                f"no block shape in {BLOCK_SHAPES} holds every nonzero of this "
                f"{np.shape(weight)} weight in full aligned blocks; use format='csr', or name a "
                f"shape such as 'bsr4x1' to store the zeros inside partly filled blocks"
            )
        block = min(shapes, key=lambda s: predicted_cost(weight, s))
    else:
        block = tuple(int(v) for v in format[3:].split("x"))
    return BSRLinear.from_dense(weight, bias, block, chunk_cols)


def describe_linear(lin) -> dict:
    """The sparsity-report row of any linear kind (format, shape, nnz, bytes, FLOPs, choice)."""
    N, K = lin.out_features, lin.in_features
    nnz = lin.nnz
    return {
        "format": lin.format if lin.block_shape is None else f"bsr{lin.block_shape[0]}x{lin.block_shape[1]}",
        "shape": (N, K),
        "block_shape": lin.block_shape,
        "nnz": nnz,
        "sparsity": 1.0 - nnz / (N * K) if N * K else 0.0,
        "nbytes": int(lin.nbytes),
        "dense_nbytes": 4 * (N * K + N),
        "flops_per_token": 2 * lin.stored_macs,
        "flops_skipped_per_token": 2 * (N * K - lin.stored_macs),
        "k_chunks": getattr(lin, "k_chunks", 1),
        "choice": getattr(lin, "choice", None),
    }


# ----------------------------------------------------------------------------- validation


def _check_shape(shape):
    try:
        N, K = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise CheckpointError(f"weight shape must be two integers (N, K), got {shape!r}") from None
    if N < 1 or K < 1:
        raise CheckpointError(f"weight shape must be positive, got {(N, K)}")
    return N, K


def _check_block_shape(block_shape, N, K, error):
    block = tuple(int(v) for v in block_shape)
    if block not in BLOCK_SHAPES:
        raise error(f"block shape {block} has no kernel; supported: {BLOCK_SHAPES}")
    R, C = block
    if N % R or K % C:
        raise error(
            f"block shape {block} does not divide the weight shape {(N, K)}; ragged edges are "
            f"not supported: use CSR or a block shape that divides both dimensions"
        )
    return block


def check_dense(weight, bias) -> np.ndarray:
    w = np.asarray(weight)
    if w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        raise CheckpointError(f"weight must be a 2-D float array (N, K), got {w.dtype} {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    if not np.isfinite(w).all():
        raise CheckpointError(f"weight {w.shape} contains NaN or Inf")
    _check_bias(bias, w.shape[0])
    return w


def _check_bias(bias, N) -> np.ndarray:
    b = np.asarray(bias)
    if b.shape != (N,) or not np.issubdtype(b.dtype, np.floating):
        raise CheckpointError(f"bias must be a float array of shape ({N},), got {b.dtype} {b.shape}")
    b = np.ascontiguousarray(b, dtype=np.float32)
    if not np.isfinite(b).all():
        raise CheckpointError("bias contains NaN or Inf")
    return b


def _check_compressed(data, indices, indptr, N, K, block, kind):
    """Everything spmm kernels trust, checked once; returns (data f32, indices i32, indptr i64)."""
    R, C = block
    for name, a in (("data", data), ("indices", indices), ("indptr", indptr)):
        if not isinstance(a, np.ndarray):
            raise CheckpointError(f"{kind} {name} must be a numpy array, got {type(a).__name__}")
    if not np.issubdtype(data.dtype, np.floating):
        raise CheckpointError(f"{kind} data must be floating point, got {data.dtype}")
    if R * C == 1 and data.ndim != 1:
        raise CheckpointError(f"{kind} data must be 1-D (nnz,), got shape {data.shape}")
    for name, a in (("indices", indices), ("indptr", indptr)):
        if a.dtype not in (np.int32, np.int64) or a.ndim != 1:
            raise CheckpointError(f"{kind} {name} must be a 1-D int32/int64 array, got {a.dtype} {a.shape}")
    n_rows = N // R
    if indptr.shape[0] != n_rows + 1:
        raise CheckpointError(
            f"{kind} indptr must have {n_rows + 1} entries ({'block ' if R * C > 1 else ''}rows + 1), "
            f"got {indptr.shape[0]}"
        )
    nnz = data.shape[0]
    if indices.shape[0] != nnz:
        raise CheckpointError(f"{kind} indices has {indices.shape[0]} entries but data has {nnz}")
    if indptr[0] != 0 or indptr[-1] != nnz:
        raise CheckpointError(
            f"{kind} indptr must start at 0 and end at nnz={nnz}, got {indptr[0]} .. {indptr[-1]}"
        )
    if np.any(np.diff(indptr) < 0):
        bad = int(np.argmax(np.diff(indptr) < 0))
        raise CheckpointError(f"{kind} indptr decreases at row {bad}: {indptr[bad]} > {indptr[bad + 1]}")
    cols = K // C
    if nnz and (indices.min() < 0 or indices.max() >= cols):
        raise CheckpointError(
            f"{kind} indices must lie in [0, {cols}), got range [{indices.min()}, {indices.max()}]"
        )
    if not np.isfinite(data).all():
        raise CheckpointError(f"{kind} data contains NaN or Inf")
    return (np.ascontiguousarray(data, dtype=np.float32),
            np.ascontiguousarray(indices, dtype=index_dtype(cols)),
            np.ascontiguousarray(indptr, dtype=np.int64))


def _blocks(w: np.ndarray, R: int, C: int) -> np.ndarray:
    N, K = w.shape
    return w.reshape(N // R, R, K // C, C).transpose(0, 2, 1, 3)


# ----------------------------------------------------------------------------- compilation


def warmup(formats=("dense", "csr") + tuple(f"bsr{r}x{c}" for r, c in BLOCK_SHAPES)) -> dict:
    """Compile (or load from Numba's cache) each format's kernels for the signatures Linear calls
    use, with and without residual; returns {format: seconds}, so load time can report JIT apart."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    b = np.zeros(8, dtype=np.float32)
    x = rng.standard_normal((1, 8, 3)).astype(np.float32)
    times = {}
    for fmt in formats:
        start = time.perf_counter()
        lin = build_linear(w, b, fmt)
        for act in EPILOGUES:
            lin(x, activation=act)
        lin(x, activation="gelu", residual=np.zeros((1, 8, 3), dtype=np.float32))
        times[fmt] = time.perf_counter() - start
    return times
