"""Helpers shared by the notebooks: where the repository and the results are, the FULL switch,
JSON in/out, figures shown as PNG under any matplotlib backend, and plain-text tables (pandas is
deliberately not a dependency).

Environment variables (the tests and notebooks/run_full.py set them):
  SPARSEBERT_NOTEBOOK_FULL  "1" / "0" overrides the FULL flag in a notebook's first cell
  SPARSEBERT_RESULTS_DIR    where JSON and PNG results go (default: <repo>/bench-results)
"""

from __future__ import annotations

import io
import json
import numbers
import os
from pathlib import Path

# Model-building helpers (transformers, huggingface_hub) draw progress bars that clutter saved
# notebooks; set before they are imported.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # headless everywhere; figures are shown as PNG images by `show`

import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def full_mode(default: bool) -> bool:
    """The notebook's FULL flag, unless SPARSEBERT_NOTEBOOK_FULL says "1" or "0"."""
    value = os.environ.get("SPARSEBERT_NOTEBOOK_FULL", "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"SPARSEBERT_NOTEBOOK_FULL must be 0 or 1, got {value!r}")
    return default if value == "" else value == "1"


def results_dir() -> Path:
    path = Path(os.environ.get("SPARSEBERT_RESULTS_DIR") or ROOT / "bench-results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def result_path(name: str, full: bool) -> Path:
    """bench-results/NAME.json for the full set, NAME_quick.json for the CI set (never mixed)."""
    return results_dir() / f"{name}{'' if full else '_quick'}.json"


def write_json(path: Path, result: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return path


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def show(fig, name: str | None = None) -> None:
    """Display `fig` as a PNG output (works with the Agg backend) and save it next to the JSON."""
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    if name:
        (results_dir() / f"{name}.png").write_bytes(buf.getvalue())
    plt.close(fig)
    display(Image(data=buf.getvalue(), format="png"))


def text_table(rows: list[dict], columns: list[tuple]) -> str:
    """Plain-text table. columns: (header, key or callable(row), format spec)."""
    values = [[key(r) if callable(key) else r.get(key) for _, key, _ in columns] for r in rows]
    cells = [[h for h, _, _ in columns]] + [
        ["" if v is None else format(v, spec) for v, (_, _, spec) in zip(vals, columns)]
        for vals in values]
    # Numbers right-aligned, text left-aligned, by what the column holds.
    numeric = [all(isinstance(vals[i], numbers.Number) for vals in values if vals[i] is not None)
               for i in range(len(columns))]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    out = []
    for j, row in enumerate(cells):
        out.append("  ".join(c.rjust(w) if num else c.ljust(w)
                             for c, w, num in zip(row, widths, numeric)).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def print_table(rows: list[dict], columns: list[tuple]) -> None:
    print(text_table(rows, columns))
