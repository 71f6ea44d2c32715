"""INT8 speed: sparsebert int8 vs its FP32 vs ONNX Runtime FP32 and int8, interleaved in one process.

For each model of models/make_bench_models.py (random BERT-base-shaped weights: speed depends
only on shapes and sparsity), prepared once under bench-models/int8/ (git-ignored):
  - `sparsebert quantize` of the Hugging Face folder (int8 folder + model_qdq.onnx);
  - onnxruntime.quantization.quantize_dynamic of the float legacy-17 ONNX export (MatMulInteger +
    DynamicQuantizeLinear: ONNX Runtime's standard int8 CPU path, per-tensor uint8 activations).
Engines, each timed for --time seconds per round, in an order rotated per round:
  sparsebert-fp32, sparsebert-int8, ort-fp32 (the float export), ort-int8-qdq (our QDQ file with
  ORT's default optimizations, which turn each DequantizeLinear -> MatMul into its own 8-bit
  MatMulNBits), ort-int8-dynamic. Ratios are medians over rounds of per-round ratios to
  ort-fp32 on the dense 12-layer model (the baseline, timed in every round).

    python benchmarks/bench_int8.py --json bench-results/int8.json
    python benchmarks/bench_int8.py --models "12L 90%" --rounds 2 --time 4
    python benchmarks/bench_int8.py --linears        # one layer at a time, FP32 vs int8, A/B x 15

`--linears` times single BERT-base linears (B=32 x 128 tokens, random weights) with sparsebert's
FP32 format choice and with the int8 linear, alternating A and B call by call, median of the
per-pair ratios: robust on a busy host where whole-model rounds are not.

Left out: DeepSparse and OpenVINO (benchmarks/head_to_head.py runs them in their own venvs; our
QDQ file quantizes activations with float ops DeepSparse would not run as int8), accuracy (random
weights; see tests/test_quant.py for MiniLM).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from sparsebert.tuning import cpu_model  # noqa: E402
MODELS = {"12L dense": "bert-base-12L-dense", "12L 90%": "bert-base-12L-unstructured90",
          "12L 90% 1x4": "bert-base-12L-block1x4-90", "12L 90% 4x1": "bert-base-12L-block4x1-90"}
# Models make_bench_models.py does not build: (source model, sparsity, block (out x in)). 1x4
# blocks are 4 consecutive input features of one output row: one VNNI K-quad, DeepSparse's
# "4-block" pruning for int8.
DERIVED = {"bert-base-12L-block1x4-90": ("bert-base-12L-dense", 0.9, "1x4")}
FLOAT_ONNX = {"bert-base-12L-dense": "onnx-bert-base-12L-dense/model.onnx"}
ENGINES = ("sparsebert-fp32", "sparsebert-int8", "ort-fp32", "ort-int8-qdq", "ort-int8-dynamic")


def prepare(models_dir: Path, name: str, log) -> dict:
    """Paths of every engine's file for one model, building what is missing (idempotent)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from sparsebert.export import export_bert_onnx
    from sparsebert.quant import quantize

    out = models_dir / "int8" / name
    out.mkdir(parents=True, exist_ok=True)
    hf = models_dir / name
    if name in DERIVED:
        from sparsebert.prune import prune_checkpoint

        hf = out / "hf"
        if not (hf / "model.safetensors").is_file():
            src, sparsity, block = DERIVED[name]
            prune_checkpoint(models_dir / src, hf, sparsity=sparsity, block=block, overwrite=True)
            log(f"{name}: pruned from {src}")
    if not hf.is_dir():
        raise SystemExit(f"{hf} is missing: run python models/make_bench_models.py first")
    float_onnx = models_dir / FLOAT_ONNX.get(name, f"onnx-legacy17/{name}/model.onnx")
    if not float_onnx.is_file():
        t0 = time.perf_counter()
        float_onnx = out / "model_fp32.onnx"
        if not float_onnx.is_file():
            export_bert_onnx(hf, str(float_onnx) + ".tmp", "legacy17")
            os.replace(str(float_onnx) + ".tmp", float_onnx)
        log(f"{name}: float ONNX export {time.perf_counter() - t0:.0f} s")
    q = out / "sparsebert-int8"
    if not (q / "model_qdq.onnx").is_file():
        t0 = time.perf_counter()
        quantize(hf, q, overwrite=True)
        log(f"{name}: sparsebert quantize + QDQ export {time.perf_counter() - t0:.0f} s")
    dyn = out / "model_dynamic_int8.onnx"
    if not dyn.is_file():
        t0 = time.perf_counter()
        quantize_dynamic(str(float_onnx), str(dyn) + ".tmp", weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"])
        os.replace(str(dyn) + ".tmp", dyn)
        log(f"{name}: ORT quantize_dynamic {time.perf_counter() - t0:.0f} s")
    return {"hf": hf, "int8": q, "float_onnx": float_onnx, "qdq": q / "model_qdq.onnx", "dynamic": dyn}


def make_engine(engine: str, paths: dict, threads: int):
    if engine.startswith("sparsebert"):
        import sparsebert

        model = sparsebert.load(paths["hf" if engine == "sparsebert-fp32" else "int8"])
        return lambda ids, mask, types: model(ids, mask, types).last_hidden_state
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    path = {"ort-fp32": "float_onnx", "ort-int8-qdq": "qdq", "ort-int8-dynamic": "dynamic"}[engine]
    sess = ort.InferenceSession(str(paths[path]), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    out = sess.get_outputs()[0].name

    def run(ids, mask, types):
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return sess.run([out], {n: feed[n] for n in names})[0]

    return run


def timed(fn, inputs, seconds: float) -> float:
    """Items per second over whole batches run for at least `seconds`."""
    n, start = 0, time.perf_counter()
    while True:
        fn(*inputs)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n * inputs[0].shape[0] / elapsed


def bench_int8(models_dir="bench-models", *, labels=None, rounds=3, seconds=6.0, batch=32, seq=128,
               threads=2, log=print) -> dict:
    import numba

    numba.set_num_threads(threads)
    models_dir = Path(models_dir)
    labels = list(labels or MODELS)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (batch, seq)).astype(np.int64)
    inputs = (ids, np.ones_like(ids), np.zeros_like(ids))
    base_paths = prepare(models_dir, MODELS["12L dense"], log)
    baseline = make_engine("ort-fp32", base_paths, threads)
    baseline(*inputs)
    result = {"cpu": cpu_model(), "batch": batch, "seq": seq, "threads": threads, "rounds": rounds,
              "seconds": seconds, "baseline": "ort-fp32 12L dense", "models": {}}
    for label in labels:
        paths = prepare(models_dir, MODELS[label], log)
        engines, loads, outs = {}, {}, {}
        for e in ENGINES:
            t0 = time.perf_counter()
            engines[e] = make_engine(e, paths, threads)
            outs[e] = engines[e](*inputs)  # compile / warm up, untimed
            loads[e] = time.perf_counter() - t0
        ref = outs["sparsebert-fp32"]
        agree = {e: float(np.abs(o - ref).max()) for e, o in outs.items()}
        runs = {e: [] for e in ENGINES}
        base_runs = []
        order = list(ENGINES)
        for r in range(rounds):
            base_runs.append(timed(baseline, inputs, seconds))
            for e in order:
                runs[e].append(timed(engines[e], inputs, seconds))
            order = order[1:] + order[:1]
            log(f"{label} round {r + 1}: base {base_runs[-1]:.2f}/s " +
                ", ".join(f"{e} {runs[e][-1]:.2f}" for e in ENGINES))
        ratio = {e: statistics.median(x / b for x, b in zip(runs[e], base_runs)) for e in ENGINES}
        pair = lambda a, b: statistics.median(x / y for x, y in zip(runs[a], runs[b]))  # noqa: E731
        result["models"][label] = {
            "items_per_s": {e: statistics.median(runs[e]) for e in ENGINES},
            "vs_baseline": ratio,
            "int8_vs_own_fp32": pair("sparsebert-int8", "sparsebert-fp32"),
            "int8_vs_ort_int8_qdq": pair("sparsebert-int8", "ort-int8-qdq"),
            "int8_vs_ort_int8_dynamic": pair("sparsebert-int8", "ort-int8-dynamic"),
            "load_s": loads, "max_abs_vs_sparsebert_fp32": agree,
        }
        del engines, outs
    return result


LINEAR_SHAPES = {"qkv": (2304, 768), "ffn_in": (3072, 768), "ffn_out": (768, 3072)}


def bench_linears(*, pairs=15, batch=32, seq=128, threads=2, log=print) -> dict:
    """FP32 (format auto) vs int8 (format auto) per BERT-base linear, dense / 90% / 90% 1x4."""
    import numba

    from sparsebert.dispatch import make_linear
    from sparsebert.quant import Int8Linear

    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out = {"cpu": cpu_model(), "batch": batch, "seq": seq, "threads": threads, "pairs": pairs,
           "linears": []}
    for name, (N, K) in LINEAR_SHAPES.items():
        x = rng.standard_normal((batch, K, seq)).astype(np.float32)
        w = rng.standard_normal((N, K)).astype(np.float32)
        b = rng.standard_normal(N).astype(np.float32)
        y = np.empty((batch, N, seq), np.float32)
        for variant in ("dense", "90%", "90% 1x4"):
            if variant == "dense":
                wv = w
            elif variant == "90%":
                wv = w * (np.abs(w) > np.quantile(np.abs(w), 0.9))
            else:
                quad = np.abs(w).reshape(N, K // 4, 4).sum(axis=2)
                keep = quad > np.quantile(quad, 0.9)
                wv = w * np.repeat(keep, 4, axis=1)
            f32, i8 = make_linear(wv, b, "auto"), Int8Linear.from_float(wv, b)
            f32(x, out=y), i8(x, out=y)  # compile, warm
            ratios, tf, ti = [], [], []
            for _ in range(pairs):
                t0 = time.perf_counter()
                f32(x, out=y)
                t1 = time.perf_counter()
                i8(x, out=y)
                t2 = time.perf_counter()
                tf.append(t1 - t0)
                ti.append(t2 - t1)
                ratios.append((t1 - t0) / (t2 - t1))
            row = {"linear": name, "shape": (N, K), "variant": variant, "fp32_format": f32.describe()["format"],
                   "int8_format": i8.format, "fp32_ms": 1000 * statistics.median(tf),
                   "int8_ms": 1000 * statistics.median(ti), "int8_speedup": statistics.median(ratios)}
            out["linears"].append(row)
            log(f"{name} {variant}: fp32 ({row['fp32_format']}) {row['fp32_ms']:.1f} ms, int8 "
                f"{row['int8_ms']:.1f} ms, speedup {row['int8_speedup']:.2f}x")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models-dir", default=str(ROOT / "bench-models"))
    p.add_argument("--models", default=None,
                   help="comma-separated labels from " + str(list(MODELS)).replace("%", "%%"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--time", type=float, default=6.0, help="seconds per engine per round")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--linears", action="store_true", help="time single linears instead (A/B pairs)")
    p.add_argument("--pairs", type=int, default=15)
    args = p.parse_args(argv)
    labels = [s.strip() for s in args.models.split(",")] if args.models else None
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.linears:
        res = bench_linears(pairs=args.pairs, batch=args.batch_size, seq=args.seq_len,
                            threads=args.threads, log=log)
    else:
        res = bench_int8(args.models_dir, labels=labels, rounds=args.rounds, seconds=args.time,
                         batch=args.batch_size, seq=args.seq_len, threads=args.threads, log=log)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
