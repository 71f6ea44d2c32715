"""sparsebert.linear: format conversions, the validating constructors, format choice, describe().

Kernel numerics are covered by test_kernels.py; here each Linear is compared with the dense
NumPy layer it replaces, and every malformed compressed structure must raise CheckpointError.
"""

import math

import numpy as np
import pytest

from sparsebert import CheckpointError
from sparsebert.errors import InputError
from sparsebert.linear import (
    BSRLinear,
    CSRLinear,
    DenseLinear,
    block_fill,
    choose_format,
    fitting_block_shapes,
    warmup,
)
from sparsebert.dispatch import make_linear

_erf = np.vectorize(math.erf)


def dense_reference(w, b, x, activation=None, residual=None):
    y = np.matmul(w.astype(np.float64), x.astype(np.float64)) + b[:, None]
    if activation == "gelu":
        y = 0.5 * y * (1.0 + _erf(y / math.sqrt(2.0)))
    if residual is not None:
        y = y + residual
    return y


def pruned(rng, N, K, sparsity, block=(1, 1)):
    R, C = block
    w = rng.standard_normal((N, K)).astype(np.float32)
    keep = rng.random((N // R, K // C)) >= sparsity
    return w * np.repeat(np.repeat(keep, R, 0), C, 1)


@pytest.fixture
def layer():
    rng = np.random.default_rng(0)
    w = pruned(rng, 32, 24, 0.8, (4, 1))
    b = rng.standard_normal(32).astype(np.float32)
    x = rng.standard_normal((2, 24, 37)).astype(np.float32)
    r = rng.standard_normal((2, 32, 37)).astype(np.float32)
    return w, b, x, r


@pytest.mark.parametrize("fmt", ["dense", "csr", "bsr", "bsr4x1", "bsr8x1", "bsr2x2", "bsr1x4", "auto"])
def test_every_format_matches_dense(layer, fmt):
    w, b, x, r = layer
    lin = make_linear(w, b, fmt)
    assert (lin.out_features, lin.in_features) == (32, 24)
    for act, res in [(None, None), ("gelu", None), (None, r)]:
        y = lin(x, activation=act, residual=res)
        assert y.shape == (2, 32, 37) and y.dtype == np.float32
        np.testing.assert_allclose(y, dense_reference(w, b, x, act, res), atol=1e-5, rtol=1e-5)
    assert lin.nnz == np.count_nonzero(w)


def test_conversions_round_trip(layer):
    w, b, _, _ = layer
    np.testing.assert_array_equal(CSRLinear.from_dense(w, b).to_dense(), w)
    for shape in [(4, 1), (2, 2), (1, 4)]:
        lin = BSRLinear.from_dense(w, b, shape)
        assert lin.block_shape == shape
        np.testing.assert_array_equal(lin.to_dense(), w)


def test_block_detection(layer):
    w, _, _, _ = layer
    assert fitting_block_shapes(w) == [(4, 1)]  # 4x1-pruned; 8x1 and 2x2 would store zeros
    assert block_fill(w, (4, 1)) == 1.0
    assert block_fill(w, (2, 2)) < 1.0
    assert fitting_block_shapes(np.eye(4, dtype=np.float32)) == []


def test_bsr_rejects_ragged_and_unfitting_weights():
    w = pruned(np.random.default_rng(1), 30, 10, 0.5)  # 30 rows: not a multiple of 4
    with pytest.raises(CheckpointError, match="does not divide"):
        make_linear(w, np.zeros(30, np.float32), "bsr4x1")
    with pytest.raises(ValueError, match="no block shape"):
        make_linear(w, np.zeros(30, np.float32), "bsr")
    assert make_linear(w, np.zeros(30, np.float32), "csr").format == "csr"


def test_auto_choice_follows_sparsity():
    rng = np.random.default_rng(2)
    b = np.zeros(256, np.float32)
    assert choose_format(pruned(rng, 256, 256, 0.3)) == "dense"
    assert choose_format(pruned(rng, 256, 256, 0.95)) == "csr"
    assert choose_format(pruned(rng, 256, 256, 0.9, (4, 1))) == "bsr4x1"
    assert make_linear(pruned(rng, 256, 256, 0.95), b).format == "csr"


def test_describe(layer):
    w, b, _, _ = layer
    d = make_linear(w, b, "bsr4x1").describe()
    assert d["format"] == "bsr4x1" and d["block_shape"] == (4, 1) and d["shape"] == (32, 24)
    assert d["nnz"] == np.count_nonzero(w)
    assert d["sparsity"] == pytest.approx(1 - d["nnz"] / (32 * 24))
    assert d["flops_per_token"] + d["flops_skipped_per_token"] == 2 * 32 * 24
    dd = make_linear(w, b, "dense").describe()
    assert dd["format"] == "dense" and dd["flops_skipped_per_token"] == 0


def test_dense_linear_keeps_behaviour(layer):
    w, b, x, r = layer
    lin = DenseLinear(w, b)
    assert lin.format == "dense" and lin.nbytes == w.nbytes + b.nbytes
    assert not lin.weight.flags.writeable
    np.testing.assert_allclose(lin(x, residual=r), dense_reference(w, b, x, None, r), atol=1e-5)


def test_call_checks_shapes(layer):
    w, b, x, _ = layer
    lin = make_linear(w, b, "csr")
    with pytest.raises(InputError, match="expects x of shape"):
        lin(x[:, :10])
    with pytest.raises(InputError, match="residual"):
        lin(x, residual=np.zeros((2, 31, 37), np.float32))
    with pytest.raises(InputError, match="activation"):
        lin(x, activation="swish")
    assert lin(x[:, :, :0]).shape == (2, 32, 0)
    np.testing.assert_allclose(lin(x[:, :, ::2]), dense_reference(w, b, x[:, :, ::2]), atol=1e-5)


# ----------------------------------------------------------------------------- from_arrays


def csr_arrays():
    data = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    indices = np.array([0, 2, 1], dtype=np.int32)
    indptr = np.array([0, 2, 2, 3], dtype=np.int64)
    return data, indices, indptr, (3, 4), np.zeros(3, np.float32)


def test_csr_from_arrays_accepts_valid_and_int32_indptr():
    data, indices, indptr, shape, bias = csr_arrays()
    lin = CSRLinear.from_arrays(data, indices, indptr.astype(np.int32), shape, bias)
    want = np.array([[1, 0, 2, 0], [0, 0, 0, 0], [0, 3, 0, 0]], np.float32)
    np.testing.assert_array_equal(lin.to_dense(), want)


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("data", np.array([1, 2, 3], np.int32), "floating"),
        ("data", np.array([1.0, np.nan, 3.0], np.float32), "NaN"),
        ("data", np.array([1.0, np.inf, 3.0], np.float32), "NaN"),
        ("data", np.ones((3, 1), np.float32), "1-D"),
        ("data", [1.0, 2.0, 3.0], "numpy array"),
        ("indices", np.array([0, 2, 4], np.int32), r"\[0, 4\)"),
        ("indices", np.array([0, -1, 1], np.int32), r"\[0, 4\)"),
        ("indices", np.array([0.0, 2.0, 1.0]), "int32/int64"),
        ("indices", np.array([0, 2], np.int32), "indices has 2"),
        ("indptr", np.array([0, 2, 3], np.int64), "4 entries"),
        ("indptr", np.array([1, 2, 2, 3], np.int64), "start at 0"),
        ("indptr", np.array([0, 2, 2, 2], np.int64), "end at nnz"),
        ("indptr", np.array([0, 3, 1, 3], np.int64), "decreases at row 1"),
        ("indptr", np.array([0, 2, 2, 3], np.uint8), "int32/int64"),
        ("shape", (3, 0), "positive"),
        ("shape", (3,), "two integers"),
        ("bias", np.zeros(4, np.float32), "bias"),
        ("bias", np.array([0, np.nan, 0], np.float32), "bias contains"),
    ],
)
def test_csr_from_arrays_rejects(field, value, match):
    args = dict(zip(["data", "indices", "indptr", "shape", "bias"], csr_arrays()))
    args[field] = value
    with pytest.raises(CheckpointError, match=match):
        CSRLinear.from_arrays(**args)


