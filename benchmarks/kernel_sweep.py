"""One linear layer across sparsity, token count and weight format, against numpy's sgemm peak.

`kernel_sweep(...)` runs benchmarks/bench_linear.py's `benchmark_linear` (dense sgemm and the
sparse kernel interleaved, medians, bias epilogue included) for every (format, sparsity, tokens)
of one layer shape, measures the machine's numpy sgemm peak on a large square product in the same
process (`sgemm_peak`), and names the fastest block shape other than 4x1 (`best_other_block`: the
highest median speedup over dense across the sweep). Tokens are laid out as B sequences of
min(tokens, 128) positions. Useful GFLOP/s counts only the stored nonzeros: 2 * nnz * tokens / s.

    python benchmarks/kernel_sweep.py --json bench-results/kernels.json
    python benchmarks/kernel_sweep.py --quick --json /tmp/kernels.json
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

# bench_linear sets OPENBLAS_THREAD_TIMEOUT before numpy loads: import it first.
import bench_linear  # noqa: E402, I001

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

FORMATS = ("csr", "bsr4x1", "bsr8x1", "bsr2x2", "bsr1x4")
FULL = dict(shape=(3072, 768), tokens=(128, 1024, 4096),
            sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.97), formats=FORMATS, repeats=5, peak_n=2048)
QUICK = dict(shape=(512, 256), tokens=(32, 128), sparsities=(0.8, 0.95),
             formats=("csr", "bsr4x1", "bsr2x2"), repeats=3, peak_n=512)


def sgemm_peak(n: int = 2048, repeats: int = 5, seed: int = 0) -> dict:
    """Median GFLOP/s of numpy float32 (n x n) @ (n x n), after one untimed product."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"n": n, "repeats": repeats, "median_s": t, "gflops": 2 * n**3 / t / 1e9}


def _batches(tokens) -> tuple:
    out = []
    for t in tokens:
        s = min(t, 128)
        if t % s:
            raise ValueError(f"tokens must be <= 128 or a multiple of 128, got {t}")
        out.append((t // s, s))
    return tuple(out)


def best_other_block(rows: list[dict], exclude=("csr", "bsr4x1")) -> str | None:
    """The block format (not in `exclude`) with the highest median speedup over dense."""
    by_fmt: dict[str, list[float]] = {}
    for r in rows:
        if r["format"] not in exclude:
            by_fmt.setdefault(r["format"], []).append(r["speedup"])
    if not by_fmt:
        return None
    return max(by_fmt, key=lambda f: statistics.median(by_fmt[f]))


def kernel_sweep(shape=(3072, 768), tokens=(128, 1024, 4096), sparsities=(0.7, 0.9),
                 formats=FORMATS, repeats=5, peak_n=2048, seed=0) -> dict:
    peak_before = sgemm_peak(peak_n)
    report = bench_linear.benchmark_linear(
        shapes=(tuple(shape),), batches=_batches(tokens),
        cases=tuple((f, float(s)) for f in formats for s in sparsities), repeats=repeats, seed=seed)
    peak_after = sgemm_peak(peak_n)
    for r in report["results"]:
        r["tokens"] = r["B"] * r["S"]
    return {
        **report,
        "settings": {"shape": list(shape), "tokens": list(tokens), "sparsities": list(sparsities),
                     "formats": list(formats), "repeats": repeats},
        # Measured before and after the sweep; the larger is the better estimate of the peak.
        "sgemm_peak": {"before": peak_before, "after": peak_after,
                       "gflops": max(peak_before["gflops"], peak_after["gflops"])},
        "best_other_block": best_other_block(report["results"]),
    }


def format_table(result: dict) -> str:
    peak = result["sgemm_peak"]["gflops"]
    lines = [f"numpy sgemm peak {peak:.0f} GFLOP/s (n={result['sgemm_peak']['before']['n']}); "
             f"best block other than 4x1: {result['best_other_block']}",
             f"{'tokens':>6} {'format':>7} {'sparsity':>8} {'dense ms':>9} {'sparse ms':>9} "
             f"{'useful GF/s':>11} {'% peak':>6} {'speedup':>7}"]
    for r in result["results"]:
        lines.append(f"{r['tokens']:>6} {r['format']:>7} {r['sparsity']:>8.0%} {r['dense_ms']:>9.3f} "
                     f"{r['sparse_ms']:>9.3f} {r['useful_gflops']:>11.1f} "
                     f"{100 * r['useful_gflops'] / peak:>5.0f}% {r['speedup']:>6.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the result here")
    p.add_argument("--quick", action="store_true", help="small layer, few cases")
    args = p.parse_args(argv)
    result = kernel_sweep(**(QUICK if args.quick else FULL))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
