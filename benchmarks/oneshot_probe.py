"""One-shot probes of where a sparsity pattern hurts, before any training: cheap screens for recipe levers.

Each probe prunes a copy of the dense teacher one-shot by magnitude (per linear, `sparsebert.prune`'s
`prune_weights`) and reports the held-out cosine of its mean-pooled embeddings to the teacher's, on the
first `--sentences` lines of the held-out file:

  types        one linear type (query, key, value, attn_out, ffn_in, ffn_out) pruned in every layer,
               the rest dense, unstructured and 1x4: which linears the pattern hurts most
  allocation   every linear pruned, attention and FFN linears at different sparsities with the same
               80% total: does moving sparsity between them help?
  permutation  1x4 blocks group 4 consecutive input columns; the FFN's intermediate neurons can be
               reordered without changing the function (ffn_in rows and bias, ffn_out columns), so
               the groups can be chosen: none, random, by column norm, by each column's largest row

A lever that does not move the one-shot figure may still matter after distillation; one that does is
worth a training ablation. Run on a quiet machine (about 3 minutes on 2 threads):

    .venv/bin/python benchmarks/oneshot_probe.py [--teacher DIR] [--sentences 1000] [--json out.json]

Left out: Wanda / SparseGPT scores (magnitude only), permutations of the residual stream.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_step_profile import default_teacher  # noqa: E402

from sparsebert.tuning import cpu_label  # noqa: E402

TYPES = ("query", "key", "value", "attn_out", "ffn_in", "ffn_out")
ATTENTION, FFN = TYPES[:4], TYPES[4:]


class Probe:
    def __init__(self, teacher_dir: str, texts: list[str], threads: int):
        import torch

        from sparsebert.tokenizer import Tokenizer
        from sparsebert.train import distill

        torch.set_num_threads(threads)
        self.torch, self.distill = torch, distill
        self.teacher = distill.load_teacher(teacher_dir, "embeddings")
        self.tokenizer = Tokenizer(Path(teacher_dir), 64)
        self.texts = texts
        self.reference = self.embed(self.teacher)

    def embed(self, model):
        torch = self.torch
        out = []
        with torch.no_grad():
            for i in range(0, len(self.texts), 64):
                inputs = self.distill.model_inputs(self.tokenizer(self.texts[i:i + 64]))
                h = model(**inputs).last_hidden_state
                out.append(self.distill.mean_pool(h, inputs["attention_mask"]))
        return torch.cat(out)

    def cosine(self, model) -> float:
        f = self.torch.nn.functional
        return float(f.cosine_similarity(self.embed(model), self.reference).mean())

    def student(self):
        n = self.teacher.config.num_hidden_layers
        return self.distill.make_student(self.teacher, tuple(range(n)), 0.0).eval()

    def prune(self, model, sparsity: dict, block: tuple[int, int]) -> None:
        from sparsebert.prune import prune_weights

        for name, s in sparsity.items():
            linears = self.distill.encoder_linears(model, (name,))
            pruned = prune_weights({n: w.detach().numpy() for n, w in linears.items()}, s, block=block)
            with self.torch.no_grad():
                for n, w in linears.items():
                    w.copy_(self.torch.from_numpy(pruned[n]))


def permute_intermediate(model, how: str, torch) -> None:
    """Reorder each layer's FFN intermediate neurons (function-preserving)."""
    for layer in model.encoder.layer:
        w_in, b_in = layer.intermediate.dense.weight, layer.intermediate.dense.bias
        w_out = layer.output.dense.weight
        W = w_out.detach().numpy()
        norms = np.linalg.norm(W, axis=0)
        if how == "random":
            order = np.random.default_rng(0).permutation(W.shape[1])
        elif how == "column norm":
            order = np.argsort(-norms)
        else:  # "largest row": columns that peak in the same output row side by side
            order = np.lexsort((-norms, np.abs(W).argmax(0)))
        o = torch.from_numpy(order.copy())
        with torch.no_grad():
            w_in.copy_(w_in[o])
            b_in.copy_(b_in[o])
            w_out.copy_(w_out[:, o])


def run(probe: Probe) -> dict:
    out = {"types": [], "allocation": [], "permutation": []}
    for block in ((1, 1), (1, 4)):
        for name in TYPES:
            m = probe.student()
            probe.prune(m, {name: 0.8}, block)
            out["types"].append({"linear": name, "block": "%dx%d" % block, "cosine": probe.cosine(m)})

    def count(names):
        return sum(w.numel() for w in probe.distill.encoder_linears(probe.teacher, names).values())

    att, total = count(ATTENTION), count(TYPES)
    for a in (0.7, 0.8, 0.85, 0.9):
        f = (0.8 * total - a * att) / (total - att)  # FFN sparsity that keeps 80% overall
        for block in ((1, 1), (1, 4)):
            m = probe.student()
            probe.prune(m, {**{n: a for n in ATTENTION}, **{n: f for n in FFN}}, block)
            out["allocation"].append({"attention": a, "ffn": round(f, 4), "block": "%dx%d" % block,
                                      "cosine": probe.cosine(m)})
    for how in ("none", "random", "column norm", "largest row"):
        m = probe.student()
        if how != "none":
            permute_intermediate(m, how, probe.torch)
        probe.prune(m, {n: 0.8 for n in TYPES}, (1, 4))
        out["permutation"].append({"order": how, "block": "1x4", "cosine": probe.cosine(m)})
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default=None, help="teacher folder (default: the all-MiniLM-L6-v2 wheel)")
    ap.add_argument("--heldout", default=str(ROOT / "data-cache" / "sentences" / "heldout.txt"))
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    texts = [t.strip() for t in open(args.heldout, encoding="utf-8") if t.strip()][:args.sentences]
    result = {"cpu": cpu_label(), "sentences": len(texts),
              **run(Probe(args.teacher or default_teacher(), texts, args.threads))}
    for r in result["types"]:
        print(f"types        {r['linear']:9s} 80% {r['block']}: cosine {r['cosine']:.4f}")
    for r in result["allocation"]:
        print(f"allocation   attention {r['attention']:.0%} ffn {r['ffn']:.1%} {r['block']}: cosine {r['cosine']:.4f}")
    for r in result["permutation"]:
        print(f"permutation  {r['order']:12s} 80% 1x4: cosine {r['cosine']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
