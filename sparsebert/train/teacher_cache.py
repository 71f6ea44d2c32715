"""The teacher's outputs computed once and read back: `[distillation] cache_teacher = true`.

Distillation runs the dense teacher on every batch of every step: about a quarter of a step's time
(`benchmarks/train_step_profile.py`), spent again on each epoch and each run over the same data. Its
outputs depend only on the teacher's weights, the token ids of the texts and the precision, so they are
computed once over the training texts (in batches of 64 sorted by length, so little padding), written
to disk and read back for each batch: every hidden state (embedding output and each layer's output) of
every token as float16 and, for classification teachers, the logits as float32. Size: tokens x
(layers + 1) x hidden x 2 bytes: 15.7 GB for the 194k training sentences (2.93M tokens) and
all-MiniLM-L6-v2.

Folder `<root>/<key>/`: meta.json, offsets.npy (int64, n + 1: text i owns token rows
offsets[i]:offsets[i + 1]), hidden.f16 (tokens, layers + 1, hidden), logits.f32 (n, labels). The key
is a hash of the format version, the teacher's tensors, every text's token ids, max_length and
precision, so a change in any of them gives a new folder. Default root: `teacher-outputs` under
sparsebert's cache folder (`$SPARSEBERT_CACHE_DIR`, see `tuning.cache_dir`), or `--teacher-cache`.

Building is resumable: batches are written in a fixed order and meta.json records how many are done
(atomically, every 30 s and when the build stops for any reason), so an interrupted build continues
where it stopped and ends bitwise equal to an uninterrupted one. A folder that fails its checks (meta,
offsets against the token counts, file sizes) is rebuilt with a warning, never read.

Left out: attention probabilities (B x heads x T x T per layer; recipes with attention_weight > 0
run the teacher), sharing one cache between runs at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ConfigError
from . import distill

VERSION = 1
_BUILD_BATCH = 64
_FLUSH_SECONDS = 30.0


@dataclasses.dataclass
class CachedOutputs:
    """What `_loss` reads from a teacher's output, for one padded batch (float32 torch tensors)."""
    hidden_states: tuple
    logits: object = None

    @property
    def last_hidden_state(self):
        return self.hidden_states[-1]


class TeacherCache:
    """A complete, checked cache folder, read with memory maps."""

    def __init__(self, folder: Path, meta: dict, offsets: np.ndarray):
        self.folder = folder
        self.offsets = offsets
        self.layers, self.hidden, self.labels = meta["layers"], meta["hidden"], meta["labels"]
        self._hidden = np.memmap(folder / "hidden.f16", dtype=np.float16, mode="r",
                                 shape=(meta["tokens"], self.layers, self.hidden))
        self._logits = (np.memmap(folder / "logits.f32", dtype=np.float32, mode="r",
                                  shape=(len(offsets) - 1, self.labels)) if self.labels else None)

    def outputs(self, rows, attention_mask) -> CachedOutputs:
        """The teacher's outputs for texts `rows`, padded like `attention_mask` (B, T) (zeros past
        each text's end, where every loss masks them out)."""
        import torch

        mask = attention_mask.numpy() if hasattr(attention_mask, "numpy") else np.asarray(attention_mask)
        rows = np.asarray(rows)
        B, T = mask.shape
        start, end = self.offsets[rows], self.offsets[rows + 1]
        if not np.array_equal(end - start, mask.sum(1)):
            raise CheckpointError(f"teacher cache {str(self.folder)!r} holds other token counts than this "
                                  f"batch (the tokenizer changed?); delete the folder to rebuild it")
        buf = np.zeros((self.layers, B, T, self.hidden), np.float32)
        for j, (a, b) in enumerate(zip(start, end)):
            buf[:, j, :b - a] = self._hidden[a:b].transpose(1, 0, 2)
        states = torch.from_numpy(buf).unbind(0)
        logits = torch.from_numpy(np.array(self._logits[rows])) if self._logits is not None else None
        return CachedOutputs(states, logits)


