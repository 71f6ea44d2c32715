"""Run a task pipeline over a text file, streaming: one input per line in, one JSON line out.

The library side of `sparsebert run`. Input lines are read lazily and results written as they
come, so a file of any length runs in the memory of one chunk. Line formats per task are in
`INPUT_FORMATS` (the CLI's --help prints them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import InputError, SparseBertError

INPUT_FORMATS = {
    "text-classification": 'one text per line, or JSON lines {"text": ..., "text_pair": ...} for '
                           "pairs (a line starting with '{' is read as JSON)",
    "token-classification": "one text per line",
    "question-answering": 'JSON lines {"question": ..., "context": ...}',
    "fill-mask": "one text per line, each with at least one [MASK]",
    "sentence-embedding": 'one text per line; output {"embedding": [...]}',
    "feature-extraction": "same as sentence-embedding",
}


def _lines(path: str) -> Iterator[tuple[int, str]]:
    if path == "-":
        for n, line in enumerate(sys.stdin, 1):
            yield n, line.rstrip("\r\n")
        return
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise SparseBertError(f"cannot read input file {path!r}: {exc}") from None
    with fh:
        try:
            for n, line in enumerate(fh, 1):
                yield n, line.rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise InputError(f"input file {path!r} is not UTF-8 text: {exc}") from None


def parse_line(task: str, n: int, line: str):
    """One input line → the pipeline input for `task`; InputError naming the line otherwise."""
    wants_json = task == "question-answering" or (
        task == "text-classification" and line.lstrip().startswith("{"))
    if not wants_json:
        return line
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"input line {n} is not valid JSON ({exc.msg}): {line!r:.80}") from None
    keys = ({"question", "context"} if task == "question-answering" else {"text", "text_pair"})
    required = keys if task == "question-answering" else {"text"}
    if not isinstance(item, dict) or not required <= set(item) or set(item) - keys:
        raise InputError(
            f"input line {n} must be a JSON object with keys {sorted(keys)} for {task}, got "
            f"{line!r:.80}"
        )
    return item


def _jsonable(result):
    if isinstance(result, np.ndarray):
        return {"embedding": result.tolist()}
    return result


def run_file(pipe, input_path: str, output_path: str | None) -> dict | None:
    """Stream `input_path` through `pipe`; write JSON lines to `output_path` (stdout when None).
    Returns a summary dict when writing a file."""
    task = pipe.task
    inputs = (parse_line(task, n, line) for n, line in _lines(input_path))
    if output_path is None:
        _write(pipe, inputs, sys.stdout)
        return None
    out = Path(output_path)
    try:
        fh = open(out, "w", encoding="utf-8")
    except OSError as exc:
        raise SparseBertError(f"cannot write output file {output_path!r}: {exc}") from None
    with fh:
        count = _write(pipe, inputs, fh)
    return {"task": task, "output": str(out), "count": count}


def _write(pipe, inputs, fh) -> int:
    count = 0
    for result in pipe.stream(inputs):
        fh.write(json.dumps(_jsonable(result), ensure_ascii=False) + "\n")
        count += 1
    return count
