"""`pytorch_model.bin` support, strictly through `torch.load(weights_only=True)`.

Those files are pickles, and unpickling runs arbitrary code: sparsebert never unpickles anything
itself. With torch installed, torch's restricted weights-only unpickler reads plain tensors and refuses
anything else; without torch, the user is told how to convert to safetensors.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import CheckpointError, MissingDependencyError


def read_torch_bin(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = os.fspath(path)
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(
            f"{path!r} is a PyTorch pickle; sparsebert reads it only through torch's weights-only "
            "loader. Either `pip install torch` (CPU build), or convert it once where torch is "
            "installed: `transformers.AutoModel.from_pretrained(DIR).save_pretrained(DIR, "
            "safe_serialization=True)` writes model.safetensors"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for hostile or broken pickles
        raise CheckpointError(
            f"torch could not load {path!r} as plain tensors (weights_only=True): "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path!r} holds a {type(state).__name__}, not a dict of tensors")
    out = {}
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path!r}: entry {name!r} is not a named tensor")
        value = value.detach()
        if value.is_floating_point():
            value = value.to(torch.float32)
        out[name] = value.contiguous().numpy()
    return out
