"""Channel permutation before block pruning: group together input channels that matter in the same rows.

A 1xC block (one output row, C consecutive input columns; C = 4 is what the int8 VNNI kernels run)
keeps or drops C weights together, so it loses more than unstructured pruning whenever the important
weights of a row sit in different groups of C. Some input channels can be reordered without changing
what the model computes, as long as the producer of the channel is reordered the same way (Ji et al.
2018, "TETRIS: Tile-matching the Tremendous Irregular Sparsity"; Pool & Yu 2021, "Channel
Permutations for N:M Sparsity"). In a BERT layer two such axes exist:

- the FFN's intermediate channels: rows (and bias) of `intermediate.dense`, columns of `output.dense`
  (GELU acts on each channel alone);
- each head's value channels: rows (and bias) of `attention.self.value`, columns of
  `attention.output.dense`, within the head only (a channel moved to another head would be mixed by
  that head's attention probabilities).

The hidden size cannot be reordered without reordering the model's output, so the inputs of query,
key, value and the FFN's first linear keep their order.

`permute_for_blocks` chooses, for each axis, groups of C channels whose importance profiles over the
output rows (the pruning score: w^2 x ||x||^2, Wanda's score squared, or w^2 without calibration)
overlap most: greedy swaps between groups that raise sum over groups of ||sum of the group's profiles||^2,
which is large when a group's channels are important in the same rows. A permutation is kept only if
it raises the score mass a 1xC mask keeps at the final sparsity; the dense model's outputs are
unchanged (up to float rounding), and so are the teacher's hidden states the student is distilled to.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def block_keep_fraction(profiles: np.ndarray, order: np.ndarray, group: int, sparsity: float) -> float:
    """Share of the score mass sum(profiles) that a per-linear mask of 1 x `group` blocks, dropping
    round(sparsity x blocks) blocks of lowest mass, keeps when the columns are taken in `order`."""
    blocks = profiles[:, order].reshape(profiles.shape[0], -1, group).sum(-1).ravel()
    drop = int(round(sparsity * blocks.size))
    total = blocks.sum()
    return float(np.sort(blocks)[drop:].sum() / total) if total > 0 else 1.0


def group_columns(profiles: np.ndarray, group: int, passes: int = 8) -> np.ndarray:
    """An order of the K columns of `profiles` (N rows x K, >= 0) whose consecutive runs of `group`
    columns have overlapping profiles: greedy best swaps between groups on the objective
    sum_g ||S_g||^2 (S_g the sum of group g's columns), in a fixed column order (deterministic)."""
    V = np.asarray(profiles, dtype=np.float64)
    K = V.shape[1]
    if K % group:
        raise ValueError(f"{K} columns do not split into groups of {group}")
    grp = np.arange(K) // group
    gram = V.T @ V
    diag = np.diag(gram).copy()
    onehot = np.zeros((K // group, K))
    onehot[grp, np.arange(K)] = 1.0
    P = onehot @ gram  # P[a, k] = S_a . v_k
    cols = np.arange(K)
    tol = 1e-12 * max(float(diag.sum()), 1e-300)
    for _ in range(passes):
        swaps = 0
        for j in range(K):
            a = grp[j]
            # change of the objective if column j (group a) and column k (group b) swap groups
            gain = 2 * (P[a] - P[a, j] - P[grp, cols] + P[grp, j]) + 2 * (diag[j] + diag - 2 * gram[j])
            gain[grp == a] = -np.inf
            k = int(np.argmax(gain))
            if gain[k] > tol:
                b = grp[k]
                P[a] += gram[k] - gram[j]
                P[b] += gram[j] - gram[k]
                grp[j], grp[k] = b, a
                swaps += 1
        if swaps == 0:
            break
    return np.argsort(grp, kind="stable")


def permute_for_blocks(student, params: dict, block: tuple[int, int], sparsity: float,
                       norms: dict | None = None, optim=None, masks: dict | None = None) -> dict:
    """Reorder the permutable channels of every encoder layer of `student` (in place) so that 1xC
    blocks of the pruned consumers (`params`: name -> weight, as `distill.encoder_linears`) keep more
    of their score at `sparsity`. norms: {name: ||x_k|| (K,)} (Wanda's) or None for magnitude.
    optim: an optimiser whose state for the touched parameters is reordered alike; masks: existing
    {name: bool tensor} reordered alike. Returns {"ffn_out" / "attn_out": [mean kept share before,
    after]} over the consumers that were pruned."""
    import torch

    R, C = block
    if R != 1 or C < 2:
        raise ConfigError(f"[pruning] permute = true with block = \"{R}x{C}\": channel permutation groups "
                          f"input columns for 1xC blocks (e.g. \"1x4\"); set permute = false")
    named = dict(student.named_parameters())
    heads = student.config.num_attention_heads
    head_dim = student.config.hidden_size // heads
    report = {"ffn_out": [], "attn_out": []}
    for name in params:
        if name.endswith(".output.dense.weight") and ".attention." not in name:
            kind, prefix = "ffn_out", name[: -len("output.dense.weight")]
            producer, spans = prefix + "intermediate.dense", [(0, params[name].shape[1])]
        elif name.endswith(".attention.output.dense.weight"):
            kind, prefix = "attn_out", name[: -len("attention.output.dense.weight")]
            producer = prefix + "attention.self.value"
            spans = [(h * head_dim, (h + 1) * head_dim) for h in range(heads)]
        else:
            continue
        if any((hi - lo) % C for lo, hi in spans):
            raise ConfigError(f"[pruning] permute = true: {kind} channels come in runs of "
                              f"{spans[0][1] - spans[0][0]}, not a multiple of the block's {C} columns")
        w = params[name].detach().cpu().numpy().astype(np.float64)
        prof = w * w
        if norms is not None:
            prof = prof * np.asarray(norms[name], dtype=np.float64)[None, :] ** 2
        order = np.concatenate([lo + group_columns(prof[:, lo:hi], C) for lo, hi in spans])
        ident = np.arange(prof.shape[1])
        before = block_keep_fraction(prof, ident, C, sparsity)
        after = block_keep_fraction(prof, order, C, sparsity)
        if after <= before:
            order, after = ident, before
        report[kind].append((before, after))
        if order is ident:
            continue
        idx = torch.from_numpy(order)
        moves = [(name, 1), (producer + ".weight", 0), (producer + ".bias", 0)]
        with torch.no_grad():
            for pname, axis in moves:
                p = named[pname]
                p.copy_(p.index_select(axis, idx))
                state = optim.state.get(p, {}) if optim is not None else {}
                for value in state.values():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        value.copy_(value.index_select(axis, idx))
                if masks is not None and pname in masks:
                    masks[pname] = masks[pname].index_select(axis, idx)
    return {k: [round(float(np.mean([b for b, _ in v])), 4), round(float(np.mean([a for _, a in v])), 4)]
            for k, v in report.items() if v}
