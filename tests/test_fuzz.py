"""Fuzzing: hostile checkpoints and inputs end in success or a documented exception, never a crash.

Every case runs in a crash-isolated worker process (tests/fuzzutil.py) with a per-case timeout. The
only acceptable outcomes are success (with a finite output of the right shape) or an exception of the
`SparseBertError` family: `ConfigError`, `CheckpointError`, `InputError`, `MissingDependencyError`.
A crash (segfault, abort), a hang, any other exception or a silently non-finite output fails the test,
and the case's files are kept under the pytest tmp dir (`.../fuzz-*/repro/`) with the traceback;
`python tests/fuzzutil.py replay <that dir>` re-runs it in one process.

Targets: config.json (hypothesis-generated and mutated values), safetensors files (byte flips,
truncation, header rewrites, NaN/huge values), ONNX exports (byte flips, truncation, deleted and
rewired nodes, cycles, changed initializer dims/dtypes, external-data paths), tokenizer files, and
API inputs (`model(...)`, `encode`, `tokenize`, hypothesis-generated).

Case counts: `SPARSEBERT_FUZZ_CASES` (per target) overrides everything. Otherwise the default run
uses the CI size below, and `pytest -m slow tests/test_fuzz.py` runs the nightly size.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fuzzutil

CI_CASES = 150
NIGHTLY_CASES = 1500

SIZES = [pytest.param("ci", id="ci"), pytest.param("nightly", id="nightly", marks=pytest.mark.slow)]


def _cases(request, size: str) -> int:
    env = os.environ.get("SPARSEBERT_FUZZ_CASES")
    if env:
        if size == "nightly":
            pytest.skip("SPARSEBERT_FUZZ_CASES set: the ci-size tests run that many cases")
        return int(env)
    if size == "nightly":
        expr = request.config.getoption("markexpr") or ""
        if "slow" not in expr or "not slow" in expr:
            pytest.skip("nightly-size fuzzing: run with -m slow or SPARSEBERT_FUZZ_CASES=N")
        return NIGHTLY_CASES
    return CI_CASES


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return fuzzutil.build_models(tmp_path_factory.mktemp("fuzz-models"), ("legacy17", "legacy14"))


@pytest.fixture(scope="module")
def runner(models, tmp_path_factory):
    warm = {"target": "load", "path": models["sparse"], "args": {"formats": "csr"}}
    with fuzzutil.Runner(tmp_path_factory.mktemp("fuzz-run"), timeout=60.0, warmup=warm) as r:
        # Compile every kernel path once, so per-case time is inference only.
        for fmt in ("dense", "bsr4x1", "bsr2x2"):
            assert r.run("load", fuzzutil.folder_files(models["sparse"]), {"formats": fmt}).kind == "ok"
        assert r.run("load", fuzzutil.folder_files(models["onnx-legacy17"])).kind == "ok"
        r.counts.clear()
        yield r


def _finish(runner, before: dict, what: str, allowed=None):
    """Assert no failures since `before` (a Counter copy); print the per-outcome counts."""
    delta = {k: v - before.get(k, 0) for k, v in runner.counts.items() if v - before.get(k, 0)}
    print(f"\nfuzz {what}: {sum(delta.values())} cases: "
          + ", ".join(f"{k}={v}" for k, v in sorted(delta.items())))
    failed = {k: v for k, v in delta.items() if k.split(":")[0] in fuzzutil.FAIL_KINDS}
    assert not failed, runner.failure_report()
    if allowed is not None:
        other = {k: v for k, v in delta.items() if k != "ok" and k not in allowed}
        assert not other, f"{what}: outcomes outside {allowed}: {other}"
    return delta


# ================================================================================= safetensors


def _header(blob: bytes):
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _pack(header, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "x", None, 3]
_ODD_VALUES = [np.nan, np.inf, -np.inf, 1e38, -3e38, 1e30, 1e-45, -0.0, 65504.0]


def mutate_safetensors(blob: bytes, rng: random.Random) -> bytes:
    header, data = _header(blob)
    names = [k for k in header if k != "__metadata__"]
    kind = rng.randrange(10)
    if kind == 0:  # random byte flips anywhere
        b = bytearray(blob)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= rng.randint(1, 255)
        return bytes(b)
    if kind == 1:  # byte flips inside the JSON header
        b = bytearray(blob)
        n = struct.unpack("<Q", blob[:8])[0]
        for _ in range(rng.randint(1, 3)):
            b[8 + rng.randrange(n)] = rng.randrange(256)
        return bytes(b)
    if kind == 2:  # truncation
        return blob[: rng.randrange(len(blob))]
    if kind == 3:  # header length field
        n = rng.choice([0, 1, 7, 2**63, 2**64 - 1, len(blob), len(blob) - 8,
                        struct.unpack("<Q", blob[:8])[0] + rng.choice([-1, 1, 8])])
        return struct.pack("<Q", n) + blob[8:]
    if kind == 4:  # entry fields
        name = rng.choice(names)
        e = header[name]
        field = rng.choice(["dtype", "shape", "data_offsets"])
        if field == "dtype":
            e["dtype"] = rng.choice(_DTYPES)
        elif field == "shape":
            s = list(e["shape"])
            e["shape"] = rng.choice([
                s[::-1], [2**40] + s[1:], [-1] + s[1:], [], [0], s + [1], [1] + s, ["a"],
                [x * 2 for x in s], [2**31, 2**31], [1] * 9, None, [1.5], [True] * len(s),
                [s[0] // 2 if s[0] > 1 else 1] + s[1:]])
        else:
            b0, e0 = e["data_offsets"]
            other = header[rng.choice(names)]["data_offsets"]
            e["data_offsets"] = rng.choice([
                [e0, b0], [b0 + 4, e0 + 4], [-4, e0 - b0 - 4], [b0, 2**62], [0, 0], other, [b0],
                [b0, e0, 0], "0", [float(b0), float(e0)], [b0 - 4, e0 - 4]])
        return _pack(header, data)
    if kind == 5:  # names: drop, duplicate under another name, rename, add
        name = rng.choice(names)
        op = rng.randrange(5)
        if op == 0:
            del header[name]
        elif op == 1:
            header["bert." + name] = header[name]
        elif op == 2:
            header[name.replace("layer.0", "layer.7")] = header.pop(name)
        elif op == 3:
            header[name.replace("weight", "gamma")] = header[name]
        else:
            header["encoder.layer.0.attention.self.extra.weight"] = header[name]
        return _pack(header, data)
    if kind == 6:  # odd float values inside a float tensor
        name = rng.choice([k for k in names if header[k]["dtype"] == "F32"])
        b0, e0 = header[name]["data_offsets"]
        arr = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = b0 + 4 * rng.randrange((e0 - b0) // 4)
            arr[i:i + 4] = struct.pack("<f", rng.choice(_ODD_VALUES))
        return _pack(header, bytes(arr))
    if kind == 7:  # a whole tensor of huge but finite values: overflows inside the forward pass
        name = rng.choice([k for k in names if header[k]["dtype"] == "F32"])
        b0, e0 = header[name]["data_offsets"]
        value = rng.choice([1e30, -1e35, 3e38, 1e19])
        arr = bytearray(data)
        arr[b0:e0] = np.full((e0 - b0) // 4, value, dtype="<f4").tobytes()
        return _pack(header, bytes(arr))
    if kind == 8:  # header shape
        return _pack(rng.choice([[], "x", 1, None, {"a": 1}, {"__metadata__": {"x": "y"}}]), data)
    # dtype reinterpretation that keeps the byte length consistent
    name = rng.choice(names)
    e = header[name]
    if e["dtype"] == "F32" and e["shape"]:
        e["dtype"], e["shape"] = rng.choice([("F16", e["shape"][:-1] + [2 * e["shape"][-1]]),
                                             ("I32", e["shape"]), ("U8", e["shape"] + [4])])
    return _pack(header, data)


@pytest.mark.parametrize("size", SIZES)
def test_fuzz_safetensors(models, runner, request, size):
    n = _cases(request, size)
    before = dict(runner.counts)
    for folder in ("dense", "sparse"):
        files = fuzzutil.folder_files(models[folder])
        for seed in range(n // 2):
            rng = random.Random(f"st-{folder}-{seed}")
            mutated = dict(files, **{"model.safetensors": mutate_safetensors(files["model.safetensors"], rng)})
            fmt = rng.choice(["auto", "dense", "csr", "bsr4x1"]) if folder == "sparse" else "auto"
            runner.run("load", mutated, {"formats": fmt}, name=f"safetensors {folder} seed {seed} {fmt}")
    _finish(runner, before, "safetensors", allowed={"expected:CheckpointError", "expected:ConfigError"})


# ================================================================================= config.json

_KEYS = ["hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "num_hidden_layers",
         "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_act", "pad_token_id",
         "model_type", "position_embedding_type", "is_decoder", "architectures", "id2label",
         "add_cross_attention", "unknown_key"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.sampled_from([0, 1, 2, 4, 16, 32, 64, 100])
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
    | st.sampled_from(["gelu", "relu", "gelu_new", "swish", "bert", "absolute"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=8,
)


def _config_case(models, folder, changes, deletions, extra_files=None):
    files = fuzzutil.folder_files(models[folder])
    cfg = json.loads(fuzzutil.folder_files(models["dense"])["config.json"])
    cfg.update(changes)
    for k in deletions:
        cfg.pop(k, None)
    files["config.json"] = json.dumps(cfg).encode()
    files.update(extra_files or {})
    return files


@pytest.mark.parametrize("size", SIZES)
def test_fuzz_config_hypothesis(models, runner, request, size):
    n = _cases(request, size)
    before = dict(runner.counts)

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(changes=st.dictionaries(st.sampled_from(_KEYS), json_values, max_size=3),
           deletions=st.lists(st.sampled_from(_KEYS), max_size=2),
           folder=st.sampled_from(["dense", "sparse", "onnx-legacy17"]),
           side=st.dictionaries(st.sampled_from(["max_seq_length", "model_max_length"]), json_values,
                                max_size=1))
    def check(changes, deletions, folder, side):
        extra = {}
        if side:
            key, value = next(iter(side.items()))
            name = "sentence_bert_config.json" if key == "max_seq_length" else "tokenizer_config.json"
            extra[name] = json.dumps({key: value}).encode()
        files = _config_case(models, folder, changes, deletions, extra)
        out = runner.run("load", files, name=f"config {folder} {changes} -{deletions} {side}")
        assert not out.failed, runner.failure_report()

    check()
    _finish(runner, before, "config (hypothesis)",
            allowed={"expected:CheckpointError", "expected:ConfigError"})


@pytest.mark.parametrize("size", SIZES)
def test_fuzz_config_bytes(models, runner, request, size):
    """Byte-level damage to config.json and to plausible-but-wrong integer values."""
    n = _cases(request, size)
    before = dict(runner.counts)
    files = fuzzutil.folder_files(models["dense"])
    for seed in range(n):
        rng = random.Random(f"cfg-{seed}")
        if seed % 2:
            b = bytearray(files["config.json"])
            for _ in range(rng.randint(1, 6)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            cfg = bytes(b)[: rng.randrange(len(b) + 1)] if rng.random() < 0.2 else bytes(b)
        else:
            d = json.loads(files["config.json"])
            for _ in range(rng.randint(1, 3)):
                d[rng.choice(_KEYS[:10])] = rng.choice([0, 1, 2, 3, 8, 15, 16, 17, 31, 32, 33, 64,
                                                        96, 2**31, -1, 1e-5, 0.1])
            cfg = json.dumps(d).encode()
        runner.run("load", dict(files, **{"config.json": cfg}), name=f"config bytes seed {seed}")
    _finish(runner, before, "config (bytes)", allowed={"expected:CheckpointError", "expected:ConfigError"})


# ================================================================================= ONNX


def _onnx_names(model):
    names = [o for n in model.graph.node for o in n.output if o]
    names += [t.name for t in model.graph.initializer] + [i.name for i in model.graph.input]
    return names


def mutate_onnx(blob: bytes, rng: random.Random) -> bytes:
    import onnx

    kind = rng.randrange(11)
    if kind == 0:
        b = bytearray(blob)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= rng.randint(1, 255)
        return bytes(b)
    if kind == 1:
        return blob[: rng.randrange(len(blob))]
    m = onnx.ModelProto()
    m.ParseFromString(blob)
    g = m.graph
    nodes = g.node
    if kind == 2:  # delete nodes
        for _ in range(rng.randint(1, 3)):
            del nodes[rng.randrange(len(nodes))]
    elif kind == 3:  # rewire an input to any tensor
        names = _onnx_names(m)
        for _ in range(rng.randint(1, 3)):
            node = nodes[rng.randrange(len(nodes))]
            if node.input:
                node.input[rng.randrange(len(node.input))] = rng.choice(names + ["", "nowhere"])
    elif kind == 4:  # a cycle: an early node reads a later node's output
        for _ in range(rng.randint(1, 2)):
            i = rng.randrange(len(nodes) - 1)
            j = rng.randrange(i + 1, len(nodes))
            if nodes[i].input and nodes[j].output:
                nodes[i].input[rng.randrange(len(nodes[i].input))] = nodes[j].output[0]
    elif kind == 5:  # change an op type
        node = nodes[rng.randrange(len(nodes))]
        node.op_type = rng.choice(["MatMul", "Add", "Softmax", "Gelu", "Tanh", "Identity", "Gather",
                                   "LayerNormalization", "Gemm", "Erf", "Constant", "Attention", "Loop"])
    elif kind == 6:  # initializer dims
        t = g.initializer[rng.randrange(len(g.initializer))]
        dims = list(t.dims)
        new = rng.choice([dims[::-1], [2**40] + dims[1:], [-1] + dims[1:], [], dims + [1], [0],
                          [d * 2 for d in dims], [2**31, 2**31, 2**31], dims[:-1]])
        del t.dims[:]
        t.dims.extend(new)
    elif kind == 7:  # initializer dtype
        t = g.initializer[rng.randrange(len(g.initializer))]
        t.data_type = rng.choice([0, 2, 3, 5, 6, 7, 8, 9, 10, 11, 16, 17, 99])
    elif kind == 8:  # attributes
        node = rng.choice([n for n in nodes if n.attribute] or list(nodes))
        if node.attribute:
            a = node.attribute[rng.randrange(len(node.attribute))]
            if rng.random() < 0.3:
                node.attribute.remove(a)
            elif a.type == onnx.AttributeProto.FLOAT:
                a.f = rng.choice([0.0, -1.0, float("nan"), float("inf"), 1e30, 0.5])
            elif a.type == onnx.AttributeProto.INT:
                a.i = rng.choice([-3, -1, 0, 1, 2, 5, 2**40])
            elif a.type == onnx.AttributeProto.INTS:
                del a.ints[:]
                a.ints.extend(rng.choice([[], [0], [-1], [5, 5], [2**40]]))
    elif kind == 9:  # initializer values
        t = rng.choice([t for t in g.initializer if t.data_type == 1 and t.raw_data] or list(g.initializer))
        if t.raw_data:
            arr = bytearray(t.raw_data)
            value = rng.choice(_ODD_VALUES)
            for _ in range(rng.randint(1, 4)):
                i = 4 * rng.randrange(len(arr) // 4)
                arr[i:i + 4] = struct.pack("<f", value)
            t.raw_data = bytes(arr)
    else:  # external data pointing somewhere else; duplicate outputs; dropped graph inputs
        op = rng.randrange(3)
        if op == 0:
            t = g.initializer[rng.randrange(len(g.initializer))]
            t.data_location = onnx.TensorProto.EXTERNAL
            del t.external_data[:]
            loc = rng.choice(["../secret.bin", "/etc/passwd", "model.onnx", "vocab.txt", "missing.data", ""])
            for k, v in (("location", loc), ("offset", rng.choice(["0", "-8", "x", str(2**62)])),
                         ("length", rng.choice(["", "16", str(2**40), "-1"]))):
                entry = t.external_data.add()
                entry.key, entry.value = k, v
        elif op == 1:
            i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
            if nodes[i].output and nodes[j].output:
                nodes[i].output[0] = nodes[j].output[0]
        else:
            del g.input[rng.randrange(len(g.input))]
    return m.SerializeToString()


@pytest.mark.parametrize("size", SIZES)
def test_fuzz_onnx(models, runner, request, size):
    n = _cases(request, size)
    before = dict(runner.counts)
    flavours = [k for k in models if k.startswith("onnx-")]
    for seed in range(n):
        flavour = flavours[seed % len(flavours)]
        files = fuzzutil.folder_files(models[flavour])
        rng = random.Random(f"onnx-{seed}")
        files["model.onnx"] = mutate_onnx(files["model.onnx"], rng)
        if rng.random() < 0.7:  # else the graph alone must determine the config
            files["config.json"] = fuzzutil.folder_files(models["dense"])["config.json"]
        runner.run("load", files, {"file": "model.onnx"}, name=f"onnx {flavour} seed {seed}")
    _finish(runner, before, "onnx", allowed={"expected:CheckpointError", "expected:ConfigError"})


# ================================================================================= tokenizer files


def mutate_tokenizer(files: dict, rng: random.Random) -> dict:
    files = dict(files)
    kind = rng.randrange(6)
    if kind == 0:  # byte damage to tokenizer.json
        b = bytearray(files["tokenizer.json"])
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        files["tokenizer.json"] = bytes(b)
    elif kind == 1:  # vocabulary ids out of the model's range, duplicated or negative
        tj = json.loads(files["tokenizer.json"])
        vocab = tj["model"]["vocab"]
        for _ in range(rng.randint(1, 4)):
            vocab[rng.choice(list(vocab))] = rng.choice([10**6, 2**31 - 1, 0, 5, len(vocab) + 3, -1])
        files["tokenizer.json"] = json.dumps(tj).encode()
    elif kind == 2:  # post-processor special tokens with foreign ids; truncation / padding settings
        tj = json.loads(files["tokenizer.json"])
        pp = tj.get("post_processor") or {}
        for key in ("cls", "sep"):
            if key in pp:
                pp[key] = [pp[key][0], rng.choice([10**6, 2, 99, 2**32 - 1])]
        tj["truncation"] = rng.choice([None, {"max_length": 10**6, "strategy": "LongestFirst",
                                              "stride": 0, "direction": "Right"}])
        tj["padding"] = rng.choice([None, {"strategy": {"Fixed": 4096}, "direction": "Right",
                                           "pad_to_multiple_of": None, "pad_id": 10**6,
                                           "pad_type_id": 7, "pad_token": "[PAD]"}])
        files["tokenizer.json"] = json.dumps(tj).encode()
    elif kind == 3:  # only vocab.txt, damaged
        del files["tokenizer.json"]
        lines = files["vocab.txt"].decode().splitlines()
        op = rng.randrange(4)
        if op == 0:
            files["vocab.txt"] = b""
        elif op == 1:
            files["vocab.txt"] = bytes(rng.randrange(256) for _ in range(200))
        elif op == 2:
            files["vocab.txt"] = ("\n".join(lines + [f"tok{i}" for i in range(500)]) + "\n").encode()
        else:
            rng.shuffle(lines)
            files["vocab.txt"] = ("\n".join(lines) + "\n").encode()
    elif kind == 4:  # tokenizer.json that is valid JSON of the wrong shape
        files["tokenizer.json"] = json.dumps(rng.choice([[], {}, {"model": None}, "x", 1])).encode()
    else:  # tokenizer_config.json switches
        files["tokenizer_config.json"] = json.dumps(
            {"do_lower_case": rng.choice([True, False, "yes", None]),
             "model_max_length": rng.choice([1, 2, 5, 10**30, -4, "x", 2**63])}).encode()
        del files["tokenizer.json"]
    return files


@pytest.mark.parametrize("size", SIZES)
def test_fuzz_tokenizer_files(models, runner, request, size):
    n = _cases(request, size)
    before = dict(runner.counts)
    files = fuzzutil.folder_files(models["dense"])
    for seed in range(n):
        mutated = mutate_tokenizer(files, random.Random(f"tok-{seed}"))
        runner.run("load", mutated, name=f"tokenizer seed {seed}")
    _finish(runner, before, "tokenizer files",
            allowed={"expected:CheckpointError", "expected:ConfigError", "expected:InputError"})


# ================================================================================= API inputs

_INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
_OTHER_DTYPES = [np.float32, np.float64, np.bool_, np.complex64]


def _arrays(max_value: int):
    ints = st.sampled_from(_INT_DTYPES).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=12),
                              elements=st.integers(max(np.iinfo(dt).min, -2),
                                                   min(np.iinfo(dt).max, max_value))))
    odd = st.sampled_from(_OTHER_DTYPES).flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)))
    shapes = hnp.arrays(np.int64, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40),
                        elements=st.integers(0, 3))
    return st.one_of(ints, ints, ints, odd, shapes)


def _python_values(max_value: int):
    return st.one_of(
        st.lists(st.lists(st.integers(-2, max_value), min_size=0, max_size=10), max_size=4),
        st.lists(st.integers(-2, max_value), max_size=10),
        st.lists(st.one_of(st.integers(0, 5), st.text(max_size=3), st.none(), st.floats()), max_size=6),
        st.text(max_size=10), st.none(), st.integers(), st.floats(), st.binary(max_size=8),
        st.just(np.array([[1, 2], [3]], dtype=object)), st.just(np.array([["a", "b"]])),
        st.just(np.array([[2**63]], dtype=np.uint64)), st.just(np.zeros((2, 0), dtype=np.int64)),
    )


def _mask_like(ids):
    """Masks that fit the ids' shape (mostly valid, some all-zero rows, some bad values)."""
    shape = np.shape(ids) if isinstance(ids, np.ndarray) else None
    if shape is None or len(shape) not in (1, 2) or 0 in shape:
        return st.none()
    return st.one_of(
        st.none(),
        hnp.arrays(np.int64, shape, elements=st.integers(0, 1)),
        hnp.arrays(np.bool_, shape),
        hnp.arrays(np.int64, shape, elements=st.integers(-1, 3)),
        st.just(np.zeros(shape, dtype=np.int64)),
        hnp.arrays(np.float32, shape, elements=st.sampled_from([0.0, 1.0, 0.5])),
        hnp.arrays(np.int64, shape[:-1] + (shape[-1] + 1,), elements=st.integers(0, 1)),
    )


