"""Crash-isolated execution of fuzz cases against sparsebert, for tests/test_fuzz.py.

A case is a small folder of files (a mutated checkpoint, a pickled call argument) plus a target
name. The parent (pytest) writes the folder and sends its path to a long-lived worker subprocess,
which runs the target and reports one result line per case on a private pipe. The parent waits with
a per-case timeout, so every case ends in exactly one outcome:

- "ok": the target ran and its output passed the sanity checks (shape, dtype, all finite);
- "expected:<Type>": it raised a documented exception, a subclass of `SparseBertError`
  (`ConfigError`, `CheckpointError`, `InputError`, `MissingDependencyError`);
- "unexpected:<Type>": any other exception, or an output that fails the checks ("wrong");
- "crash:<signal or code>": the worker died (segfault, abort, os._exit);
- "timeout": no answer within the time limit (hang or runaway allocation); the worker is killed.

The last three are failures: the case folder is kept under the repro directory, with the worker's
stderr tail and the traceback, so `python tests/fuzzutil.py replay DIR` reproduces it in-process.
Why a subprocess and not `fork`: Numba's GNU OpenMP threading layer is not fork-safe once its pool
has run, and a crash must not take pytest down with it.

Workers are started with `sys.executable` from the repository root; they import sparsebert once and
keep loaded base models in a cache, so a case costs milliseconds, not an import.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAIL_KINDS = ("unexpected", "crash", "timeout")


@dataclasses.dataclass
class Outcome:
    kind: str  # "ok" | "expected" | "unexpected" | "crash" | "timeout"
    detail: str = ""  # exception type name, signal name, ...
    message: str = ""

    @property
    def label(self) -> str:
        return self.kind if not self.detail else f"{self.kind}:{self.detail}"

    @property
    def failed(self) -> bool:
        return self.kind in FAIL_KINDS


class Runner:
    """Parent side: one worker process at a time, restarted after a crash or a timeout."""

    def __init__(self, workdir: str | os.PathLike, timeout: float = 30.0, warmup: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.repro_dir = self.workdir / "repro"
        self.timeout = timeout
        self.warmup = warmup  # a case spec run right after each worker start (compiles kernels)
        self.counts: collections.Counter = collections.Counter()
        self.failures: list[tuple[str, Outcome, Path]] = []
        self.restarts = 0
        self._proc = None
        self._n = 0

    # -- worker lifecycle ----------------------------------------------------------------------

    def _start(self) -> None:
        read_fd, write_fd = os.pipe()
        self._log_path = self.workdir / f"worker-{self.restarts}.log"
        self._log = open(self._log_path, "wb")
        env = dict(os.environ, PYTHONFAULTHANDLER="1")
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "worker", str(write_fd)],
            stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
            pass_fds=(write_fd,), cwd=str(REPO), env=env,
        )
        os.close(write_fd)
        self._results = os.fdopen(read_fd, "rb", buffering=0)
        self._buf = b""
        if self.warmup is not None:
            out = self._send(self.warmup, timeout=max(self.timeout, 300.0))
            if out.kind != "ok":
                raise RuntimeError(f"fuzz worker warm-up failed: {out}; log {self._log_path}")

    def close(self) -> None:
        if self._proc is None:
            return
        try:
            self._proc.stdin.close()
            self._proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._kill()
        self._cleanup()

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _cleanup(self) -> None:
        self._results.close()
        self._log.close()
        self._proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one case ------------------------------------------------------------------------------

    def _send(self, spec: dict, timeout: float) -> Outcome:
        try:
            self._proc.stdin.write((json.dumps(spec) + "\n").encode())
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker is dead; the read below reports how it died
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self._kill()
                self._cleanup()
                return Outcome("timeout", "", f"no result within {timeout:.0f} s")
            ready, _, _ = select.select([self._results], [], [], left)
            if not ready:
                continue
            chunk = self._results.read(65536)
            if not chunk:  # EOF: the worker exited
                code = self._proc.wait()
                self._cleanup()
                name = signal.Signals(-code).name if code < 0 else f"exit{code}"
                return Outcome("crash", name, self._log_tail())
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        r = json.loads(line)
        return Outcome(r["kind"], r.get("detail", ""), r.get("message", ""))

    def _log_tail(self) -> str:
        try:
            return self._log_path.read_bytes()[-3000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def run(self, target: str, files: dict[str, bytes] | None = None, args: dict | None = None,
            name: str = "") -> Outcome:
        """Run one case: write `files` into a fresh folder, run `target` on it in the worker."""
        self._n += 1
        case_dir = self.workdir / "cases" / f"{self._n:06d}"
        case_dir.mkdir(parents=True, exist_ok=True)
        for rel, data in (files or {}).items():
            p = case_dir / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        spec = {"target": target, "path": str(case_dir), "args": args or {}}
        (case_dir / "case.json").write_text(json.dumps({**spec, "name": name}))
        if self._proc is None:
            self._start()
        out = self._send(spec, self.timeout)
        if self._proc is None:
            self.restarts += 1
        self.counts[out.label] += 1
        if out.failed:
            dest = self.repro_dir / f"{self._n:06d}-{out.kind}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(str(case_dir), dest)
            (dest / "outcome.txt").write_text(f"{name}\n{out.label}\n{out.message}\n")
            self.failures.append((name, out, dest))
        else:
            shutil.rmtree(case_dir, ignore_errors=True)
        return out

    def summary(self) -> str:
        items = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        return f"{sum(self.counts.values())} cases: {items}; worker restarts {self.restarts}"

    def failure_report(self, limit: int = 6) -> str:
        """The summary, then one example per distinct failure (outcome + last message line)."""
        lines = [self.summary()]
        seen = {}
        for name, out, dest in self.failures:
            key = (out.label, (out.message.strip().splitlines() or [""])[-1][:120])
            seen.setdefault(key, []).append((name, out, dest))
        for (label, last), group in list(seen.items())[:limit]:
            name, out, dest = group[0]
            lines.append(f"--- {len(group)}x {label}: {last}\n    e.g. {name[:200]} (repro: {dest})\n"
                         f"{out.message[-1200:]}")
        return "\n".join(lines)


# ================================================================================ base models

# A WordPiece vocabulary small enough for a tiny model: specials, letters, a few words and pieces.
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'") + [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "hello", "world", "sparse",
    "bert", "##s", "##ing", "##ed", "##er", "##ly"] + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]


def write_tokenizer(folder: str | os.PathLike) -> None:
    """tokenizer.json + vocab.txt over WORDS (lower-casing BERT WordPiece), into `folder`."""
    from tokenizers.implementations import BertWordPieceTokenizer

    folder = Path(folder)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    tok = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=True)
    tok.save(str(folder / "tokenizer.json"))


def build_models(root: str | os.PathLike, onnx_flavours=("legacy17",)) -> dict[str, str]:
    """Tiny seeded checkpoints for hardening tests; returns {name: path}.

    "dense": hidden 16, 1 layer, 2 heads, FFN 32, 32 positions, tokenizer included.
    "sparse": hidden 32, 2 layers, 80% unstructured zeros (CSR / BSR paths), tokenizer included.
    "onnx-<flavour>": the dense model exported to ONNX (a folder with model.onnx + tokenizer).
    """
    sys.path.insert(0, str(REPO / "models"))
    from export_onnx import export_bert_onnx
    from make_checkpoints import make_random_bert

    root = Path(root)
    vocab = len(WORDS) + 3  # a few ids the tokenizer never emits
    out = {
        "dense": make_random_bert(root / "dense", hidden=16, layers=1, heads=2, intermediate=32,
                                  vocab=vocab, max_position=32, seed=1),
        "sparse": make_random_bert(root / "sparse", hidden=32, layers=2, heads=4, intermediate=64,
                                   vocab=vocab, max_position=48, seed=2, sparsity=0.8),
    }
    for name in ("dense", "sparse"):
        write_tokenizer(out[name])
    for flavour in onnx_flavours:
        folder = root / f"onnx-{flavour}"
        export_bert_onnx(out["dense"], folder / "model.onnx", flavour)
        write_tokenizer(folder)
        out[f"onnx-{flavour}"] = str(folder)
    return out


def folder_files(folder: str | os.PathLike) -> dict[str, bytes]:
    """Every file of a model folder as {relative name: bytes} (the unit a mutation edits)."""
    folder = Path(folder)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ================================================================================ worker side


def _check_finite(arr, shape, what):
    import numpy as np

    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
        raise _Wrong(f"{what} is {type(arr).__name__} {getattr(arr, 'dtype', '')}, not float32")
    if shape is not None and arr.shape != tuple(shape):
        raise _Wrong(f"{what} has shape {arr.shape}, expected {tuple(shape)}")
    if not np.isfinite(arr).all():
        raise _Wrong(f"{what} holds NaN/Inf but no error was raised")


class _Wrong(Exception):
    """A call that returned without error but with a malformed or non-finite result."""


_MODELS: dict = {}


def _model(path, formats="auto"):
    import sparsebert

    key = (path, formats)
    if key not in _MODELS:
        _MODELS[key] = sparsebert.load(path, formats=formats)
    return _MODELS[key]


def _probe(model):
    """Run a small, valid forward pass and encode on a freshly loaded (possibly mutated) model."""
    import numpy as np

    c = model.config
    T = min(7, c.max_position_embeddings)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, c.vocab_size, size=(2, T))
    mask = np.ones((2, T), dtype=np.int64)
    mask[1, T // 2:] = 0
    types = np.zeros((2, T), dtype=np.int64)
    out = model(ids, mask, types)
    _check_finite(out.last_hidden_state, (2, T, c.hidden_size), "last_hidden_state")
    if out.pooler_output is not None:
        _check_finite(out.pooler_output, (2, c.hidden_size), "pooler_output")
    if model.tokenizer is not None:
        emb = model.encode(["hello world", "", "the quick brown fox " * 40])
        _check_finite(emb, (3, c.hidden_size), "encode")


def _target_load(case_dir: Path, args: dict):
    """Load the checkpoint in the case folder (`args['file']` inside it, else the folder itself)."""
    import sparsebert

    path = case_dir / args["file"] if args.get("file") else case_dir
    model = sparsebert.load(path, formats=args.get("formats", "auto"))
    _probe(model)


def _read_pickle(case_dir: Path):
    # Test-harness data written by the parent in this same test run, never a downloaded file.
    with open(case_dir / "input.pkl", "rb") as f:
        return pickle.load(f)


def _target_call(case_dir: Path, args: dict):
    """model(*input) on a cached base model; the output must be finite (B, T, H)."""
    import numpy as np

    model = _model(args["model"], args.get("formats", "auto"))
    call_args, call_kwargs = _read_pickle(case_dir)
    out = model(*call_args, **call_kwargs)
    ids = np.asarray(call_args[0] if call_args else call_kwargs["input_ids"])
    B, T = (1, ids.shape[0]) if ids.ndim == 1 else ids.shape
    _check_finite(out.last_hidden_state, (B, T, model.config.hidden_size), "last_hidden_state")


def _target_encode(case_dir: Path, args: dict):
    model = _model(args["model"], args.get("formats", "auto"))
    texts, kwargs = _read_pickle(case_dir)
    n = len(texts) if isinstance(texts, (list, tuple)) else (1 if isinstance(texts, str) else None)
    emb = model.encode(texts, **kwargs)
    _check_finite(emb, None if n is None else (n, model.config.hidden_size), "encode")


def _target_tokenize(case_dir: Path, args: dict):
    import numpy as np

    model = _model(args["model"])
    texts, pairs = _read_pickle(case_dir)
    batch = model.tokenize(texts, pairs)
    if batch.input_ids.dtype != np.int64 or batch.input_ids.shape[1] > model.tokenizer.max_length:
        raise _Wrong(f"tokenize returned {batch.input_ids.dtype} {batch.input_ids.shape}")


def _target_from_arrays(case_dir: Path, args: dict):
    """Raw CSR/BSR arrays through the validating constructor, then one kernel call, compared with
    numpy's dense product of the same arrays (duplicate indices add up in both)."""
    import numpy as np

    from sparsebert.linear import BSRLinear, CSRLinear

    blocked, a, x = _read_pickle(case_dir)
    lin = (BSRLinear if blocked else CSRLinear).from_arrays(**a)
    y = lin(x)
    N, K = a["shape"]
    data = np.asarray(a["data"], np.float32)
    R, C = (data.shape[1], data.shape[2]) if blocked else (1, 1)
    w = np.zeros((N // R, K // C, R, C), np.float32)
    rows = np.repeat(np.arange(N // R), np.diff(a["indptr"]))
    np.add.at(w, (rows, a["indices"]), data.reshape(-1, R, C))
    w = w.transpose(0, 2, 1, 3).reshape(N, K)
    ref = np.einsum("nk,bks->bns", w.astype(np.float64), x) + a["bias"][None, :, None]
    _check_finite(y, ref.shape, "spmm output")
    if not np.allclose(y, ref, atol=1e-4, rtol=1e-4):
        raise _Wrong(f"spmm differs from the dense product by {np.abs(y - ref).max():.3g}")


TARGETS = {"from_arrays": _target_from_arrays, "load": _target_load, "call": _target_call, "encode": _target_encode,
           "tokenize": _target_tokenize}


def run_case(spec: dict) -> dict:
    """Run one case in this process; classify the result (used by the worker and by replay)."""
    import traceback

    from sparsebert.errors import SparseBertError

    try:
        TARGETS[spec["target"]](Path(spec["path"]), spec.get("args", {}))
    except SparseBertError as exc:
        return {"kind": "expected", "detail": type(exc).__name__, "message": str(exc)[:500]}
    except _Wrong as exc:
        return {"kind": "unexpected", "detail": "wrong", "message": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - classifying is the point
        return {"kind": "unexpected", "detail": type(exc).__name__,
                "message": traceback.format_exc()[-3000:]}
    return {"kind": "ok"}


def _worker(fd: int) -> None:
    out = os.fdopen(fd, "wb", buffering=0)
    import sparsebert  # noqa: F401 - import once, before the first case

    for line in sys.stdin:
        if not line.strip():
            continue
        result = run_case(json.loads(line))
        out.write((json.dumps(result) + "\n").encode())


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        sys.path.insert(0, str(REPO))
        _worker(int(sys.argv[2]))
    elif sys.argv[1] == "replay":  # python tests/fuzzutil.py replay REPRO_DIR
        sys.path.insert(0, str(REPO))
        spec = json.loads((Path(sys.argv[2]) / "case.json").read_text())
        spec["path"] = sys.argv[2]
        print(run_case(spec))
