"""Tables for batch jobs: rows of (id, text) in from text, JSONL or Parquet; (id, embedding, error) out
as Parquet; and the id accounting that proves every input row came out exactly once.

A job starts with `scan_input`, one streaming pass over the input that validates it, counts its rows,
computes an order-independent checksum of their ids and cuts it into `Piece`s of a few thousand rows
(byte ranges of a text or JSONL file, slices of a Parquet row group). A piece is a small description,
so a local loop or a Ray task anywhere can read its rows with `read_piece` from a path every node can
read; no part of the data set is ever held whole. `OutputWriter` writes results as they come, one
Parquet file or a folder of shards; `verify_output` re-reads only the id column of what was written
and compares count and checksum with the scan, so a lost or duplicated row fails the job loudly.

Ids: for a text file, the 0-based line number (lines end at '\\n', a trailing '\\r' is dropped). For
JSONL and Parquet, the value of the id column (integer or string) when the input has one, else the
0-based row number. A malformed file (a JSONL line that is not an object, a missing text column, ids
of mixed types) is an `InputError` from the scan, before any compute; a bad *row* (text missing, not
a string, empty or whitespace, not UTF-8) is not an error: it comes out with a null embedding and its
reason in `error`, so the job finishes and the caller can report the ids.

Left out: reading from object stores (s3://) and compressed text, resuming a stopped job, and
detecting duplicate ids *in the input* (the check compares the input's multiset of ids with the
output's). pyarrow is imported lazily: `pip install 'sparsebert[ray]'`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import InputError, SparseBertError, require

ROWS_PER_PIECE = 1024
TEXT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_MASK64 = (1 << 64) - 1


def _pyarrow():
    require("pyarrow", "'sparsebert[ray]'", "to read and write Parquet tables")
    import pyarrow
    import pyarrow.parquet  # noqa: F401

    return pyarrow


@dataclasses.dataclass(frozen=True)
class Piece:
    """Rows [first_row, first_row + rows) of the input: bytes [start, stop) of a text/JSONL file, or
    rows [start, stop) of Parquet row group `group`."""

    path: str
    format: str
    first_row: int
    rows: int
    start: int
    stop: int
    group: int = -1


@dataclasses.dataclass(frozen=True)
class InputPlan:
    path: str
    format: str  # "text", "jsonl" or "parquet"
    text_column: str
    id_column: str | None  # None: ids are row numbers
    id_type: str  # "int64" or "string"
    count: int
    checksum: int
    pieces: tuple


# --- id accounting ----------------------------------------------------------------------------


def id_checksum(ids) -> int:
    """Order-independent 64-bit checksum of a sequence of ids: the sum modulo 2**64 of a mixing
    hash of each id (splitmix64 for integers, BLAKE2b for strings). Equal counts and equal checksums
    mean the same multiset of ids except with probability ~2**-64."""
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
        z = ids.astype(np.uint64, copy=True)
        with np.errstate(over="ignore"):
            z += np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z ^= z >> np.uint64(31)
            return int(z.sum(dtype=np.uint64))
    total = 0
    for value in ids:
        if isinstance(value, str):
            h = int.from_bytes(hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest(), "little")
        else:
            h = id_checksum(np.array([value], dtype=np.int64))
        total = (total + h) & _MASK64
    return total


def _range_checksum(start: int, stop: int) -> int:
    total = 0
    for lo in range(start, stop, 1 << 20):
        total = (total + id_checksum(np.arange(lo, min(stop, lo + (1 << 20)), dtype=np.int64))) & _MASK64
    return total


# --- scanning the input -----------------------------------------------------------------------


def input_format(path: str | os.PathLike) -> str:
    p = Path(path)
    if p.is_dir():
        return "parquet"
    return TEXT_SUFFIXES.get(p.suffix.lower(), "text")


def scan_input(path: str | os.PathLike, *, text_column: str = "text", id_column: str = "id",
               rows_per_piece: int = ROWS_PER_PIECE) -> InputPlan:
    """Validate the input, count its rows, checksum their ids and cut it into pieces (one pass)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input {str(path)!r} does not exist")
    if isinstance(rows_per_piece, bool) or not isinstance(rows_per_piece, int) or rows_per_piece < 1:
        raise ValueError(f"rows_per_piece must be a positive integer, got {rows_per_piece!r}")
    fmt = input_format(path)
    if fmt == "parquet":
        return _scan_parquet(path, text_column, id_column, rows_per_piece)
    return _scan_lines(path, fmt, text_column, id_column, rows_per_piece)


