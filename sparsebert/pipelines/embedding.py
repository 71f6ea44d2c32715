"""Sentence embeddings: `model.encode` with the model folder's sentence-transformers settings.

`SentenceEmbeddingPipeline.encode` is a drop-in for sentence-transformers' `SentenceTransformer.encode`
(batch_size, show_progress_bar, convert_to_numpy, normalize_embeddings) on BERT models: the pooling
mode comes from `1_Pooling/config.json` and L2 normalisation from a Normalize entry in
`modules.json`, when the folder has them (mean pooling, no normalisation otherwise, as
sentence-transformers does for a plain transformers folder).

Unlike transformers' `feature-extraction` pipeline, the result is one vector per text, not per token.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from ..api import POOLINGS
from ..errors import CheckpointError
from .base import Pipeline, read_json

# sentence-transformers' 1_Pooling/config.json flags → our pooling names.
_POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}


def folder_pooling(folder) -> tuple[str, bool]:
    """(pooling, normalize) as a sentence-transformers model folder declares them."""
    pooling, normalize = "mean", False
    modules = read_json(folder, "modules.json")
    pooling_dir = "1_Pooling"
    if isinstance(modules, list):
        for module in modules:
            if not isinstance(module, dict):
                continue
            kind = str(module.get("type", ""))
            if kind.endswith(".Normalize"):
                normalize = True
            if kind.endswith(".Pooling") and isinstance(module.get("path"), str):
                pooling_dir = module["path"]
    cfg = read_json(folder, f"{pooling_dir}/config.json")
    if isinstance(cfg, dict):
        chosen = [name for flag, name in _POOLING_FLAGS.items() if cfg.get(flag)]
        others = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v
                  and k not in _POOLING_FLAGS]
        if len(chosen) != 1 or others:
            raise CheckpointError(
                f"{pooling_dir}/config.json enables pooling modes {chosen + others}; sparsebert supports "
                f"exactly one of {sorted(_POOLING_FLAGS)}"
            )
        pooling = chosen[0]
    return pooling, normalize


class SentenceEmbeddingPipeline(Pipeline):
    task = "sentence-embedding"
    defaults = {"pooling": None, "normalize": None}

    def __init__(self, model, folder, **kwargs):
        super().__init__(model, folder, **kwargs)
        self.pooling, self.normalize = folder_pooling(folder)

    def _check_options(self, opts):
        if opts["pooling"] is not None and opts["pooling"] not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {opts['pooling']!r}")
        return opts

    def _resolved(self, opts) -> tuple[str, bool]:
        pooling = opts["pooling"] or self.pooling
        normalize = self.normalize if opts["normalize"] is None else bool(opts["normalize"])
        return pooling, normalize

    def _run_chunk(self, chunk, opts):
        pooling, normalize = self._resolved(opts)
        emb = self.model.encode(chunk, self.batch_size, normalize, pooling, chunk_size=len(chunk))
        return list(emb)

    def __call__(self, inputs, **options):
        """str → (H,) array; a list → (N, H) array; another iterable → a generator of (H,) arrays."""
        if isinstance(inputs, (list, tuple)):
            rows = list(self.stream(inputs, **options))
            if not rows:
                return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
            return np.stack(rows)
        return super().__call__(inputs, **options)

    def encode(
        self,
        sentences: str | Iterable[str],
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        normalize_embeddings: bool = False,
        normalize: bool | None = None,
    ):
        """sentence-transformers' `encode`: str → (H,), list → (N, H) float32 (or a list of (H,)
        arrays with convert_to_numpy=False). normalize_embeddings adds L2 normalisation on top of
        the folder's own modules; normalize=False/True overrides both."""
        single = isinstance(sentences, str)
        norm = self.normalize or bool(normalize_embeddings)
        if normalize is not None:
            norm = bool(normalize)
        emb = self.model.encode(
            [sentences] if single else sentences,
            batch_size=self.batch_size if batch_size is None else batch_size,
            normalize=norm,
            pooling=self.pooling,
            chunk_size=self.chunk_size,
            show_progress_bar=bool(show_progress_bar),
        )
        if single:
            return emb[0]
        return emb if convert_to_numpy else list(emb)

    def iter_encode(self, sentences: Iterable[str], batch_size: int | None = None,
                    normalize: bool | None = None) -> Iterator[np.ndarray]:
        """(n, H) arrays, one per chunk, reading `sentences` lazily."""
        return self.model.iter_encode(
            sentences,
            self.batch_size if batch_size is None else batch_size,
            self.normalize if normalize is None else bool(normalize),
            self.pooling,
            chunk_size=self.chunk_size,
            show_progress_bar=self.show_progress_bar,
        )
