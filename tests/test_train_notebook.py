"""notebooks/compound_sparsification.ipynb runs on the committed results and draws its figures.

The notebook measures nothing (the full runs take hours on a CPU); this checks that it reads
notebooks/results/compound_sparsification.json, that every row has the fields it plots, and that the
two figures come out as PNG outputs.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULT = ROOT / "notebooks" / "results" / "compound_sparsification.json"

pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")


def test_results_have_the_plotted_fields():
    result = json.loads(RESULT.read_text())
    assert result["settings"]["cpu"] and result["settings"]["shared_machine"] in (True, False)
    kinds = {(r["task"], r["kind"]) for r in result["results"]}
    assert ("embeddings", "dense") in kinds and ("embeddings", "compound") in kinds
    for r in result["results"]:
        assert r["speedup_vs_ort"] > 0
        metric = "cosine_to_teacher" if r["task"] == "embeddings" else "accuracy"
        assert 0.0 <= r[metric] <= 1.0


def test_notebook_executes(tmp_path):
    sys.path.insert(0, str(ROOT / "notebooks"))
    from run_full import execute_notebook

    nb = execute_notebook(ROOT / "notebooks" / "compound_sparsification.ipynb", full=False,
                          results_dir=tmp_path / "results", cwd=tmp_path, timeout=120)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    pngs = [base64.b64decode(o["data"]["image/png"]) for c in nb.cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
    assert len(pngs) == 2 and all(p.startswith(b"\x89PNG") for p in pngs)
