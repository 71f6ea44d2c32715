"""Make small, seeded BERT checkpoints as Hugging Face folders (config.json + model.safetensors).

Tests and benchmarks need BERT encoders of known shape without a network: this script builds them
with transformers' own `BertModel` (random init from a fixed seed) and saves them with
`save_pretrained`, so every downstream reader sees exactly what a real checkpoint looks like.
`sparsity > 0` magnitude-prunes each encoder linear weight (per matrix) to exact zeros, the shape of
an unstructured-pruned checkpoint. Embeddings, LayerNorms, biases and the pooler stay dense.

This is a plain script folder, not a package: import it after adding `models/` to sys.path.
"""

from __future__ import annotations

import argparse
import json
import os


def _prune_linear_weights(model, sparsity: float) -> None:
    """Zero the smallest-|w| fraction `sparsity` of every encoder linear weight, in place."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if not (name.startswith("encoder.") and name.endswith(".weight") and param.dim() == 2):
                continue
            n_zero = int(round(sparsity * param.numel()))
            if n_zero == 0:
                continue
            flat = param.abs().flatten()
            # Ties at the threshold are broken by index so exactly n_zero entries become zero.
            order = torch.argsort(flat, stable=True)
            mask = torch.ones_like(flat)
            mask[order[:n_zero]] = 0.0
            param.mul_(mask.view_as(param))


def make_random_bert(
    dirpath: str | os.PathLike,
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 64,
    vocab: int = 100,
    max_position: int = 64,
    type_vocab: int = 2,
    hidden_act: str = "gelu",
    seed: int = 0,
    sparsity: float = 0.0,
    perturb: bool = True,
) -> str:
    """Write a seeded random BertModel to `dirpath`; return the folder path as a string.

    `perturb` adds seeded noise to every bias and LayerNorm parameter, so no two tensors are equal
    and a reader that mixes them up cannot pass. `perturb=False` keeps transformers' own init
    (zero biases, unit LayerNorm weights), which ONNX exporters deduplicate into one initializer
    aliased by Identity nodes, or drop entirely: the other shape real exports come in.
    """
    import torch
    from transformers import BertConfig, BertModel

    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_position,
        type_vocab_size=type_vocab,
        hidden_act=hidden_act,
    )
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=True).eval()
    if perturb:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "LayerNorm" in name or name.endswith(".bias"):
                    param.add_(0.1 * torch.randn_like(param))
    if sparsity > 0:
        _prune_linear_weights(model, sparsity)
    os.makedirs(dirpath, exist_ok=True)
    model.save_pretrained(str(dirpath))
    return str(dirpath)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparsity", type=float, default=0.0)
    parser.add_argument("--hf-init", action="store_true",
                        help="keep transformers' init (zero biases) instead of perturbing them")
    args = parser.parse_args(argv)
    path = make_random_bert(
        args.out,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        intermediate=args.intermediate,
        vocab=args.vocab,
        seed=args.seed,
        sparsity=args.sparsity,
        perturb=not args.hf_init,
    )
    print(json.dumps({"path": path}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
