"""The user-facing model: `sparsebert.load(path)` → `Model`, tensors or texts in, arrays out.

`Model` joins a `BertEncoder` (tensors in/out) with its tokenizer (texts in/out). `encode` reproduces
sentence-transformers' `encode` for BERT models with mean pooling: same tokenization and truncation,
mean over the attention mask, optional L2 normalisation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .batching import (DEFAULT_CHUNK_SIZE, check_positive, chunked, embed_encodings,  # noqa: F401
                       pool, progress_bar)  # pool: public as sparsebert.pool
from .dispatch import check_formats
from .errors import CheckpointError, InputError
from .loaders import read_checkpoint
from .model import BertEncoder, EncoderOutput
from .tokenizer import Tokenizer, default_max_length
from .weights import build_weights

POOLINGS = ("mean", "cls", "max")


class Model:
    def __init__(self, encoder: BertEncoder, tokenizer: Tokenizer | None, source: Path | None = None):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.source = source

    @property
    def config(self):
        return self.encoder.config

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> EncoderOutput:
        return self.encoder(input_ids, attention_mask, token_type_ids)

    def sparsity_report(self) -> dict:
        """Per encoder linear: shape, sparsity, block structure, chosen format, FLOPs skipped; plus
        the model totals."""
        return self.encoder.sparsity_report()

    def tokenize(self, texts, text_pairs=None):
        return self._tokenizer()(texts, text_pairs)

    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise CheckpointError(
                "this checkpoint ships no tokenizer; load it with "
                "sparsebert.load(path, tokenizer='folder/with/tokenizer.json')"
            )
        return self.tokenizer

    def encode(
        self,
        texts: Iterable[str],
        batch_size: int = 32,
        normalize: bool = True,
        pooling: str = "mean",
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """Sentence embeddings (N, H) float32, in input order.

        `texts` may be any iterable (a generator of lines is read lazily, `chunk_size` texts at a
        time); within a chunk, texts are sorted by length so each batch pads little.
        """
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        parts = list(self.iter_encode(texts, batch_size, normalize, pooling,
                                      chunk_size=chunk_size, show_progress_bar=show_progress_bar))
        if not parts:
            return np.zeros((0, self.config.hidden_size), dtype=np.float32)
        return np.concatenate(parts)

    def iter_encode(
        self,
        texts: Iterable[str],
        batch_size: int = 32,
        normalize: bool = True,
        pooling: str = "mean",
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        show_progress_bar: bool = False,
    ) -> Iterator[np.ndarray]:
        """Like `encode`, but yields one (n, H) array per chunk of up to `chunk_size` texts."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        batch_size = check_positive("batch_size", batch_size)
        chunk_size = check_positive("chunk_size", chunk_size)
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, Iterable):
            raise InputError(f"texts must be a str or an iterable of str, got {type(texts).__name__}")
        return self._iter_encode(texts, batch_size, normalize, pooling, chunk_size, show_progress_bar)

    def _iter_encode(self, texts, batch_size, normalize, pooling, chunk_size, show_progress_bar):
        total = len(texts) if hasattr(texts, "__len__") else None
        with progress_bar(show_progress_bar, total, "encode") as bar:
            for chunk in chunked(texts, chunk_size):
                # Unpadded encodings: each length-sorted batch pads to its own longest, once.
                encodings = self._tokenizer().encode(chunk)
                emb = embed_encodings(self, encodings, batch_size, pooling, normalize, self.tokenizer.pad_id)
                bar.update(len(chunk))
                yield emb


def load(
    path: str | os.PathLike,
    *,
    layers: Sequence[int] | None = None,
    tokenizer: str | os.PathLike | None = None,
    max_length: int | None = None,
    formats=None,
    int8_attention: bool | None = None,
) -> Model:
    """Load a BERT checkpoint (HF folder, .onnx file or deployment folder).

    layers: keep only these encoder layers, in this order (layer dropping), e.g. [0, 2, 4, 6, 8, 11].
    tokenizer: tokenizer.json / vocab.txt path or folder, for checkpoints that ship none.
    max_length: truncation length for texts (default: the checkpoint's own setting, capped by
        max_position_embeddings).
    formats: the weight format of encoder linears (`sparsebert.dispatch.Formats`): "auto" (default:
        timed on this CPU), "dense", "csr", "bsr", "bsrRxC", an int8 format ("int8", "int8-dense",
        "int8-csr", "int8-vnni"), or a callable (name, weight) -> format name. Int8 checkpoints
        (`sparsebert quantize`, QDQ or dynamic int8 ONNX) run their own codes with "auto", "dense"
        or "csr"; weight-only int8 ONNX exports run in float unless an int8 format is named.
    int8_attention: None (default) runs attention's two matmuls in int8 where the layer's
        query/key/value linear runs int8 on AVX512-VNNI (mean cosine to float32 attention 0.9999 on
        all-MiniLM-L6-v2), float32 elsewhere; False keeps float32 attention; True requires int8.
    """
    ckpt = read_checkpoint(path)
    weights = build_weights(ckpt.state_dict, ckpt.config, layers, ckpt.int8)
    encoder = BertEncoder(weights, check_formats(formats), int8_attention)
    tok_path = Path(tokenizer) if tokenizer is not None else ckpt.tokenizer_path
    tok = None
    if tok_path is not None:
        folder = tok_path if tok_path.is_dir() else tok_path.parent
        limit = ckpt.config.max_position_embeddings
        length = max_length if max_length is not None else default_max_length(folder, limit)
        if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= limit:
            raise InputError(f"max_length must be an integer in [2, {limit}], got {length!r}")
        tok = Tokenizer(tok_path, length)
    return Model(encoder, tok, ckpt.source)
