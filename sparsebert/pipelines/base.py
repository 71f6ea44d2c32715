"""What every task pipeline shares: model resolution, head tensors, streaming over inputs, numerics.

A pipeline holds a `Model` plus the float32 numpy head tensors of its task, read from
`model.encoder.weights.heads` (checkpoint names without the `bert.` prefix) and shape-checked once.
Calls stream: inputs are pulled `chunk_size` at a time, tokenized, run through the encoder in
length-sorted batches (`sparsebert.batching`), and the results come back in input order.

What it leaves out: anything torch-based; heads other than the Hugging Face BertFor... layouts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..batching import DEFAULT_CHUNK_SIZE, check_positive, chunked, forward_bucketed, progress_bar
from ..errors import CheckpointError, InputError

# Which head tensors each task reads, for the error a checkpoint without them gets.
HEAD_TENSORS = {
    "text-classification": ("classifier.weight", "classifier.bias", "pooler.dense.weight"),
    "token-classification": ("classifier.weight", "classifier.bias"),
    "question-answering": ("qa_outputs.weight", "qa_outputs.bias"),
    "fill-mask": (
        "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.bias",
    ),
}
_HEAD_CLASS = {
    "text-classification": "BertForSequenceClassification",
    "token-classification": "BertForTokenClassification",
    "question-answering": "BertForQuestionAnswering",
    "fill-mask": "BertForMaskedLM",
}


class Pipeline:
    """Base class: subclasses set `task`, `defaults` (call options) and implement `_run_chunk`."""

    task = ""
    defaults: dict[str, Any] = {}

    def __init__(self, model, folder: Path | None, *, batch_size: int = 32,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, show_progress_bar: bool = False, **options):
        if model.tokenizer is None:
            raise CheckpointError(
                f"the {self.task} pipeline needs a tokenizer but the checkpoint ships none; "
                "load it with sparsebert.load(path, tokenizer='folder/with/tokenizer.json')"
            )
        self.model = model
        self.folder = folder
        self.batch_size = check_positive("batch_size", batch_size)
        self.chunk_size = check_positive("chunk_size", chunk_size)
        self.show_progress_bar = bool(show_progress_bar)
        self.options = self._options(options)

    # -- calling ---------------------------------------------------------------------------

    def __call__(self, inputs, **options):
        """One input → one result; a list or tuple → a list; any other iterable → a generator."""
        if self._is_single(inputs):
            return self._finish(list(self.stream([inputs], **options))[0], single=True, options=options)
        if isinstance(inputs, (list, tuple)):
            return [self._finish(r, single=False, options=options) for r in self.stream(inputs, **options)]
        return (self._finish(r, single=False, options=options) for r in self.stream(inputs, **options))

    def stream(self, inputs: Iterable, **options) -> Iterator:
        """Results one by one, in input order, reading `inputs` lazily `chunk_size` at a time."""
        opts = self._options(options, base=self.options)
        if self._is_single(inputs):
            inputs = [inputs]
        total = len(inputs) if hasattr(inputs, "__len__") else None
        return self._stream(inputs, opts, total)

    def _stream(self, inputs, opts, total):
        with progress_bar(self.show_progress_bar, total, self.task) as bar:
            for chunk in chunked(inputs, self.chunk_size):
                yield from self._run_chunk(chunk, opts)
                bar.update(len(chunk))

    def _is_single(self, inputs) -> bool:
        return isinstance(inputs, str)

    def _finish(self, result, single: bool, options: dict):
        """Hook for the shape quirks of Hugging Face outputs (single vs list inputs)."""
        return result

    def _options(self, given: dict, base: dict | None = None) -> dict:
        base = dict(self.defaults if base is None else base)
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise TypeError(
                f"{self.task} pipeline got unknown option(s) {unknown}; it accepts "
                f"{sorted(self.defaults) + ['batch_size', 'chunk_size', 'show_progress_bar']}"
            )
        base.update(given)
        return self._check_options(base)

    def _check_options(self, opts: dict) -> dict:
        return opts

    def _run_chunk(self, chunk: list, opts: dict) -> list:
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------------------

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def pad_id(self) -> int:
        return self.model.tokenizer.pad_id

    def head_tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A task-head tensor by checkpoint name, checked against `shape` (None = any size)."""
        heads = self.model.encoder.weights.heads
        if name not in heads:
            raise CheckpointError(missing_head_message(self.task, name, sorted(heads)))
        arr = heads[name]
        if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
            raise CheckpointError(
                f"head tensor {name!r} has shape {arr.shape}, expected {shape} for the {self.task} "
                f"pipeline ({_HEAD_CLASS[self.task]} layout)"
            )
        return arr

    def label_names(self, count: int) -> list[str]:
        labels = self.model.config.labels
        if labels and len(labels) != count:
            raise CheckpointError(
                f"config id2label has {len(labels)} labels but the classifier has {count} outputs; "
                "fix id2label in config.json"
            )
        return [labels.get(i, f"LABEL_{i}") for i in range(count)]

    def forward(self, encodings, head) -> list:
        """Encoder + `head` over `encodings` in length-sorted batches; one result each, in order."""
        return forward_bucketed(self.model, encodings, self.batch_size, head, self.pad_id)

    def raw_tokenizer(self):
        """The underlying `tokenizers.Tokenizer`, for offsets, word ids and decoding."""
        return self.model.tokenizer.backend


def missing_head_message(task: str, name: str, present: list[str]) -> str:
    needed = ", ".join(HEAD_TENSORS[task])
    have = f"its head tensors are {present[:8]}" if present else "it has no task-head tensors"
    return (
        f"the {task} pipeline needs a {_HEAD_CLASS[task]} checkpoint with {needed}; tensor "
        f"{name!r} is missing ({have}). Save the model with transformers' {_HEAD_CLASS[task]}"
    )


def read_json(folder: Path | None, name: str):
    """A small JSON side file of the model folder (config.json, modules.json...), or None."""
    if folder is None:
        return None
    path = folder / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {exc}") from None


def model_folder(path_or_model) -> Path | None:
    source = path_or_model if isinstance(path_or_model, (str, os.PathLike)) else path_or_model.source
    if source is None:
        return None
    source = Path(source)
    return source if source.is_dir() else source.parent


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y (..., N) = x (..., K) @ W (N, K)ᵀ + b (N,), PyTorch orientation."""
    return x @ w.T + b


def check_text(value, what: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{what} must be a str, got {type(value).__name__}: {value!r:.80}")
    return value


def check_top_k(value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    return check_positive("top_k", value)
