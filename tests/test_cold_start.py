"""The cold-start bookkeeping: the demo's compile counter tells a compiled kernel from a cached one."""

import numba
import numpy as np

from sparsebert.demo import _CompileCounter


def test_compile_counter_counts_compiles_not_calls():
    @numba.njit
    def add_one(a):
        return a + 1

    with _CompileCounter() as first:
        add_one(np.int64(1))
    with _CompileCounter() as again:
        add_one(np.int64(2))
    with _CompileCounter() as other_type:
        add_one(np.float32(2))
    assert (first.count, again.count, other_type.count) == (1, 0, 1)
