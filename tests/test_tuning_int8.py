"""sparsebert.tuning_int8: int8 "auto" times the Int8Linear kinds this CPU runs and caches the winner.

Every test points the tuning cache at its own temporary folder. What is checked: which kinds are
timed on this CPU (expected from /proc/cpuinfo, not from sparsebert's own detection, so a
detection bug cannot turn the VNNI path into the portable one unnoticed), that a second build
reuses the cached choice without timing, that the chosen linear computes the forced kinds'
outputs bit for bit, both routes into it (a float weight with formats="int8", a w8a8 checkpoint's
stored codes with "auto"), the portable (no-VNNI) candidates, stale entries, forced kinds, and
`sparsebert tune` on an int8 checkpoint.
"""

import json
import sys

import numpy as np
import pytest

from sparsebert import dispatch, tuning, tuning_int8
from sparsebert.errors import CheckpointError
from sparsebert.quant import linear as qlinear
from sparsebert.weights import Int8Weight


def _cpu_flags() -> set:
    if sys.platform != "linux":
        return set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


FLAGS = _cpu_flags()
VNNI = "avx512_vnni" in FLAGS
# Linux grants the AMX tile state to any process that asks (kernel 5.16+); test_int8_kernels
# checks that sparsebert's detection agrees with these flags.
DENSE_KIND = ("int8-amx" if {"amx_int8", "amx_tile"} <= FLAGS else "int8-gemm") if VNNI \
    else "int8-dense"
SPARSE_KIND = "int8-bsr1x4" if VNNI else "int8-csr"


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBERT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "_default_cache", None)
    return tmp_path / "tuning.json"


def weight(seed, N=256, K=512, quad_sparsity=0.85):
    """A float weight with quad_sparsity of its (row, K-quad) 1x4 blocks zero, and a bias."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32)
    keep = np.repeat(rng.random((N, K // 4)) >= quad_sparsity, 4, axis=1)
    return w * keep, rng.standard_normal(N).astype(np.float32)


def assert_same_outputs(lin, kinds, make):
    """lin's output equals, bit for bit, the forced linear of each kind in `kinds` (make(kind))."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, lin.in_features, 77)).astype(np.float32)
    res = rng.standard_normal((2, lin.out_features, 77)).astype(np.float32)
    y = lin(x, activation="gelu", residual=res)
    assert y.dtype == np.float32 and y.shape == (2, lin.out_features, 77)
    for kind in kinds:
        forced = make(kind)
        assert forced.format == kind and forced.choice == {"by": "forced", "requested": kind}
        np.testing.assert_array_equal(forced(x, activation="gelu", residual=res), y, err_msg=kind)


@pytest.mark.parametrize("quad_sparsity,expected", [
    (0.85, [DENSE_KIND, SPARSE_KIND]),  # 1x4-pruned: the dense kind against the sparse one
    (0.0, [DENSE_KIND]),  # dense: the sparse kind cannot win and is not timed
])
def test_int8_auto_times_the_kinds_then_reuses_the_choice(cache_file, monkeypatch, quad_sparsity,
                                                          expected):
    w, b = weight(0, quad_sparsity=quad_sparsity)
    lin = dispatch.make_linear(w, b, "int8")
    c = lin.choice
    assert c["by"] == "measured", c
    assert c["candidates"] == expected and sorted(c["timings_ms"]) == sorted(expected)
    assert all(t > 0 for t in c["timings_ms"].values())
    assert c["format"] == lin.format == min(c["timings_ms"], key=c["timings_ms"].get)
    assert lin.describe()["choice"] is c and lin.describe()["format"] == lin.format
    assert c["signature"].startswith(f"int8 {w.shape[0]}x{w.shape[1]} d")
    section = json.loads(cache_file.read_text())["machines"][tuning.machine_key()]
    assert section["entries"][c["signature"]]["format"] == lin.format
    assert_same_outputs(lin, expected, lambda kind: dispatch.make_linear(w, b, kind))

    # A fresh process's view of the same file: a hit, and nothing is timed.
    monkeypatch.setattr(tuning, "_default_cache", None)
    monkeypatch.setattr(tuning_int8, "measure_int8",
                        lambda *a: pytest.fail("a cache hit must not measure"))
    again = dispatch.make_linear(w, b, "int8-auto")
    assert again.choice["by"] == "cache" and again.format == lin.format
    assert again.choice["timings_ms"] == c["timings_ms"]
    assert_same_outputs(again, [lin.format], lambda kind: dispatch.make_linear(w, b, kind))


def test_w8a8_checkpoint_auto_is_timed_and_named_kinds_are_forced(cache_file):
    w, b = weight(1)
    smooth = np.random.default_rng(2).uniform(0.5, 2.0, w.shape[1]).astype(np.float32)
    codes, scale = qlinear.quantize_weight(w, smooth)
    stored = Int8Weight(codes, scale, smooth)
    lin = dispatch.make_linear(stored.dequantized(), b, "auto", stored)
    assert lin.choice["by"] == "measured"
    assert sorted(lin.choice["timings_ms"]) == sorted([DENSE_KIND, SPARSE_KIND])
    np.testing.assert_array_equal(lin.to_codes(), codes)  # the file's own codes run
    np.testing.assert_array_equal(lin.smooth, smooth)
    assert_same_outputs(lin, [DENSE_KIND, SPARSE_KIND, "int8-dense", "int8-csr"],
                        lambda kind: dispatch.make_linear(w, b, kind, stored))
    dense = dispatch.make_linear(w, b, "dense", stored)
    assert dense.format == "int8-dense" and dense.choice == {"by": "forced", "requested": "dense"}