def _scan_lines(path: Path, fmt: str, text_column: str, id_column: str, rows_per_piece: int) -> InputPlan:
    pieces, ids = [], []
    with_ids, id_type = None, "int64"
    start = offset = piece_first = n = 0
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read input file {str(path)!r}: {exc}") from None
    with fh:
        for line in fh:
            if fmt == "jsonl":
                row_id = _jsonl_id(line, n, path, text_column, id_column)
                kind = "int64" if isinstance(row_id, int) else "string"
                if with_ids is None:
                    with_ids, id_type = row_id is not None, kind
                elif (row_id is not None) != with_ids or (with_ids and kind != id_type):
                    raise InputError(
                        f"{str(path)!r} line {n + 1}: id {row_id!r} does not match the lines before it: "
                        f"every line needs an {id_column!r} of one type (integer or string), or none does")
                if with_ids:
                    ids.append(row_id)
            offset += len(line)
            n += 1
            if n - piece_first == rows_per_piece:
                pieces.append(Piece(str(path), fmt, piece_first, n - piece_first, start, offset))
                start, piece_first = offset, n
    if n > piece_first:
        pieces.append(Piece(str(path), fmt, piece_first, n - piece_first, start, offset))
    if with_ids:
        checksum = id_checksum(np.array(ids, dtype=np.int64) if id_type == "int64" else ids)
        used = id_column
    else:
        checksum, used, id_type = _range_checksum(0, n), None, "int64"
    return InputPlan(str(path), fmt, text_column, used, id_type, n, checksum, tuple(pieces))


def _jsonl_id(line: bytes, n: int, path: Path, text_column: str, id_column: str):
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise InputError(f"{str(path)!r} line {n + 1} is not valid JSON ({exc}): {line[:80]!r}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{str(path)!r} line {n + 1} is not a JSON object: {line[:80]!r}; each line "
                         f"must look like {{\"{id_column}\": 7, \"{text_column}\": \"...\"}}")
    row_id = obj.get(id_column)
    if row_id is None and id_column not in obj:
        return None
    if isinstance(row_id, bool) or not isinstance(row_id, (int, str)) or (
            isinstance(row_id, int) and not -2**63 <= row_id < 2**63):
        raise InputError(f"{str(path)!r} line {n + 1}: {id_column!r} must be an integer or a string, "
                         f"got {row_id!r:.80}")
    return row_id


def _parquet_files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if not files:
        raise InputError(f"input folder {str(path)!r} holds no .parquet files")
    return files


def _scan_parquet(path: Path, text_column: str, id_column: str, rows_per_piece: int) -> InputPlan:
    pa = _pyarrow()
    pieces, checksum, n, id_type, used = [], 0, 0, None, None
    for file in _parquet_files(path):
        try:
            pf = pa.parquet.ParquetFile(file)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"cannot read Parquet file {str(file)!r}: {exc}") from None
        schema = pf.schema_arrow
        if text_column not in schema.names:
            raise InputError(f"Parquet file {str(file)!r} has no column {text_column!r} (columns: "
                             f"{schema.names}); name the text column with --text-column")
        has_id = id_column in schema.names
        if has_id:
            t = schema.field(id_column).type
            kind = ("int64" if pa.types.is_integer(t) else
                    "string" if pa.types.is_string(t) or pa.types.is_large_string(t) else None)
            if kind is None:
                raise InputError(f"Parquet column {id_column!r} in {str(file)!r} has type {t}; ids must "
                                 "be integers or strings")
        else:
            kind = "int64"
        if used is not None and (has_id != (used == id_column) or kind != id_type):
            raise InputError(f"Parquet file {str(file)!r} differs from the files before it in its "
                             f"{id_column!r} column: every file needs one of the same type, or none does")
        used, id_type = (id_column if has_id else ""), kind
        for g in range(pf.num_row_groups):
            rows = pf.metadata.row_group(g).num_rows
            if has_id:
                col = pf.read_row_group(g, columns=[id_column]).column(0)
                if col.null_count:
                    raise InputError(f"Parquet column {id_column!r} in {str(file)!r} has null ids")
                values = col.to_numpy() if kind == "int64" else col.to_pylist()
                checksum = (checksum + id_checksum(values)) & _MASK64
            else:
                checksum = (checksum + _range_checksum(n, n + rows)) & _MASK64
            for lo in range(0, rows, rows_per_piece):
                hi = min(rows, lo + rows_per_piece)
                pieces.append(Piece(str(file), "parquet", n + lo, hi - lo, lo, hi, g))
            n += rows
    return InputPlan(str(path), "parquet", text_column, used or None, id_type or "int64", n, checksum,
                     tuple(pieces))


