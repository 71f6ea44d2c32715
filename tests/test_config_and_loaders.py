"""Config validation, checkpoint readers and weight mapping: good files load, bad ones raise typed
errors that name the problem."""

import json
import shutil
import struct

import numpy as np
import pytest

import sparsebert
from sparsebert import BertConfig, CheckpointError, ConfigError
from sparsebert.loaders import read_checkpoint
from sparsebert.loaders.safetensors_reader import parse_safetensors, read_safetensors

MINILM_KEYS = {
    "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536,
    "hidden_act": "gelu", "layer_norm_eps": 1e-12, "vocab_size": 30522, "max_position_embeddings": 512,
    "type_vocab_size": 2,
}


def test_config_from_minilm(minilm_path):
    cfg = BertConfig.from_json_file(f"{minilm_path}/config.json")
    for key, value in MINILM_KEYS.items():
        assert getattr(cfg, key) == value
    assert cfg.head_dim == 32


@pytest.mark.parametrize(
    "change, match",
    [
        ({"hidden_act": "swish"}, "'swish'"),
        ({"num_attention_heads": 7}, "not a multiple of num_attention_heads 7"),
        ({"hidden_size": -1}, "hidden_size' = -1"),
        ({"vocab_size": 10**9}, "vocab_size' = 1000000000"),
        ({"num_hidden_layers": 2.5}, "2.5"),
        ({"layer_norm_eps": 0}, "layer_norm_eps"),
        ({"model_type": "gpt2"}, "'gpt2'"),
        ({"position_embedding_type": "relative_key"}, "relative_key"),
        ({"id2label": {"0": "a", "2": "b"}}, "id2label keys"),
    ],
)
def test_config_rejects_bad_values_quoting_them(change, match):
    with pytest.raises(ConfigError, match=match):
        BertConfig.from_dict({**MINILM_KEYS, **change})


def test_config_is_frozen_and_round_trips():
    cfg = BertConfig.from_dict({**MINILM_KEYS, "id2label": {"0": "NEG", "1": "POS"}})
    with pytest.raises(AttributeError):
        cfg.hidden_size = 1
    again = BertConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.labels == {0: "NEG", 1: "POS"}


def test_config_file_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        BertConfig.from_json_file(tmp_path / "config.json")


# ------------------------------------------------------------------------------ safetensors


def _st(tensors: dict, header_extra=None) -> bytes:
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        raw = arr.tobytes()
        header[name] = {"dtype": {np.float32: "F32", np.int64: "I64"}[arr.dtype.type],
                        "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header.update(header_extra or {})
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def test_safetensors_matches_reference_library(minilm_path):
    from safetensors.numpy import load_file

    ours = read_safetensors(f"{minilm_path}/model.safetensors")
    ref = load_file(f"{minilm_path}/model.safetensors")
    assert ours.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(ours[k], ref[k])


def test_safetensors_bf16_and_f16_widen_exactly():
    torch = pytest.importorskip("torch")
    from safetensors.torch import save

    t = torch.randn(4, 5)
    blob = save({"a": t.to(torch.bfloat16), "b": t.to(torch.float16)})
    out = parse_safetensors(blob)
    np.testing.assert_array_equal(out["a"], t.to(torch.bfloat16).float().numpy())
    np.testing.assert_array_equal(out["b"], t.to(torch.float16).float().numpy())


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b[:4], "shorter than the 8-byte"),
        (lambda b: struct.pack("<Q", 10**12) + b[8:], "exceeds the file size"),
        (lambda b: b[:8] + b"[" + b[9:], "not valid JSON"),
        (lambda b: b[:-4], "outside the data buffer"),
    ],
)
def test_safetensors_rejects_malformed(mutate, match):
    blob = _st({"w": np.ones((2, 3), np.float32)})
    with pytest.raises(CheckpointError, match=match):
        parse_safetensors(mutate(blob))


