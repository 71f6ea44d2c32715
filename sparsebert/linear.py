"""Weight matmuls on sparsebert's activation layout, and the choice of format for each one.

A `Linear` computes `Y[b] (N, S) = W (N, K) @ X[b] (K, S) + bias`, optionally followed by an
activation and a residual add, on activations laid out `(B, F, S)` (see `sparsebert.kernels`).
This module owns every decision about weight formats: the dense path goes through BLAS
(`np.matmul`); sparse paths (CSR, BSR) call the Numba kernels in `sparsebert.kernels`.
"""

from __future__ import annotations

import numpy as np

from .kernels import ops

# Activation names the model passes to a Linear's epilogue.
EPILOGUES = (None, "gelu", "gelu_tanh", "relu")


class DenseLinear:
    """Dense weight through BLAS; the baseline every sparse format must beat to be chosen."""

    format = "dense"

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.weight.flags.writeable = False
        self.bias.flags.writeable = False
        self.out_features, self.in_features = self.weight.shape

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes + self.bias.nbytes

    @property
    def nnz(self) -> int:
        return int(np.count_nonzero(self.weight))

    def __call__(self, x: np.ndarray, *, activation=None, residual=None) -> np.ndarray:
        y = np.matmul(self.weight, x)  # (B, N, S)
        ops.bias_act_residual(y, self.bias, _ACT_CODES[activation], residual)
        return y


_ACT_CODES = {None: 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}


def make_linear(weight: np.ndarray, bias: np.ndarray, format: str = "dense"):
    """Build the Linear for one (N, K) weight and (N,) bias in the requested format."""
    if format != "dense":
        raise ValueError(f"unknown linear format {format!r}; expected 'dense'")
    return DenseLinear(weight, bias)
