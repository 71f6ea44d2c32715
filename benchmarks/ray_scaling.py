"""Ray Data scaling: `sparsebert encode` locally vs on Ray with 1 and 2 actors, on real sentences.

Writes N real English sentences (benchmarks/corpus.py) to a text file, then runs the whole encode job
(`encode_table`: scan, embed, write Parquet, verify every id) in interleaved rounds. Each round takes
the next N/R rows and runs every engine on them, in an order rotated per round, so over the rounds
each engine embeds all N rows and machine noise (the machine may be shared) hits all of them:
  local      this process, 2 Numba threads
  ray-1x2    Ray Data, 1 actor with 2 CPUs (2 Numba threads)
  ray-2x1    Ray Data, 2 actors with 1 CPU each
  (--single adds local-1t and ray-1x1: one thread / one actor of one CPU, for per-core throughput.)
All engines have the same 2 CPUs. Per run: end-to-end seconds (with Ray's actor start and model load)
and steady rows/s (from the first piece written to the last), and the peak resident memory of each
Ray actor process, sampled as the job goes, to show it does not grow with the rows; and the CPU
seconds the job cost (this process plus, for Ray, every process of the local cluster: GCS, raylet,
actors), whose rows per CPU-second compare the engines' work per row even when other jobs on a shared
machine take CPU time from them unevenly. Each engine
gets the same pieces (--rows-per-piece rows, sorted by length and batched within a piece). Reported: per
engine the median over rounds of the steady rows/s ratio to local in the same round.

    python benchmarks/ray_scaling.py --model PATH --rows 100000 --rounds 4 --json out.json

Left out: multi-node runs (the README derives them from the per-core figures measured here).
"""

from __future__ import annotations

import argparse
import os
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from corpus import sentences  # noqa: E402

from sparsebert.encode_job import encode_table  # noqa: E402
from sparsebert.ray_data import local_actor_pids  # noqa: E402
from sparsebert.tuning import cpu_label  # noqa: E402

ENGINES = {"local": dict(ray=False, threads=2), "ray-1x2": dict(ray=True, actors=1, cpus_per_actor=2),
           "ray-2x1": dict(ray=True, actors=2, cpus_per_actor=1)}
SINGLE = {"local-1t": dict(ray=False, threads=1), "ray-1x1": dict(ray=True, actors=1, cpus_per_actor=1)}


def _actor_rss_mib() -> dict[int, float]:
    """Resident memory of each Ray Data actor process of our cluster, in MiB."""
    out = {}
    for pid in local_actor_pids():
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[pid] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return out


