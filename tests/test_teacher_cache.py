"""sparsebert.train.teacher_cache (`[distillation] cache_teacher = true`): the cached outputs equal
the teacher's own (transformers, on the padded batch) to float16 precision, a cached run trains like
a run that calls the teacher and really reads the cache, an interrupted build resumes and ends
bitwise equal to an uninterrupted one, a damaged folder is rebuilt with a warning, the key follows
everything the outputs depend on, and bad settings get a ConfigError naming the fix.

Tiny seeded BERTs and a handful of steps, as in test_train.py, whose recipe and fixtures are reused.
"""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_train import EMB_RECIPE, _texts, tiny_teacher  # noqa: E402,F401

from sparsebert.errors import CheckpointError, ConfigError  # noqa: E402
from sparsebert.tokenizer import Tokenizer  # noqa: E402
from sparsebert.train import distill, teacher_cache  # noqa: E402
from sparsebert.train.recipe import parse_recipe  # noqa: E402
from sparsebert.train.trainer import train  # noqa: E402

CACHED = EMB_RECIPE.replace("hidden_weight = 0.5", "hidden_weight = 0.5\ncache_teacher = true")


@pytest.fixture(scope="module")
def teacher(tiny_teacher):
    return distill.load_teacher(tiny_teacher, "embeddings")


def _open(teacher, folder, root, texts=None, max_length=16, precision="fp32", keep="all", **kw):
    tok = Tokenizer(folder, max_length)
    return teacher_cache.open_or_build(teacher, texts or _texts(), tok, precision=precision, keep=keep,
                                       root=root, progress=False, **kw)


@pytest.mark.parametrize("keep", ["all", "last"])
def test_cached_outputs_equal_the_teachers(teacher, tiny_teacher, tmp_path, monkeypatch, keep):
    monkeypatch.setattr(teacher_cache, "_BUILD_BATCH", 8)  # 64 texts: 8 build batches of other lengths
    cache, info = _open(teacher, tiny_teacher, tmp_path, keep=keep)
    assert not info["reused"] and info["bytes"] > 0
    texts = _texts()
    rows = np.array([5, 0, 17, 63, 30, 41])  # mixed lengths, from several build batches
    inputs = distill.model_inputs(Tokenizer(tiny_teacher, 16)([texts[i] for i in rows]))
    with torch.no_grad():
        want = teacher(**inputs, output_hidden_states=True).hidden_states
    want = want if keep == "all" else want[-1:]
    got = cache.outputs(rows, inputs["attention_mask"])
    mask = inputs["attention_mask"].numpy().astype(bool)
    assert len(got.hidden_states) == len(want) == (5 if keep == "all" else 1) and (~mask).any()
    for g, w in zip(got.hidden_states, want):
        assert (g.shape, g.dtype) == (w.shape, torch.float32)
        g, w = g.numpy(), w.numpy()
        np.testing.assert_allclose(g[mask], w[mask], rtol=2e-3, atol=2e-3)  # float16 storage
        assert not g[~mask].any()
    assert got.last_hidden_state is got.hidden_states[-1] and got.logits is None


def test_a_batch_of_other_token_counts_is_an_error(teacher, tiny_teacher, tmp_path):
    cache, _ = _open(teacher, tiny_teacher, tmp_path)
    inputs = distill.model_inputs(Tokenizer(tiny_teacher, 16)([_texts()[i] for i in (1, 2)]))
    with pytest.raises(CheckpointError, match="delete the folder"):
        cache.outputs(np.array([3, 4]), inputs["attention_mask"])


