"""Every `prange` in sparsebert.kernels really becomes a parallel loop.

Numba converts a `prange` to a parallel loop only when it recognises the loop's shape; when it
does not, the loop silently runs serially, results stay bitwise equal and only the speed drops.
That happened to the generated spmm drivers: `prange(a if short else b)` (a conditional
expression in the range) compiled to a serial loop, and every sparse FP32 linear used one core of
two (same time at 1 and 2 threads, process CPU / wall 1.00) until the task count was computed
before the loop. Two checks keep it from coming back:
- a lint over the kernel sources: a `prange` argument is plain arithmetic on names (no
  conditional expression, comparison or call), the shape Numba recognises;
- a fresh compile of the generated CSR driver (the template of all five formats), whose parfor
  diagnostics must list a parallel loop on the prange line.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numba
import numpy as np

import sparsebert  # noqa: F401  (sets up the kernels package)
from sparsebert.kernels import _spmm_generated, jit, spmm

KERNELS = Path(__file__).resolve().parent.parent / "kernels"
_PLAIN = (ast.Name, ast.Constant, ast.BinOp, ast.UnaryOp, ast.Attribute, ast.Subscript,
          ast.operator, ast.unaryop, ast.Load, ast.Tuple, ast.Slice)


def prange_problems(source: str, filename: str = "<src>") -> list[str]:
    """Lines whose prange argument is not plain arithmetic on names and constants."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "prange":
            bad = [n for arg in node.args for n in ast.walk(arg) if not isinstance(n, _PLAIN)]
            if bad:
                out.append(f"{filename}:{node.lineno}: prange argument uses {type(bad[0]).__name__}; "
                           "compute the trip count in a variable before the loop")
    return out


def test_lint_catches_a_conditional_trip_count():
    planted = "for t in prange(a * b if short else c):\n    pass\n"
    assert prange_problems(planted) and not prange_problems("n = a * b\nfor t in prange(n * c):\n    pass\n")


def test_every_kernel_prange_is_plain_arithmetic():
    files = sorted(KERNELS.glob("*.py"))
    assert any(f.name == "_spmm_generated.py" for f in files)
    problems = [p for f in files for p in prange_problems(f.read_text(), f.name)]
    assert not problems, "\n".join(problems)


def test_generated_csr_driver_compiles_to_a_parallel_loop():
    # A fresh, uncached compile of the committed driver, so its parfor diagnostics exist.
    py = _spmm_generated.spmm_csr.py_func
    fresh = numba.njit(fastmath=jit.FASTMATH, nogil=True, parallel=True)(py)
    rng = np.random.default_rng(0)
    N, K, B, S = 32, 48, 2, 128
    w = rng.standard_normal((N, K)).astype(np.float32) * (rng.random((N, K)) < 0.3)
    rows, cols = np.nonzero(w)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=N))])
    order, local, ptr = spmm.chunk_entries(indptr, cols.astype(np.int32), K, K)
    x = rng.standard_normal((B, K, S)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    y = np.empty((B, N, S), np.float32)
    fresh(np.ascontiguousarray(w[rows, cols][order]), local, ptr, K, x, bias, 0, spmm._NO_RESIDUAL,
          False, 1, y)
    np.testing.assert_allclose(y, np.matmul(w, x) + bias[:, None], rtol=1e-5, atol=1e-5)
    src, first = inspect.getsourcelines(py)
    prange_lines = [first + i for i, line in enumerate(src) if "prange(" in line]
    assert len(prange_lines) == 1
    (overload,) = fresh.overloads.values()
    parallel_lines = {p.loc.line for p in overload.metadata["parfor_diagnostics"].get_parfors()}
    assert prange_lines[0] in parallel_lines, (prange_lines, sorted(parallel_lines))
