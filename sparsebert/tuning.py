"""Weight format and K-chunk width chosen by timing them on this machine, cached on disk.

`sparsebert.dispatch.make_linear(format="auto")` calls `choose(weight, bias)`. For each distinct (shape, sparsity,
block structure) a model has, it times the candidate formats (dense BLAS, CSR, and every block
shape whose aligned blocks hold all the nonzeros) on a (8, K, 128) activation, then two other
K-chunk widths for the fastest sparse format, and keeps the fastest. The hand-calibrated cost
model in `sparsebert.linear_cost` only prunes hopeless candidates (predicted > 1.5x the best), so
the dense BLAS path and CSR are always timed against each other when they are close.

Results go to a JSON file (`cache_path()`; never pickle) under a key made of the CPU model, the
ISA features LLVM compiles for, the Numba thread count and a hash of the kernel sources: a model
loaded on another CPU, with another thread count or after a kernel change finds no entry and
re-tunes; it never reuses another machine's choice. A corrupt or unreadable cache file is ignored
with a warning and rewritten; an unwritable one only costs re-tuning. Each Linear records how its
format was chosen (`choice` in `describe()` and the sparsity report): "measured" with the timings,
"cache" with the timings measured earlier, or "forced" (`formats=`).

The int8 kernel kinds are timed the same way, into the same file (`sparsebert.tuning_int8`).

A float32 FFN pair that runs fused (`sparsebert.ffn.FusedFFN`) also gets its token-tile width
chosen here, on AVX-512 CPUs where the kernels take 64 or 128 (`choose_ffn_tile`): 128 halves
the passes over the weights and doubles the cached panels, and which wins depends on the caches
(on Sapphire Rapids' 2 MiB L2 128-token CSR tiles ran 80% layers faster, on Zen 4's 1 MiB slower).

The tuner measures linears and never loads a model: `sparsebert tune PATH` (`sparsebert.cli.tune`)
loads one with formats="auto", which fills this cache.

Left out: re-tuning per batch size (one representative shape is timed; batch 1 takes the same
choice), generating register-tile widths per machine (the widths are compiled in; the K-chunk
width and the fused FFN's token tile are tuned), sharing a cache between machines.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import threading
import time
import warnings
from pathlib import Path

import numba
import numpy as np

from . import linear, linear_cost, precompile
from .kernels import spmm

CACHE_VERSION = 1
_TUNE_BATCH, _TUNE_SEQ = 8, 128  # B=8 x 128 takes the same kernel paths as B=32 x 128
_REPEATS = 3
_PRUNE_FACTOR = 1.5  # candidates the cost model predicts this much slower than its best are skipped
_DENSE_ABOVE = 0.8  # density above which only the dense format is considered
_KERNEL_DIR = Path(__file__).resolve().parent.parent / "kernels"


@functools.lru_cache(maxsize=1)
def kernel_version() -> str:
    """Hash of the kernel sources: a kernel change invalidates every cached choice."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    files = sorted(_KERNEL_DIR.glob("*.py")) if _KERNEL_DIR.is_dir() else sorted(
        (here / "kernels").glob("*.py"))
    # The linear kinds, the checks their kernels trust and the cost model that prunes candidates
    # all change what is timed, so they count as kernel sources too.
    for f in files + [here / "linear.py", here / "linear_contract.py", here / "linear_cost.py",
                      here / "quant" / "linear.py", here / "tuning_int8.py", Path(__file__).resolve()]:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cpu_model() -> str:
    """The CPU's marketing name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _host() -> tuple:
    from llvmlite import binding

    features = binding.get_host_cpu_features()
    return cpu_model(), binding.get_host_cpu_name(), tuple(sorted(f for f, on in features.items() if on))


_ISA_LABELS = (("avx512f", "AVX-512"), ("avx512vnni", "VNNI"), ("avx512bf16", "BF16"), ("amx-tile", "AMX"),
               ("avx2", "AVX2"))


def cpu_label() -> str:
    """`cpu_model()` plus the ISA features the kernels and bf16 training use, as LLVM sees them on this
    host (VMs often hide the name: "AMD EPYC (AVX-512, VNNI, BF16)"). Names the CPU in every figure."""
    isa = set(_host()[2])
    labels = [label for feature, label in _ISA_LABELS if feature in isa]
    if "AVX-512" in labels and "AVX2" in labels:
        labels.remove("AVX2")
    return f"{cpu_model()} ({', '.join(labels)})" if labels else cpu_model()


def machine() -> dict:
    """What a cached choice is valid for: CPU model, LLVM's host CPU and features (what Numba
    compiles for), Numba thread count, kernel version."""
    import numba

    cpu, llvm_cpu, isa = _host()
    return {"cpu": cpu, "llvm_cpu": llvm_cpu, "isa": list(isa),
            "threads": int(numba.get_num_threads()), "kernels": kernel_version()}


def machine_key(m: dict | None = None) -> str:
    m = machine() if m is None else m
    return hashlib.sha256(json.dumps(m, sort_keys=True).encode()).hexdigest()[:20]


def cache_dir() -> Path:
    """sparsebert's cache root: $SPARSEBERT_CACHE_DIR, else $XDG_CACHE_HOME/sparsebert/, else
    ~/.cache/sparsebert/ (the ONNX files of `sparsebert.ort_files` live under it too)."""
    base = os.environ.get("SPARSEBERT_CACHE_DIR")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                            "sparsebert")
    return Path(base)


def cache_path() -> Path:
    """tuning.json under `cache_dir()`."""
    return cache_dir() / "tuning.json"


class TuningCache:
    """The entries of one machine key in one JSON file; other keys in the file are kept as read."""

    def __init__(self, path=None, machine_info: dict | None = None):
        self.path = Path(path) if path is not None else cache_path()
        self.machine = machine_info if machine_info is not None else machine()
        self.key = machine_key(self.machine)
        self.entries = self._read().get(self.key, {}).get("entries", {})

    def _read(self) -> dict:
        """All machines' sections, or {} when the file is missing, unreadable or corrupt."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            warnings.warn(f"cannot read the tuning cache {self.path}: {exc}; re-tuning", stacklevel=3)
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))  # UnicodeDecodeError is a ValueError
            if not (isinstance(data, dict) and data.get("version") == CACHE_VERSION
                    and isinstance(data.get("machines"), dict)
                    and all(isinstance(v, dict) and isinstance(v.get("entries"), dict)
                            for v in data["machines"].values())):
                raise ValueError(f"not a version-{CACHE_VERSION} sparsebert tuning cache")
            return data["machines"]
        except ValueError as exc:
            warnings.warn(f"ignoring the corrupt tuning cache {self.path} ({exc}); it will be "
                          "rewritten", stacklevel=3)
            return {}

    def get(self, signature: str):
        entry = self.entries.get(signature)
        valid = (isinstance(entry, dict) and isinstance(entry.get("format"), str)
                 and (entry.get("chunk_cols") is None or isinstance(entry["chunk_cols"], int)))
        return entry if valid else None

    def put(self, signature: str, entry: dict) -> None:
        """Record an entry and write the file (merged with what other processes wrote meanwhile),
        atomically; a failed write only warns."""
        self.entries[signature] = entry
        machines = self._read()
        section = machines.setdefault(self.key, {"machine": self.machine, "entries": {}})
        section["machine"] = self.machine
        section["entries"].update(self.entries)
        # one temporary file per process and thread: models may tune in several threads at once
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "machines": machines}, indent=1),
                           encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            warnings.warn(f"cannot write the tuning cache {self.path}: {exc}; choices will be "
                          "re-measured next time", stacklevel=3)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