def _tree_cpu_seconds(tree: bool = True) -> dict[int, float]:
    """CPU seconds (user + system, all threads, since start) of this process and, with `tree`, every
    process descended from it: the local Ray cluster's GCS, raylet and workers."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            parent[int(entry.name)] = int(fields[1])
            cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    me, out = os.getpid(), {}
    for pid in cpu:
        p, depth = pid, 0
        while p and p != me and depth < 16:
            p, depth = parent.get(p), depth + 1
        if p == me and (tree or pid == me):
            out[pid] = cpu[pid]
    return out


def run_once(model, input_path, out_dir, engine: dict, rows_per_piece: int) -> dict:
    marks, rss = [], []
    tree = bool(engine.get("ray"))  # a local run is charged only for this process
    before = _tree_cpu_seconds(tree)
    seen = dict(before)
    cpu_marks = []

    def progress(done, total):
        marks.append((time.perf_counter(), done))
        for pid, sec in _tree_cpu_seconds(tree).items():  # an actor's last sample is its last piece
            seen[pid] = max(seen.get(pid, 0.0), sec)
        cpu_marks.append((done, sum(sec - before.get(pid, 0.0) for pid, sec in seen.items())))
        if engine.get("ray"):
            rss.append((done / total, _actor_rss_mib()))

    res = encode_table(model, input_path, out_dir, overwrite=True, on_progress=progress,
                       rows_per_piece=rows_per_piece, **engine)
    for pid, sec in _tree_cpu_seconds(tree).items():
        seen[pid] = max(seen.get(pid, 0.0), sec)
    cpu_s = sum(sec - before.get(pid, 0.0) for pid, sec in seen.items())
    # Steady rate: least-squares slope of rows done over time between 10% and 95% done, which
    # leaves out actor start and model load, and is not thrown by pieces that finish in bursts.
    total = marks[-1][1]
    mid = [(t, d) for t, d in marks if 0.1 * total <= d <= 0.95 * total]
    steady = None
    if len(mid) >= 3:
        t, d = np.array(mid).T
        steady = float(np.polyfit(t - t[0], d, 1)[0])
    # Marginal CPU per row: slope of rows done over CPU seconds spent, 10% to 95% done (leaves out
    # process start, imports and model load, which a long job pays once per actor).
    mid_cpu = [(c, d) for d, c in cpu_marks if 0.1 * total <= d <= 0.95 * total]
    steady_cpu = None
    if len(mid_cpu) >= 3:
        c, d = np.array(mid_cpu).T
        steady_cpu = float(np.polyfit(c - c[0], d, 1)[0])
    peak = {}
    for _, sample in rss:
        for pid, mib in sample.items():
            peak[pid] = max(peak.get(pid, 0.0), mib)
    early = [max(s.values()) for f, s in rss if s and f <= 0.25]
    return {"rows": res["rows"], "seconds": res["seconds"], "rows_per_s_end_to_end": res["rows_per_second"],
            "rows_per_s_steady": steady, "cpu_seconds": cpu_s, "rows_per_cpu_second": res["rows"] / cpu_s,
            "rows_per_cpu_second_steady": steady_cpu,
            "actor_peak_rss_mib": sorted(peak.values()),
            "actor_rss_mib_first_quarter": max(early) if early else None}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model folder (e.g. a 90%% MiniLM from sparsebert prune)")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rows-per-piece", type=int, default=256, help="rows per task (default 256)")
    ap.add_argument("--single", action="store_true", help="also 1-CPU engines (per-core throughput)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import ray

    engines = {**ENGINES, **(SINGLE if args.single else {})}
    texts = [" ".join(t.split()) for t in sentences(args.rows, seed=0)]
    per_round = -(-len(texts) // args.rounds)
    work = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    import ray._private.ray_constants as ray_constants

    # a single-machine cluster on 127.0.0.1 (by default Ray advertises the network address)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    names = list(engines)
    result = {"cpu": cpu_label(), "cpus": 2, "model": args.model, "rows": len(texts), "rounds": args.rounds,
              "rows_per_piece": args.rows_per_piece,
              "note": "shared machine: other jobs ran during the measurement; compare ratios",
              "runs": []}
    for r in range(args.rounds):
        seg = texts[r * per_round:(r + 1) * per_round]
        seg_path = work / f"round{r}.txt"
        seg_path.write_text("\n".join(seg) + "\n", encoding="utf-8")
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            run = run_once(args.model, seg_path, work / "out", engines[name], args.rows_per_piece)
            run.update(engine=name, round=r)
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    summary = {}
    local = {y["round"]: y for y in result["runs"] if y["engine"] == "local"}
    for name in names:
        runs = [x for x in result["runs"] if x["engine"] == name]
        ratios = []
        for x in runs:
            base = next(y for y in result["runs"] if y["engine"] == "local" and y["round"] == x["round"])
            ratios.append(x["rows_per_s_steady"] / base["rows_per_s_steady"])
        cpus = 1 if name in SINGLE else 2
        summary[name] = {
            "rows": sum(x["rows"] for x in runs),
            "rows_per_s_steady_median": statistics.median(x["rows_per_s_steady"] for x in runs),
            "rows_per_s_end_to_end_median": statistics.median(x["rows_per_s_end_to_end"] for x in runs),
            "ratio_to_local_steady_median": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
            "rows_per_s_per_cpu": statistics.median(x["rows_per_s_steady"] for x in runs) / cpus,
            "rows_per_cpu_second_median": statistics.median(x["rows_per_cpu_second"] for x in runs),
            "rows_per_cpu_second_steady_median": statistics.median(x["rows_per_cpu_second_steady"]
                                                                   for x in runs),
            "cpu_ratio_to_local_median": statistics.median(
                x["rows_per_cpu_second"] / local[x["round"]]["rows_per_cpu_second"] for x in runs),
            "cpu_steady_ratio_to_local_median": statistics.median(
                x["rows_per_cpu_second_steady"] / local[x["round"]]["rows_per_cpu_second_steady"]
                for x in runs),
            "actor_peak_rss_mib": max((max(x["actor_peak_rss_mib"]) for x in runs if x["actor_peak_rss_mib"]),
                                      default=None),
        }
    result["summary"] = summary
    ray.shutdown()
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
