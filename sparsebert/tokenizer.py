"""Text → padded id arrays, with the `tokenizers` library.

Built from a tokenizer.json (any `tokenizers` pipeline) or, as a fallback, a WordPiece vocab.txt.
Whatever padding or truncation the file has built in is replaced: each batch is padded to its own
longest sequence (not a fixed 128) and truncated at `max_length` tokens, so ids never exceed the
model's position table. Pairs (text, text_pair) get token type ids 0/1 from the file's post-processor.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import CheckpointError, ConfigError, InputError


@dataclasses.dataclass(frozen=True)
class Batch:
    input_ids: np.ndarray  # (B, T) int64
    attention_mask: np.ndarray  # (B, T) int64
    token_type_ids: np.ndarray  # (B, T) int64
    offsets: tuple  # per row, the tokenizer's (start, end) character offsets of each token
    encodings: tuple  # the raw `tokenizers.Encoding` objects, for word ids etc.


class Tokenizer:
    def __init__(self, path: str | os.PathLike, max_length: int):
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if path.is_dir():
            found = [path / n for n in ("tokenizer.json", "vocab.txt") if (path / n).is_file()]
            if not found:
                raise CheckpointError(f"{str(path)!r} holds neither tokenizer.json nor vocab.txt")
            path = found[0]
        try:
            if path.name.endswith(".json"):
                tok = HFTokenizer.from_file(str(path))
            else:
                from tokenizers.implementations import BertWordPieceTokenizer

                tok = BertWordPieceTokenizer(str(path), lowercase=_do_lower_case(path.parent))
        except Exception as exc:  # tokenizers raises plain Exception for malformed files
            raise CheckpointError(
                f"cannot read tokenizer {str(path)!r}: {str(exc)[:300]}; pass a valid tokenizer.json "
                "or vocab.txt with tokenizer="
            ) from None
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ConfigError(f"max_length must be an integer ≥ 2, got {max_length!r}")
        tok.no_padding()
        tok.enable_truncation(max_length=max_length)
        self._tok = getattr(tok, "_tokenizer", tok)
        self.max_length = max_length
        self.path = path
        self.pad_id = self._find_pad_id()

    def _find_pad_id(self) -> int:
        for token in ("[PAD]", "<pad>"):
            idx = self._tok.token_to_id(token)
            if idx is not None:
                return idx
        return 0

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer` (padding off, truncation at max_length), for
        callers that need encodings, word ids or decoding beyond `__call__`."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self._tok.id_to_token(int(idx))

    def __call__(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> Batch:
        encodings = self.encode(texts, text_pairs)
        ids, mask, types = collate(encodings, self.pad_id)
        return Batch(ids, mask, types, tuple(e.offsets for e in encodings), tuple(encodings))

    def encode(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> list:
        """Checked texts → `tokenizers.Encoding`s, truncated, not padded (`collate` pads)."""
        texts = _check_texts(texts, "texts")
        if text_pairs is not None:
            text_pairs = _check_texts(text_pairs, "text_pairs")
            if len(text_pairs) != len(texts):
                raise InputError(
                    f"got {len(texts)} texts but {len(text_pairs)} text_pairs; they must pair up"
                )
            return self._tok.encode_batch(list(zip(texts, text_pairs)))
        return self._tok.encode_batch(texts)


def collate(encodings: Sequence, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`tokenizers.Encoding`s → input_ids, attention_mask, token_type_ids (B, T) int64, T = longest."""
    B = len(encodings)
    T = max(len(e.ids) for e in encodings)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    types = np.zeros((B, T), dtype=np.int64)
    for i, e in enumerate(encodings):
        n = len(e.ids)
        ids[i, :n] = e.ids
        mask[i, :n] = 1
        types[i, :n] = e.type_ids
    return ids, mask, types


def _check_texts(texts, what: str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise InputError(
            f"{what} must be a str or a sequence of str, got {type(texts).__name__}: {texts!r:.80}"
        )
    texts = list(texts)
    if not texts:
        raise InputError(f"{what} is empty: pass at least one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"{what}[{i}] is a {type(t).__name__}, not a str: {t!r:.80}")
    return texts


def _do_lower_case(folder: Path) -> bool:
    cfg = folder / "tokenizer_config.json"
    try:
        return bool(json.loads(cfg.read_text(encoding="utf-8")).get("do_lower_case", True))
    except (OSError, ValueError, AttributeError):
        return True


def default_max_length(folder: Path | None, max_positions: int) -> int:
    """The sequence length a model folder was used with: sentence-transformers' max_seq_length,
    else tokenizer_config.json's model_max_length, capped by the position table."""
    if folder is not None:
        for name, key in (("sentence_bert_config.json", "max_seq_length"),
                          ("tokenizer_config.json", "model_max_length")):
            try:
                value = json.loads((folder / name).read_text(encoding="utf-8")).get(key)
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(value, int) and not isinstance(value, bool) and 2 <= value:
                return min(value, max_positions)
    return max_positions
