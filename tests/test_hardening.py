"""Hardening: each hostile checkpoint and each malformed input raises the documented exception with a
message naming the problem and the fix; valid edge cases (all-padding rows, empty strings, over-long
texts) give finite answers.

The exceptions a user can see (sparsebert/errors.py): `ConfigError`, `CheckpointError`, `InputError`
(all `ValueError`s) and `MissingDependencyError` (an `ImportError`), all `SparseBertError`s.
Randomised versions of these checks live in test_fuzz.py; this file pins one named case each.
"""

from __future__ import annotations

import json
import os
import pickle
import struct

import numpy as np
import pytest

import fuzzutil
import sparsebert
from sparsebert import CheckpointError, ConfigError, InputError, SparseBertError
from sparsebert.linear import BSRLinear, CSRLinear
from sparsebert.loaders.safetensors_reader import parse_safetensors


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return fuzzutil.build_models(tmp_path_factory.mktemp("hardening-models"), ("legacy17",))


@pytest.fixture(scope="module")
def model(models):
    return sparsebert.load(models["dense"])


def _copy(models, name, tmp_path, **replace):
    files = fuzzutil.folder_files(models[name])
    files.update(replace)
    for rel, data in files.items():
        (tmp_path / rel).write_bytes(data)
    return tmp_path


def _st_header(blob):
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _st_pack(header, data):
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_exception_family():
    for exc in (ConfigError, CheckpointError, InputError):
        assert issubclass(exc, SparseBertError) and issubclass(exc, ValueError)
    assert issubclass(sparsebert.MissingDependencyError, ImportError)


# ============================================================================ checkpoints


def test_safetensors_shape_product_cannot_wrap():
    # 2**32 * 2**32 wraps to 0 in int64: a naive check would accept an empty span.
    header = {"a": {"dtype": "F32", "shape": [2**32, 2**32], "data_offsets": [0, 0]}}
    with pytest.raises(CheckpointError, match="needs"):
        parse_safetensors(_st_pack(header, b""))


def test_safetensors_huge_declared_dims_do_not_allocate():
    header = {"a": {"dtype": "F32", "shape": [2**39, 2**39], "data_offsets": [0, 16]}}
    with pytest.raises(CheckpointError, match="invalid shape|needs"):
        parse_safetensors(_st_pack(header, b"\0" * 16))


def test_safetensors_header_length_beyond_file(models, tmp_path):
    blob = open(f"{models['dense']}/model.safetensors", "rb").read()
    with pytest.raises(CheckpointError, match="header length"):
        parse_safetensors(struct.pack("<Q", 2**63) + blob[8:])


def test_nan_weight_is_reported_by_name(models, tmp_path):
    blob = open(f"{models['dense']}/model.safetensors", "rb").read()
    header, data = _st_header(blob)
    b0, _ = header["encoder.layer.0.intermediate.dense.weight"]["data_offsets"]
    data = bytearray(data)
    data[b0:b0 + 4] = struct.pack("<f", float("nan"))
    folder = _copy(models, "dense", tmp_path, **{"model.safetensors": _st_pack(header, bytes(data))})
    with pytest.raises(CheckpointError, match=r"intermediate\.dense\.weight.*NaN/Inf"):
        sparsebert.load(folder)


@pytest.mark.parametrize("tensor, value", [("encoder.layer.0.output.dense.weight", 3e38),
                                           ("embeddings.LayerNorm.weight", 1e30),
                                           ("pooler.dense.bias", -2e6)])
