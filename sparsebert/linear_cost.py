"""The float formats' hand-calibrated cost model, and which block shapes fit a weight's nonzeros.

`predicted_cost(weight, fmt)` predicts one layer call's time relative to dense BLAS from the values
a format stores and the (block) rows it starts; `choose_format` gives the model's pick. It is not
what a model runs: `sparsebert.tuning` times the candidates on this machine and uses the model only
to skip hopeless ones, and `sparsebert.linear.build_linear("bsr")` uses it to pick among block
shapes that fit. `fitting_block_shapes` (and `_of_mask`) list the block shapes whose aligned blocks
hold every nonzero with no stored zero; `block_fill` measures how well a shape fits.

Left out: building linears (`sparsebert.linear`), timing (`sparsebert.tuning`), int8 kinds
(`sparsebert.quant.linear` keeps its own thresholds).
"""

from __future__ import annotations

import numpy as np

from .kernels.spmm import BLOCK_SHAPES

# Cost model: throughput per *stored* multiply-add relative to numpy's BLAS sgemm on the same
# layer, from benchmarks/bench_linear.py on the 2-core Zen 4 dev machine (B=32, S=128, BERT-base
# shapes; sgemm ~150-190 GFLOP/s there), plus a per-(block) row cost in stored values (each row
# starts once per K-chunk). CSR measured 0.6-0.7 at 50-80% sparsity and 0.35-0.5 at 90-95% (the
# row term), so CSR already beats dense from ~40-50% sparsity (1.1-1.3x at 50%, 2x at 70%);
# 4x1 blocks ~1.0 with a larger row term (0.5-0.8 at 90%), 8x1 and 2x2 somewhat below 4x1, 1x4 ~0.55.
RELATIVE_RATE = {"dense": 1.0, "csr": 0.65, (4, 1): 1.0, (8, 1): 0.9, (2, 2): 0.8, (1, 4): 0.55}
_ROW_OVERHEAD = {"csr": 30.0, (4, 1): 100.0, (8, 1): 150.0, (2, 2): 100.0, (1, 4): 60.0}


def block_view(w: np.ndarray, R: int, C: int) -> np.ndarray:
    """The (N/R, K/C, R, C) view of an (N, K) weight's aligned R x C blocks; R, C divide N, K."""
    N, K = w.shape
    return w.reshape(N // R, R, K // C, C).transpose(0, 2, 1, 3)


def block_fill(weight: np.ndarray, block_shape) -> float:
    """nnz / (values stored by BSR with this block shape); 1.0 means the pruning fits the blocks
    exactly, 0.0 for an all-zero weight. The shape must divide the weight's shape."""
    w = np.asarray(weight)
    R, C = block_shape
    nnz = np.count_nonzero(w)
    if nnz == 0:
        return 0.0
    n_blocks = np.count_nonzero(block_view(w, R, C).any(axis=(2, 3)))
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
