"""Micro-benchmark of one linear layer: dense BLAS vs the CSR / BSR kernels of sparsebert.linear.

For each layer shape, token batch (B, S), sparsity and format it times `Linear(x)` (bias epilogue
included) interleaved with plain `np.matmul(W, X)` (the numpy sgemm baseline) and with the
project's own `DenseLinear`, and reports medians, useful GFLOP/s (2 * nnz * tokens / time) and the
speedup over the sgemm in the same run.
Unstructured pruning for CSR; aligned block pruning for BSR formats. Kernel compile / cache-load
time is measured apart by `sparsebert.linear.warmup()` before anything is timed.

    python benchmarks/bench_linear.py                      # default table
    python benchmarks/bench_linear.py --json out.json --repeats 7

Two thread-pool settings are made here, before numpy and Numba load, unless the caller set them
(both are recorded in the JSON):
- OPENBLAS_THREAD_TIMEOUT=4: OpenBLAS workers otherwise spin ~0.1 s after each sgemm and steal
  both cores from the Numba kernel timed right after it (sparse calls looked up to 2x slower).
- OMP_WAIT_POLICY=PASSIVE: with libgomp's default spinning, every parallel region on this shared
  2-core machine cost ~7-10 ms whenever other processes ran (batch-1 calls: 7 ms instead of
  0.4 ms); passive waiting leaves batch-32 times unchanged.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402

from sparsebert import dispatch, linear  # noqa: E402

DEFAULT_SHAPES = ((3072, 768), (768, 3072), (768, 768))
DEFAULT_BATCHES = ((32, 128), (1, 128))
DEFAULT_CASES = (
    ("csr", 0.7), ("csr", 0.8), ("csr", 0.9), ("csr", 0.95),
    ("bsr4x1", 0.9), ("bsr2x2", 0.9), ("bsr8x1", 0.9), ("bsr1x4", 0.9), ("bsr4x1", 0.8),
)


def pruned_weight(rng, N, K, sparsity, block=(1, 1)):
    """Random (N, K) weight with `sparsity` of its aligned R x C blocks set to exact zero."""
    R, C = block
    w = rng.standard_normal((N, K)).astype(np.float32)
    keep = rng.random((N // R, K // C)) >= sparsity
    return w * np.repeat(np.repeat(keep, R, 0), C, 1)


def _time(fn, *args, **kw) -> float:
    start = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - start


def benchmark_linear(shapes=DEFAULT_SHAPES, batches=DEFAULT_BATCHES, cases=DEFAULT_CASES,
                     repeats=5, seed=0) -> dict:
    """Time every (shape, batch, format, sparsity) case; returns a JSON-ready dict."""
    compile_s = linear.warmup()
    rng = np.random.default_rng(seed)
    rows = []
    for N, K in shapes:
        bias = rng.standard_normal(N).astype(np.float32)
        for B, S in batches:
            x = rng.standard_normal((B, K, S)).astype(np.float32)
            tokens = B * S
            for fmt, sparsity in cases:
                block = (1, 1) if fmt == "csr" else tuple(int(v) for v in fmt[3:].split("x"))
                w = pruned_weight(rng, N, K, sparsity, block)
                lin = dispatch.make_linear(w, bias, fmt)
                dense_lin = dispatch.make_linear(w, bias, "dense")
                lin(x), np.matmul(w, x), dense_lin(x)  # warm caches and pages
                t_dense, t_fmt, t_dlin = [], [], []
                for _ in range(repeats):
                    t_dense.append(_time(np.matmul, w, x))
                    t_fmt.append(_time(lin, x))
                    t_dlin.append(_time(dense_lin, x))
                td, tf = statistics.median(t_dense), statistics.median(t_fmt)
                tdl = statistics.median(t_dlin)
                nnz = int(np.count_nonzero(w))
                rows.append({
                    "N": N, "K": K, "B": B, "S": S, "format": fmt, "sparsity": sparsity,
                    "nnz": nnz, "dense_ms": td * 1e3, "sparse_ms": tf * 1e3,
                    "dense_gflops": 2 * N * K * tokens / td / 1e9,
                    "useful_gflops": 2 * nnz * tokens / tf / 1e9,
                    "speedup": td / tf, "auto_choice": linear.choose_format(w),
                    "dense_linear_ms": tdl * 1e3, "speedup_vs_dense_linear": tdl / tf,
                })
    return {
        "machine": {"processor": platform.processor() or platform.machine(),
                    "threads": numba.get_num_threads(), "numba": numba.__version__,
                    "numpy": np.__version__,
                    "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
                    "threading_layer": numba.threading_layer()},
        "repeats": repeats,
        "compile_seconds": compile_s,
        "results": rows,
    }


def format_table(report: dict) -> str:
    lines = [f"kernel compile/cache-load seconds: "
             + ", ".join(f"{k} {v:.2f}" for k, v in report["compile_seconds"].items()),
             f"{'N x K':>11} {'B x S':>8} {'format':>7} {'sparse':>6} {'dense ms':>9} "
             f"{'GF/s':>6} {'sparse ms':>9} {'useful GF/s':>11} {'speedup':>7} {'auto':>7} {'DenseLinear ms':>14}"]
    for r in report["results"]:
        lines.append(
            f"{r['N']:>5}x{r['K']:<5} {r['B']:>3}x{r['S']:<4} {r['format']:>7} {r['sparsity']:>6.0%} "
            f"{r['dense_ms']:>9.2f} {r['dense_gflops']:>6.0f} {r['sparse_ms']:>9.2f} "
            f"{r['useful_gflops']:>11.1f} {r['speedup']:>6.2f}x {r['auto_choice']:>7} "
            f"{r['dense_linear_ms']:>14.2f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the report to this JSON file")
    p.add_argument("--quick", action="store_true", help="only the 3072x768 layer at 90%%")
    p.add_argument("--batches", help="token batches as BxS,BxS (default 32x128,1x128)")
    args = p.parse_args(argv)
    kw = {}
    if args.quick:
        kw = dict(shapes=((3072, 768),), cases=(("csr", 0.9), ("bsr4x1", 0.9), ("bsr2x2", 0.9)))
    if args.batches:
        kw["batches"] = tuple(tuple(int(v) for v in b.split("x")) for b in args.batches.split(","))
    report = benchmark_linear(repeats=args.repeats, **kw)
    print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
