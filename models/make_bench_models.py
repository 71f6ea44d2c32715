"""Build the BERT-base-shaped benchmark checkpoints (random weights), idempotently.

Under OUT (default `bench-models/`, git-ignored: the folders take several GB):
  bert-base-{12,6,3}L-dense/          seeded random BertModel (hidden 768, 12 heads, FFN 3072,
                                      vocab 30522, 512 positions), transformers' own init
  bert-base-{12,6,3}L-unstructured{70,80,90,95}/   magnitude-pruned per layer with sparsebert.prune
  bert-base-{12,6,3}L-block4x1-90/    90% of aligned 4x1 blocks (out x in) pruned
  bert-base-{12,6,3}L-block1x4-{80,90}/  80% / 90% of aligned 1x4 blocks pruned (int8 rows)
  onnx-bert-base-12L-dense/model.onnx torch.onnx legacy export (opset 17) of the dense 12-layer
                                      model, with its config.json: the ONNX Runtime baseline
The 6- and 3-layer models are separate random models (not layer-dropped 12-layer ones): speed does
not depend on the values. Each folder is written under a temporary name and renamed when complete,
so an interrupted run leaves nothing that a rerun would mistake for finished work.

    python models/make_bench_models.py [OUT] [--only-suite]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LAYER_COUNTS = (12, 6, 3)
# name suffix → (sparsity, block)
VARIANTS = {
    "dense": (0.0, None),
    "unstructured70": (0.70, None),
    "unstructured80": (0.80, None),
    "unstructured90": (0.90, None),
    "unstructured95": (0.95, None),
    "block4x1-90": (0.90, "4x1"),
    # 1x4: four consecutive input features of one output row, one VNNI K-quad (int8 kernels)
    "block1x4-80": (0.80, "1x4"),
    "block1x4-90": (0.90, "1x4"),
}
# What benchmarks/run_suite.py and benchmarks/head_to_head.py measure.
SUITE = ("12L-dense", "12L-unstructured80", "12L-unstructured90", "12L-unstructured95",
         "6L-unstructured90", "3L-unstructured90", "3L-unstructured70", "12L-block4x1-90",
         "12L-block1x4-80", "12L-block1x4-90")
ONNX_NAME = "onnx-bert-base-12L-dense"


def model_name(layers: int, variant: str) -> str:
    return f"bert-base-{layers}L-{variant}"


def make_bert_base(dirpath, *, layers: int = 12, seed: int = 0) -> str:
    """A seeded random BERT-base-shaped BertModel (transformers' init) saved as a HF folder."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=layers,
                        num_attention_heads=12, intermediate_size=3072,
                        max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu")
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=True).eval()
    model.save_pretrained(str(dirpath))
    return str(dirpath)


def _build(final: Path, make) -> str:
    """Run make(tmp_dir) and rename tmp_dir to `final`; skip when `final` exists."""
    if final.exists():
        return "exists"
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    make(tmp)
    os.replace(tmp, final)
    return "built"


def build_all(out: str | os.PathLike = "bench-models", *, only_suite: bool = False,
              log=print) -> dict:
    from sparsebert.prune import prune_checkpoint

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = [(n, v) for n in LAYER_COUNTS for v in VARIANTS]
    if only_suite:
        wanted = [(n, v) for n, v in wanted if f"{n}L-{v}" in SUITE]
    status = {}
    for n in sorted({n for n, _ in wanted}, reverse=True):
        dense = out / model_name(n, "dense")
        t0 = time.perf_counter()
        status[dense.name] = _build(dense, lambda d, n=n: make_bert_base(d, layers=n, seed=n))
        log(f"{dense.name}: {status[dense.name]} ({time.perf_counter() - t0:.1f} s)")
    for n, variant in wanted:
        sparsity, block = VARIANTS[variant]
        if sparsity == 0:
            continue
        final = out / model_name(n, variant)
        src = out / model_name(n, "dense")
        t0 = time.perf_counter()
        status[final.name] = _build(
            final, lambda d, src=src, s=sparsity, b=block:
            prune_checkpoint(src, d, sparsity=s, block=b, overwrite=True))
        log(f"{final.name}: {status[final.name]} ({time.perf_counter() - t0:.1f} s)")

    def export(d: Path):
        from export_onnx import export_bert_onnx

        export_bert_onnx(out / model_name(12, "dense"), d / "model.onnx", "legacy17")
        shutil.copyfile(out / model_name(12, "dense") / "config.json", d / "config.json")

    t0 = time.perf_counter()
    status[ONNX_NAME] = _build(out / ONNX_NAME, export)
    log(f"{ONNX_NAME}: {status[ONNX_NAME]} ({time.perf_counter() - t0:.1f} s)")
    return {"out": str(out), "models": status}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="bench-models", help="output folder")
    parser.add_argument("--only-suite", action="store_true",
                        help="build only what benchmarks/run_suite.py measures")
    args = parser.parse_args(argv)
    result = build_all(args.out, only_suite=args.only_suite,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