def test_safetensors_rejects_bad_entries():
    good = np.ones((2, 2), np.float32)
    bad_shape = {"w": {"dtype": "F32", "shape": [3, 3], "data_offsets": [0, 16]}}
    with pytest.raises(CheckpointError, match="needs 36"):
        parse_safetensors(_st({"w": good}, bad_shape))
    bad_dtype = {"w": {"dtype": "C64", "shape": [2, 2], "data_offsets": [0, 16]}}
    with pytest.raises(CheckpointError, match="unsupported dtype"):
        parse_safetensors(_st({"w": good}, bad_dtype))
    overlap = {"v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    with pytest.raises(CheckpointError, match="overlap"):
        parse_safetensors(_st({"w": good}, overlap))


# ------------------------------------------------------------------------------ folders


def _copy_minilm(minilm_path, dst):
    shutil.copytree(minilm_path, dst)
    return dst


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        sparsebert.load(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no model"):
        sparsebert.load(tmp_path)


def test_weights_without_config(minilm_path, tmp_path):
    d = _copy_minilm(minilm_path, tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        sparsebert.load(d)


def test_config_that_does_not_match_weights(minilm_path, tmp_path):
    d = _copy_minilm(minilm_path, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 1024
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape \(1536, 384\).*\(1024, 384\)"):
        sparsebert.load(d)
    cfg["intermediate_size"], cfg["num_hidden_layers"] = 1536, 8
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_hidden_layers=8"):
        sparsebert.load(d)


def _rewrite(d, fn):
    from safetensors.numpy import save_file

    sd = read_safetensors(d / "model.safetensors")
    save_file(fn(dict(sd)), str(d / "model.safetensors"))


def test_missing_unexpected_and_nonfinite_tensors(minilm_path, tmp_path):
    d = _copy_minilm(minilm_path, tmp_path / "m")
    _rewrite(d, lambda sd: {k: v for k, v in sd.items() if "layer.3.output.dense.bias" not in k})
    with pytest.raises(CheckpointError, match=r"missing tensor 'encoder.layer.3.output.dense.bias'"):
        sparsebert.load(d)
    d = _copy_minilm(minilm_path, tmp_path / "m2")
    _rewrite(d, lambda sd: {**sd, "decoder.weight": np.ones(3, np.float32)})
    with pytest.raises(CheckpointError, match="unexpected tensors.*decoder.weight"):
        sparsebert.load(d)
    d = _copy_minilm(minilm_path, tmp_path / "m3")

    def poison(sd):
        w = sd["encoder.layer.0.intermediate.dense.weight"].copy()
        w[0, 0] = np.nan
        return {**sd, "encoder.layer.0.intermediate.dense.weight": w}

    _rewrite(d, poison)
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        sparsebert.load(d)


def test_bert_prefix_and_task_heads_are_accepted(minilm_path, tmp_path):
    d = _copy_minilm(minilm_path, tmp_path / "m")
    _rewrite(d, lambda sd: {**{f"bert.{k}": v for k, v in sd.items()},
                            "classifier.weight": np.ones((2, 384), np.float32),
                            "classifier.bias": np.zeros(2, np.float32)})
    model = sparsebert.load(d)
    assert set(model.encoder.weights.heads) == {"classifier.weight", "classifier.bias"}
    ref = sparsebert.load(minilm_path)
    np.testing.assert_array_equal(model.encode(["same weights"]), ref.encode(["same weights"]))


def test_sharded_safetensors(minilm_path, tmp_path):
    from safetensors.numpy import save_file

    d = _copy_minilm(minilm_path, tmp_path / "m")
    sd = read_safetensors(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    names = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, keys in halves.items():
        save_file({k: sd[k] for k in keys}, str(d / shard))
        weight_map.update({k: shard for k in keys})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    np.testing.assert_array_equal(sparsebert.load(d).encode(["x"]), sparsebert.load(minilm_path).encode(["x"]))
    weight_map[names[0]] = "../evil.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="outside the model folder"):
        sparsebert.load(d)


def test_pytorch_bin_goes_through_weights_only_loader(minilm_path, tmp_path):
    torch = pytest.importorskip("torch")
    d = _copy_minilm(minilm_path, tmp_path / "m")
    sd = read_safetensors(d / "model.safetensors")
    (d / "model.safetensors").unlink()
    torch.save({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, d / "pytorch_model.bin")
    ckpt = read_checkpoint(d)
    assert ckpt.kind == "pytorch"
    np.testing.assert_array_equal(sparsebert.load(d).encode(["x"]), sparsebert.load(minilm_path).encode(["x"]))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        sparsebert.load(d)


def test_vocab_txt_fallback_tokenizes_like_tokenizer_json(minilm_path, tmp_path):
    d = _copy_minilm(minilm_path, tmp_path / "m")
    (d / "tokenizer.json").unlink()
    texts = ["The quick brown fox", "Héllo, WORLD!", ""]
    a = sparsebert.load(d).tokenize(texts)
    b = sparsebert.load(minilm_path).tokenize(texts)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert a.input_ids[0].tolist()[:6] == [101, 1996, 4248, 2829, 4419, 102]


def test_tokenizer_pads_to_longest_and_truncates(minilm_path):
    model = sparsebert.load(minilm_path, max_length=16)
    batch = model.tokenize(["a b", "one two three"])
    assert batch.input_ids.shape == (2, 5)
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    long = model.tokenize(["word " * 100])
    assert long.input_ids.shape == (1, 16) and long.input_ids[0, -1] == 102
    assert sparsebert.load(minilm_path).tokenizer.max_length == 256  # sentence_bert_config.json
