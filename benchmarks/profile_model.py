"""Where one model's time goes: per encoder step, summed over layers, with each linear's format.

Loads a checkpoint folder (formats chosen as `sparsebert.load` chooses them, or forced), runs
`BertEncoder.profile` on a random batch several times after a warm-up pass, and prints per step
(qkv, attention, attn_out, layer_norm, ffn_in, ffn_out, or the fused steps) the median
milliseconds summed over layers, its share of the pass, and for the linear steps the rate in
stored multiply-adds per second (GMAC/s: the work the format actually does, so CSR and dense
rates compare directly). Steps are timed per kernel call, so each includes its thread start-up.

    python benchmarks/profile_model.py bench-models/bert-base-12L-unstructured90 [--batch 32]
        [--seq 128] [--runs 5] [--formats auto] [--json out.json]

Left out: per-layer detail (in the JSON), peers (benchmarks/head_to_head.py).
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

# Which linears each profiled step runs (the fused steps run several).
STEP_LINEARS = {
    "qkv": ("qkv",), "attn_out": ("attn_out",), "ffn_in": ("ffn_in",), "ffn_out": ("ffn_out",),
    "ffn_fused": ("ffn_in", "ffn_out"), "attn_out_ffn_fused": ("attn_out", "ffn_in", "ffn_out"),
    "layer_fused": ("qkv", "attn_out", "ffn_in", "ffn_out"),
}


def profile(model, batch: int, seq: int, runs: int, seed: int = 0) -> dict:
    """Median seconds per "layer{i}.{step}" over `runs` profiled passes on random ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, model.config.vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    enc = model.encoder
    enc(ids, mask)  # compile, tune and fault in the scratch buffers
    passes = [enc.profile(ids, mask) for _ in range(runs)]
    return {k: statistics.median(p.get(k, 0.0) for p in passes) for k in passes[0]}


def summarise(model, times: dict, batch: int, seq: int) -> dict:
    """Per step: ms summed over layers, share of the pass, and stored GMAC/s for linear steps."""
    tokens = batch * seq
    layers = model.encoder.layers
    steps: dict[str, float] = {}
    macs: dict[str, float] = {}
    for key, sec in times.items():
        where, step = key.split(".", 1)
        steps[step] = steps.get(step, 0.0) + sec
        if where.startswith("layer") and step in STEP_LINEARS:
            layer = layers[int(where[5:])]
            macs[step] = macs.get(step, 0.0) + sum(
                getattr(layer, name).describe()["flops_per_token"] / 2 for name in STEP_LINEARS[step]) * tokens
    total = sum(steps.values())
    rows = {}
    for step, sec in sorted(steps.items(), key=lambda kv: -kv[1]):
        row = {"ms": round(1e3 * sec, 2), "share": round(sec / total, 4)}
        if step in macs and sec > 0:
            row["gmac_per_s"] = round(macs[step] / sec / 1e9, 1)
        rows[step] = row
    formats = {}
    for name in ("qkv", "attn_out", "ffn_in", "ffn_out"):
        kinds = [getattr(layer, name).describe()["format"] for layer in layers]
        formats[name] = {k: kinds.count(k) for k in sorted(set(kinds))}
    return {"total_ms": round(1e3 * total, 2), "steps": rows, "formats": formats,
            "fused_tail_layers": sum(bool(layer.fused_tail) for layer in layers)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--formats", default=None, help="force one format for every linear (default: auto)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    model = sparsebert.load(args.model, formats=args.formats)
    load_s = time.perf_counter() - start
    times = profile(model, args.batch, args.seq, args.runs)
    out = {"model": args.model, "cpu": tuning.cpu_model(), "machine": platform.machine(),
           "date": time.strftime("%Y-%m-%d"), "batch": args.batch, "seq": args.seq, "runs": args.runs,
           "load_s": round(load_s, 2), **summarise(model, times, args.batch, args.seq), "per_layer": times}
    print(f"{args.model}  {out['cpu']}  batch {args.batch} x {args.seq}  total {out['total_ms']:.1f} ms")
    for step, row in out["steps"].items():
        rate = f"  {row['gmac_per_s']:6.1f} GMAC/s" if "gmac_per_s" in row else ""
        print(f"  {step:22s} {row['ms']:9.2f} ms  {100 * row['share']:5.1f}%{rate}")
    print("  formats:", json.dumps(out["formats"]), " fused tails:", out["fused_tail_layers"])
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
