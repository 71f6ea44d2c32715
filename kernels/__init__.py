"""Numba kernels of sparsebert (import package `sparsebert.kernels`).

Kernels are pure `@njit` functions over NumPy arrays and scalars: no config objects, no I/O, no
environment reads. They are called from the linear kinds (`sparsebert/linear.py`: dense.py, spmm.py;
`sparsebert/quant/linear.py`: int8.py, int8_vnni.py), which `sparsebert.dispatch` chooses between,
from the tuner (`sparsebert/tuning.py`, spmm.py's K-chunk widths), and from `sparsebert/model.py`
(ops.py: element-wise ops and LayerNorm; attention.py). `jit.py` is the one place that sets
compiler options.

Activation layout, shared by every kernel: one sequence is a feature-major matrix, so a batch is
`X (B, F, S)` float32, C-contiguous: batch, features, sequence positions. A weight matmul is
`Y[b] (N, S) = W (N, K) @ X[b] (K, S)`, and a head's queries are the contiguous rows
`X[b, h*D:(h+1)*D, :]`, so attention needs no re-layout.
"""
