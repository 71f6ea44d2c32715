"""Sparse-weight x dense-activation matmuls with a fused epilogue: `spmm_csr`, `spmm_bsr`.

Computes, for every sequence b of a batch in sparsebert's layout (see `sparsebert.kernels`),

    Y[b] (N, S) = act(W (N, K) @ X[b] (K, S) + bias[:, None]) (+ residual[b])

with W in CSR or in BSR with aligned R x C blocks (4x1, 8x1, 2x2, 1x4). act: 0 none, 1 exact GELU
(vectorised erf, |err| <= 1e-6), 2 tanh GELU, 3 relu.

How it is fast (see benchmarks/bench_linear.py): the work is split into (sequence, token tile,
row chunk) tasks over one prange, so batch 1 still feeds both cores; a task keeps a row block x
tile of sums in registers (generated unrolled locals, `gen_spmm.py`; LLVM's SLP pass packs them
into 512-bit FMAs) while it walks the row's nonzeros, 64 tokens a tile for CSR, 32 for 4x1.
Entries are stored grouped by K-chunk (`chunk_entries`): the task copies its X tile into a
contiguous panel once, sweeps all its rows over one L1-sized chunk of it, and moves to the next
chunk, the rows' partial sums waiting in a contiguous scratch in L2. In place, X rows are S floats
apart (512 B at S = 128), so a tile's slice of them used half the L1 sets and came mostly from L2;
packed and chunked, 90%-sparse CSR went from 41-85 to 67-97 useful GFLOP/s on this 2-core Zen 4
(768x3072: 41 -> 97) and 80% from 52-64 to 86-114. Packing the whole tile up front instead of one
chunk at a time, with the sums in a scratch instead of in Y, gained another 1.15-1.3x (Zen 4,
2026-12-06: 2304x768 at 90% 17.1 -> 12.7 ms at B=32 x 128). Tasks with few rows (batch 1) read X in place. Blocks
let one X load feed R rows. Sequences shorter than a tile are packed several to a panel.
On CPUs with AVX-512, CSR and 4x1 use explicit 512-bit tiles instead (`spmm_zmm`: LLVM's SLP
pass builds ymm code on Intel server cores), 64 tokens wide; the generated tiles stay for AVX2
hosts and for the other block shapes. Tried and dropped (generated tiles, Zen 4): two CSR rows per
pass; 128-token CSR tiles and 64-token 4x1 tiles (no gain there); a tile that branches between a constant start and loading its partial sums (LLVM then
built the accumulators lane by lane, 2x slower). The driver zeroes the rows instead, and adds
the bias after the products, as dense BLAS + bias does: starting the sums from the bias moved
MiniLM's sparse-vs-dense difference from 2e-6 to 1.4e-5.

Contract of the wrappers below (the kernels in `_spmm_generated.py` trust it; `sparsebert.linear`
validates it once when a weight is built): x float32 C-contiguous (B, K, S); data
float32 C-contiguous, (nnz,) for CSR or (nblocks, R, C) for BSR; indices int32/uint16 (block)
column ids in range; indptr int32/int64 (rows + 1,) non-decreasing from 0 to nnz, or, with
chunk_cols, the (n_chunks, rows + 1) pointer of `chunk_entries` with chunk-local indices;
bias float32 (N,); residual None or float32 C-contiguous (B, N, S). Indices need not be sorted
within a row.
"""

from __future__ import annotations

import numba
import numpy as np

from . import _spmm_generated as _gen
from .gen_spmm import FORMATS, PACK_MIN_ROWS
from .spmm_zmm import ZMM

