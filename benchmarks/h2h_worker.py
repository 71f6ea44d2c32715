"""One inference engine in its own process, driven by benchmarks/head_to_head.py.

Run as `PYTHON benchmarks/h2h_worker.py ENGINE THREADS` with the Python of the engine's venv
(DeepSparse and OpenVINO live in venvs of their own, so this file imports nothing from
sparsebert at module level and needs only numpy plus the engine). ENGINE is one of `sparsebert`,
`onnxruntime`, `deepsparse`, `openvino-f32`, `openvino-default`, and the int8 routes
`sparsebert-int8`, `onnxruntime-int8` (quantize_dynamic), `openvino-int8` (static QDQ export).

Protocol: one JSON object per line on stdin, one reply per line on stdout, prefixed by `MARK`
(the real stdout is kept for replies; fd 1 is pointed at stderr so engine banners cannot corrupt
them):
    {"op": "load", "key": K, "path": P, "ids": [[...]], "options": {...}}
        -> load_s (includes graph compilation for DeepSparse / OpenVINO), jit_s (sparsebert's
           kernel compile or cache load, apart), first_call_s, sample (a few output values)
    {"op": "measure", "key": K, "time_s": t, "min_batches": m}
        -> items_per_s, latency_ms {median, min, mean}, batches
    {"op": "unload", "key": K}, {"op": "quit"}
A failure replies {"ok": false, "error": "..."} and the worker carries on.

Inputs: the ids the driver sends, a full attention mask and zero token types, int64 (B, T).
"""

import json
import os
import shutil
import sys
import tempfile
import time
import traceback

import numpy as np

MARK = "@@h2h "
ENGINES = ("sparsebert", "onnxruntime", "deepsparse", "openvino-f32", "openvino-default",
           "sparsebert-int8", "onnxruntime-int8", "openvino-int8")


def _onnx_inputs(path):
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


def load_sparsebert(path, B, T, threads, options):
    import numba

    numba.set_num_threads(threads)
    import sparsebert
    from sparsebert import linear

    t0 = time.perf_counter()
    linear.warmup()
    jit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = sparsebert.load(path, formats=options.get("formats", "auto"))
    load_s = time.perf_counter() - t0
    fmts, tuning_s, measured = {}, 0.0, 0
    for row in model.sparsity_report()["linears"]:
        fmts[row["format"]] = fmts.get(row["format"], 0) + 1
        choice = row.get("choice") or {}
        tuning_s += choice.get("seconds", 0.0)
        measured += choice.get("by") == "measured"

    def run(x):
        return model(x["input_ids"], x["attention_mask"], x["token_type_ids"]).last_hidden_state

    # tuning_s: part of load_s spent choosing formats (timing them on a cache miss)
    return run, {"load_s": load_s, "jit_s": jit_s, "formats": fmts, "tuning_s": tuning_s,
                 "linears_measured": measured}


def load_onnxruntime(path, B, T, threads, options):
    # ORT runs in the project's venv: the same session settings as `sparsebert benchmark`.
    import onnxruntime
    from sparsebert.benchmark import load_runner

    runner = load_runner(path, "onnxruntime", threads=threads)

    def run(x):
        return runner.run(x)[0]

    return run, {"load_s": runner.timings["load_s"], "version": onnxruntime.__version__}


def load_deepsparse(path, B, T, threads, options):
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    import deepsparse

    # compile_model rewrites the ONNX file it is given in place: compile from a private copy.
    tmp = tempfile.mkdtemp(prefix="h2h-deepsparse-")
    copy = os.path.join(tmp, "model.onnx")
    shutil.copyfile(path, copy)
    names = _onnx_inputs(copy)
    t0 = time.perf_counter()
    engine = deepsparse.compile_model(copy, batch_size=B, num_cores=threads,
                                      input_shapes=[[B, T]] * len(names))
    load_s = time.perf_counter() - t0
    shutil.rmtree(tmp, ignore_errors=True)

    def run(x):
        return engine([x[n] for n in names])[0]

    return run, {"load_s": load_s, "version": deepsparse.__version__}


def load_openvino(path, B, T, threads, options, precision):
    import openvino as ov

    core = ov.Core()
    t0 = time.perf_counter()
    model = core.read_model(path)
    names = [p.get_any_name() for p in model.inputs]
    model.reshape({n: [B, T] for n in names})
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(model, "CPU", config)
    load_s = time.perf_counter() - t0
    request = compiled.create_infer_request()
    out = compiled.output(0)

    def run(x):
        return request.infer({n: x[n] for n in names})[out]

    return run, {"load_s": load_s, "version": ov.__version__,
                 "precision": str(compiled.get_property("INFERENCE_PRECISION_HINT"))}


def load(engine, path, B, T, threads, options):
    # the int8 engines load each engine's own int8 file (benchmarks/int8_files.py) the same way
    if engine in ("sparsebert", "sparsebert-int8"):
        return load_sparsebert(path, B, T, threads, options)
    if engine in ("onnxruntime", "onnxruntime-int8"):
        return load_onnxruntime(path, B, T, threads, options)
    if engine == "openvino-int8":
        return load_openvino(path, B, T, threads, options, None)
    if engine == "deepsparse":
        return load_deepsparse(path, B, T, threads, options)
    if engine == "openvino-f32":
        return load_openvino(path, B, T, threads, options, "f32")
    if engine == "openvino-default":
        return load_openvino(path, B, T, threads, options, None)
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")


def measure(run, x, time_s, min_batches):
    lat = []
    start = time.perf_counter()
    while time.perf_counter() - start < time_s or len(lat) < min_batches:
        t0 = time.perf_counter()
        run(x)
        lat.append(time.perf_counter() - t0)
    ms = np.array(lat) * 1e3
    B = x["input_ids"].shape[0]
    return {"items_per_s": B * len(lat) / float(np.sum(lat)), "batches": len(lat),
            "latency_ms": {"median": float(np.median(ms)), "min": float(ms.min()),
                           "mean": float(ms.mean())}}


def main(engine, threads):
    reply_stream = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # library prints go to stderr; replies keep the real stdout
    sys.stdout = sys.stderr
    loaded = {}

    def reply(obj):
        reply_stream.write(MARK + json.dumps(obj) + "\n")
        reply_stream.flush()

    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "quit":
                reply({"ok": True})
                return 0
            if op == "load":
                ids = np.asarray(cmd["ids"], dtype=np.int64)
                x = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                     "token_type_ids": np.zeros_like(ids)}
                B, T = ids.shape
                run, info = load(engine, cmd["path"], B, T, threads, cmd.get("options", {}))
                t0 = time.perf_counter()
                y = np.asarray(run(x), dtype=np.float32)
                info["first_call_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                run(x)  # one more untimed call: allocators and caches settle
                info["warmup_s"] = time.perf_counter() - t0
                info["sample"] = np.concatenate([y[0, :2, :4].ravel(), y[-1, -1, -4:]]).tolist()
                loaded[cmd["key"]] = (run, x)
                reply({"ok": True, **info})
            elif op == "measure":
                run, x = loaded[cmd["key"]]
                reply({"ok": True, **measure(run, x, float(cmd["time_s"]), int(cmd["min_batches"]))})
            elif op == "unload":
                loaded.pop(cmd["key"], None)
                reply({"ok": True})
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:  # reported to the driver, which records and skips this engine
            traceback.print_exc()
            reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], int(sys.argv[2])))