def test_empty_csr_with_nonzero_indptr_is_rejected():
    with pytest.raises(CheckpointError, match="decreases"):
        CSRLinear.from_arrays(np.zeros(0, np.float32), np.zeros(0, np.int32),
                              np.array([0, 3, 0], np.int64), (2, 4), np.zeros(2, np.float32))


def bsr_arrays():
    data = np.arange(8, dtype=np.float32).reshape(2, 4, 1)
    indices = np.array([1, 0], dtype=np.int32)
    indptr = np.array([0, 1, 2], dtype=np.int64)
    return data, indices, indptr, (8, 3), np.zeros(8, np.float32)


def test_bsr_from_arrays_accepts_valid():
    lin = BSRLinear.from_arrays(*bsr_arrays())
    assert lin.block_shape == (4, 1)
    w = lin.to_dense()
    assert w[0:4, 1].tolist() == [0, 1, 2, 3] and w[4:8, 0].tolist() == [4, 5, 6, 7]


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("data", np.ones((2, 3, 1), np.float32), "no kernel"),
        ("data", np.ones((2, 4), np.float32), "3-D"),
        ("shape", (6, 3), "does not divide"),
        ("indices", np.array([3, 0], np.int32), r"\[0, 3\)"),
        ("indptr", np.array([0, 1, 2, 2], np.int64), "3 entries"),
        ("indptr", np.array([0, 2, 1], np.int64), "end at nnz|decreases"),
    ],
)
def test_bsr_from_arrays_rejects(field, value, match):
    args = dict(zip(["data", "indices", "indptr", "shape", "bias"], bsr_arrays()))
    args[field] = value
    with pytest.raises(CheckpointError, match=match):
        BSRLinear.from_arrays(**args)


def test_from_dense_rejects_non_finite():
    w = np.ones((4, 4), np.float32)
    w[1, 1] = np.nan
    with pytest.raises(CheckpointError, match="NaN"):
        make_linear(w, np.zeros(4, np.float32), "csr")


def test_warmup_reports_each_format():
    times = warmup(("dense", "csr", "bsr4x1"))
    assert set(times) == {"dense", "csr", "bsr4x1"} and all(t >= 0 for t in times.values())


@pytest.mark.parametrize("fmt", ["dense", "csr", "bsr4x1"])
def test_out_buffer(layer, fmt):
    w, b, x, r = layer
    lin = make_linear(w, b, fmt)
    out = np.full((2, 32, 37), np.nan, np.float32)
    y = lin(x, activation="gelu", residual=r, out=out)
    assert y is out
    np.testing.assert_allclose(out, dense_reference(w, b, x, "gelu", r), atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="overlap residual"):
        lin(x, residual=r, out=r)
    with pytest.raises(InputError, match="shape"):
        lin(x, out=np.empty((2, 32, 36), np.float32))
