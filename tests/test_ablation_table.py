"""benchmarks/ablation_table.py's shipped-recipe table: a recipe counts as run only by a committed run
of exactly its body that reached its last step, whatever its comments and thread count."""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import ablation_table  # noqa: E402

RECIPE = """# {comment}
[task]
kind = "embeddings"

[pruning]
final_sparsity = {sparsity}
end = 10

[distillation]
pooled_loss = "cosine"

[training]
lr = {lr}
steps = 20
threads = {threads}
"""


def _recipe(sparsity=0.8, lr="1e-3", threads=2, comment="shipped"):
    return RECIPE.format(sparsity=sparsity, lr=lr, threads=threads, comment=comment)


def _run(d, name, text, *, step, cosine, int8=None, quantized_with=None):
    (d / f"{name}.recipe.toml").write_text(text)
    (d / f"{name}.metrics.json").write_text(json.dumps({
        "task": "embeddings", "cosine_to_teacher": cosine, "lee_spearman": 0.5,
        "train": {"step": step, "total_steps": 20, "wall_seconds": 90.0, "torch_threads": 1}}))
    if int8 is not None:
        q = {"cosine_to_teacher": int8} | ({"quantized_with": quantized_with} if quantized_with else {})
        (d / f"{name}.int8-metrics.json").write_text(json.dumps(q))


def test_shipped_rows_match_bodies_not_text(tmp_path):
    recipes, a, b = tmp_path / "recipes", tmp_path / "ablations", tmp_path / "runs"
    for d in (recipes, a, b):
        d.mkdir()
    (recipes / "r80.toml").write_text(_recipe())
    (recipes / "r90.toml").write_text(_recipe(sparsity=0.9))
    (recipes / "r80-lr2.toml").write_text(_recipe(lr="2e-3"))
    # r80's body twice (other comment, thread count, spelling of the lr); the better one is shown
    _run(a, "abl-x", _recipe(lr="0.001", threads=1, comment="an ablation"), step=20, cosine=0.91, int8=0.905,
         quantized_with="sparsebert quantize X DST --no-onnx (no calibration); with --calibration t.txt: 0.90")
    _run(b, "r80", _recipe(), step=20, cosine=0.90)
    _run(a, "abl-90-cut", _recipe(sparsity=0.9), step=12, cosine=0.85)  # stopped early: not a run
    _run(a, "abl-lr3", _recipe(lr="3e-3"), step=20, cosine=0.95)  # no shipped recipe has this body
    # r80-lr2's only run kept a SmoothQuant int8 figure (the plain one after ';'): marked as such
    _run(a, "abl-lr2", _recipe(lr="2e-3"), step=20, cosine=0.93, int8=0.929,
         quantized_with="sparsebert quantize X DST --no-onnx --calibration t.txt (SmoothQuant); without --calibration: 0.92")

    rows = {r["recipe"]: r for r in ablation_table.shipped_rows(recipes, (a, b))}

    assert sorted(rows) == ["r80", "r80-lr2", "r90"]
    assert (rows["r80-lr2"]["runs"], rows["r80-lr2"]["int8"]) == ("abl-lr2", "0.9290 (SmoothQuant)")
    assert rows["r80"]["runs"] == "abl-x, r80"
    assert (rows["r80"]["fp32"], rows["r80"]["int8"], rows["r80"]["steps"]) == ("0.9100", "0.9050", 20)
    assert (rows["r80"]["wall_min"], rows["r80"]["threads"], rows["r80"]["lee"]) == (1.5, 1, "0.500")
    assert rows["r90"]["runs"] == "not yet run" and "fp32" not in rows["r90"]


def test_metrics_round_down_so_a_shortfall_never_reads_as_the_target():
    assert ablation_table._fmt(0.949969) == "0.9499"  # abl-80-20k-bf16-cache against 0.95
    assert ablation_table._fmt(0.93) == "0.9300"  # 0.92999... in binary
    assert (ablation_table._fmt(0.5087, 3), ablation_table._fmt(None)) == ("0.508", "-")
