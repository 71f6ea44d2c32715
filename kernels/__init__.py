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

if __name__ == "kernels":  # pragma: no cover - exercised by tests/test_architecture.py in a subprocess
    # This folder was imported as a top-level `kernels`: the repository root is on sys.path
    # (`python -m ...` run from it puts the working directory first). Hugging Face's `kernels`
    # distribution, which transformers >= 5.25 imports, has that name too; hand the import over to it
    # so this folder does not shadow it. Without that distribution installed nothing else imports a
    # top-level `kernels`, and this folder stays the (empty) package it always was.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _path = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != _root]
    _spec = _machinery.PathFinder.find_spec("kernels", _path)
    if _spec is not None and _spec.loader is not None:
        _module = _util.module_from_spec(_spec)
        _sys.modules["kernels"] = _module
        _spec.loader.exec_module(_module)
