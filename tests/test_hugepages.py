"""Weights moved into the huge-page mapping (sparsebert.hugepages): same values, still read-only,
shared arrays still shared, and a model's outputs bit for bit as before the move."""

import mmap
import types

import numpy as np
import pytest

from sparsebert import hugepages
from sparsebert.hugepages import MIN_BYTES, move_to_huge_pages


def frozen(a):
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def test_large_read_only_arrays_move_with_their_values():
    rng = np.random.default_rng(0)
    big_f = frozen(rng.standard_normal((300, 200)).astype(np.float32))
    big_i = frozen(rng.integers(-127, 128, (70_001,)).astype(np.int8))  # odd size: next one unaligned
    big_u = frozen(rng.integers(0, 2**16, (40_000,)).astype(np.uint16))
    small = frozen(np.arange(10, dtype=np.float32))
    writable = np.ones((200, 200), np.float32)
    a = types.SimpleNamespace(w=big_f, codes=big_i, small=small, scratch=writable, name="x")
    b = types.SimpleNamespace(shared=big_f, idx=big_u)
    before = {k: v.copy() for k, v in (("w", big_f), ("codes", big_i), ("idx", big_u))}
    moved = move_to_huge_pages([a, b])
    assert moved >= big_f.nbytes + big_i.nbytes + big_u.nbytes
    for obj, name, key in ((a, "w", "w"), (a, "codes", "codes"), (b, "idx", "idx")):
        new = getattr(obj, name)
        assert new is not before[key]
        assert new.dtype == before[key].dtype and new.shape == before[key].shape
        assert np.array_equal(new, before[key])
        assert not new.flags.writeable and new.flags.c_contiguous
        assert new.ctypes.data % 64 == 0
    assert b.shared is a.w  # one array held twice is copied once
    assert a.small is small and a.scratch is writable and a.name == "x"
    with pytest.raises(ValueError):
        a.w[0, 0] = 1.0


def test_kept_arrays_stay_in_place():
    held = frozen(np.ones((300, 300), np.float32))
    other = frozen(np.zeros((300, 300), np.float32))
    obj = types.SimpleNamespace(weight=held, packed=other)
    assert move_to_huge_pages([obj], keep=[held]) >= other.nbytes
    assert obj.weight is held and obj.packed is not other


def test_dense_model_keeps_one_copy_of_its_float_weights(tmp_path):
    pytest.importorskip("torch")
    from make_checkpoints import make_random_bert

    import sparsebert

    path = make_random_bert(tmp_path / "m", hidden=128, layers=1, heads=4, intermediate=512, vocab=200)
    model = sparsebert.load(path, formats="dense")
    lin, w = model.encoder.layers[0].ffn_in, model.encoder.weights.layers[0]
    assert lin.weight is w.ffn_in_w


def test_nothing_to_move_is_a_no_op():
    obj = types.SimpleNamespace(x=frozen(np.zeros(MIN_BYTES // 4 - 1, np.float32)))
    keep = obj.x
    assert move_to_huge_pages([obj]) == 0 and obj.x is keep


@pytest.mark.parametrize("formats", ["csr", "int8"])
def test_model_outputs_do_not_change(tmp_path, monkeypatch, formats):
    """An encoder built with and without the move gives the same bits (fp32 and int8 linears)."""
    pytest.importorskip("torch")
    from make_checkpoints import make_random_bert

    import sparsebert
    from sparsebert import model as model_module

    path = make_random_bert(tmp_path / "m", hidden=128, layers=2, heads=4, intermediate=512, vocab=200,
                            sparsity=0.5)
    w = sparsebert.load(path).encoder.weights
    ids = np.random.default_rng(2).integers(0, 200, (3, 40))
    encoder = model_module.BertEncoder(w, formats)
    assert all(isinstance(_root(a), mmap.mmap) for a in _large(encoder.layers[0].ffn_in))
    moved = encoder(ids).last_hidden_state
    assert hugepages.move_to_huge_pages is model_module.move_to_huge_pages
    monkeypatch.setattr(model_module, "move_to_huge_pages", lambda objects, keep=(): 0)
    plain = model_module.BertEncoder(w, formats)(ids).last_hidden_state
    assert np.array_equal(moved, plain)


def _large(obj):
    return [v for v in vars(obj).values() if isinstance(v, np.ndarray) and v.nbytes >= MIN_BYTES]


def _root(a):
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a.obj if isinstance(a, memoryview) else a
