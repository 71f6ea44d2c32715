"""Task pipelines: texts in, answers out, shaped like Hugging Face transformers' pipelines.

    pipe = sparsebert.pipeline("text-classification", "path/to/model", top_k=2)
    pipe(["great film", "awful film"])

Tasks: feature-extraction / sentence-embedding, text-classification, token-classification (alias
ner), question-answering, fill-mask. Encoder in sparsebert (sparse kernels), heads in numpy float32.
Each pipeline streams: `pipe.stream(iterable)` yields results in input order while reading the
iterable `chunk_size` items at a time, batching by length inside each chunk.

What it leaves out: zero-shot, generation, and transformers' argument-parsing quirks beyond the
documented input forms (str, dict, list of those).
"""

from __future__ import annotations

import os

from .base import HEAD_TENSORS, Pipeline, model_folder
from .classification import TextClassificationPipeline, TokenClassificationPipeline
from .embedding import SentenceEmbeddingPipeline
from .fill_mask import FillMaskPipeline
from .question_answering import QuestionAnsweringPipeline

TASKS = {
    "feature-extraction": SentenceEmbeddingPipeline,
    "sentence-embedding": SentenceEmbeddingPipeline,
    "text-classification": TextClassificationPipeline,
    "sentiment-analysis": TextClassificationPipeline,
    "token-classification": TokenClassificationPipeline,
    "ner": TokenClassificationPipeline,
    "question-answering": QuestionAnsweringPipeline,
    "fill-mask": FillMaskPipeline,
}

# Keyword arguments that go to sparsebert.load when a path is given.
_LOAD_KEYS = ("layers", "tokenizer", "max_length", "formats", "int8_attention")


def pipeline(task: str, path_or_model, **options) -> Pipeline:
    """Build the `task` pipeline on a model path (loaded with sparsebert.load) or a loaded `Model`.

    options: batch_size, chunk_size, show_progress_bar, the task's call defaults (top_k,
    aggregation_strategy, doc_stride, ...), and, with a path, sparsebert.load's keyword arguments
    (layers, tokenizer, max_length, formats, int8_attention).
    """
    from ..api import Model, load

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")
    load_kwargs = {k: options.pop(k) for k in _LOAD_KEYS if k in options}
    if isinstance(path_or_model, Model):
        if load_kwargs:
            raise TypeError(f"{sorted(load_kwargs)} apply only when a path is given, not a loaded Model")
        model = path_or_model
    elif isinstance(path_or_model, (str, os.PathLike)):
        model = load(path_or_model, **load_kwargs)
    else:
        raise TypeError(
            f"path_or_model must be a model path or a sparsebert.Model, got {type(path_or_model).__name__}"
        )
    return TASKS[task](model, model_folder(path_or_model), **options)


__all__ = [
    "HEAD_TENSORS",
    "FillMaskPipeline",
    "Pipeline",
    "QuestionAnsweringPipeline",
    "SentenceEmbeddingPipeline",
    "TASKS",
    "TextClassificationPipeline",
    "TokenClassificationPipeline",
    "pipeline",
]