@pytest.mark.parametrize("size", SIZES)
def test_fuzz_model_call(models, runner, request, size):
    """model(input_ids, attention_mask, token_type_ids) with hypothesis-generated arguments."""
    n = _cases(request, size)
    before = dict(runner.counts)
    vocab = json.loads(fuzzutil.folder_files(models["dense"])["config.json"])["vocab_size"]

    @st.composite
    def call_args(draw):
        ids = draw(st.one_of(_arrays(vocab + 1), _arrays(vocab - 1), _python_values(vocab + 1)))
        mask = draw(_mask_like(ids))
        types = draw(st.one_of(st.none(), _mask_like(ids), _python_values(3)))
        return ids, mask, types

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(args=call_args(), model=st.sampled_from(["dense", "sparse", "onnx-legacy14"]),
           fmt=st.sampled_from(["auto", "csr", "bsr4x1"]), as_kwargs=st.booleans())
    def check(args, model, fmt, as_kwargs):
        fmt = fmt if model == "sparse" else "auto"
        ids, mask, types = args
        payload = (((), {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
                   if as_kwargs else ((ids, mask, types), {}))
        out = runner.run("call", {"input.pkl": pickle.dumps(payload)},
                         {"model": models[model], "formats": fmt}, name=f"call {model} {fmt} {args!r:.300}")
        assert not out.failed, runner.failure_report()
        assert out.kind == "ok" or out.detail == "InputError", (out, args)

    check()
    _finish(runner, before, "model call", allowed={"expected:InputError"})


texts_strategy = st.one_of(
    st.lists(st.text(max_size=60), min_size=0, max_size=6),
    st.lists(st.text(alphabet="abcdefghij xyz.,!", min_size=200, max_size=2000), min_size=1, max_size=3),
    st.lists(st.one_of(st.text(max_size=5), st.none(), st.integers(), st.binary(max_size=4),
                       st.lists(st.text(max_size=3), max_size=2)), min_size=1, max_size=4),
    st.text(max_size=40), st.none(), st.integers(), st.just([""]), st.just(["", " ", "\x00", "\ud7ff"]),
)


@pytest.mark.parametrize("size", SIZES)
def test_fuzz_encode_and_tokenize(models, runner, request, size):
    n = _cases(request, size)
    before = dict(runner.counts)

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(texts=texts_strategy, pairs=st.one_of(st.none(), texts_strategy),
           target=st.sampled_from(["encode", "tokenize"]), model=st.sampled_from(["dense", "sparse"]),
           batch_size=st.sampled_from([1, 2, 32]))
    def check(texts, pairs, target, model, batch_size):
        payload = (texts, {"batch_size": batch_size}) if target == "encode" else (texts, pairs)
        out = runner.run(target, {"input.pkl": pickle.dumps(payload)}, {"model": models[model]},
                         name=f"{target} {model} {texts!r:.200} {pairs!r:.100}")
        assert not out.failed, runner.failure_report()
        assert out.kind == "ok" or out.detail == "InputError", (out, texts)

    check()
    _finish(runner, before, "encode/tokenize", allowed={"expected:InputError"})