# Tasks per thread the prange schedule aims for at small batches (large ones have tiles enough).
# Fewer, larger tasks keep more rows per task, so they pack X panels (PACK_MIN_ROWS) and pack
# each panel once: BERT-base 12L 90% at batch 1 x 128, 2 threads, Sapphire Rapids, zmm tiles:
# 54.1 ms at 8 per thread, 54.2 at 4, 48.3 at 2, 45.7 at 1; 1 x 40 23.4 -> 19.7 ms and 2 x 128
# 68.0 -> 64.9 from 8 to 2; 4 x 128 unchanged. 1 leaves tails unbalanced, so 2.
_TASKS_PER_THREAD = 2
# A task's rows keep their partial sums in L2 between K-chunks (a contiguous scratch, next to the
# task's packed X tile): at most this many bytes of them. BERT-base at B=32 x 128, Zen 4 (1 MiB L2
# per core): one task for all 2304 qkv rows (576 KiB) ran 4-10% faster than three of 768.
_TASK_ROW_BYTES = 1 << 20
_NO_RESIDUAL = np.zeros((1, 1, 1), dtype=np.float32)

# Each format's driver and main token-tile width (tails use 8): the zmm-tile driver where the
# target CPU has AVX-512 and the format has one (see spmm_zmm), else the generated tiles'.
_KERNEL = {("csr" if name == "csr" else (R, C)): (getattr(_gen, f"spmm_{name}_z"), TZ) if ZMM and TZ
           else (getattr(_gen, f"spmm_{name}"), TM) for name, R, C, TM, TZ in FORMATS}
BSR_KERNELS = {key: fn for key, (fn, _) in _KERNEL.items() if key != "csr"}
BLOCK_SHAPES = tuple(BSR_KERNELS)
_TILE = {key: width for key, (_, width) in _KERNEL.items()}


