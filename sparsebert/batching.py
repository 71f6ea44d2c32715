"""Throughput batching for texts: stream in chunks, sort by length, pad each batch to its own longest.

The one encodings -> embeddings path: `embed_encodings` (tokenizer encodings in, pooled (n, H)
float32 out) runs `forward_bucketed` with `pool` as its head; `Model.encode`, the Ray actors and
(through `pool`) the server all use it, so tokenization happens once and padding once per batch.

Every text-level API (`Model.encode`, the pipelines) runs the encoder through `forward_bucketed`:
within a chunk, sequences are ordered by token count and cut into batches of `batch_size`, so a
batch pads only to the longest of similar-length neighbours; results go back to input order.
`chunked` pulls at most `chunk_size` items from any iterable at a time, so a generator of 100k lines
is consumed lazily and memory stays bounded by one chunk.

What it leaves out: dynamic batch sizes by token budget, and overlapping tokenisation with compute.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .tokenizer import collate

DEFAULT_CHUNK_SIZE = 1024


def check_positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """Lists of up to `size` consecutive items; pulls nothing beyond the chunk being built."""
    it = iter(items)
    while True:
        chunk = list(itertools.islice(it, size))
        if not chunk:
            return
        yield chunk


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices grouped into batches of similar length (stable sort, longest first so the
    largest allocation happens once, up front)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def forward_bucketed(
    model,
    encodings: Sequence,
    batch_size: int,
    head: Callable,
    pad_id: int,
) -> list:
    """Run the encoder over `encodings` in length-sorted batches; return one result per encoding,
    in input order.

    head(output: EncoderOutput, ids, mask, types) -> sequence with one result per batch row. Heads
    reduce (b, T, H) hidden states to something small (pooled vectors, logits), so a chunk never
    holds more than one batch of hidden states.
    """
    results: list = [None] * len(encodings)
    for rows in length_batches([len(e.ids) for e in encodings], batch_size):
        ids, mask, types = collate([encodings[r] for r in rows], pad_id)
        out = model(ids, mask, types)
        for r, res in zip(rows, head(out, ids, mask, types)):
            results[r] = res
    return results


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str = "mean", normalize: bool = True) -> np.ndarray:
    """(B, T, H) hidden states + (B, T) mask → (B, H) sentence embeddings."""
    m = mask.astype(np.float32)[:, :, None]
    if pooling == "mean":
        out = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    elif pooling == "cls":
        out = hidden[:, 0].copy()
    else:
        out = np.where(m > 0, hidden, -np.inf).max(axis=1)
        out = np.where(np.isfinite(out), out, 0.0)
    if normalize:
        out = l2_normalize(out)
    return out.astype(np.float32, copy=False)


def l2_normalize(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in place (all-zero rows stay zero); returns `emb`."""
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def embed_encodings(model, encodings: Sequence, batch_size: int, pooling: str = "mean",
                    normalize: bool = True, pad_id: int = 0) -> np.ndarray:
    """Tokenizer encodings (anything with `.ids` and `.type_ids`) → (n, H) float32 pooled
    embeddings in input order, run in length-sorted batches."""
    def head(out, ids, mask, types):
        return pool(out.last_hidden_state, mask, pooling, normalize)

    return np.stack(forward_bucketed(model, encodings, batch_size, head, pad_id)).astype(np.float32, copy=False)


class progress_bar:
    """tqdm when installed and `enabled`, else a silent counter with the same `update` / `close`."""

    def __init__(self, enabled: bool, total: int | None = None, desc: str = "", unit: str = "text"):
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(total=total, desc=desc, unit=unit)

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
