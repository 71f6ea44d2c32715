"""Cold start on two cores: the kernels every model needs compile in a second process.

On a machine whose Numba cache is empty, most of the first call's time is compilation (MiniLM
90%: 10.8 of 11.9 s on Zen 4, of which the attention kernel 2.6-3.5 s), and Numba compiles one
kernel at a time, on one core, under a global lock. So `start()` (called when an encoder is built)
launches `python -m sparsebert.precompile`, which compiles the kernels that the forward pass calls
*after* the weight linears (`attention`, `to_token_major`) into the shared on-disk cache, while
this process loads weights, compiles and times the linears' kernels and runs the embeddings.
`wait()` is called before anything is timed (`sparsebert.tuning`) and before the first attention
call; after it, this process finds those kernels in the cache and loads them instead of
compiling them again.

It only runs when it can help and cannot hurt:
- only while the cache is cold: a stamp file, written after a child succeeds, keyed on the kernel
  sources, the machine, the Numba version and every NUMBA_* variable, says it is warm;
- only with two or more Numba threads, and not when SPARSEBERT_PRECOMPILE=0;
- the child's failure or a hang (`wait` gives it at most `TIMEOUT_S`) only means this process
  compiles those kernels itself, as it would without the child.

Left out: kernels that depend on the model (the linears' formats are known only after tuning, and
this process compiles them first anyway).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

TIMEOUT_S = 120.0
_lock = threading.Lock()
_child: subprocess.Popen | None = None
_started = False
_stamp: Path | None = None


def _stamp_path(cache_dir, key_parts):
    import numba

    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("NUMBA_")}
    key = json.dumps([list(key_parts), numba.__version__, env, sys.executable])
    return Path(cache_dir) / "precompiled" / hashlib.sha256(key.encode()).hexdigest()[:20]


def enabled() -> bool:
    import numba

    return os.environ.get("SPARSEBERT_PRECOMPILE", "1") != "0" and numba.get_num_threads() >= 2


def start(cache_dir, key_parts) -> bool:
    """Launch the background compile once per process if the cache is cold; True if launched.
    The stamp that says it is warm lives under cache_dir, keyed on key_parts (what the compiled
    code depends on: kernel sources, machine; `sparsebert.tuning` knows them) and the Numba set-up."""
    global _child, _started, _stamp
    with _lock:
        if _started:
            return False
        _started = True
        try:
            _stamp = _stamp_path(cache_dir, key_parts)
            if not enabled() or _stamp.exists():
                return False
            _child = subprocess.Popen([sys.executable, "-m", "sparsebert.precompile"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        except OSError:  # no fork, no cache dir, ...: compile here, as without it
            _child = None
            return False
        return True


def wait() -> None:
    """Block until the background compile (if any) has finished; cheap when there is none."""
    global _child
    if _child is None:
        return
    with _lock:
        child, _child = _child, None
        if child is None:
            return
        try:
            ok = child.wait(timeout=TIMEOUT_S) == 0
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            ok = False
        if ok and _stamp is not None:
            try:
                _stamp.parent.mkdir(parents=True, exist_ok=True)
                _stamp.write_text("compiled\n")
            except OSError:
                pass


def compile_shared_kernels() -> None:
    """Compile (or load) `attention` and `to_token_major` with the argument types the encoder
    passes them (float32 C-contiguous arrays, int heads, float32 scale)."""
    import numpy as np

    from .kernels import attention, ops

    heads, D, T = 2, 4, 3
    qkv = np.zeros((1, 3 * heads * D, T), np.float32)
    attention.attention(qkv, np.zeros((1, T), np.float32), heads, np.float32(0.5),
                        np.empty((1, heads * D, T), np.float32))
    x = np.zeros((1, heads * D, T), np.float32)
    ops.to_token_major(x, np.empty((1, T, heads * D), np.float32))


if __name__ == "__main__":
    compile_shared_kernels()
