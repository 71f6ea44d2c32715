"""A/B of the fused FFN (sparsebert.ffn) against the two-call path, and the per-step profile.

For each model (BERT-base-shaped, models/make_bench_models.py), loaded with CSR linears:
  - one FFN block (layer 0's weights) on a (B, H, T) activation: fused vs ffn_in + ffn_out;
  - the whole model, fused vs unfused (the same loaded model, `layer.fused_ffn` switched off);
  - `model.encoder.profile` per step, summed over layers, both ways.
Interleaved rounds, best of each. Times are the calling thread's CPU time (`time.thread_time`):
with one Numba thread every kernel runs on it, and on a shared core CPU time is far steadier
than the wall clock. Run on one core under the timing lock:

    flock /tmp/core0-timing.lock taskset -c 0 env NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 \\
        .venv/bin/python benchmarks/ffn_fused_ab.py [--json bench-results/ffn_fused_ab.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import sparsebert
from sparsebert import model as model_module

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"12L 80%": "bert-base-12L-unstructured80", "12L 90%": "bert-base-12L-unstructured90"}


def best_of(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def profile(encoder, ids, rounds: int) -> dict:
    """Seconds per step (summed over layers), best of `rounds` profiled calls, thread CPU time."""
    model_module.time.perf_counter = time.thread_time  # the profile clock, for this process only
    best: dict = {}
    for _ in range(rounds):
        steps: dict = {}
        for key, s in encoder.profile(ids).items():
            step = key.split(".", 1)[1]
            steps[step] = steps.get(step, 0.0) + s
        for k, v in steps.items():
            best[k] = min(best.get(k, float("inf")), v)
    return {k: round(v * 1e3, 2) for k, v in best.items()}


def ab(path: Path, batch: int, seq: int, rounds: int) -> dict:
    m = sparsebert.load(path, formats="csr")
    enc = m.encoder
    layers = enc.layers
    fused = [layer.fused_ffn for layer in layers]
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 2000, size=(batch, seq))

    def set_fused(on: bool):
        for layer, f in zip(layers, fused):
            layer.fused_ffn = f if on else None

    # One FFN block.
    l0 = layers[0]
    H = l0.ffn_in.in_features
    x = rng.standard_normal((batch, H, seq)).astype(np.float32)
    f_buf = np.empty((batch, l0.ffn_in.out_features, seq), np.float32)
    y = np.empty_like(x)

    def two_calls():
        l0.ffn_out(l0.ffn_in(x, activation=l0.act, out=f_buf), residual=x, out=y)

    def one_call():
        fused[0](x, residual=x, out=y)

    two_calls(), one_call()
    block = {"unfused_ms": float("inf"), "fused_ms": float("inf")}
    for _ in range(rounds):
        block["unfused_ms"] = min(block["unfused_ms"], best_of(two_calls, 3) * 1e3)
        block["fused_ms"] = min(block["fused_ms"], best_of(one_call, 3) * 1e3)
    # Whole model.
    whole = {"unfused_ms": float("inf"), "fused_ms": float("inf")}
    for on in (False, True):
        set_fused(on)
        enc(ids)
    for _ in range(rounds):
        for on, key in ((False, "unfused_ms"), (True, "fused_ms")):
            set_fused(on)
            whole[key] = min(whole[key], best_of(lambda: enc(ids), 1) * 1e3)
    prof = {}
    for on, key in ((False, "unfused"), (True, "fused")):
        set_fused(on)
        prof[key] = profile(enc, ids, max(2, rounds // 2))
    set_fused(True)
    a = enc(ids).last_hidden_state
    set_fused(False)
    b = enc(ids).last_hidden_state
    out = {"ffn_block": {k: round(v, 2) for k, v in block.items()},
           "model": {k: round(v, 1) for k, v in whole.items()},
           "profile_ms": prof, "fused_vs_unfused_max_abs_diff": float(np.abs(a - b).max())}
    for part in ("ffn_block", "model"):
        out[part]["fused_speedup"] = round(out[part]["unfused_ms"] / out[part]["fused_ms"], 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=str(ROOT / "bench-models"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--only", default=None, help="comma-separated labels, e.g. '12L 90%%'")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from sparsebert.tuning import cpu_model

    result = {"cpu": cpu_model(), "batch": args.batch, "seq": args.seq, "clock": "thread_time",
              "models": {}}
    for label, name in MODELS.items():
        if args.only and label not in args.only.split(","):
            continue
        result["models"][label] = r = ab(Path(args.models) / name, args.batch, args.seq, args.rounds)
        print(label, json.dumps(r), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
