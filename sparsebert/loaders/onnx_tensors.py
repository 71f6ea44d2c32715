"""ONNX file parsing and tensor decoding for the ONNX readers (stage one of `onnx_reader`).

`_parse_model` decodes the protobuf with a clear error for damaged files; `_tensor_to_array` turns
an initializer or Constant tensor into a NumPy array, reading external data (`.onnx.data`) with
every location checked to stay inside the model's folder; `_as_float32` widens fp16/bf16 weights
exactly and refuses lossy conversions. Left out: any interpretation of what the tensors mean.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CheckpointError


def _parse_model(path: str):
    import onnx

    if not os.path.isfile(path):
        raise CheckpointError(
            f"ONNX file {path!r} does not exist or is not a file; pass the path of the .onnx file"
        )
    with open(path, "rb") as fh:
        data = fh.read()
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - only protobuf decoding happens here; chained below
        raise CheckpointError(
            f"{path!r} is not a readable ONNX model (protobuf decoding failed: {exc}); the file is "
            f"truncated or not ONNX: re-export or re-download it"
        ) from exc
    if len(model.graph.node) == 0:
        raise CheckpointError(
            f"{path!r} holds no ONNX graph nodes ({len(data)} bytes); it is not an ONNX model or is "
            f"truncated: re-export or re-download it"
        )
    return model


def _external_bytes(tensor, base_dir: str, model_path: str) -> bytes:
    """Read an external-data tensor's bytes, refusing locations outside the model's folder."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    if not location:
        raise CheckpointError(
            f"tensor {tensor.name!r} in {model_path!r} is marked as external data but names no "
            f"file; re-export the model"
        )
    if os.path.isabs(location) or os.path.splitdrive(location)[0]:
        raise CheckpointError(
            f"tensor {tensor.name!r} in {model_path!r} points to the absolute path {location!r}; "
            f"external data must be a relative path inside the model's folder: move the data file "
            f"next to the .onnx file and re-save with a relative location"
        )
    root = os.path.realpath(base_dir)
    target = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, target]) != root:
        raise CheckpointError(
            f"tensor {tensor.name!r} in {model_path!r} points to {location!r}, outside the model's "
            f"folder {root!r}; refusing to read it (path traversal). Keep the external data file "
            f"inside the model's folder"
        )
    if not os.path.isfile(target):
        raise CheckpointError(
            f"external data file {location!r} for tensor {tensor.name!r} is missing (looked for "
            f"{target!r}); copy the .onnx.data file that was exported with {model_path!r} next to it"
        )
    try:
        offset = int(info.get("offset", "0") or 0)
        length = int(info["length"]) if info.get("length") else None
    except ValueError as exc:
        raise CheckpointError(
            f"tensor {tensor.name!r} in {model_path!r} has a malformed external data offset/length "
            f"{info!r}; re-export the model"
        ) from exc
    size = os.path.getsize(target)
    if length is None:
        length = size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise CheckpointError(
            f"tensor {tensor.name!r} wants bytes [{offset}, {offset + length}) of {target!r}, which "
            f"holds {size} bytes; the data file is truncated or belongs to another export"
        )
    with open(target, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def _tensor_to_array(tensor, base_dir: str, model_path: str) -> np.ndarray:
    import onnx
    from onnx import numpy_helper

    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        raw = _external_bytes(tensor, base_dir, model_path)
        inline = onnx.TensorProto()
        inline.CopyFrom(tensor)
        del inline.external_data[:]
        inline.data_location = onnx.TensorProto.DEFAULT
        inline.raw_data = raw
        tensor = inline
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as exc:  # noqa: BLE001 - decoding one tensor proto; chained below
        raise CheckpointError(
            f"tensor {tensor.name!r} in {model_path!r} cannot be decoded (dims {list(tensor.dims)}, "
            f"data type {tensor.data_type}): {exc}. The file is truncated or corrupt: re-export it"
        ) from exc
    return array


def _as_float32(array: np.ndarray, what: str) -> np.ndarray:
    """float32 copy of a weight; float16 / bfloat16 widen exactly, float64 only if lossless."""
    name = str(array.dtype)
    if array.dtype == np.float32:
        return np.array(array, dtype=np.float32, order="C", copy=True)
    if name in ("float16", "bfloat16"):
        return np.ascontiguousarray(array.astype(np.float32))
    if array.dtype == np.float64:
        narrowed = array.astype(np.float32)
        if np.array_equal(narrowed.astype(np.float64), array, equal_nan=True):
            return np.ascontiguousarray(narrowed)
        raise CheckpointError(
            f"{what} is float64 with values float32 cannot hold exactly; export the model in "
            f"float32 (model.float() before torch.onnx.export)"
        )
    raise CheckpointError(
        f"{what} has dtype {name}, which cannot be converted to float32 weights without "
        f"dequantization; export the model in float32"
    )
