"""What a loaded checkpoint looks like to sparsebert: per-linear sparsity, block structure, format.

`inspect_model(path)` loads the model (formats chosen as at inference) and returns the encoder's
sparsity report with, for each linear, the aligned block shapes its nonzeros fill exactly (what
block pruning left behind) and the fraction of FLOPs the chosen format skips. `format_table` renders
it for a terminal. Loading does the real format choice, so what is shown is what will run.
"""

from __future__ import annotations

import os

from .api import load
from .linear_cost import fitting_block_shapes


def inspect_model(path: str | os.PathLike, *, layers=None, formats="auto") -> dict:
    model = load(path, layers=layers, formats=formats)
    report = model.sparsity_report()
    weights = {}
    for i, lw in enumerate(model.encoder.weights.layers):
        weights[i] = {"qkv": lw.qkv_w, "attn_out": lw.attn_out_w, "ffn_in": lw.ffn_in_w,
                      "ffn_out": lw.ffn_out_w}
    rows = []
    for row in report["linears"]:
        N, K = row["shape"]
        w = weights.get(row["layer"], {}).get(row["name"])
        blocks = fitting_block_shapes(w) if w is not None and row["nnz"] else []
        rows.append({
            **row,
            "shape": [N, K],
            "block_shape": list(row["block_shape"]) if row["block_shape"] else None,
            "fitting_blocks": [f"{r}x{c}" for r, c in blocks],
            "flops_skipped": row["flops_skipped_per_token"] / (2 * N * K),
        })
    c = model.config
    return {
        "path": os.fspath(path),
        "config": {"layers": c.num_hidden_layers, "hidden": c.hidden_size,
                   "intermediate": c.intermediate_size, "heads": c.num_attention_heads,
                   "vocab": c.vocab_size},
        "linears": rows,
        "total": report["total"],
    }


def format_table(info: dict) -> str:
    """A fixed-width table of `inspect_model`'s result, one line per linear, then totals."""
    head = f"{'layer':>5}  {'linear':<9} {'shape':>11} {'sparsity':>8}  {'blocks':<16} {'format':<11} {'FLOPs skipped':>13}"
    lines = [f"{info['path']}: {info['config']['layers']} layers, hidden {info['config']['hidden']}, "
             f"FFN {info['config']['intermediate']}", head, "-" * len(head)]
    for r in info["linears"]:
        layer = f"{r['layer']}" if r["layer"] == r["source_layer"] else f"{r['layer']}<-{r['source_layer']}"
        shape = f"{r['shape'][0]}x{r['shape'][1]}"
        blocks = ",".join(b for b in r["fitting_blocks"] if b != "1x1") or "-"
        lines.append(f"{layer:>5}  {r['name']:<9} {shape:>11} {r['sparsity']:8.1%}  {blocks:<16} "
                     f"{r['format']:<11} {r['flops_skipped']:13.1%}")
    t = info["total"]
    lines.append("-" * len(head))
    lines.append(
        f"total: {t['params']:,} linear weights, {t['nnz']:,} nonzero ({t['sparsity']:.1%} sparse); "
        f"{t['flops_skipped']:.1%} of linear FLOPs skipped; weights {t['nbytes'] / 2**20:.1f} MiB "
        f"stored vs {t['dense_nbytes'] / 2**20:.1f} MiB dense"
    )
    kinds = sorted(set(t.get("attention", [])))
    if kinds:
        lines.append(f"attention (QK^T, PV): {', '.join(kinds)}")
    return "\n".join(lines)
