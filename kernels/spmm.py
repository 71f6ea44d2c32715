"""Sparse-weight x dense-activation matmuls with a fused epilogue: `spmm_csr`, `spmm_bsr`.

Computes, for every sequence b of a batch in sparsebert's layout (see `sparsebert.kernels`),

    Y[b] (N, S) = act(W (N, K) @ X[b] (K, S) + bias[:, None]) (+ residual[b])

with W in CSR or in BSR with aligned R x C blocks (4x1, 8x1, 2x2, 1x4). act: 0 none, 1 exact GELU
(vectorised erf, |err| <= 1e-6), 2 tanh GELU, 3 relu.

How it is fast (see benchmarks/bench_linear.py): the work is split into (sequence, token tile,
row chunk) tasks over one prange, so batch 1 still feeds both cores; a task walks its rows'
nonzeros once per token tile (64 tokens for CSR, 32 for 4x1), keeping a row block x tile of sums
in registers (generated unrolled locals, `gen_spmm.py`; LLVM's SLP pass packs them into 8-wide
FMAs) and streaming the matching X row slices, which stay in L2. Blocks let one X load feed R rows.
Sequences shorter than a tile are packed several to a panel. Measured on the 2-core dev machine
(3072x768, 4096 tokens, 90% sparse): CSR ~70-80 useful GFLOP/s, 4x1 ~100-150.
Tried and dropped (no gain there): K-chunking so the X panel fits L1, two CSR rows per pass,
128-token CSR tiles, 512-bit vectors (CSR 20% slower, 4x1 10% faster).

Contract of the wrappers below (the kernels in `_spmm_generated.py` trust it; `sparsebert.linear`
validates it once when a weight is built): x float32 C-contiguous (B, K, S); data
float32 C-contiguous, (nnz,) for CSR or (nblocks, R, C) for BSR; indices int32 (block) column
ids in range; indptr int32/int64 (rows + 1,) non-decreasing from 0 to nnz; bias float32 (N,);
residual None or float32 C-contiguous (B, N, S). Indices need not be sorted within a row.
Left out: K-chunking (K x 64 tokens x 4 B <= 768 KiB fits this machine's 2 MiB L2 for BERT's K).
"""

from __future__ import annotations

import numba
import numpy as np

from . import _spmm_generated as _gen
from .gen_spmm import FORMATS

# Tasks per thread the prange schedule aims for, so uneven rows still balance.
_TASKS_PER_THREAD = 8
_NO_RESIDUAL = np.zeros((1, 1, 1), dtype=np.float32)

BSR_KERNELS = {(R, C): getattr(_gen, f"spmm_{name}") for name, R, C, _ in FORMATS if name != "csr"}
BLOCK_SHAPES = tuple(BSR_KERNELS)
# Main token-tile width of each kernel (tails use 8).
_TILE = {("csr" if name == "csr" else (R, C)): width for name, R, C, width in FORMATS}


def _row_chunks(B: int, S: int, tile: int, n_rows: int) -> int:
    # Token tiles the driver makes (see gen_spmm): short sequences are packed tile // S per tile.
    tiles = -(-B // (tile // S)) if S < tile else B * (S // tile + -(-(S % tile) // 8))
    want = _TASKS_PER_THREAD * numba.get_num_threads()
    return int(max(1, min(n_rows, -(-want // max(tiles, 1)))))


def _out(x, n_out, out):
    if out is None:
        return np.empty((x.shape[0], n_out, x.shape[2]), dtype=np.float32)
    return out


def spmm_csr(data, indices, indptr, x, bias, *, act=0, residual=None, out=None):
    """Y (B, N, S) = act(W @ X[b] + bias) (+ residual) with W (N, K) in CSR; returns Y."""
    n = indptr.shape[0] - 1
    y = _out(x, n, out)
    if y.size == 0:
        return y
    has_res = residual is not None
    _gen.spmm_csr(data, indices, indptr, x, bias, act, residual if has_res else _NO_RESIDUAL,
                  has_res, _row_chunks(x.shape[0], x.shape[2], _TILE["csr"], n), y)
    return y


def spmm_bsr(data, indices, indptr, x, bias, *, act=0, residual=None, out=None):
    """Y (B, N, S) = act(W @ X[b] + bias) (+ residual) with W in BSR, data (nblocks, R, C)."""
    R, C = data.shape[1], data.shape[2]
    n_brows = indptr.shape[0] - 1
    y = _out(x, n_brows * R, out)
    if y.size == 0:
        return y
    has_res = residual is not None
    BSR_KERNELS[(R, C)](data.reshape(-1), indices, indptr, x, bias, act,
                        residual if has_res else _NO_RESIDUAL, has_res,
                        _row_chunks(x.shape[0], x.shape[2], _TILE[(R, C)], n_brows), y)
    return y