def test_classifier_logits_are_cached(tiny_teacher, tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "clf"
    shutil.copytree(tiny_teacher, folder)
    torch.manual_seed(5)
    cfg = BertConfig.from_pretrained(str(tiny_teacher), num_labels=3)
    BertForSequenceClassification(cfg).eval().save_pretrained(str(folder))
    clf = distill.load_teacher(folder, "classification")
    cache, _ = _open(clf, folder, tmp_path / "root", keep="none")
    assert not (cache.folder / "hidden.f16").exists()
    rows = np.array([3, 9, 40])
    inputs = distill.model_inputs(Tokenizer(folder, 16)([_texts()[i] for i in rows]))
    with torch.no_grad():
        want = clf(**inputs).logits.numpy()
    got = cache.outputs(rows, inputs["attention_mask"])
    assert got.hidden_states == () and (got.logits.shape, got.logits.dtype) == ((3, 3), torch.float32)
    np.testing.assert_allclose(got.logits.numpy(), want, rtol=1e-5, atol=1e-6)  # float32 storage


def _run(recipe_text, teacher_folder, out, root):
    return train(parse_recipe(recipe_text), init=teacher_folder, teacher=teacher_folder, output=out,
                 texts=_texts(), progress=False, teacher_cache=root)


def _two_layers(text):  # a student that starts away from the teacher: a first loss to compare
    return text.replace("[task]", "[student]\nlayers = [0, 3]\n[task]")


def test_cached_run_trains_like_the_teacher_run_and_reads_the_cache(tiny_teacher, tmp_path):
    a = _run(_two_layers(EMB_RECIPE), tiny_teacher, tmp_path / "plain", tmp_path / "root")
    b = _run(_two_layers(CACHED), tiny_teacher, tmp_path / "cached", tmp_path / "root")
    assert a["teacher_cache"] is None and b["teacher_cache"]["reused"] is False
    la = np.array([x for _, x in a["loss_curve"]])
    lb = np.array([x for _, x in b["loss_curve"]])
    assert abs(la[0] - lb[0]) <= 1e-3 * la[0]  # the same weights and batch, float16 teacher outputs
    assert abs(lb[-4:].mean() - la[-4:].mean()) <= 0.02 * la[-4:].mean()
    # A second run reuses the folder; zeroing the stored outputs (sizes unchanged, so it passes the
    # checks) must change its loss: the trainer reads the cache, it does not run the teacher.
    folder = next(p for p in (tmp_path / "root").iterdir() if p.is_dir())
    data = folder / "hidden.f16"
    data.write_bytes(bytes(data.stat().st_size))
    c = _run(_two_layers(CACHED), tiny_teacher, tmp_path / "zeroed", tmp_path / "root")
    assert c["teacher_cache"]["reused"] is True
    assert c["teacher_cache"]["build_seconds"] == b["teacher_cache"]["build_seconds"]
    assert abs(c["loss_curve"][0][1] - lb[0]) > 0.1 * lb[0]


class _StopOnWrite:
    """The hidden.f16 memory map, raising KeyboardInterrupt at its `at`-th row write: a stop in the
    middle of a batch, after some of its texts were written."""

    def __init__(self, array, at):
        self.array, self.at, self.writes = array, at, 0

    def __setitem__(self, key, value):
        self.writes += 1
        if self.writes == self.at:
            raise KeyboardInterrupt
        self.array[key] = value

    def flush(self):
        self.array.flush()


def _whole_and_parts(teacher, tiny_teacher, tmp_path, monkeypatch, interrupt):
    monkeypatch.setattr(teacher_cache, "_BUILD_BATCH", 8)  # 64 texts: 8 batches
    monkeypatch.setattr(teacher_cache, "_FLUSH_SECONDS", 0.0)  # the periodic save after every batch
    _open(teacher, tiny_teacher, tmp_path / "whole")
    interrupt()
    with pytest.raises(KeyboardInterrupt):
        _open(teacher, tiny_teacher, tmp_path / "parts")
    monkeypatch.undo()
    monkeypatch.setattr(teacher_cache, "_BUILD_BATCH", 8)
    folder = next(p for p in (tmp_path / "parts").iterdir() if p.is_dir())
    return next(p for p in (tmp_path / "whole").iterdir() if p.is_dir()), folder


def _same_files(a, b):
    assert a.name == b.name
    for name in ("hidden.f16", "offsets.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_build_stopped_inside_a_batch_resumes_bitwise(teacher, tiny_teacher, tmp_path, monkeypatch):
    real = np.memmap

    def memmap(*args, **kw):
        array = real(*args, **kw)
        return _StopOnWrite(array, 3 * 8 + 4) if kw.get("mode") == "r+" and array.ndim == 3 else array

    whole, folder = _whole_and_parts(teacher, tiny_teacher, tmp_path, monkeypatch,
                                     lambda: monkeypatch.setattr(teacher_cache.np, "memmap", memmap))
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["done"], meta["complete"]) == (3, False)  # batch 3 was half written: not counted
    _, info = _open(teacher, tiny_teacher, tmp_path / "parts")
    assert info["build_seconds"] >= meta["build_seconds"]
    _same_files(whole, folder)


def test_stop_request_ends_the_build_between_batches(teacher, tiny_teacher, tmp_path, monkeypatch):
    polls = iter([False, False, True])
    monkeypatch.setattr(teacher_cache, "_BUILD_BATCH", 8)
    with pytest.raises(KeyboardInterrupt, match="2/8 batches kept"):
        _open(teacher, tiny_teacher, tmp_path / "parts", should_stop=lambda: next(polls))
    _open(teacher, tiny_teacher, tmp_path / "whole")
    folder = next(p for p in (tmp_path / "parts").iterdir() if p.is_dir())
    assert json.loads((folder / "meta.json").read_text())["done"] == 2
    _open(teacher, tiny_teacher, tmp_path / "parts")
    _same_files(next(p for p in (tmp_path / "whole").iterdir() if p.is_dir()), folder)


def test_damaged_unfinished_build_starts_again(teacher, tiny_teacher, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = distill.model_inputs

    def stop_at_fourth(batch):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(batch)

    whole, folder = _whole_and_parts(
        teacher, tiny_teacher, tmp_path, monkeypatch,
        lambda: monkeypatch.setattr(teacher_cache.distill, "model_inputs", stop_at_fourth))
    with open(folder / "hidden.f16", "r+b") as f:
        f.truncate(100)
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        _open(teacher, tiny_teacher, tmp_path / "parts")
    _same_files(whole, folder)


@pytest.mark.parametrize("damage", ["truncate", "meta", "offsets"])
def test_damaged_cache_is_rebuilt_with_a_warning(teacher, tiny_teacher, tmp_path, damage):
    cache, _ = _open(teacher, tiny_teacher, tmp_path)
    folder = cache.folder
    good = (folder / "hidden.f16").read_bytes()
    del cache
    if damage == "truncate":
        with open(folder / "hidden.f16", "r+b") as f:
            f.truncate(len(good) // 2)
    elif damage == "meta":
        (folder / "meta.json").write_text("{not json")
    else:
        offsets = np.load(folder / "offsets.npy")
        offsets[5] += 1
        np.save(folder / "offsets.npy", offsets)
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        _, info = _open(teacher, tiny_teacher, tmp_path)
    assert not info["reused"] and (folder / "hidden.f16").read_bytes() == good


def test_key_follows_texts_max_length_precision_and_weights(teacher, tiny_teacher, tmp_path):
    base = _open(teacher, tiny_teacher, tmp_path)[0].folder
    assert _open(teacher, tiny_teacher, tmp_path)[0].folder == base
    others = [_open(teacher, tiny_teacher, tmp_path, texts=_texts(seed=1))[0].folder,
              _open(teacher, tiny_teacher, tmp_path, max_length=12)[0].folder,
              _open(teacher, tiny_teacher, tmp_path, precision="bf16")[0].folder]
    other_teacher = distill.load_teacher(tiny_teacher, "embeddings")
    with torch.no_grad():
        other_teacher.encoder.layer[2].output.dense.bias[0] += 1e-3
    others.append(_open(other_teacher, tiny_teacher, tmp_path)[0].folder)
    other_config = distill.load_teacher(tiny_teacher, "embeddings")
    other_config.config.layer_norm_eps = 1e-5  # the same tensors, another computation
    others.append(_open(other_config, tiny_teacher, tmp_path)[0].folder)
    others.append(_open(teacher, tiny_teacher, tmp_path, keep="last")[0].folder)
    assert len({base, *others}) == 7


def test_no_room_and_attention_are_config_errors(teacher, tiny_teacher, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="attention_weight = 0 or cache_teacher = false"):
        parse_recipe(CACHED.replace("hidden_weight = 0.5", "hidden_weight = 0.5\nattention_weight = 1.0"))
    with pytest.raises(ConfigError, match="expected true or false"):
        parse_recipe(CACHED.replace("cache_teacher = true", "cache_teacher = 1"))

    def full(fd, offset, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(teacher_cache.os, "posix_fallocate", full)
    with pytest.raises(ConfigError, match="No space left on device.*SPARSEBERT_CACHE_DIR"):
        _open(teacher, tiny_teacher, tmp_path)
    assert not any(p.is_dir() for p in tmp_path.iterdir())  # nothing half-made left behind


def test_cached_run_resumed_equals_uninterrupted(tiny_teacher, tmp_path):
    whole = _run(CACHED, tiny_teacher, tmp_path / "a", tmp_path / "root")
    for chunk in (5, 6):
        part = train(parse_recipe(CACHED), init=tiny_teacher, teacher=tiny_teacher, output=tmp_path / "b",
                     texts=_texts(), progress=False, teacher_cache=tmp_path / "root", max_steps=chunk)
        assert not part["finished"] and part["teacher_cache"]["reused"]
    assert _run(CACHED, tiny_teacher, tmp_path / "b", tmp_path / "root")["finished"]
    assert whole["finished"]
    a, b = (tmp_path / run / "model.safetensors" for run in "ab")
    assert a.read_bytes() == b.read_bytes()


def test_resume_with_another_build_batch_starts_again(teacher, tiny_teacher, tmp_path, monkeypatch):
    # `done` counts batches: read with another batch size it would skip texts and leave them zero.
    polls = iter([False, False, True])
    monkeypatch.setattr(teacher_cache, "_BUILD_BATCH", 8)
    with pytest.raises(KeyboardInterrupt):
        _open(teacher, tiny_teacher, tmp_path / "parts", should_stop=lambda: next(polls))
    monkeypatch.setattr(teacher_cache, "_BUILD_BATCH", 16)
    with pytest.warns(RuntimeWarning, match="describes another cache"):
        _open(teacher, tiny_teacher, tmp_path / "parts")
    _open(teacher, tiny_teacher, tmp_path / "whole")
    _same_files(*(next(p for p in (tmp_path / run).iterdir() if p.is_dir()) for run in ("whole", "parts")))
