"""The teacher's outputs computed once and read back: `[distillation] cache_teacher = true`.

Distillation runs the dense teacher on every batch of every step: about a quarter of a step's time
(`benchmarks/train_step_profile.py`), spent again on each epoch and each run over the same data. Its
outputs depend only on the teacher (weights and config), the token ids of the texts and the precision,
so they are computed once over the training texts (in batches of 64 sorted by length, so little
padding), written to disk and read back for each batch. Only what the recipe's losses read is kept:
every hidden state (embedding output and each layer's output, for the hidden-state loss), else the last
one (the pooled embedding loss), as float16 per token; for classification teachers the logits as
float32. Shapes: B texts in a batch, T tokens (the batch's longest text), H hidden size, S stored
hidden states. Size: tokens x S x H x 2 bytes: 15.7 GB with S = 7 for the 194k training sentences
(2.93M tokens) and all-MiniLM-L6-v2. The outputs are the recipe's precision (bf16 autocast or fp32)
for every step, also the fake-quantized steps that would otherwise run the teacher in fp32.

Folder `<root>/<key>/`: meta.json, offsets.npy (int64, n + 1: text i owns token rows
offsets[i]:offsets[i + 1]), hidden.f16 (tokens, S, H), logits.f32 (n, labels). The key is a hash of
the format version, the teacher's config and tensors, the torch and transformers versions, every
text's token ids, max_length, precision and which outputs are kept: a change in any of them gives a
new folder. Default root: `teacher-outputs` under sparsebert's cache folder ($SPARSEBERT_CACHE_DIR,
see `tuning.cache_dir`), or `sparsify --teacher-cache DIR`. A lock file beside the folder keeps two
runs from building or checking the same cache at once.

Building is resumable: batches are written in a fixed order and meta.json records how many are done
(atomically, every 30 s, on Ctrl-C / SIGTERM and when the build stops for any other reason), so an
interrupted build continues where it stopped and ends bitwise equal to an uninterrupted one. The files
get their disk blocks up front, so a full disk is an error before the build, not a crash in it. A
folder that fails its checks (meta, offsets against the token counts, file sizes) is rebuilt with a
warning, never read.

Left out: attention probabilities (B x heads x T x T per layer; recipes with attention_weight > 0
run the teacher).
"""

from __future__ import annotations

import dataclasses
import fcntl
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

VERSION = 2
KEEP = ("all", "last", "none")  # hidden states stored: every one, the last one, none (logits only)
_BUILD_BATCH = 64
_FLUSH_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class CachedOutputs:
    """What the losses read from a teacher's output, for one padded batch: float32 torch tensors,
    hidden_states S x (B, T, H) (zeros past each text's end), logits (B, labels) or None."""
    hidden_states: tuple
    logits: object | None = None

    @property
    def last_hidden_state(self):
        return self.hidden_states[-1]


class TeacherCache:
    """A complete, checked cache folder, read with memory maps."""

    def __init__(self, folder: Path, meta: dict, offsets: np.ndarray):
        self.folder = folder
        self.offsets = offsets
        self.stored, self.hidden, self.labels = meta["stored"], meta["hidden"], meta["labels"]
        self._hidden = (np.memmap(folder / "hidden.f16", dtype=np.float16, mode="r",
                                  shape=(meta["tokens"], self.stored, self.hidden)) if self.stored else None)
        self._logits = (np.memmap(folder / "logits.f32", dtype=np.float32, mode="r",
                                  shape=(len(offsets) - 1, self.labels)) if self.labels else None)

    def outputs(self, rows, attention_mask) -> CachedOutputs:
        """The teacher's outputs for texts `rows`, padded like `attention_mask` (B, T)."""
        import torch

        mask = attention_mask.numpy() if hasattr(attention_mask, "numpy") else np.asarray(attention_mask)
        rows = np.asarray(rows)
        B, T = mask.shape
        start, end = self.offsets[rows], self.offsets[rows + 1]
        if not np.array_equal(end - start, mask.sum(1)):
            raise CheckpointError(f"teacher cache {str(self.folder)!r} holds {(end - start).tolist()} tokens "
                                  f"for texts {rows.tolist()}, the batch {mask.sum(1).tolist()} (the "
                                  f"tokenizer changed?); delete the folder to rebuild it")
        states = ()
        if self._hidden is not None:
            buf = np.zeros((self.stored, B, T, self.hidden), np.float32)  # (S, B, T, H)
            for j, (a, b) in enumerate(zip(start, end)):
                buf[:, j, :b - a] = self._hidden[a:b].transpose(1, 0, 2)
            states = torch.from_numpy(buf).unbind(0)
        logits = torch.from_numpy(np.array(self._logits[rows])) if self._logits is not None else None
        return CachedOutputs(states, logits)


