"""Training checkpoints: everything a step depends on, as safetensors (tensors) + JSON (the rest).

Written to a temporary folder and renamed over the old one, so a crash while saving leaves the
previous checkpoint whole. Holds the student's state dict, the masks (uint8), the optimiser moments
and param groups, the step, the loss history, the elapsed wall time, notes for train.json (what
the run measured once, e.g. the channel permutation's effect) and the recipe text (a
checkpoint resumes only under the recipe that wrote it). Never pickle.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import ConfigError

def save_checkpoint(ckpt_dir: Path, recipe, student, optim, masks, step, history, elapsed,
                    notes: dict | None = None) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in student.state_dict().items()}
    if masks is not None:
        tensors.update({f"mask.{k}": m.to(dtype=torch.uint8) for k, m in masks.masks.items()})
    opt = optim.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = value.detach().contiguous()
    meta = {"step": step, "recipe": recipe.text, "param_groups": opt["param_groups"],
            "history": history, "elapsed": elapsed, "notes": notes or {}}
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta), encoding="utf-8")
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt_dir.exists():
        os.replace(ckpt_dir, old)
    os.replace(tmp, ckpt_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckpt_dir: Path, recipe, student, optim, masks):
    import torch
    from safetensors.torch import load_file

    meta = json.loads((ckpt_dir / "state.json").read_text(encoding="utf-8"))
    if meta["recipe"] != recipe.text:
        raise ConfigError(f"{str(ckpt_dir)!r} is a checkpoint of a different recipe; resume with the "
                          f"same recipe, or write to a new --output folder")
    tensors = load_file(str(ckpt_dir / "state.safetensors"))
    student.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if masks is not None:
        masks.masks = {k[5:]: v.to(torch.bool) for k, v in tensors.items() if k.startswith("mask.")}
    state = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    optim.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["step"], meta["history"], meta["elapsed"], meta.get("notes", {})
