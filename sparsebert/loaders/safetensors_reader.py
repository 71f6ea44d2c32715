"""A strict reader for the safetensors format (header-validated, no pickle, no mmap surprises).

Layout: 8-byte little-endian header length N, N bytes of JSON `{name: {dtype, shape, data_offsets}}`
(plus an optional `__metadata__`), then the data buffer. Every entry is checked before any byte is
interpreted: known dtype, non-negative shape, offsets inside the buffer, byte length equal to
shape x itemsize, no two tensors overlapping. The file is read into memory rather than memory-mapped,
so a file truncated under our feet cannot fault the process.

Floating tensors come back as float32 (BF16 and F16 widened exactly); integer buffers keep their type.
"""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np

from ..errors import CheckpointError

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # widened to float32 below
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 * 1024 * 1024
_MAX_DIMS = 8


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read safetensors file {path!r}: {exc}") from exc
    return parse_safetensors(blob, path)


def parse_safetensors(blob: bytes, where: str = "<bytes>") -> dict[str, np.ndarray]:
    def bad(msg):
        return CheckpointError(
            f"{where} is not a valid safetensors file: {msg}; re-save it with "
            "safetensors.torch.save_file or transformers' save_pretrained"
        )

    if len(blob) < 8:
        raise bad(f"it is {len(blob)} bytes long, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > min(_MAX_HEADER, len(blob) - 8):
        raise bad(f"header length {n} exceeds the file size ({len(blob)} bytes) or 100 MiB")
    try:
        header = json.loads(blob[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise bad(f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data = memoryview(blob)[8 + n :]
    out: dict[str, np.ndarray] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"entry {name!r} is not an object")
        dtype_name = info.get("dtype")
        shape = info.get("shape")
        offsets = info.get("data_offsets")
        if dtype_name not in _DTYPES:
            raise bad(f"tensor {name!r} has unsupported dtype {dtype_name!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)
        ):
            raise bad(f"tensor {name!r} has invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        dtype = _DTYPES[dtype_name]
        count = math.prod(shape)  # exact Python ints: an int64 product can wrap to match
        if not 0 <= begin <= end <= len(data):
            raise bad(
                f"tensor {name!r} spans bytes [{begin}, {end}) outside the data buffer "
                f"of {len(data)} bytes (truncated file?)"
            )
        if end - begin != count * dtype.itemsize:
            raise bad(
                f"tensor {name!r} has {end - begin} bytes but shape {shape} of {dtype_name} "
                f"needs {count * dtype.itemsize}"
            )
        spans.append((begin, end, name))
        arr = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
        if dtype_name == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        out[name] = arr
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0 and b1 != e1:
            raise bad(f"tensors {n0!r} and {n1!r} overlap in the data buffer")
    return out