def test_absurd_weight_magnitudes_are_refused_at_load(models, tmp_path, tensor, value):
    """Finite but huge weights would overflow inside the kernels (NaN output, or a division error in
    the attention softmax); they are refused when the checkpoint is read."""
    blob = open(f"{models['dense']}/model.safetensors", "rb").read()
    header, data = _st_header(blob)
    b0, e0 = header[tensor]["data_offsets"]
    data = bytearray(data)
    data[b0:e0] = np.full((e0 - b0) // 4, value, dtype="<f4").tobytes()
    folder = _copy(models, "dense", tmp_path, **{"model.safetensors": _st_pack(header, bytes(data))})
    with pytest.raises(CheckpointError, match=rf"{tensor}.*magnitude .*above 1e\+06"):
        sparsebert.load(folder)


@pytest.mark.parametrize("change, match", [
    ({"hidden_size": 32}, "shape"),
    ({"intermediate_size": 16}, "shape"),
    ({"num_hidden_layers": 3}, "num_hidden_layers=3"),
    ({"vocab_size": 10**6}, "shape"),
    ({"max_position_embeddings": 64}, "shape"),
    ({"type_vocab_size": 1}, "shape"),
    ({"num_attention_heads": 3}, "multiple"),
    ({"layer_norm_eps": 1e-40}, "layer_norm_eps"),
    ({"pad_token_id": True}, "pad_token_id"),
    ({"hidden_size": 2**40}, "out of range"),
])
def test_config_inconsistent_with_tensors(models, tmp_path, change, match):
    cfg = json.loads(open(f"{models['dense']}/config.json").read())
    cfg.update(change)
    folder = _copy(models, "dense", tmp_path, **{"config.json": json.dumps(cfg).encode()})
    with pytest.raises((ConfigError, CheckpointError), match=match):
        sparsebert.load(folder)


def test_pickle_payload_never_runs(models, tmp_path):
    """pytorch_model.bin goes through torch.load(weights_only=True): a hostile pickle is refused
    and its payload does not execute."""
    pytest.importorskip("torch")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    (tmp_path / "config.json").write_bytes(open(f"{models['dense']}/config.json", "rb").read())
    with pytest.raises(CheckpointError, match="weights_only"):
        sparsebert.load(tmp_path)
    assert not marker.exists()


def test_onnx_cycle_is_refused_not_followed(models, tmp_path):
    """The last LayerNorm writes the embedding LayerNorm's output: the walk would loop forever."""
    import onnx

    m = onnx.load(f"{models['onnx-legacy17']}/model.onnx")
    lns = [n for n in m.graph.node if n.op_type == "LayerNormalization"]
    old, new = lns[-1].output[0], lns[0].output[0]
    lns[-1].output[0] = new
    for n in m.graph.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
    onnx.save(m, tmp_path / "model.onnx")
    with fuzzutil.Runner(tmp_path / "run", timeout=60) as r:
        out = r.run("load", {"model.onnx": (tmp_path / "model.onnx").read_bytes()}, {"file": "model.onnx"})
    assert out.label == "expected:CheckpointError" and "cycle" in out.message, out


def test_onnx_huge_initializer_dims_do_not_allocate(models, tmp_path):
    import onnx

    m = onnx.load(f"{models['onnx-legacy17']}/model.onnx")
    table = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    del table.dims[:]
    table.dims.extend([2**40, 2**40])
    onnx.save(m, tmp_path / "model.onnx")
    with pytest.raises(CheckpointError, match="cannot be decoded|truncated"):
        sparsebert.load(tmp_path / "model.onnx")


def test_onnx_nan_initializer(models, tmp_path):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(f"{models['onnx-legacy17']}/model.onnx")
    t = next(t for t in m.graph.initializer if t.name.endswith("LayerNorm.weight"))
    arr = numpy_helper.to_array(t).copy()
    arr[0] = np.inf
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    onnx.save(m, tmp_path / "model.onnx")
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        sparsebert.load(tmp_path / "model.onnx")


def test_layers_argument_errors_are_config_errors(models):
    for bad in ([5], [], [0, 0], "0", [0.5]):
        with pytest.raises(ConfigError):
            sparsebert.load(models["sparse"], layers=bad)


# ---------------------------------------------------------------- sparse structures from outside


@pytest.mark.parametrize("mutate, match", [
    (lambda a: dict(a, indices=np.array([0, 1, 8], np.int32)), "indices must lie"),
    (lambda a: dict(a, indices=np.array([0, -1, 2], np.int32)), "indices must lie"),
    (lambda a: dict(a, indptr=np.array([0, 2, 1] + [3] * 6, np.int64)), "decreases"),
    (lambda a: dict(a, indptr=np.array([0, 1, 2] + [4] * 6, np.int64)), "end at nnz"),
    (lambda a: dict(a, indptr=np.array([0, 3], np.int64)), "entries"),
    (lambda a: dict(a, indices=np.array([0, 1], np.int32)), "entries"),
    (lambda a: dict(a, indices=np.array([0.0, 1, 2])), "int32/int64"),
    (lambda a: dict(a, data=np.array([1, np.nan, 1], np.float32)), "NaN"),
    (lambda a: dict(a, data=np.array([1, 2, 3], np.int32)), "floating"),
    (lambda a: dict(a, bias=np.zeros(7, np.float32)), "bias"),
    (lambda a: dict(a, shape=(8, -8)), "positive"),
])
def test_csr_from_arrays_rejects(mutate, match):
    good = {"data": np.ones(3, np.float32), "indices": np.array([0, 1, 2], np.int32),
            "indptr": np.array([0, 1, 2, 3, 3, 3, 3, 3, 3], np.int64), "shape": (8, 8),
            "bias": np.zeros(8, np.float32)}
    CSRLinear.from_arrays(**good)
    with pytest.raises(CheckpointError, match=match):
        CSRLinear.from_arrays(**mutate(good))


def test_bsr_from_arrays_rejects_bad_blocks():
    bias = np.zeros(8, np.float32)
    with pytest.raises(CheckpointError, match="no kernel"):
        BSRLinear.from_arrays(np.ones((1, 3, 1), np.float32), np.array([0], np.int32),
                              np.array([0, 1, 1], np.int64), (6, 8), np.zeros(6, np.float32))
    with pytest.raises(CheckpointError, match="indices must lie"):
        BSRLinear.from_arrays(np.ones((1, 4, 1), np.float32), np.array([8], np.int32),
                              np.array([0, 1, 1], np.int64), (8, 8), bias)
    with pytest.raises(CheckpointError, match="3-D"):
        BSRLinear.from_arrays(np.ones(4, np.float32), np.array([0], np.int32),
                              np.array([0, 1, 1], np.int64), (8, 8), bias)


def test_sparse_from_arrays_fuzz(tmp_path):
    """Random raw CSR/BSR arrays: either refused with CheckpointError, or the kernel's result equals
    the dense product of the same arrays (computed with numpy). Run crash-isolated: an unchecked
    index would read out of bounds."""
    rng = np.random.default_rng(0)
    n_cases = int(os.environ.get("SPARSEBERT_FUZZ_CASES", 60))
    with fuzzutil.Runner(tmp_path, timeout=120) as r:
        for i in range(n_cases):
            R, C = [(1, 1), (4, 1), (8, 1), (2, 2), (1, 4)][i % 5]
            N, K = R * int(rng.integers(1, 5)), C * int(rng.integers(1, 5))
            nnz = int(rng.integers(0, (N // R) * (K // C) + 1))
            indptr = np.sort(rng.integers(0, nnz + 1, N // R + 1)).astype(np.int64)
            indptr[0], indptr[-1] = 0, nnz
            indices = rng.integers(0, K // C, nnz).astype(np.int32)  # duplicates allowed: they sum
            data = rng.standard_normal((nnz, R, C) if R * C > 1 else nnz).astype(np.float32)
            arrays = {"data": data, "indices": indices, "indptr": indptr, "shape": (N, K),
                      "bias": rng.standard_normal(N).astype(np.float32)}
            which = rng.integers(0, 6)  # corrupt one thing in most cases
            if which == 0:
                arrays["indices"] = indices + rng.choice([K // C, -1, 2**31 - 1]) if nnz else indices
            elif which == 1:
                arrays["indptr"] = indptr[::-1].copy()
            elif which == 2:
                arrays["indptr"] = indptr + rng.integers(-1, 2, indptr.shape)
            elif which == 3:
                arrays["indptr"] = indptr.astype(np.int32)
            x = rng.standard_normal((int(rng.integers(1, 3)), K, int(rng.integers(1, 70)))).astype(np.float32)
            payload = pickle.dumps((R * C > 1, arrays, x))
            out = r.run("from_arrays", {"input.pkl": payload}, name=f"from_arrays {i} {R}x{C} corrupt={which}")
            assert not out.failed, r.failure_report()
        print("\nsparse from_arrays:", r.summary())


# ============================================================================ inputs


@pytest.mark.parametrize("ids, kwargs, match", [
    (np.array([[1, 2, 200]]), {}, r"input_ids holds 200, outside \[0, "),
    (np.array([[1, -1]]), {}, "input_ids holds -1"),
    (np.array([[1, 2]]), {"token_type_ids": np.array([[0, 2]])}, r"token_type_ids holds 2.*type_vocab_size"),
    (np.ones((1, 33), np.int64), {}, "exceeds max_position_embeddings 32"),
    (np.ones((2, 3), np.int64), {"attention_mask": np.ones((2, 4), np.int64)}, "shape"),
    (np.ones((2, 3), np.int64), {"token_type_ids": np.zeros((3, 2), np.int64)}, "shape"),
    (np.ones((2, 3), np.float32), {}, "integer array"),
    (np.array([[1, 2], [3]], dtype=object), {}, "integer array"),
    ([[1, 2], [3]], {}, "integer array|cannot be read|shape"),
    ("hello", {}, "integer array"),
    (np.zeros((0, 4), np.int64), {}, "empty"),
    (np.zeros((2, 0), np.int64), {}, "empty"),
    (np.ones((2, 3, 4), np.int64), {}, r"\(batch, tokens\)"),
    (np.ones((2, 3), np.int64), {"attention_mask": np.array([[1, 2, 1], [1, 1, 1]])}, "0 or 1"),
    (np.ones((2, 3), np.int64), {"attention_mask": np.full((2, 3), 0.5)}, "integer array"),
    (np.array([[2**63]], np.uint64), {}, "input_ids holds"),
])
def test_model_call_rejects(model, ids, kwargs, match):
    with pytest.raises(InputError, match=match):
        model(ids, **kwargs)


def test_all_padding_rows_are_finite(model):
    ids = np.array([[2, 10, 11, 3], [0, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 1], [0, 0, 0, 0]])
    out = model(ids, mask)
    assert out.last_hidden_state.shape == (2, 4, model.config.hidden_size)
    assert np.isfinite(out.last_hidden_state).all() and np.isfinite(out.pooler_output).all()
    emb = sparsebert.pool(out.last_hidden_state, mask)
    assert np.isfinite(emb).all()
    # The real row is unaffected by the padding row.
    alone = model(ids[:1], mask[:1]).last_hidden_state
    np.testing.assert_allclose(out.last_hidden_state[0], alone[0], atol=1e-5)


def test_bool_mask_and_1d_ids_are_accepted(model):
    a = model(np.array([2, 10, 3]), np.array([True, True, False])).last_hidden_state
    b = model(np.array([[2, 10, 3]]), np.array([[1, 1, 0]])).last_hidden_state
    np.testing.assert_array_equal(a, b)


def test_oversized_batch_is_refused_with_the_estimate(model, monkeypatch):
    monkeypatch.setattr(sparsebert.model, "available_bytes", lambda: 1 << 30)
    ids = np.broadcast_to(np.ones(1, np.int64), (200_000, 32))  # a view: nothing allocated
    with pytest.raises(InputError, match=r"needs about \d+\.\d+ GiB.*1\.00 GiB.*batch_size="):
        model(ids)


@pytest.mark.parametrize("texts, match", [
    ([], "empty"), (["ok", None], r"texts\[1\] is a NoneType"), ([b"bytes"], "bytes, not a str"),
    (None, "str or a sequence"), (5, "str or a sequence"), (b"raw", "str or a sequence"),
    ([["nested"]], "list, not a str"),
])
def test_tokenize_rejects(model, texts, match):
    with pytest.raises(InputError, match=match):
        model.tokenize(texts)


def test_text_pairs_must_pair_up(model):
    with pytest.raises(InputError, match="pair up"):
        model.tokenize(["a", "b"], ["c"])


def test_empty_and_overlong_texts_encode_finitely(model):
    emb = model.encode(["", " ", "hello " * 10_000, "\x00\ufffd"])
    assert emb.shape == (4, model.config.hidden_size) and np.isfinite(emb).all()
    assert model.tokenize(["hello " * 10_000]).input_ids.shape[1] <= model.config.max_position_embeddings


def test_encode_rejects_non_str_items(model):
    with pytest.raises(InputError, match="not a str"):
        model.encode(["fine", 3])


def test_encode_rejects_non_iterable(model):
    with pytest.raises(InputError):
        model.encode(None)