def default_root() -> Path:
    from ..tuning import cache_dir

    return cache_dir() / "teacher-outputs"


def open_or_build(teacher, texts: list[str], tokenizer, *, precision: str, root: str | Path | None = None,
                  progress: bool = True) -> tuple[TeacherCache, dict]:
    """The cache of `teacher` (a transformers BERT in eval mode) over `texts`, built first if missing,
    incomplete or failing its checks. Returns it and {folder, bytes, build_seconds, reused}."""
    import torch

    root = Path(root) if root is not None else default_root()
    lengths, ids_hash = _token_counts(texts, tokenizer)
    h = hashlib.sha256(f"{VERSION} {tokenizer.max_length} {precision} {ids_hash}".encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    folder = root / h.hexdigest()[:24]
    cfg = teacher.config
    labels = int(cfg.num_labels) if hasattr(teacher, "classifier") else 0
    shape = {"texts": len(texts), "tokens": int(lengths.sum()), "layers": cfg.num_hidden_layers + 1,
             "hidden": cfg.hidden_size, "labels": labels}
    meta = _read_meta(folder, shape)
    cache = _checked(folder, meta, lengths) if meta is not None and meta.get("complete") else None
    if cache is not None:
        return cache, _info(folder, meta, reused=True)
    meta = _build(folder, teacher, texts, tokenizer, lengths, shape, precision, progress)
    cache = _checked(folder, meta, lengths)
    if cache is None:
        raise CheckpointError(f"teacher cache {str(folder)!r} fails its checks right after it was built; "
                              f"is the disk full or shared with another run?")
    return cache, _info(folder, meta, reused=False)


def _info(folder: Path, meta: dict, reused: bool) -> dict:
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return {"folder": str(folder), "bytes": size, "build_seconds": meta["build_seconds"], "reused": reused}


def _token_counts(texts, tokenizer) -> tuple[np.ndarray, str]:
    """Tokens per text (after truncation) and a hash of every text's token ids, in order."""
    h = hashlib.sha256()
    lengths = []
    for at in range(0, len(texts), 4096):
        encodings = tokenizer.encode(texts[at:at + 4096])
        for e in encodings:
            ids = np.asarray(e.ids, np.int64)
            h.update(len(ids).to_bytes(4, "little"))
            h.update(ids.tobytes())
            lengths.append(len(ids))
    return np.asarray(lengths, np.int64), h.hexdigest()


def _read_meta(folder: Path, shape: dict) -> dict | None:
    """meta.json if it describes this cache, else None (missing: quietly; otherwise with a warning
    and the folder removed, so the build starts clean)."""
    path = folder / "meta.json"
    if not path.is_file():
        if folder.exists():
            shutil.rmtree(folder)
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(meta, dict) and meta.get("version") == VERSION and all(
            meta.get(k) == v for k, v in shape.items()) and isinstance(meta.get("done"), int)
    except (OSError, ValueError):
        ok = False
    if ok:
        return meta
    warnings.warn(f"teacher cache {str(folder)!r}: meta.json is unreadable or describes another cache; "
                  f"rebuilding it", RuntimeWarning, stacklevel=3)
    shutil.rmtree(folder)
    return None


def _checked(folder: Path, meta: dict, lengths: np.ndarray) -> TeacherCache | None:
    """The cache, if its offsets and file sizes agree with meta and the token counts; else None after
    a warning, with the folder removed."""
    why = None
    try:
        offsets = np.load(folder / "offsets.npy", allow_pickle=False)
        want = np.concatenate([[0], np.cumsum(lengths)])
        if offsets.dtype != np.int64 or not np.array_equal(offsets, want):
            why = "offsets.npy does not match the texts' token counts"
        for name, size in _file_sizes(meta).items():
            if why is None and (folder / name).stat().st_size != size:
                why = f"{name} is {(folder / name).stat().st_size} bytes, not {size}"
    except (OSError, ValueError) as exc:
        why = f"cannot read it: {exc}"
    if why is None:
        return TeacherCache(folder, meta, offsets)
    warnings.warn(f"teacher cache {str(folder)!r}: {why}; rebuilding it", RuntimeWarning, stacklevel=3)
    shutil.rmtree(folder, ignore_errors=True)
    return None


def _file_sizes(shape: dict) -> dict:
    sizes = {"hidden.f16": shape["tokens"] * shape["layers"] * shape["hidden"] * 2}
    if shape["labels"]:
        sizes["logits.f32"] = shape["texts"] * shape["labels"] * 4
    return sizes


def _build(folder, teacher, texts, tokenizer, lengths, shape, precision, progress) -> dict:
    import torch

    meta = _read_meta(folder, shape)
    if meta is None:
        need = sum(_file_sizes(shape).values())
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if need + (1 << 30) > free:
            shutil.rmtree(folder)
            raise ConfigError(f"the teacher cache needs {need / 2**30:.1f} GiB and {str(folder.parent)!r} "
                              f"has {free / 2**30:.1f} GiB free; point SPARSEBERT_CACHE_DIR (or "
                              f"--teacher-cache) at a disk with room, or set [distillation] cache_teacher "
                              f"= false")
        for name, size in _file_sizes(shape).items():
            with open(folder / name, "wb") as f:
                f.truncate(size)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        np.save(folder / "offsets.npy", offsets, allow_pickle=False)
        meta = {"version": VERSION, **shape, "precision": precision, "done": 0, "complete": False,
                "build_seconds": 0.0}
        _write_meta(folder, meta)
    offsets = np.load(folder / "offsets.npy", allow_pickle=False)
    order = np.argsort(lengths, kind="stable")
    batches = [order[i:i + _BUILD_BATCH] for i in range(0, len(order), _BUILD_BATCH)]
    hidden = np.memmap(folder / "hidden.f16", dtype=np.float16, mode="r+",
                       shape=(shape["tokens"], shape["layers"], shape["hidden"]))
    logits = (np.memmap(folder / "logits.f32", dtype=np.float32, mode="r+",
                        shape=(shape["texts"], shape["labels"])) if shape["labels"] else None)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(batches), initial=meta["done"], unit="batch", desc="teacher cache",
                   dynamic_ncols=True)
    started = last = time.perf_counter()
    spent = meta["build_seconds"]

    def save(done):
        hidden.flush()
        if logits is not None:
            logits.flush()
        meta.update(done=done, build_seconds=round(spent + time.perf_counter() - started, 1))
        _write_meta(folder, meta)

    done = meta["done"]
    try:
        for done in range(meta["done"], len(batches)):
            rows = batches[done]
            inputs = distill.model_inputs(tokenizer([texts[i] for i in rows]))
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = teacher(**inputs, output_hidden_states=True)
            states = torch.stack([s.float() for s in out.hidden_states], 2).numpy()  # (B, T, layers, H)
            half = states.astype(np.float16)
            if not np.isfinite(half).all():
                raise ConfigError("the teacher's hidden states exceed the float16 range of the cache; set "
                                  "[distillation] cache_teacher = false")
            for j, i in enumerate(rows):
                hidden[offsets[i]:offsets[i + 1]] = half[j, :lengths[i]]
            if logits is not None:
                logits[rows] = out.logits.float().numpy()
            if bar is not None:
                bar.update(1)
            if time.perf_counter() - last >= _FLUSH_SECONDS:
                save(done + 1)
                last = time.perf_counter()
        done = len(batches)
        meta["complete"] = True
    finally:
        save(done)  # an exception mid-batch leaves `done` at that batch: it is computed again
        if bar is not None:
            bar.close()
    return meta


def _write_meta(folder: Path, meta: dict) -> None:
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / "meta.json")
