"""The float weight matmuls on sparsebert's activation layout: dense, CSR and BSR, built by name.

A `Linear` computes `Y[b] (N, S) = W (N, K) @ X[b] (K, S) + bias`, optionally followed by an
activation and a residual add, on activations laid out `(B, F, S)` (see `sparsebert.kernels`);
`lin(x, activation=None, residual=None, out=None)` returns a new array, or fills `out`.
This module owns the float weight formats: the dense path goes through BLAS (single-threaded
gemms inside Numba's thread pool, `kernels/dense.py`); sparse paths call the Numba kernels in
`sparsebert.kernels.spmm`:

- `CSRLinear`: any sparsity pattern (unstructured pruning).
- `BSRLinear`: block-pruned weights whose nonzeros fill aligned R x C blocks (4x1, 8x1, 2x2, 1x4);
  one activation load then feeds R output rows, so it runs ~2x the CSR rate per nonzero.

`build_linear(weight, bias, format)` builds one of them by name. Which format a model's linear gets
is decided above this module, in `sparsebert.dispatch` ("auto": the format and K-chunk width
measured fastest on this machine by `sparsebert.tuning`); the cost model (`sparsebert.linear_cost`,
calibrated by hand on one dev machine, benchmarks/bench_linear.py) only prunes hopeless candidates
before timing, picks the block shape for "bsr", and `choose_format` still gives its prediction.
`from_arrays` constructors validate raw compressed arrays (from a checkpoint) once, so the kernels
can trust them. `warmup()` compiles (or loads from Numba's cache) every kernel signature the model
uses, so JIT time is paid, and measured, at load rather than at the first call.

The checks and the describe() row every linear kind shares, float and int8 (`act_code`,
`check_out`, `check_call`, `describe_linear`, `index_dtype`, the validators) live in
`sparsebert.linear_contract`; int8 weights in `sparsebert.quant.linear`. The names that lived here
before (the helpers, the cost model's `predicted_cost`, `choose_format`, `fitting_block_shapes`,
...) are still importable from this module.

Left out: per-call re-tuning.
"""
from __future__ import annotations

import time

import numba
import numpy as np

from .errors import CheckpointError
from .kernels import dense, spmm
from .linear_contract import (
    ACT_CODES, EPILOGUES, act_code, check_bias, check_block_shape, check_call, check_compressed,
    check_dense, check_out, check_shape, describe_linear, index_dtype)
from .linear_cost import block_view, fitting_block_shapes, predicted_cost
# Defined here before the cost model had a module of its own; still importable from here.
from .linear_cost import (  # noqa: F401
    RELATIVE_RATE, block_fill, choose_format, fitting_block_shapes_of_mask)

_NO_RESIDUAL = np.zeros((1, 1, 1), dtype=np.float32)

BLOCK_SHAPES = spmm.BLOCK_SHAPES  # (R, C) pairs with a kernel, e.g. (4, 1)
FORMATS = ("auto", "dense", "csr", "bsr") + tuple(f"bsr{r}x{c}" for r, c in BLOCK_SHAPES)


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
        dense.gemm(self.weight, x, self.bias, ACT_CODES[activation], res, has_res, rows, y)
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
        N, K = check_shape(shape)
        data, indices, indptr = check_compressed(data, indices, indptr, N, K, (1, 1), "CSR")
        return cls(data, indices, indptr, (N, K), check_bias(bias, N))

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
        R, C = check_block_shape(block_shape, *w.shape, CheckpointError)
        blocks = block_view(w, R, C)  # (N/R, K/C, R, C)
        brow, bcol = np.nonzero(blocks.any(axis=(2, 3)))
        indptr = np.zeros(w.shape[0] // R + 1, dtype=np.int64)
        np.cumsum(np.bincount(brow, minlength=w.shape[0] // R), out=indptr[1:])
        data = np.ascontiguousarray(blocks[brow, bcol])
        return cls(data, bcol.astype(index_dtype(w.shape[1] // C)), indptr, w.shape,
                   np.ascontiguousarray(bias, dtype=np.float32), chunk_cols)

    @classmethod
    def from_arrays(cls, data, indices, indptr, shape, bias) -> "BSRLinear":
        """Validate raw BSR arrays, data (nblocks, R, C); raises CheckpointError naming the fault."""
        N, K = check_shape(shape)
        if not isinstance(data, np.ndarray) or data.ndim != 3:
            raise CheckpointError(
                f"BSR data must be a 3-D array (nblocks, R, C), got "
                f"{getattr(data, 'shape', type(data).__name__)}"
            )
        block = check_block_shape(data.shape[1:], N, K, CheckpointError)
        data, indices, indptr = check_compressed(data, indices, indptr, N, K, block, "BSR")
        return cls(data, indices, indptr, (N, K), check_bias(bias, N))

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
