"""Gradual magnitude pruning (GMP): the cubic sparsity schedule and the masks it drives.

Schedule (Zhu & Gupta 2017, "To prune, or not to prune", eq. 1): with initial sparsity s_i, final s_f,
ramp start t0, end t1 and update interval dt, masks are recomputed at steps t0, t0 + dt, ... and at t1,
each time to

    s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3

so pruning is fast early, while the network is redundant, and slow near the end. Before t0 nothing is
pruned; after t1 the masks are fixed. `sparsity_at(step)` gives the sparsity in force during `step`
(that of the last update at or before it).

Masks: magnitude of each unit (a weight, or the L2 norm of an aligned R x C block of W (out, in), as
`sparsebert.prune` ranks them), per linear ("per-layer") or one threshold over all pruned linears
("global"). With input norms (Wanda, Sun et al. 2023, "A Simple and Effective Pruning Approach for
Large Language Models") each weight counts as |W[n, k]| x ||x_k||_2, and a block as the L2 norm of
those products; Wanda compares within each output row, here the comparison group is the recipe's
scope, as for magnitude. Pruned weights are set to exact zero and kept there after every optimiser step
(`MaskSet.apply`), so the zeros survive Adam's moments and weight decay; a pruned weight never comes
back (its magnitude is 0, the lowest). 4x1 blocks (4 consecutive output rows, one input column) are
what sparsebert's bsr4x1 kernels run; 1x4 blocks (one output row, 4 consecutive input columns) are
the K-quads the int8 VNNI kernels skip whole.

LR schedules (`lr_at`): warm-up, then constant, linear decay over the run, decay after the ramp, or
a restart at each mask update (Kurtic et al. 2022 oBERT; Zafrir et al. 2021 "Prune Once for All")
with linear decay to 0 at the next update, and over the recovery phase after the last one.

SparseGPT (`MaskSet.update_sparsegpt`, Frantar & Alistarh 2023) picks each linear's mask from the
inverse of its input Hessian and updates the kept weights to make up for the pruned ones.

Left out: movement pruning, oBERT's gradient-based second-order scores, regrowth (RigL),
per-linear sparsity targets.
"""

from __future__ import annotations

import numpy as np

from ..prune import block_scores, expand_mask, lowest_mask
from .sparsegpt import sparsegpt_prune


def cubic_sparsity(step: int, initial: float, final: float, start: int, end: int, every: int) -> float:
    """Sparsity in force during `step` (see the module docstring)."""
    if step < start:
        return 0.0
    if end <= start or step >= end:
        return final
    last_update = start + ((step - start) // every) * every
    frac = (last_update - start) / (end - start)
    return final + (initial - final) * (1.0 - frac) ** 3


def is_update_step(step: int, start: int, end: int, every: int) -> bool:
    return start <= step <= end and ((step - start) % every == 0 or step == end)


def lr_at(step: int, base: float, warmup: int, schedule: str, total: int, prune_end: int,
          prune_start: int = 0, every: int = 1) -> float:
    """Learning rate for `step`: linear warm-up, then constant, linear decay to 0 over the run,
    constant until the sparsity ramp ends and linear decay to 0 after it, or ("restart-per-update")
    back to `base` at each mask update (prune_start, prune_start + every, ..., prune_end) and
    linear decay to 0 at the next one, the last segment running from prune_end to the run's end."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "constant":
        return base
    if schedule == "restart-per-update":
        if step < prune_start:
            return base
        if step < prune_end:
            begin = prune_start + ((step - prune_start) // every) * every
            stop = min(begin + every, prune_end)
        else:
            begin, stop = prune_end, total
        return base * max(0.0, 1.0 - (step - begin) / max(1, stop - begin))
    begin = warmup if schedule == "linear" else max(warmup, prune_end)
    if step < begin:
        return base
    return base * max(0.0, 1.0 - (step - begin) / max(1, total - begin))


class MaskSet:
    """Keep-masks over named torch weights (N, K); recomputed by magnitude, applied in place."""

    def __init__(self, params: dict, block: tuple[int, int], scope: str):
        self.params = params  # name -> torch Parameter (N, K)
        self.block = block
        self.scope = scope
        self.masks = {}  # name -> torch bool tensor (N, K); empty until the first update
        R, C = block
        for name, p in params.items():
            N, K = p.shape
            if N % R or K % C:
                raise ValueError(f"block {R}x{C} does not divide {name} of shape {(N, K)}")

    def update(self, sparsity: float, input_norms: dict | None = None) -> None:
        """Masks that drop round(sparsity * units) lowest-scoring units (per linear or global):
        magnitude, or with input_norms {name: (K,) array} Wanda's |W| x ||x||."""
        import torch

        scores = {}
        for n, p in self.params.items():
            w = p.detach().cpu().numpy()
            if input_norms is not None:
                w = np.abs(w) * np.asarray(input_norms[n], dtype=np.float32)[None, :]
            scores[n] = block_scores(w, self.block)
        if self.scope == "per-layer":
            keeps = {n: lowest_mask(s, int(round(sparsity * s.size))) for n, s in scores.items()}
        else:
            names = list(scores)
            flat = np.concatenate([scores[n].ravel() for n in names])
            keep_flat = lowest_mask(flat, int(round(sparsity * flat.size)))
            keeps, at = {}, 0
            for n in names:
                keeps[n] = keep_flat[at:at + scores[n].size].reshape(scores[n].shape)
                at += scores[n].size
        self.masks = {n: torch.from_numpy(expand_mask(k, self.block).copy()) for n, k in keeps.items()}
        self.apply()

    def update_sparsegpt(self, sparsity: float, hessians: dict) -> None:
        """Per linear, SparseGPT's mask at this sparsity and its reconstruction of the kept weights
        from the input Hessians {name: (K, K)} (`sparsegpt.py`; per-layer scope only). Weights
        already pruned are zero, score lowest and stay pruned."""
        import torch

        masks = {}
        for n, p in self.params.items():
            w, keep = sparsegpt_prune(p.detach().cpu().numpy(), hessians[n], sparsity, self.block)
            with torch.no_grad():
                p.copy_(torch.from_numpy(w))
            masks[n] = torch.from_numpy(keep)
        self.masks = masks
        self.apply()

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for n, m in self.masks.items():
                self.params[n].mul_(m)

    def sparsity(self) -> float:
        """Fraction of exact zeros over all masked weights."""
        zeros = sum(int((p == 0).sum()) for p in self.params.values())
        total = sum(p.numel() for p in self.params.values())
        return zeros / total if total else 0.0
