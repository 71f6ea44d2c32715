"""Weights in huge pages or not (sparsebert.hugepages): the same model loaded twice in one process,
once as usual and once with the move switched off, timed interleaved, medians.

    taskset -c 0 env NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/hugepages_ab.py \\
        bench-models/int8/bert-base-12L-dense/sparsebert bench-models/bert-base-12L-unstructured80

Prints, per model, the median seconds of a forward pass (batch x seq random ids) of each and the
ratio plain / huge (above 1: huge pages help), and checks the outputs are bitwise equal. Also
reports the process's AnonHugePages (from /proc/self/smaps_rollup) after loading: 0 kB means the
kernel gave no huge pages (THP "never", or memory too fragmented), and the A/B measures nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def anon_huge_kb() -> int:
    try:
        for line in open("/proc/self/smaps_rollup"):
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    import sparsebert
    from sparsebert import model as model_module

    real = model_module.move_to_huge_pages
    from sparsebert.tuning import machine

    print(f"cpu: {machine()['cpu']}")
    for path in args.models:
        encoders = {}
        for name, move in (("huge", real), ("plain", lambda objects, keep=(): 0)):
            model_module.move_to_huge_pages = move
            try:
                encoders[name] = sparsebert.load(path).encoder
            finally:
                model_module.move_to_huge_pages = real
        ids = np.random.default_rng(0).integers(1000, 30000, (args.batch, args.seq))
        outs = {k: e(ids).last_hidden_state for k, e in encoders.items()}
        assert np.array_equal(outs["huge"], outs["plain"]), "outputs differ"
        times = {k: [] for k in encoders}
        for _ in range(args.rounds):
            for k, e in encoders.items():
                t = time.perf_counter()
                e(ids)
                times[k].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"{path}: huge {med['huge']:.3f} s, plain {med['plain']:.3f} s, plain/huge "
              f"{med['plain'] / med['huge']:.3f} (AnonHugePages {anon_huge_kb()} kB)")


if __name__ == "__main__":
    main()
