"""The background compile of the shared kernels on a cold cache (sparsebert.precompile)."""

import json
import os
import subprocess
import sys

import pytest

from sparsebert import precompile

# Run in a fresh process with empty Numba and sparsebert caches: load MiniLM, encode, and report
# what the encoder's process did with the attention kernel the background process compiled.
CHILD = r"""
import json, sys
import sparsebert
from sparsebert import precompile
from sparsebert.kernels import attention, ops
launched = []
start = precompile.start
precompile.start = lambda *a: launched.append(start(*a)) or launched[-1]
model = sparsebert.load(sys.argv[1], formats="dense")
model.encode(["a first sentence", "and a second, longer one"])
print(json.dumps({
    "launched": launched,
    "attention": [sum(attention.attention.stats.cache_hits.values()),
                  sum(attention.attention.stats.cache_misses.values())],
    "to_token_major": [sum(ops.to_token_major.stats.cache_hits.values()),
                       sum(ops.to_token_major.stats.cache_misses.values())],
    "stamp": precompile._stamp is not None and precompile._stamp.exists(),
}))
"""


def _run(minilm_path, tmp_path, **env):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), SPARSEBERT_CACHE_DIR=str(tmp_path / "sb"),
               NUMBA_NUM_THREADS="2", **env)
    proc = subprocess.run([sys.executable, "-c", CHILD, minilm_path], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cold_cache_kernels_come_from_the_background_process(minilm_path, tmp_path):
    first = _run(minilm_path, tmp_path)
    # Launched once, and the encoder's process loaded both kernels from the cache the background
    # process filled (a miss would mean the argument types differ and the work was done twice).
    assert first["launched"] == [True]
    assert first["attention"] == [1, 0] and first["to_token_major"] == [1, 0]
    assert first["stamp"]
    # Warm now: no second process, and the kernels still come from the cache.
    again = _run(minilm_path, tmp_path)
    assert again["launched"] == [False] and again["attention"] == [1, 0]


def test_opt_out_compiles_in_process(minilm_path, tmp_path):
    out = _run(minilm_path, tmp_path, SPARSEBERT_PRECOMPILE="0")
    assert out["launched"] == [False]
    assert out["attention"] == [0, 1]  # compiled here: a miss on the empty cache
    assert not out["stamp"]


KEY = ("kernels abc", "machine def")


@pytest.fixture
def fresh_module(monkeypatch, tmp_path):
    monkeypatch.setattr(precompile, "_started", False)
    monkeypatch.setattr(precompile, "_stamp", None)
    monkeypatch.setattr(precompile, "_child", None)
    monkeypatch.setattr(precompile, "enabled", lambda: True)
    return precompile


def test_failed_child_leaves_no_stamp_and_no_error(fresh_module, monkeypatch, tmp_path):
    real = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: real([sys.executable, "-c", "raise SystemExit(3)"]))
    assert fresh_module.start(tmp_path, KEY) is True
    assert fresh_module.start(tmp_path, KEY) is False  # once per process
    fresh_module.wait()
    assert not fresh_module._stamp_path(tmp_path, KEY).exists()
    fresh_module.wait()  # nothing left to wait for


def test_hung_child_is_killed_after_the_timeout(fresh_module, monkeypatch, tmp_path):
    real = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: real([sys.executable, "-c", "import time; time.sleep(60)"]))
    monkeypatch.setattr(fresh_module, "TIMEOUT_S", 0.5)
    assert fresh_module.start(tmp_path, KEY) is True
    child = fresh_module._child
    fresh_module.wait()
    assert child.returncode is not None and not fresh_module._stamp_path(tmp_path, KEY).exists()


def test_no_launch_when_stamped(fresh_module, monkeypatch, tmp_path):
    path = fresh_module._stamp_path(tmp_path, KEY)
    path.parent.mkdir(parents=True)
    path.write_text("compiled\n")
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("launched on a warm cache"))
    assert fresh_module.start(tmp_path, KEY) is False
    other = fresh_module._stamp_path(tmp_path, ("kernels changed", "machine def"))
    assert other != path  # another kernel version or machine is cold again
