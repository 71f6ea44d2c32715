"""Length-bucketed, chunked streaming: results in input order, inputs pulled lazily, small padding.

References are the same model run one text at a time (no padding, no sorting), so any mix-up of
order or padding leak shows up as a value difference.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import sparsebert
from sparsebert.batching import chunked, forward_bucketed, length_batches

pytest.importorskip("transformers")
from pipeline_models import WORDS, make_models  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("streaming"))


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 40)))) for _ in range(n)]


class PullLimit:
    """An iterator over `items` that fails the test if more than `limit` items are pulled."""

    def __init__(self, items, limit):
        self.items, self.limit, self.pulled = list(items), limit, 0

    def __iter__(self):
        for item in self.items:
            if self.pulled >= self.limit:
                raise AssertionError(f"pulled more than {self.limit} items ahead")
            self.pulled += 1
            yield item


def test_chunked_is_lazy():
    src = PullLimit(range(100), limit=10)
    it = chunked(iter(src), 4)
    assert next(it) == [0, 1, 2, 3] and src.pulled == 4


def test_length_batches_sort_and_cover():
    lengths = [5, 1, 9, 3, 9, 2, 7]
    batches = length_batches(lengths, 3)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_encode_restores_order_and_matches_one_by_one(models):
    model = sparsebert.load(models["base"])
    texts = _texts(57)
    expected = np.stack([model.encode([t], normalize=False)[0] for t in texts])
    got = model.encode(iter(texts), batch_size=4, normalize=False, chunk_size=16)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert model.encode([], normalize=False).shape == (0, 32)


def test_bucketing_keeps_padding_small(models):
    model = sparsebert.load(models["base"])
    texts = _texts(64, seed=1)
    encodings = model.tokenize(texts).encodings
    shapes = []

    def spy(ids, mask, types):
        shapes.append(ids.shape)
        return model(ids, mask, types)

    forward_bucketed(spy, encodings, 8, lambda out, *a: list(out.last_hidden_state[:, 0]),
                     model.tokenizer.pad_id)
    real = sum(len(e.ids) for e in encodings)
    padded = sum(b * t for b, t in shapes)
    unsorted = sum(8 * max(len(e.ids) for e in encodings[i:i + 8]) for i in range(0, 64, 8))
    assert padded < 0.5 * (unsorted - real) + real  # sorted batches waste far less
    assert padded <= 1.2 * real


def test_encode_consumes_generator_lazily(models):
    model = sparsebert.load(models["base"])
    src = PullLimit(_texts(100), limit=20)
    parts = model.iter_encode(iter(src), batch_size=4, chunk_size=10)
    first = next(parts)
    assert first.shape == (10, 32) and src.pulled == 10


@pytest.mark.parametrize("task,key", [
    ("text-classification", "cls"), ("token-classification", "ner"), ("fill-mask", "mlm"),
    ("sentence-embedding", "base"),
])
def test_pipeline_stream_is_lazy_and_ordered(models, task, key):
    pipe = sparsebert.pipeline(task, models[key], batch_size=3, chunk_size=8)
    texts = [t + " [MASK]" if task == "fill-mask" else t for t in _texts(30, seed=2)]
    expected = [pipe(t) for t in texts]
    if task == "text-classification":
        expected = [e[0] for e in expected]  # one-string calls wrap the dict in a list
    src = PullLimit(texts, limit=16)
    stream = pipe.stream(iter(src))
    first = next(stream)
    assert src.pulled == 8
    src.limit = len(texts)
    got = [first, *stream]
    assert len(got) == len(texts)
    for g, e in zip(got, expected):
        if isinstance(e, np.ndarray):
            np.testing.assert_allclose(g, e, atol=2e-5)
        else:
            assert _close(g, e)  # floats to 1e-4: a score may sit on a rounding edge


def test_generator_input_gives_generator(models):
    pipe = sparsebert.pipeline("text-classification", models["cls"])
    out = pipe(t for t in ["a cat", "a dog"])
    assert not isinstance(out, list)
    assert [r["label"] for r in out] == [pipe("a cat")[0]["label"], pipe("a dog")[0]["label"]]


def test_qa_windows_are_batched_across_examples(models):
    pipe = sparsebert.pipeline("question-answering", models["qa"], max_seq_len=24, doc_stride=6,
                               batch_size=5, chunk_size=3)
    context = " ".join(_texts(6, seed=3))
    items = [{"question": q, "context": context} for q in ("who works?", "what flows?", "where?",
                                                              "what is the capital?")]
    one_by_one = [pipe(item) for item in items]
    assert _rounded(pipe(items)) == _rounded(one_by_one)


def test_progress_bar_without_tqdm(models, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    model = sparsebert.load(models["base"])
    assert model.encode(_texts(5), show_progress_bar=True).shape == (5, 32)


def test_progress_bar_with_tqdm(models, capsys):
    pytest.importorskip("tqdm")
    pipe = sparsebert.pipeline("token-classification", models["ner"], show_progress_bar=True)
    assert len(pipe(_texts(5))) == 5
    assert "5/5" in capsys.readouterr().err


def _close(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4
    return a == b


def _rounded(x):
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    if isinstance(x, float):
        return round(x, 4)
    return x