# --- reading a piece --------------------------------------------------------------------------


def read_piece(piece: Piece, text_column: str = "text", id_column: str | None = None):
    """The rows of one piece: (ids, texts, errors), texts[i] None where errors[i] says why."""
    if piece.format == "parquet":
        pa = _pyarrow()
        cols = [text_column] + ([id_column] if id_column else [])
        table = pa.parquet.ParquetFile(piece.path).read_row_group(piece.group, columns=cols)
        table = table.slice(piece.start, piece.stop - piece.start)
        values = table.column(text_column).to_pylist()
        ids = (table.column(id_column).to_pylist() if id_column else
               list(range(piece.first_row, piece.first_row + piece.rows)))
    else:
        with open(piece.path, "rb") as fh:
            fh.seek(piece.start)
            data = fh.read(piece.stop - piece.start)
        lines = data.split(b"\n")
        if data.endswith(b"\n"):
            lines.pop()
        ids = list(range(piece.first_row, piece.first_row + len(lines)))
        values = []
        for line in lines:
            if piece.format == "jsonl":
                obj = json.loads(line)
                values.append(obj.get(text_column, _MISSING))
                if id_column:
                    ids[len(values) - 1] = obj[id_column]
            else:
                values.append(line[:-1] if line.endswith(b"\r") else line)
    if len(ids) != piece.rows:
        raise SparseBertError(f"{piece.path!r} changed while the job ran: a piece at row {piece.first_row} "
                              f"now has {len(ids)} rows instead of {piece.rows}")
    texts, errors = [], []
    for value in values:
        text, error = check_text(value, text_column)
        texts.append(text)
        errors.append(error)
    return ids, texts, errors


_MISSING = object()


def check_text(value, text_column: str = "text") -> tuple[str | None, str | None]:
    """(text, None) for a usable text, else (None, the reason)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    if value is _MISSING:
        return None, f"no {text_column!r} field"
    if not isinstance(value, str):
        return None, f"text is a {type(value).__name__}, not a string: {value!r:.60}"
    if not value.strip():
        return None, "empty text"
    return value, None


# --- writing and checking the output ----------------------------------------------------------


def output_schema(dim: int, id_type: str):
    pa = _pyarrow()
    return pa.schema([
        ("id", pa.int64() if id_type == "int64" else pa.string()),
        ("embedding", pa.list_(pa.float32(), dim)),
        ("error", pa.string()),
    ])


def make_table(ids, embeddings: np.ndarray, errors: Sequence, id_type: str):
    """Rows → an Arrow table of the output schema; embeddings (n, H) float32 with rows of bad texts
    ignored (written as null)."""
    pa = _pyarrow()
    n, dim = embeddings.shape
    valid = np.array([e is None for e in errors], dtype=bool)
    flat = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1))
    emb = pa.FixedSizeListArray.from_arrays(flat, dim, mask=pa.array(~valid))
    schema = output_schema(dim, id_type)
    return pa.table([pa.array(ids, type=schema.field("id").type), emb, pa.array(list(errors), pa.string())],
                    schema=schema)


class OutputWriter:
    """Write result tables to `output`: a single file when it ends in .parquet, else a folder of
    shards part-00000.parquet, ... of about `rows_per_shard` rows. A shard is written under a
    temporary name and renamed when complete, so a stopped job never leaves a truncated shard that
    looks finished. Refuses an existing non-empty output unless `overwrite`."""

    def __init__(self, output: str | os.PathLike, *, rows_per_shard: int = 100_000, overwrite: bool = False):
        self.output = Path(output)
        self.single = self.output.suffix.lower() == ".parquet"
        exists = self.output.exists() and (not self.output.is_dir() or any(self.output.iterdir()))
        if exists and not overwrite:
            raise InputError(f"output {str(self.output)!r} already exists; pass --overwrite to replace it")
        if exists:
            shutil.rmtree(self.output) if self.output.is_dir() else self.output.unlink()
        if not self.single:
            self.output.mkdir(parents=True, exist_ok=True)
        else:
            self.output.parent.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard = rows_per_shard
        self.files: list[Path] = []
        self._writer = None
        self._rows_in_shard = 0
        self._tmp = None

    def write(self, table) -> None:
        pa = _pyarrow()
        if self._writer is not None and not self.single and self._rows_in_shard >= self.rows_per_shard:
            self._finish_shard()
        if self._writer is None:
            final = self.output if self.single else self.output / f"part-{len(self.files):05d}.parquet"
            self._tmp = final.with_name(final.name + ".partial")
            self.files.append(final)
            self._writer = pa.parquet.ParquetWriter(self._tmp, table.schema)
            self._rows_in_shard = 0
        self._writer.write_table(table)
        self._rows_in_shard += table.num_rows

    def _finish_shard(self) -> None:
        self._writer.close()
        os.replace(self._tmp, self.files[-1])
        self._writer = None

    def close(self) -> list[Path]:
        if self._writer is not None:
            self._finish_shard()
        return self.files


def output_files(output: str | os.PathLike) -> list[Path]:
    output = Path(output)
    return [output] if output.is_file() else sorted(output.glob("part-*.parquet"))


def verify_output(output: str | os.PathLike, plan: InputPlan) -> dict:
    """Re-read the id column of everything written; raise unless it holds exactly the input's ids."""
    pa = _pyarrow()
    count, checksum, bad = 0, 0, 0
    for file in output_files(output):
        table = pa.parquet.read_table(file, columns=["id", "error"])
        ids = table.column("id")
        values = ids.to_numpy() if plan.id_type == "int64" else ids.to_pylist()
        count += len(values)
        checksum = (checksum + id_checksum(values)) & _MASK64
        bad += table.num_rows - table.column("error").null_count
    if count != plan.count or checksum != plan.checksum:
        raise SparseBertError(
            f"output {str(output)!r} does not hold every input id exactly once: {count} rows for "
            f"{plan.count} inputs, id checksum {checksum:#018x} vs {plan.checksum:#018x}; rows were lost "
            "or duplicated, do not use this output")
    return {"rows": count, "bad_rows": bad, "id_checksum": f"{checksum:#018x}"}


