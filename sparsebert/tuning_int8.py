"""Int8 kernel kind chosen per linear by timing the kinds on this machine, cached with the float choices.

`sparsebert.dispatch.make_linear` calls `choose_int8(codes, scale, bias, smooth)` for int8 "auto"
(formats "int8" / "int8-auto" on a float weight, "auto" on a w8a8 checkpoint's stored int8
weight). For each distinct (shape, density, fraction of non-empty K-quads) it times the
`Int8Linear` kinds this CPU can run on a (8, K, 128) float activation, as `sparsebert.tuning.measure`
times the float formats (the first call compiles, then the best of a few), and keeps the fastest:

- AVX512-VNNI CPUs: the dense kind ("amx" where this process may use AMX tiles, else "gemm"),
  "bsr1x4" when at most `BSR1X4_TIMED_MAX_QUADS` of the (row, K-quad) blocks hold a nonzero, and
  "gather" (kernels/int8_gather.py) for unstructured weights (`GATHER_TIMED_*`);
- other CPUs: "dense", and "csr" from `CSR_TIMED_FROM_SPARSITY` sparsity on.

The bounds only drop candidates that cannot win: they sit well past the measured break-evens
(`BSR1X4_MAX_QUADS`, `CSR_FROM_SPARSITY` in `sparsebert.quant.linear`, which decide an untimed
`Int8Linear(format="auto")`). A lone candidate is still timed, so the report shows its speed.
All kinds compute the same outputs bit for bit, so the choice changes speed only.

Entries go to the float tuner's JSON file and machine key (`sparsebert.tuning.TuningCache`: CPU,
ISA features, Numba threads, kernel sources including `quant/linear.py` and this file), under
signatures that start with "int8". The linear's `choice` says "measured" (with the timings),
"cache" or, from `make_linear`, "forced".

Left out: timing per batch size, choosing K-chunk widths for the int8 kinds (compiled in), the
older one-row "vnni" kind ("gemm" and "bsr1x4" replaced it; it runs only when forced).
"""

from __future__ import annotations

import time

import numpy as np

from .quant import linear as qlinear
from .tuning import _REPEATS, _TUNE_BATCH, _TUNE_SEQ, TuningCache, default_cache, time_call

# Candidates pruned before timing. "bsr1x4" stores whole quads; above this fraction of them it runs
# more multiply-adds per token at ~0.4x the dense kernel's rate (one core, Sapphire Rapids), so it
# cannot win; the measured break-evens are 0.15 (against AMX) and 0.4 (against "gemm").
BSR1X4_TIMED_MAX_QUADS = 0.6
# Without VNNI, CSR's row loop does more work per stored value than the dense kernel; the
# break-even is near 50% sparsity, so below 30% it is not worth timing.
CSR_TIMED_FROM_SPARSITY = 0.3
# "gather" fills every quad it stores but pays ~2x "bsr1x4"'s work per quad (8 byte / word unpacks
# per 4 `vpdpbusd`): it is timed when the 1x4 blocks would hold at least 1.5x the nonzeros' quads
# (90% unstructured: 3.4x; 1x4-pruned weights: 1x) and the weight is at most half dense.
GATHER_TIMED_MAX_DENSITY = 0.5
GATHER_TIMED_MIN_WASTE = 1.5


def structure(codes: np.ndarray) -> tuple[float, float]:
    """(density, fraction of non-empty K-quads) of the codes, rounded to 1% as the signature
    keeps them, so that the candidates follow from the signature alone."""
    N, K = codes.shape
    return round(np.count_nonzero(codes) / (N * K), 2), round(qlinear.quad_fraction(codes), 2)


def candidates(density: float, quads: float) -> list[str]:
    """The Int8Linear kinds worth timing on this CPU for a weight of this structure."""
    if qlinear.host_has_vnni():
        kinds = [qlinear.dense_vnni_kind()]
        if quads <= BSR1X4_TIMED_MAX_QUADS:
            kinds.append("bsr1x4")
        if density <= GATHER_TIMED_MAX_DENSITY and quads >= GATHER_TIMED_MIN_WASTE * density:
            kinds.append("gather")
    else:
        kinds = ["dense"]
        if 1.0 - density >= CSR_TIMED_FROM_SPARSITY:
            kinds.append("csr")
    return kinds


def signature(shape: tuple[int, int], density: float, quads: float) -> str:
    N, K = shape
    return f"int8 {N}x{K} d{density:.2f} q{quads:.2f}"


def measure_int8(codes, scale, bias, smooth, kinds: list[str]) -> tuple[dict, qlinear.Int8Linear]:
    """Time each kind on one weight; returns (cache entry, fastest linear)."""
    K = codes.shape[1]
    x = np.random.default_rng(0).standard_normal((_TUNE_BATCH, K, _TUNE_SEQ)).astype(np.float32)
    timings, built = {}, {}
    for kind in kinds:
        lin = qlinear.Int8Linear(codes, scale, bias, kind, smooth)
        timings[lin.format] = time_call(lin, x)
        built[lin.format] = lin
    best = min(timings, key=timings.get)
    entry = {"format": best, "chunk_cols": None, "candidates": [f"int8-{k}" for k in kinds],
             "timings_ms": {k: round(v * 1e3, 3) for k, v in timings.items()},
             "tokens": _TUNE_BATCH * _TUNE_SEQ, "repeats": _REPEATS,
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return entry, built[best]


def choose_int8(codes: np.ndarray, scale: np.ndarray, bias: np.ndarray,
                smooth: np.ndarray | None = None, cache: TuningCache | None = None):
    """The fastest Int8Linear kind for these codes (N, K) int8, scale (N,), bias (N,) and optional
    smoothing (K,) on this machine: from the cache, else measured (and cached). The linear's
    `choice` says which, with the timings."""
    t0 = time.perf_counter()
    cache = default_cache() if cache is None else cache
    qlinear.check_codes(codes)
    density, quads = structure(codes)
    kinds = candidates(density, quads)
    sig = signature(codes.shape, density, quads)
    entry = cache.get(sig)
    # An entry naming no candidate (a hand-edited file) is measured again.
    if entry is not None and entry["format"] in [f"int8-{k}" for k in kinds]:
        lookup_s = time.perf_counter() - t0  # what choosing cost beyond building the linear anyway
        lin = qlinear.Int8Linear(codes, scale, bias, entry["format"][len("int8-"):], smooth)
        lin.choice = {"by": "cache", "signature": sig, **entry, "seconds": lookup_s}
        return lin
    entry, lin = measure_int8(codes, scale, bias, smooth, kinds)
    cache.put(sig, entry)
    lin.choice = {"by": "measured", "signature": sig, **entry, "seconds": time.perf_counter() - t0}
    return lin