_default_cache: TuningCache | None = None


def default_cache() -> TuningCache:
    """The process-wide cache for `cache_path()`, re-read when the machine key changes (e.g.
    after numba.set_num_threads)."""
    global _default_cache
    m = machine()
    if _default_cache is None or _default_cache.machine != m or _default_cache.path != cache_path():
        _default_cache = TuningCache(cache_path(), m)
    return _default_cache


def signature(mask: np.ndarray, fitting: list) -> str:
    """What the choice depends on: shape, sparsity (to 1%) and the block shapes that fit, from
    the weight's nonzero mask."""
    N, K = mask.shape
    density = np.count_nonzero(mask) / max(1, N * K)
    blocks = "+".join(f"{r}x{c}" for r, c in fitting) or "none"
    return f"{N}x{K} d{density:.2f} blocks {blocks}"


def time_call(lin, x) -> float:
    """Best of `_REPEATS` calls of lin(x), in seconds, after one untimed call."""
    lin(x)  # first call: compiles or loads the kernel, touches the output pages
    precompile.wait()  # nothing is timed while a background compile holds the other core
    best = float("inf")
    for _ in range(_REPEATS):
        t0 = time.perf_counter()
        lin(x)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(weight: np.ndarray, bias: np.ndarray, fitting: list) -> tuple:
    """Time the candidates on one weight; returns (entry, fastest linear)."""
    N, K = weight.shape
    predicted = {"dense": 1.0, "csr": linear_cost.predicted_cost(weight, "csr")}
    for shape in fitting:
        predicted[f"bsr{shape[0]}x{shape[1]}"] = linear_cost.predicted_cost(weight, shape)
    floor = min(predicted.values())
    candidates = [f for f, c in predicted.items() if c <= _PRUNE_FACTOR * floor]
    if np.count_nonzero(weight) > _DENSE_ABOVE * N * K:
        candidates = ["dense"]  # no sparse kernel stores 80% of the MACs faster than BLAS runs all
    x = np.random.default_rng(0).standard_normal((_TUNE_BATCH, K, _TUNE_SEQ)).astype(np.float32)
    timings, built = {}, {}
    if candidates == ["dense"]:
        lin = linear.build_linear(weight, bias, "dense")
        return _entry(lin, {}), lin
    for fmt in candidates:
        lin = linear.build_linear(weight, bias, fmt)
        timings[_label(lin)] = time_call(lin, x)
        built[_label(lin)] = lin
    sparse = [k for k in timings if k != "dense"]
    if sparse:
        best_sparse = min(sparse, key=timings.get)
        lin = built[best_sparse]
        block = lin.block_shape or (1, 1)
        n_cols = K // block[1]
        for cols in (lin.chunk_cols // 2, lin.chunk_cols * 2):
            if cols < 1 or cols > n_cols or (cols == lin.chunk_cols * 2 and lin.chunk_cols >= n_cols):
                continue
            if cols * block[1] * 4 * spmm.tile_width(block) < 8 << 10:
                continue  # panels under 8 KiB: loop overhead only, never faster here
            alt = linear.build_linear(weight, bias, lin.format if block == (1, 1)
                                      else f"bsr{block[0]}x{block[1]}", chunk_cols=cols)
            timings[_label(alt)] = time_call(alt, x)
            built[_label(alt)] = alt
    lin = built[min(timings, key=timings.get)]
    return _entry(lin, timings), lin


def _entry(lin, timings: dict) -> dict:
    return {"format": _format_name(lin), "chunk_cols": getattr(lin, "chunk_cols", None),
            "timings_ms": {k: round(v * 1e3, 3) for k, v in timings.items()},
            "tokens": _TUNE_BATCH * _TUNE_SEQ,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _format_name(lin) -> str:
    return lin.format if lin.block_shape is None else f"bsr{lin.block_shape[0]}x{lin.block_shape[1]}"


def _label(lin) -> str:
    name = _format_name(lin)
    return name if name == "dense" else f"{name}/{lin.chunk_cols}"


def choose(weight: np.ndarray, bias: np.ndarray, cache: TuningCache | None = None):
    """The fastest Linear for this weight on this machine: from the cache, else measured (and
    cached). The Linear's `choice` says which, with the timings."""
    t0 = time.perf_counter()
    cache = default_cache() if cache is None else cache
    mask = weight != 0
    fitting = linear_cost.fitting_block_shapes_of_mask(mask)
    sig = signature(mask, fitting)
    entry = cache.get(sig)
    if entry is not None:
        lookup_s = time.perf_counter() - t0
        try:
            lin = linear.build_linear(weight, bias, entry["format"], chunk_cols=entry["chunk_cols"])
            # seconds: what choosing cost beyond building the Linear anyway
            lin.choice = {"by": "cache", "signature": sig, **entry, "seconds": lookup_s}
            return lin
        except ValueError:
            pass  # an entry this weight cannot take (hand-edited file): measure again
    entry, lin = measure(weight, bias, fitting)
    cache.put(sig, entry)
    lin.choice = {"by": "measured", "signature": sig, **entry, "seconds": time.perf_counter() - t0}
    return lin


def _pair_signature(pair) -> str:
    def one(lin):
        kind = "csr" if lin.block_shape is None else f"bsr{lin.block_shape[0]}x{lin.block_shape[1]}"
        N, K = lin.out_features, lin.in_features
        return f"{N}x{K} {kind}/{lin.chunk_cols} d{lin.data.size / max(1, N * K):.2f}"

    return f"fused ffn {one(pair.ffn_in)} -> {one(pair.ffn_out)} tile"


def choose_ffn_tile(pair, cache: TuningCache | None = None) -> int:
    """Set `pair.tile` (a `sparsebert.ffn.FusedFFN`) to the token-tile width that ran its weights
    fastest on this machine, from the cache or measured and cached; records how in
    `pair.tile_choice` and returns the width. One width only (CPUs without AVX-512): 64, untimed.

    Each width is timed as that width (`FusedFFN.run_at`, not the fallbacks a batch may take) on a
    copy of the pair (calls running `pair` meanwhile keep one width), on a (B, H, 128) batch with B
    the larger of 8 and two sequences per thread: at 128 tokens every thread gets two tasks. The
    width also serves the whole-layer kernel, whose FFN is most of its work."""
    from .ffn import FusedFFN
    from .kernels import ffn_fused

    t0 = time.perf_counter()
    if len(ffn_fused.TILES) == 1:
        pair.tile = ffn_fused.TILES[0]
        return pair.tile
    cache = default_cache() if cache is None else cache
    sig = _pair_signature(pair)
    entry = cache.get(sig)
    if entry is None or entry.get("tile") not in ffn_fused.TILES:  # a hand-edited width: measure again
        trial = FusedFFN(pair.ffn_in, pair.ffn_out, pair.activation)
        batch = max(_TUNE_BATCH, 2 * numba.get_num_threads())
        x = np.random.default_rng(0).standard_normal((batch, pair.hidden, _TUNE_SEQ)).astype(np.float32)
        timings = {}
        for tile in ffn_fused.TILES:
            timings[tile] = time_call(lambda v, t=tile: trial.run_at(v, t), x)
        entry = {"format": "fused-ffn", "chunk_cols": None, "tile": min(timings, key=timings.get),
                 "timings_ms": {str(k): round(v * 1e3, 3) for k, v in timings.items()},
                 "tokens": batch * _TUNE_SEQ,
                 "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        cache.put(sig, entry)
        by = "measured"
    else:
        by = "cache"
    pair.tile = entry["tile"]
    pair.tile_choice = {"by": by, "signature": sig, **entry, "seconds": time.perf_counter() - t0}
    return pair.tile
