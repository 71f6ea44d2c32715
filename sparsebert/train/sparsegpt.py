"""SparseGPT: prune one linear and update its kept weights to reconstruct its output.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
(the OBS / OBC line: Hassibi & Stork 1993, Frantar et al. 2022). For a linear y = W x with inputs
X measured on calibration texts, H = X^T X (K x K, summed over tokens), removing weights from W
while minimising ||(W - W') X^T||^2 has a closed form per removed weight: the error it leaves is
spread over the not yet processed weights of its row through H^-1. SparseGPT processes the input
columns left to right: within each panel of `block_cols` columns it picks the mask (the units with
the lowest w^2 / [U]_kk^2, U the upper Cholesky factor of H^-1, summed over each R x C block), then
for each column zeroes the pruned entries and subtracts their error, scaled by U's row, from the
columns to its right (in the panel at once, past it after the panel). H is damped by
`damp` x mean(diag H) so that it is invertible; inputs that never fire (a zero diagonal) have their
weights zeroed, as in the reference implementation.

`sparsegpt_prune(weight, hessian, sparsity, block)` returns the updated weight and its keep-mask
(exactly round(sparsity x units) units pruned in each panel). With a diagonal H it reduces to
pruning by |w| x sqrt(H_kk) with no update (Wanda's score), with H = I to magnitude pruning.

Left out: the sequential variant that measures each layer's inputs on the already pruned layers
before it (here every Hessian comes from one pass of the unpruned student), quantisation (GPTQ).
"""

from __future__ import annotations

import numpy as np

from ..prune import expand_mask, lowest_mask


def upper_cholesky_of_inverse(hessian: np.ndarray, damp: float) -> np.ndarray:
    """U upper triangular with U^T U = (H + damp x mean(diag H) x I)^-1, in float64; the damping is
    raised tenfold (up to 3 times) if H is still not positive definite."""
    H = np.array(hessian, dtype=np.float64)
    K = H.shape[0]
    mean_diag = float(np.mean(np.diag(H))) or 1.0
    for attempt in range(4):
        Hd = H + (damp * 10 ** attempt) * mean_diag * np.eye(K)
        try:
            L = np.linalg.cholesky(Hd)
            Linv = np.linalg.solve(L, np.eye(K))  # L^-1, lower triangular
            return np.linalg.cholesky(Linv.T @ Linv).T
        except np.linalg.LinAlgError:
            continue
    raise ValueError("input Hessian is not positive definite even with 1000x the damping: the "
                     "calibration inputs are degenerate (NaN, or too few texts); use more calibration_texts")


def sparsegpt_prune(weight: np.ndarray, hessian: np.ndarray, sparsity: float, block=(1, 1),
                    block_cols: int = 128, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(updated weight (N, K) float32, keep-mask (N, K) bool); see the module docstring."""
    W = np.array(weight, dtype=np.float64)
    N, K = W.shape
    R, C = block
    if N % R or K % C:
        raise ValueError(f"block {R}x{C} does not divide the weight shape {(N, K)}")
    if hessian.shape != (K, K):
        raise ValueError(f"Hessian shape {hessian.shape} does not match the weight's {K} input features")
    H = np.array(hessian, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U = upper_cholesky_of_inverse(H, damp)
    keep = np.ones((N, K), dtype=bool)
    step = max(C, block_cols // C * C)
    for c0 in range(0, K, step):
        c1 = min(c0 + step, K)
        W1 = W[:, c0:c1].copy()
        U1 = U[c0:c1, c0:c1]
        err = np.zeros_like(W1)
        score = W1 ** 2 / np.diag(U1)[None, :] ** 2
        units = score.reshape(N // R, R, (c1 - c0) // C, C).sum(axis=(1, 3))
        keep1 = expand_mask(lowest_mask(units, int(round(sparsity * units.size))), (R, C))
        for i in range(c1 - c0):
            w = W1[:, i]
            q = np.where(keep1[:, i], w, 0.0)
            e = (w - q) / U1[i, i]
            W1[:, i:] -= np.outer(e, U1[i, i:])
            W1[:, i] = q
            err[:, i] = e
        W[:, c0:c1] = W1
        W[:, c1:] -= err @ U[c0:c1, c1:]
        keep[:, c0:c1] = keep1
    W[~keep] = 0.0
    return W.astype(np.float32), keep
