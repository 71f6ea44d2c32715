"""Input statistics for pruning scores, from one forward pass: Wanda's norms, SparseGPT's Hessians.

Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models") scores
weight W[n, k] by |W[n, k]| x ||x_k||_2, the L2 norm of input feature k over the tokens of a few
hundred calibration texts: a weight that multiplies a large activation matters more than its
magnitude says. `input_norms` runs the student once over the texts (eval mode, no gradient, in
batches of similar length tokenized as in training) with forward pre-hooks on the pruned linears,
and sums x_k^2 over the non-padding tokens in float64. The texts are a seeded draw from the
training data (`calibration_rows`), so a resumed run measures the same norms.

`input_hessians` sums X^T X (K x K, float64) the same way, for SparseGPT (`sparsegpt.py`).
"""

from __future__ import annotations

import numpy as np

from .distill import model_inputs


def calibration_rows(n_texts: int, count: int, seed: int) -> np.ndarray:
    """Indices of `count` distinct training texts (all of them when fewer), fixed by the seed."""
    rng = np.random.default_rng([seed, 0x5EED])
    return np.sort(rng.choice(n_texts, size=min(count, n_texts), replace=False))


def input_norms(model, params: dict, texts: list[str], tokenizer, batch_size: int) -> dict:
    """{weight name: ||x_k||_2 (K,) float32} for each weight in `params` (name -> (N, K) weight of
    an nn.Linear of `model`), over the non-padding tokens of `texts`."""
    sums = _input_sums(model, params, texts, tokenizer, batch_size, lambda x: (x * x).sum(dim=0))
    return {n: np.sqrt(s.numpy()).astype(np.float32) for n, s in sums.items()}


def input_hessians(model, params: dict, texts: list[str], tokenizer, batch_size: int) -> dict:
    """{weight name: X^T X (K, K) float64} for each weight in `params`, X the (tokens, K) inputs of
    its linear over the non-padding tokens of `texts` (SparseGPT's Hessian, `sparsegpt.py`)."""
    sums = _input_sums(model, params, texts, tokenizer, batch_size, lambda x: x.T @ x)
    return {n: s.numpy() for n, s in sums.items()}


def _input_sums(model, params: dict, texts: list[str], tokenizer, batch_size: int, stat) -> dict:
    # {name: sum over batches of stat(x)}, x (non-padding tokens, K) float64, the inputs of each
    # named weight's nn.Linear, from forward pre-hooks during one eval pass over the texts.
    import torch

    sums, current_mask, handles = {}, {}, []

    def hook_for(name):
        def hook(module, args):
            keep = current_mask["m"].bool()  # (B, T)
            x = args[0].detach()[keep].to(torch.float64)  # (tokens, K)
            sums[name] = sums.get(name, 0.0) + stat(x)
        return hook

    for name in params:
        module = model.get_submodule(name[: -len(".weight")])
        handles.append(module.register_forward_pre_hook(hook_for(name)))
    texts = sorted(texts, key=len)  # batches of similar length pad little
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for at in range(0, len(texts), batch_size):
                inputs = model_inputs(tokenizer(texts[at:at + batch_size]))
                current_mask["m"] = inputs["attention_mask"]
                model(**inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sums