def default_root() -> Path:
    from ..tuning import cache_dir

    return cache_dir() / "teacher-outputs"


def open_or_build(teacher, texts: list[str], tokenizer, *, precision: str, keep: str = "all",
                  root: str | Path | None = None, owner: str | None = None, progress: bool = True,
                  should_stop=None) -> tuple[TeacherCache, dict]:
    """The cache of `teacher` (a transformers BERT in eval mode) over `texts`, built first if missing,
    incomplete or failing its checks. keep: which hidden states to store (KEEP). owner: who asks (the
    run's output folder): `reused` in the returned info says whether another owner built it.
    should_stop: polled between batches; when true, the build saves its progress and raises
    KeyboardInterrupt. Returns the cache and {folder, bytes, build_seconds, reused}."""
    import torch
    import transformers

    if keep not in KEEP:
        raise ValueError(f"keep = {keep!r}: expected one of {list(KEEP)}")
    root = Path(root) if root is not None else default_root()
    lengths, ids_hash = _token_counts(texts, tokenizer)
    cfg = teacher.config
    h = hashlib.sha256(f"{VERSION} {tokenizer.max_length} {precision} {keep} {ids_hash} {torch.__version__} "
                       f"{transformers.__version__} {cfg.to_json_string(use_diff=False)}".encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
        h.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    folder = root / h.hexdigest()[:24]
    labels = int(cfg.num_labels) if hasattr(teacher, "classifier") else 0
    stored = {"all": cfg.num_hidden_layers + 1, "last": 1, "none": 0}[keep]
    if not stored and not labels:
        raise ValueError("keep = \"none\" stores nothing for a teacher without a classifier head")
    shape = {"texts": len(texts), "tokens": int(lengths.sum()), "stored": stored, "hidden": cfg.hidden_size,
             "labels": labels, "build_batch": _BUILD_BATCH}
    offsets = _offsets(lengths)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        meta = _read_meta(folder, shape)
        why = _problem(folder, meta, offsets) if meta is not None else None
        if why is not None:
            _discard(folder, why)
            meta = None
        elif meta is not None and meta["complete"]:
            return TeacherCache(folder, meta, offsets), _info(folder, meta, owner, built=False)
        meta = _build(folder, meta, teacher, texts, tokenizer, lengths, offsets, shape, precision, owner,
                      progress, should_stop)
        why = _problem(folder, meta, offsets)
        if why is not None:
            raise CheckpointError(f"teacher cache {str(folder)!r} fails its checks right after it was "
                                  f"built ({why}); is its disk failing?")
        return TeacherCache(folder, meta, offsets), _info(folder, meta, owner, built=True)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    """Token row offsets (int64, n + 1): text i owns rows offsets[i]:offsets[i + 1]."""
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _info(folder: Path, meta: dict, owner, built: bool) -> dict:
    """reused: another call built the cache (a run resumed by its `owner` did not reuse its own)."""
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return {"folder": str(folder), "bytes": size, "build_seconds": meta["build_seconds"],
            "reused": not built and (owner is None or meta.get("owner") != owner)}


def _token_counts(texts, tokenizer) -> tuple[np.ndarray, str]:
    """Tokens per text (after truncation) and a hash of every text's token ids, in order."""
    h = hashlib.sha256()
    lengths = []
    for at in range(0, len(texts), 4096):
        for e in tokenizer.encode(texts[at:at + 4096]):
            ids = np.asarray(e.ids, np.int64)
            h.update(len(ids).to_bytes(4, "little"))
            h.update(ids.tobytes())
            lengths.append(len(ids))
    return np.asarray(lengths, np.int64), h.hexdigest()


def _discard(folder: Path, why: str) -> None:
    warnings.warn(f"teacher cache {str(folder)!r}: {why}; rebuilding it", RuntimeWarning, stacklevel=4)
    shutil.rmtree(folder, ignore_errors=True)


def _read_meta(folder: Path, shape: dict) -> dict | None:
    """meta.json if it describes this cache, else None: quietly when the folder holds none (a build
    that stopped before writing it), otherwise after a warning; either way the folder is removed."""
    path = folder / "meta.json"
    if not path.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _discard(folder, f"meta.json is unreadable ({exc})")
        return None
    n_batches = -(-shape["texts"] // shape["build_batch"])
    if not (isinstance(meta, dict) and meta.get("version") == VERSION
            and all(meta.get(k) == v for k, v in shape.items())
            and isinstance(meta.get("done"), int) and 0 <= meta["done"] <= n_batches
            and meta.get("complete") in (True, False) and meta["complete"] == (meta["done"] == n_batches)):
        _discard(folder, f"meta.json describes another cache ({meta!r:.300}, expected {shape})")
        return None
    return meta


def _problem(folder: Path, meta: dict, offsets: np.ndarray) -> str | None:
    """Why the folder's offsets or file sizes disagree with meta and the texts' `offsets`, or None."""
    try:
        stored = np.load(folder / "offsets.npy", allow_pickle=False)
        if stored.dtype != np.int64 or not np.array_equal(stored, offsets):
            return "offsets.npy does not match the texts' token counts"
        for name, size in _file_sizes(meta).items():
            if (folder / name).stat().st_size != size:
                return f"{name} is {(folder / name).stat().st_size} bytes, not {size}"
    except (OSError, ValueError) as exc:
        return f"cannot read it: {exc}"
    return None


def _file_sizes(shape: dict) -> dict:
    sizes = {}
    if shape["stored"]:
        sizes["hidden.f16"] = shape["tokens"] * shape["stored"] * shape["hidden"] * 2
    if shape["labels"]:
        sizes["logits.f32"] = shape["texts"] * shape["labels"] * 4
    return sizes


def _create(folder: Path, offsets: np.ndarray, shape: dict, precision: str, owner) -> dict:
    """An empty cache folder with its files' disk blocks reserved, or ConfigError when they do not fit."""
    folder.mkdir(parents=True)
    for name, size in _file_sizes(shape).items():
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            need = sum(_file_sizes(shape).values())
            raise ConfigError(f"the teacher cache needs {need / 2**30:.1f} GiB in {str(folder.parent)!r} "
                              f"({exc.strerror}); point SPARSEBERT_CACHE_DIR (or --teacher-cache) at a "
                              f"disk with room, or set [distillation] cache_teacher = false") from None
        finally:
            os.close(fd)
    np.save(folder / "offsets.npy", offsets, allow_pickle=False)
    meta = {"version": VERSION, **shape, "precision": precision, "owner": owner, "done": 0,
            "complete": False, "build_seconds": 0.0}
    _write_meta(folder, meta)
    return meta


def _build(folder, meta, teacher, texts, tokenizer, lengths, offsets, shape, precision, owner, progress,
           should_stop) -> dict:
    """Write the batches not yet done into `folder` (created first when `meta` is None: no checked
    unfinished build to resume); returns the final meta."""
    import torch

    if meta is None:
        meta = _create(folder, offsets, shape, precision, owner)
    order = np.argsort(lengths, kind="stable")
    batches = [order[i:i + shape["build_batch"]] for i in range(0, len(order), shape["build_batch"])]
    hidden = None
    if shape["stored"]:
        hidden = np.memmap(folder / "hidden.f16", dtype=np.float16, mode="r+",
                           shape=(shape["tokens"], shape["stored"], shape["hidden"]))
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
        for array in (hidden, logits):
            if array is not None:
                array.flush()
        meta.update(done=done, complete=done == len(batches),
                    build_seconds=round(spent + time.perf_counter() - started, 1))
        _write_meta(folder, meta)

    done = meta["done"]  # batches fully written; an exception inside batch `done` leaves it at that
    try:
        while done < len(batches):
            if should_stop is not None and should_stop():
                raise KeyboardInterrupt(f"stopped while building the teacher cache ({done}/{len(batches)} "
                                        f"batches kept in {str(folder)!r}): run the same command again "
                                        f"to resume")
            rows = batches[done]
            inputs = distill.model_inputs(tokenizer([texts[i] for i in rows]))
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                out = teacher(**inputs, output_hidden_states=hidden is not None)
            if hidden is not None:
                kept = out.hidden_states if shape["stored"] > 1 else out.hidden_states[-1:]
                half = torch.stack([s.float() for s in kept], 2).numpy().astype(np.float16)  # (B, T, S, H)
                if not np.isfinite(half).all():
                    big = max(float(s.float().abs().max()) for s in kept)
                    raise ConfigError(f"the teacher's hidden states reach {big:.3g}, beyond float16 (65504) "
                                      f"of the cache; set [distillation] cache_teacher = false")
                for j, i in enumerate(rows):
                    hidden[offsets[i]:offsets[i + 1]] = half[j, :lengths[i]]
            if logits is not None:
                logits[rows] = out.logits.float().numpy()
            done += 1
            if bar is not None:
                bar.update(1)
            if time.perf_counter() - last >= _FLUSH_SECONDS:
                save(done)
                last = time.perf_counter()
    finally:
        save(done)
        if bar is not None:
            bar.close()
    return meta


def _write_meta(folder: Path, meta: dict) -> None:
    tmp = folder / "meta.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / "meta.json")