def _row_chunks(B: int, S: int, tile: int, n_brows: int, R: int) -> int:
    # Token tiles the driver makes (see gen_spmm): short sequences are packed tile // S per tile.
    tiles = -(-B // (tile // S)) if S < tile else B * (S // tile + -(-(S % tile) // 8))
    want = _TASKS_PER_THREAD * numba.get_num_threads()
    by_cache = -(-n_brows * R * tile * 4 // _TASK_ROW_BYTES)
    return int(max(1, min(n_brows, max(by_cache, -(-want // max(tiles, 1))))))


def tile_width(block) -> int:
    """Main token-tile width of the kernel for block (R, C) ((1, 1): CSR)."""
    return _TILE["csr" if tuple(block) == (1, 1) else tuple(block)]


def packs_panels(B: int, S: int, n_rows: int, block) -> bool:
    """Whether a (B, K, S) call on an n_rows-row weight with block (R, C) ((1, 1): CSR) copies its
    X tiles into L1 panels per K-chunk (the path BERT layers take at B=32 x 128), rather than
    reading X in place or packing short sequences; the tests use it to prove they reach it."""
    R, C = block
    tile = _TILE["csr" if (R, C) == (1, 1) else (R, C)]
    if S < tile:
        return False
    n_brows = n_rows // R
    chunks = _row_chunks(B, S, tile, n_brows, R)
    return -(-n_brows // chunks) * R >= PACK_MIN_ROWS


# K-chunk sizing (benchmarks/bench_linear.py, B=32 x 128 tokens, BERT-base shapes, 2 cores): the X
# panel slice of one chunk should stay in L1 (32 KiB L1d per core here), columns = bytes / (4 B *
# tile width); but each (row, chunk) pair also pays a loop start, so at high sparsity chunks widen
# until a row holds about ENTRIES_PER_CHUNK entries in one (95% CSR: 256 columns 82 vs 128
# columns 66 useful GFLOP/s; 4x1 at 90%: 512 columns ~10% over 256).
L1_PANEL_BYTES = 32 << 10
ENTRIES_PER_CHUNK = {"csr": 12, "bsr": 48}


def k_chunk_columns(block, density: float) -> int:
    """Weight columns per K-chunk for block shape (R, C) ((1, 1) for CSR), given the fraction of
    (block) positions stored; a power-of-two multiple of the L1-sized panel, a multiple of C."""
    R, C = block
    csr = (R, C) == (1, 1)
    width = _TILE["csr" if csr else (R, C)]
    cols = max(C, L1_PANEL_BYTES // (4 * width) // C * C)
    want = ENTRIES_PER_CHUNK["csr" if csr else "bsr"] / max(density, 1e-6) * C
    while cols < want and cols < 1 << 16:
        cols *= 2
    return cols


def chunk_entries(indptr, indices, n_cols, chunk_cols):
    """Regroup CSR/BSR entries by K-chunk, the layout the kernels take.

    indptr (rows + 1,) and indices ((block-)column ids < n_cols) describe a validated structure;
    entry p belongs to chunk indices[p] // chunk_cols. Returns (order, local, ptr): entries[order]
    are grouped by chunk, then row, keeping their order within a row; local = their indices
    counted from their chunk's first column; ptr (n_chunks, rows + 1) int32 (int64 past 2**31
    entries) bounds each (chunk, row) run: ptr[c, i] <= p < ptr[c, i + 1]."""
    rows = indptr.shape[0] - 1
    n_chunks = max(1, -(-n_cols // chunk_cols))
    row_of = np.repeat(np.arange(rows, dtype=np.int64), np.diff(indptr))
    key = indices.astype(np.int64) // chunk_cols * rows + row_of
    order = np.argsort(key, kind="stable")
    flat = np.zeros(n_chunks * rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(key, minlength=n_chunks * rows), out=flat[1:])
    ptr = flat[np.arange(n_chunks)[:, None] * rows + np.arange(rows + 1)[None, :]]
    if flat[-1] < 1 << 31:  # half the pointer bytes: (chunks x rows) is ~10% of a 90%-sparse layer
        ptr = ptr.astype(np.int32)
    local = (indices[order] % chunk_cols).astype(indices.dtype)
    return order, local, ptr


def _out(x, n_out, out):
    if out is None:
        return np.empty((x.shape[0], n_out, x.shape[2]), dtype=np.float32)
    return out


def _chunk_ptr(indptr, chunk_cols, n_cols):
    # A plain CSR/BSR row pointer is the one-chunk case of the kernels' (n_chunks, rows + 1) ptr.
    if indptr.ndim == 1:
        return indptr.reshape(1, -1), max(n_cols, 1)
    return indptr, chunk_cols


def spmm_csr(data, indices, indptr, x, bias, *, act=0, residual=None, out=None, chunk_cols=None):
    """Y (B, N, S) = act(W @ X[b] + bias) (+ residual) with W (N, K) in CSR; returns Y.

    indptr is a CSR row pointer (N + 1,), or with chunk_cols the (n_chunks, N + 1) pointer of
    `chunk_entries` (indices then local to each chunk)."""
    ptr, kc = _chunk_ptr(indptr, chunk_cols, x.shape[1])
    n = ptr.shape[1] - 1
    y = _out(x, n, out)
    if y.size == 0:
        return y
    has_res = residual is not None
    _KERNEL["csr"][0](data, indices, ptr, kc, x, bias, act, residual if has_res else _NO_RESIDUAL,
                      has_res, _row_chunks(x.shape[0], x.shape[2], _TILE["csr"], n, 1), y)
    return y


def spmm_bsr(data, indices, indptr, x, bias, *, act=0, residual=None, out=None, chunk_cols=None):
    """Y (B, N, S) = act(W @ X[b] + bias) (+ residual) with W in BSR, data (nblocks, R, C);
    indptr (block rows + 1,), or chunked as in `spmm_csr` (chunk_cols in block columns)."""
    R, C = data.shape[1], data.shape[2]
    ptr, kc = _chunk_ptr(indptr, chunk_cols, x.shape[1] // C)
    n_brows = ptr.shape[1] - 1
    y = _out(x, n_brows * R, out)
    if y.size == 0:
        return y
    has_res = residual is not None
    BSR_KERNELS[(R, C)](data.reshape(-1), indices, ptr, kc, x, bias, act,
                        residual if has_res else _NO_RESIDUAL, has_res,
                        _row_chunks(x.shape[0], x.shape[2], _TILE[(R, C)], n_brows, R), y)
    return y
