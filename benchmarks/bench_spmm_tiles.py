"""Experiment: the spmm drivers with the generated (SLP, ymm on Intel) tiles vs explicit zmm tiles.

    python benchmarks/bench_spmm_tiles.py [--threads 2] [--batch 32] [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np

import sparsebert  # noqa: F401  (sets up the kernels package)
from sparsebert.kernels import _spmm_generated as gen
from sparsebert.kernels import gen_spmm, spmm, spmm_epilogue, spmm_zmm
from sparsebert.kernels.jit import FASTMATH

_PK = numba.njit(fastmath=FASTMATH, nogil=True, parallel=True)
BLOCKS = {"csr": (1, 1), "bsr4x1": (4, 1), "bsr1x4": (1, 4), "bsr2x2": (2, 2), "bsr8x1": (8, 1)}


def _driver(name, tile_fn, tm):
    R, C = BLOCKS[name]
    src = gen_spmm._driver(name, R, C, tm).replace("@parallel_kernel", "@_pk")
    ns = dict(np=np, prange=numba.prange, _pk=_PK, copy_row=spmm_epilogue.copy_row,
              epilogue_inplace=spmm_epilogue.epilogue_inplace, pack_panel=spmm_epilogue.pack_panel,
              pack_sequences=spmm_epilogue.pack_sequences, zero_rows=spmm_epilogue.zero_rows)
    ns[f"_tile_{name}_w8"] = getattr(gen, f"_tile_{name}_w8")
    ns[f"_tile_{name}_w{tm}"] = tile_fn
    exec(src, ns)
    return ns[f"spmm_{name}"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--formats", default="csr,bsr4x1,bsr1x4")
    ap.add_argument("--sparsity", default="0.8,0.9")
    ap.add_argument("--shapes", default="2304x768,768x768,3072x768,768x3072")
    a = ap.parse_args()
    numba.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    S = 128
    for name in a.formats.split(","):
        R, C = BLOCKS[name]
        gen_tm = spmm.tile_width((R, C))
        variants = {f"gen{gen_tm}": (getattr(gen, f"spmm_{name}"), gen_tm)}
        cands = {"csr": [(64, 2), (128, 1)], "bsr4x1": [(32, 1), (64, 1)], "bsr1x4": [(64, 1), (128, 1)],
                 "bsr2x2": [(64, 1)], "bsr8x1": [(32, 1)]}[name]
        for T, sets in cands:
            variants[f"zmm{T}x{sets}"] = (_driver(name, spmm_zmm.make_tile_kernel(R, C, T, sets), T), T)
        for sparsity in map(float, a.sparsity.split(",")):
            for shape in a.shapes.split(","):
                N, K = map(int, shape.split("x"))
                keep = rng.random((N // R, K // C)) >= sparsity
                w = rng.standard_normal((N, K)).astype(np.float32) * np.repeat(np.repeat(keep, R, 0), C, 1)
                bias = rng.standard_normal(N).astype(np.float32)
                x = rng.standard_normal((a.batch, K, S)).astype(np.float32)
                ref = np.matmul(w, x) + bias[None, :, None]
                brow, bcol = np.nonzero(keep)
                indptr = np.concatenate([[0], np.cumsum(np.bincount(brow, minlength=N // R))])
                blocks = w.reshape(N // R, R, K // C, C).transpose(0, 2, 1, 3)[brow, bcol]  # (nb, R, C)
                setups = {}
                for vname, (fn, tm) in variants.items():
                    cols = max(C, spmm.L1_PANEL_BYTES // (4 * tm) // C * C)
                    want = spmm.ENTRIES_PER_CHUNK["csr" if R * C == 1 else "bsr"] / (1 - sparsity) * C
                    while cols < want:
                        cols *= 2
                    cc = cols // C
                    order, local, ptr = spmm.chunk_entries(indptr, bcol.astype(np.uint16), K // C, cc)
                    data = np.ascontiguousarray(blocks[order]).reshape(-1)
                    y = np.empty((a.batch, N, S), np.float32)
                    n_rc = spmm._row_chunks(a.batch, S, tm, N // R, R)
                    args = (data, local, ptr, cc, x, bias, 0, spmm._NO_RESIDUAL, False, n_rc, y)
                    fn(*args)
                    err = float(np.abs(y - ref).max() / np.abs(ref).max())
                    assert err < 1e-5, (vname, err)
                    setups[vname] = (fn, args, [])
                for _ in range(a.rounds):
                    for vname, (fn, args, ts) in setups.items():
                        t = time.perf_counter()
                        fn(*args)
                        fn(*args)
                        ts.append((time.perf_counter() - t) / 2)
                useful = keep.sum() * R * C * a.batch * S
                line = f"{name} {sparsity:.0%} {N}x{K}:"
                for vname, (_, _, ts) in setups.items():
                    line += f"  {vname} {useful / statistics.median(ts) / 1e9:5.1f}"
                print(line + "  GMAC/s", flush=True)


if __name__ == "__main__":
    main()
