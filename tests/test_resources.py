"""Resource bounds: streaming encode keeps memory flat, over-large batches are refused before they
allocate, and a read-only or missing Numba cache directory only costs compile time.

Memory is measured as peak RSS (`resource.getrusage(...).ru_maxrss`) in fresh subprocesses, after a
warm-up encode, so each number is the working memory a stream adds above a warmed-up model. The
streaming path (`iter_encode`) must not grow with the number of lines; `encode` may additionally
hold its (N, H) float32 result (and one copy while concatenating).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fuzzutil
import sparsebert
from sparsebert import InputError
from sparsebert.model import call_bytes

_RSS_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import sparsebert
    path, n, mode, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1])

    m = sparsebert.load(path)
    lines = lambda k: (f"line {i} the quick brown fox jumps over the lazy dog {i % 97}" for i in range(k))
    m.encode(list(lines(300)), batch_size=batch)  # warm-up: kernels, tokenizer, allocator pools
    # Import and JIT leave a high-water mark above the steady state; reset it (Linux) so the peak
    # below is the stream's own. ru_maxrss cannot be reset and is reported alongside.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS:")
    if mode == "stream":
        total = sum(len(part) for part in m.iter_encode(lines(n), batch_size=batch))
    else:
        total = len(m.encode(lines(n), batch_size=batch))
    print(json.dumps({"n": total, "base_kib": base, "peak_kib": status("VmHWM:"),
                      "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "hidden": m.config.hidden_size}))
""")


def _rss(path, n, mode, batch=256):
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), str(n), mode, str(batch)],
                          cwd=fuzzutil.REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["n"] == n
    r["growth_mib"] = (r["peak_kib"] - r["base_kib"]) / 1024
    return r


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return fuzzutil.build_models(tmp_path_factory.mktemp("resource-models"), ())


def _check_flat(path, small, large):
    s = _rss(path, small, "stream")
    big = _rss(path, large, "stream")
    full = _rss(path, large, "encode")
    out_mib = large * big["hidden"] * 4 / 2**20
    print(f"\npeak RSS above warm-up: stream {small} lines +{s['growth_mib']:.1f} MiB, "
          f"stream {large} lines +{big['growth_mib']:.1f} MiB, encode {large} lines "
          f"+{full['growth_mib']:.1f} MiB (result {out_mib:.1f} MiB); RSS after warm-up "
          f"{big['base_kib'] / 1024:.0f} MiB, ru_maxrss {big['ru_maxrss_kib'] / 1024:.0f} MiB")
    # 10x the lines may not cost more than a few MiB of allocator noise in working memory.
    assert big["growth_mib"] <= s["growth_mib"] + 8, (s, big)
    # encode holds the result plus one concatenation copy on top of the streaming working set.
    assert full["growth_mib"] <= big["growth_mib"] + 2 * out_mib + 8, (big, full)


def test_stream_memory_is_flat_tiny(models):
    _check_flat(models["dense"], 10_000, 100_000)


@pytest.mark.slow
def test_stream_memory_is_flat_minilm(minilm_path, request):
    expr = request.config.getoption("markexpr") or ""
    if "slow" not in expr or "not slow" in expr:
        pytest.skip("nightly size (~15 min): run with -m slow")
    _check_flat(minilm_path, 10_000, 100_000)


def test_batch_too_large_is_refused_before_allocating(models, monkeypatch):
    model = sparsebert.load(models["dense"])
    c = model.config
    monkeypatch.setattr(sparsebert.model, "available_bytes", lambda: 2 << 30)
    B = int(3 * (2 << 30) // call_bytes(1, 32, c))
    ids = np.broadcast_to(np.ones(1, np.int64), (B, 32))  # a view: the input costs nothing
    with pytest.raises(InputError, match=r"needs about .* GiB .*available; pass fewer sequences"):
        model(ids)
    # A batch that fits is not refused by the estimate.
    assert model(ids[:4]).last_hidden_state.shape == (4, 32, c.hidden_size)


def test_memory_estimate_covers_the_real_peak(models):
    """call_bytes must not underestimate: measured peak RSS growth of one large call <= estimate."""
    script = textwrap.dedent(f"""
        import numpy as np, sparsebert
        from sparsebert.model import call_bytes
        m = sparsebert.load({str(models['sparse'])!r})
        m(np.ones((2, 8), np.int64))
        ids = np.ones((2048, 48), np.int64)
        def status(key):
            return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark left by import and JIT
        base = status("VmRSS:")
        out = m(ids)
        print(status("VmHWM:") - base, call_bytes(2048, 48, m.config))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=fuzzutil.REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    used, estimate = map(int, proc.stdout.split()[-2:])
    print(f"\none call (2048 x 48, H=32, I=64): peak RSS growth {used / 2**20:.1f} MiB, "
          f"estimate {estimate / 2**20:.1f} MiB")
    assert used <= estimate * 1.1, (used, estimate)


@pytest.mark.parametrize("cache_dir", [
    "/sys/sparsebert-numba-cache",  # read-only filesystem: cannot be created, even by root
    "/proc/self/no/such/dir",  # cannot be created either
    "MISSING",  # a fresh path that does not exist yet
])
def test_numba_cache_dir_read_only_or_missing(models, tmp_path, cache_dir):
    if cache_dir == "MISSING":
        cache_dir = str(tmp_path / "not" / "there" / "yet")
    script = textwrap.dedent(f"""
        import numpy as np, sparsebert
        for fmt in ("dense", "csr", "bsr4x1"):
            m = sparsebert.load({str(models['sparse'])!r}, formats=fmt)
            out = m(np.ones((2, 5), np.int64)).last_hidden_state
            assert np.isfinite(out).all()
        print("ok")
    """)
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    proc = subprocess.run([sys.executable, "-c", script], cwd=fuzzutil.REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
