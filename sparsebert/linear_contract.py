"""What every linear kind shares, float (`sparsebert.linear`) and int8 (`sparsebert.quant.linear`).

The contract a kernel trusts is established here, once, at the boundary:

- at the call: `check_call` (x (B, K, S), residual and `out=` (B, N, S), as C-contiguous float32),
  `check_out` (a reusable output that must not overlap the inputs), `act_code` (the epilogue's
  activation name -> the kernels' code);
- at load: `check_dense` (a finite float (N, K) weight and (N,) bias), and for raw compressed arrays
  from a checkpoint `check_shape`, `check_bias`, `check_block_shape` and `check_compressed`, which
  raise `CheckpointError` naming the fault, so the spmm kernels may trust in-range indices, a
  monotone indptr and finite values;
- `index_dtype`, the column-index width every compressed kind stores;
- `describe_linear`, the sparsity-report row any kind returns from `describe()`.

Left out: the linear kinds themselves and any choice between formats (`sparsebert.linear`,
`sparsebert.linear_cost`, `sparsebert.dispatch`).
"""

from __future__ import annotations

import numpy as np

from .errors import CheckpointError, InputError
from .kernels.spmm import BLOCK_SHAPES

# Activation names the model passes to a Linear's epilogue, and the kernels' code for each.
EPILOGUES = (None, "gelu", "gelu_tanh", "relu")
ACT_CODES = {None: 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}


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
        return ACT_CODES[activation]
    except KeyError:
        raise InputError(
            f"unknown activation {activation!r}; expected one of {EPILOGUES}"
        ) from None


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


# ----------------------------------------------------------------------------- validation at load


def check_shape(shape):
    try:
        N, K = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise CheckpointError(f"weight shape must be two integers (N, K), got {shape!r}") from None
    if N < 1 or K < 1:
        raise CheckpointError(f"weight shape must be positive, got {(N, K)}")
    return N, K


def check_block_shape(block_shape, N, K, error):
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
    check_bias(bias, w.shape[0])
    return w


def check_bias(bias, N) -> np.ndarray:
    b = np.asarray(bias)
    if b.shape != (N,) or not np.issubdtype(b.dtype, np.floating):
        raise CheckpointError(f"bias must be a float array of shape ({N},), got {b.dtype} {b.shape}")
    b = np.ascontiguousarray(b, dtype=np.float32)
    if not np.isfinite(b).all():
        raise CheckpointError("bias contains NaN or Inf")
    return b


def check_compressed(data, indices, indptr, N, K, block, kind):
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