def read_output(output: str | os.PathLike):
    """(ids, embeddings (N, H) float32 with NaN rows for bad texts, errors) of a written output,
    sorted by id: for tests and for joining back to the input."""
    pa = _pyarrow()
    tables = [pa.parquet.read_table(f) for f in output_files(output)]
    table = pa.concat_tables(tables).sort_by("id")
    emb_col = table.column("embedding").combine_chunks()
    dim = emb_col.type.list_size
    flat = emb_col.flatten().to_numpy(zero_copy_only=False)
    emb = np.full((table.num_rows, dim), np.nan, dtype=np.float32)
    valid = ~emb_col.is_null().to_numpy(zero_copy_only=False)
    # flatten() drops the slots of null lists in current pyarrow; older versions keep them
    emb[valid] = flat.reshape(-1, dim)[valid] if len(flat) == len(valid) * dim else flat.reshape(-1, dim)
    return table.column("id").to_pylist(), emb, table.column("error").to_pylist()


def iter_pieces_rows(plan: InputPlan) -> Iterator[tuple]:
    """(ids, texts, errors) per piece, in input order: the local reading loop."""
    for piece in plan.pieces:
        yield read_piece(piece, plan.text_column, plan.id_column)


# --- rows -> output table: what the local job and the Ray actors both run on each piece ---------


def embed_rows(model, ids: Sequence, texts: Sequence, errors: Sequence, id_type: str, *,
               batch_size: int = 32, normalize: bool = True, pooling: str = "mean"):
    """Rows with their text checks → an output table (id, embedding, error). Rows whose `errors`
    entry is set are passed through with a null embedding. Should the model refuse a whole batch
    (InputError from some text), each row is retried alone so only the culprit is marked bad."""
    errors = list(errors)
    emb = np.zeros((len(ids), model.config.hidden_size), dtype=np.float32)
    good = [i for i, e in enumerate(errors) if e is None]
    if good:
        try:
            emb[good] = model.encode([texts[i] for i in good], batch_size=batch_size,
                                     normalize=normalize, pooling=pooling, chunk_size=len(good))
        except SparseBertError:
            for i in good:
                try:
                    emb[i] = model.encode([texts[i]], normalize=normalize, pooling=pooling)[0]
                except SparseBertError as exc:
                    errors[i] = f"{type(exc).__name__}: {str(exc)[:200]}"
    return make_table(ids, emb, errors, id_type)


def check_texts(values: Sequence, text_column: str = "text") -> tuple[list, list]:
    checked = [check_text(v, text_column) for v in values]
    return [t for t, _ in checked], [e for _, e in checked]
