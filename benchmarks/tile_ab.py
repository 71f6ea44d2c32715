"""A/B of the fused kernels' token-tile width (64 vs 128 tokens) on whole models, and the tuner's pick.

For each model (BERT-base-shaped, models/make_bench_models.py), loaded with formats="auto" (the
tuner chooses each linear's format and, on AVX-512 CPUs, the fused FFN's tile:
`sparsebert.tuning.choose_ffn_tile`), the whole encoder on a (batch, seq) batch with every layer's
tile set to 64, then 128, alternating, for several rounds; prints the median milliseconds of each,
the ratio, and what the tuner chose (with its own timings on a B=8 x 128 FFN). Both widths run in
one process on the same loaded weights. Run on a quiet machine (nothing else heavy):

    .venv/bin/python benchmarks/tile_ab.py [--models 12L-80 12L-90] [--batch 32] [--seq 128]
        [--rounds 5] [--json out.json]

Left out: CPUs without AVX-512 (one width only: the script says so and stops).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sparsebert  # noqa: E402
from sparsebert import tuning  # noqa: E402
from sparsebert.ffn import FusedFFN  # noqa: E402
from sparsebert.kernels import ffn_fused  # noqa: E402

MODELS = {"12L-80": "bert-base-12L-unstructured80", "12L-90": "bert-base-12L-unstructured90",
          "12L-90-4x1": "bert-base-12L-block4x1-90", "6L-90": "bert-base-6L-unstructured90"}


def run(name: str, batch: int, seq: int, rounds: int) -> dict:
    t0 = time.perf_counter()
    model = sparsebert.load(ROOT / "bench-models" / MODELS[name], formats="auto")
    load_s = time.perf_counter() - t0
    pairs = [layer.fused_ffn for layer in model.encoder.layers if isinstance(layer.fused_ffn, FusedFFN)]
    t0 = time.perf_counter()
    for p in pairs:
        p.settle_tile()  # the tuner's pick now (a model otherwise makes it on its first long batch)
    choose_s = time.perf_counter() - t0
    chosen = [p.tile for p in pairs]
    choice = next((p.tile_choice for p in pairs if p.tile_choice), None)
    ids = np.random.default_rng(0).integers(1000, 2000, size=(batch, seq))
    times = {64: [], 128: []}
    for tile in (64, 128):  # warm-up: compiles or loads both widths
        for p in pairs:
            p.tile = tile
        model(ids)
    for _ in range(rounds):
        for tile in (64, 128):
            for p in pairs:
                p.tile = tile
            t = time.perf_counter()
            model(ids)
            times[tile].append(time.perf_counter() - t)
    for p, tile in zip(pairs, chosen):
        p.tile = tile
    med = {t: statistics.median(v) * 1e3 for t, v in times.items()}
    formats = sorted({lin.format if lin.block_shape is None else f"bsr{lin.block_shape[0]}x{lin.block_shape[1]}"
                      for layer in model.encoder.layers for lin in layer.linears.values()})
    return {"model": name, "batch": batch, "seq": seq, "fused_layers": len(pairs), "formats": formats,
            "load_s": round(load_s, 2), "tile_choice_s": round(choose_s, 2),
            "ms_64": round(med[64], 1), "ms_128": round(med[128], 1),
            "ratio_128_over_64": round(med[128] / med[64], 3),
            "ms_all": {str(t): [round(v * 1e3, 1) for v in vs] for t, vs in times.items()},
            "tuner_chose": sorted(set(chosen)),
            "tuner_timings_ms": None if choice is None else choice.get("timings_ms")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["12L-80", "12L-90"], choices=sorted(MODELS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if 128 not in ffn_fused.TILES:
        print(f"this CPU's kernels take one token-tile width only ({ffn_fused.TILES}): nothing to compare")
        return 0
    rows = []
    for name in args.models:
        row = run(name, args.batch, args.seq, args.rounds)
        rows.append(row)
        print(f"{name:12s} {row['formats']} fused {row['fused_layers']}: 64 {row['ms_64']:.1f} ms, "
              f"128 {row['ms_128']:.1f} ms (x{row['ratio_128_over_64']:.3f}); tuner chose "
              f"{row['tuner_chose']} from {row['tuner_timings_ms']}", flush=True)
    if args.json:
        out = {"cpu": tuning.cpu_model(), "machine": tuning.machine(), "python": platform.python_version(),
               "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