def test_without_vnni_dense_and_csr_are_timed(cache_file, monkeypatch):
    # The portable kinds run on every CPU, so this path is checked here too.
    monkeypatch.setattr(qlinear, "host_has_vnni", lambda: False)
    w, b = weight(4, N=64, K=96, quad_sparsity=0.5)  # ~50% of the codes zero
    lin = dispatch.make_linear(w, b, "int8")
    assert lin.choice["candidates"] == ["int8-dense", "int8-csr"]
    assert sorted(lin.choice["timings_ms"]) == ["int8-csr", "int8-dense"]
    assert_same_outputs(lin, ["int8-dense", "int8-csr"], lambda kind: dispatch.make_linear(w, b, kind))
    w2, b2 = weight(5, N=64, K=96, quad_sparsity=0.1)
    assert dispatch.make_linear(w2, b2, "int8").choice["candidates"] == ["int8-dense"]


def test_candidates_prune_only_hopeless_kinds(monkeypatch):
    monkeypatch.setattr(qlinear, "host_has_vnni", lambda: True)
    monkeypatch.setattr(qlinear, "dense_vnni_kind", lambda: "amx")
    # Past the untimed break-even against AMX (0.15), bsr1x4 is still timed up to 0.6 of the quads.
    assert tuning_int8.candidates(0.3, 0.3) == ["amx", "bsr1x4"]
    assert tuning_int8.candidates(0.6, 0.6) == ["amx", "bsr1x4"]
    assert tuning_int8.candidates(0.61, 0.61) == ["amx"]
    monkeypatch.setattr(qlinear, "host_has_vnni", lambda: False)
    assert tuning_int8.candidates(0.7, 1.0) == ["dense", "csr"]
    assert tuning_int8.candidates(0.71, 1.0) == ["dense"]


def test_signature_holds_int8_shape_density_and_quads():
    codes = np.zeros((8, 10), np.int8)
    codes[0, 0] = 5  # one nonzero: 1 of 80 codes, 1 of 8 x 3 quads
    assert tuning_int8.structure(codes) == (0.01, 0.04)
    assert tuning_int8.signature(codes.shape, 0.01, 0.04) == "int8 8x10 d0.01 q0.04"


def test_stale_entry_is_measured_again(cache_file):
    w, b = weight(6, N=64, K=128)
    codes, scale = qlinear.quantize_weight(w)
    cache = tuning.TuningCache(cache_file)
    sig = tuning_int8.signature(codes.shape, *tuning_int8.structure(codes))
    for bad in ({"format": "int8-vnni"}, {"format": "int8-auto"}, {"format": "bsr1x4"}):
        cache.entries[sig] = bad  # a kind that is no candidate here (a hand-edited file)
        lin = tuning_int8.choose_int8(codes, scale, b, None, cache)
        assert lin.choice["by"] == "measured" and lin.format in lin.choice["candidates"]
        assert cache.get(sig)["format"] == lin.format
    with pytest.raises(CheckpointError, match="2-D int8"):
        tuning_int8.choose_int8(codes.astype(np.int16), scale, b, None, cache)


def test_forced_int8_kinds_say_so(cache_file):
    w, b = weight(7, N=64, K=128)
    lin = dispatch.make_linear(w, b, SPARSE_KIND)
    assert lin.format == SPARSE_KIND and lin.choice == {"by": "forced", "requested": SPARSE_KIND}
    assert not cache_file.exists()


def test_tune_command_times_an_int8_checkpoint(cache_file, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    from make_checkpoints import make_random_bert

    import sparsebert
    from sparsebert import cli
    from sparsebert.quant import quantize

    src = make_random_bert(tmp_path / "m", hidden=32, layers=2, heads=4, intermediate=64,
                           vocab=100, sparsity=0.9)
    quantize(src, tmp_path / "q", onnx=False)
    path = str(tmp_path / "q")
    out = tmp_path / "tune.json"
    assert cli.main(["tune", path, "--json", str(out)]) == 0
    first = json.loads(out.read_text())
    assert first["measured"] >= 1 and first["from_cache"] == 0
    assert all(sig.startswith("int8 ") for sig in first["choices"])
    assert all(c["format"].startswith("int8-") and c["timings_ms"] for c in first["choices"].values())
    tuning._default_cache = None
    assert cli.main(["tune", path, "--json", str(out)]) == 0
    second = json.loads(out.read_text())
    assert second["measured"] == 0 and second["from_cache"] == first["measured"]
    report = sparsebert.load(path).sparsity_report()
    assert {r["choice"]["by"] for r in report["linears"]} == {"cache"}
    assert {r["format"] for r in report["linears"]} <= {c["format"] for c in first["choices"].values()}
