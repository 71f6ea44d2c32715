"""sparsebert.tuning: format choice by measurement, the on-disk cache and its key, `sparsebert tune`.

Every test points the cache at its own temporary file. What is checked: a miss measures and
writes, a hit reuses without measuring, another machine key (CPU, ISA, threads, kernel version)
never reuses an entry, a corrupt cache file is ignored with a warning and rewritten, forced
formats say so, and whatever was chosen computes the dense layer's result.
"""

import json
import math
import warnings

import numpy as np
import pytest

from sparsebert import dispatch, linear, tuning

_erf = np.vectorize(math.erf)


@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBERT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tuning, "_default_cache", None)
    return tmp_path / "tuning.json"


def pruned(seed, N=96, K=64, sparsity=0.9, block=(1, 1)):
    rng = np.random.default_rng(seed)
    R, C = block
    w = rng.standard_normal((N, K)).astype(np.float32)
    keep = rng.random((N // R, K // C)) >= sparsity
    return w * np.repeat(np.repeat(keep, R, 0), C, 1), rng.standard_normal(N).astype(np.float32)


def assert_computes(lin, w, b):
    x = np.random.default_rng(9).standard_normal((2, w.shape[1], 70)).astype(np.float32)
    ref = np.matmul(w.astype(np.float64), x.astype(np.float64)) + b[:, None]
    np.testing.assert_allclose(lin(x), ref, atol=1e-4, rtol=1e-5)


def test_machine_key_covers_cpu_isa_threads_and_kernels():
    m = tuning.machine()
    assert m["cpu"] and m["isa"] and m["threads"] >= 1 and len(m["kernels"]) == 16
    key = tuning.machine_key(m)
    assert tuning.machine_key(dict(m)) == key
    for field, other in [("cpu", m["cpu"] + " (another)"), ("llvm_cpu", "znver3"),
                         ("isa", [f for f in m["isa"] if "avx512" not in f] + ["other"]),
                         ("threads", m["threads"] + 1), ("kernels", "0" * 16)]:
        assert tuning.machine_key({**m, field: other}) != key, field



@pytest.mark.parametrize("features, label", [
    (("avx", "avx2", "fma"), "Some CPU (AVX2)"),
    (("avx2", "avx512f", "avx512vnni"), "Some CPU (AVX-512, VNNI)"),
    (("avx2", "avx512f", "avx512vnni", "avx512bf16", "amx-bf16", "amx-tile"),
     "Some CPU (AVX-512, VNNI, BF16, AMX)"),
    (("sse2", "neon"), "Some CPU"),
])
def test_cpu_label_names_the_isa_llvm_compiles_for(monkeypatch, features, label):
    monkeypatch.setattr(tuning, "_host", lambda: ("Some CPU", "host", tuple(sorted(features))))
    monkeypatch.setattr(tuning, "cpu_model", lambda: "Some CPU")
    assert tuning.cpu_label() == label

def test_miss_measures_then_hit_reuses(cache_file, monkeypatch):
    w, b = pruned(0)
    lin = dispatch.make_linear(w, b, "auto")
    assert lin.choice["by"] == "measured" and lin.choice["timings_ms"]
    assert_computes(lin, w, b)
    data = json.loads(cache_file.read_text())
    section = data["machines"][tuning.machine_key()]
    assert section["machine"] == tuning.machine()
    assert section["entries"][lin.choice["signature"]]["format"] == lin.describe()["format"]

    # A fresh process's view of the same file: a hit, and nothing is timed.
    monkeypatch.setattr(tuning, "_default_cache", None)
    monkeypatch.setattr(tuning, "measure", lambda *a: pytest.fail("a cache hit must not measure"))
    again = dispatch.make_linear(w, b, "auto")
    assert again.choice["by"] == "cache"
    assert again.describe()["format"] == lin.describe()["format"]
    assert getattr(again, "chunk_cols", None) == getattr(lin, "chunk_cols", None)
    assert_computes(again, w, b)


def test_another_machine_never_reuses_entries(cache_file):
    w, b = pruned(1)
    here = tuning.machine()
    other = {**here, "cpu": "Some Other CPU", "isa": ["sse2"]}
    foreign = tuning.TuningCache(cache_file, other)
    sig = tuning.signature(w != 0, linear.fitting_block_shapes(w))
    foreign.put(sig, {"format": "dense", "chunk_cols": None, "timings_ms": {}})
    mine = tuning.TuningCache(cache_file, here)
    assert mine.get(sig) is None
    lin = tuning.choose(w, b, mine)
    assert lin.choice["by"] == "measured"
    machines = json.loads(cache_file.read_text())["machines"]
    assert set(machines) == {tuning.machine_key(other), tuning.machine_key(here)}
    assert machines[tuning.machine_key(other)]["entries"][sig]["format"] == "dense"


@pytest.mark.parametrize("content", [
    "{not json", "", "[1, 2]", '{"version": 1, "machines": {"k": 3}}',
    '{"version": 99, "machines": {}}', "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
])
def test_corrupt_cache_is_ignored_and_rewritten(cache_file, content):
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(content, encoding="latin-1")
    w, b = pruned(2)
    with pytest.warns(UserWarning, match="corrupt tuning cache"):
        lin = dispatch.make_linear(w, b, "auto")
    assert lin.choice["by"] == "measured"
    assert_computes(lin, w, b)
    data = json.loads(cache_file.read_text())
    assert data["version"] == tuning.CACHE_VERSION and tuning.machine_key() in data["machines"]


def test_bad_entry_is_measured_again(cache_file):
    w, b = pruned(3)
    cache = tuning.TuningCache(cache_file)
    sig = tuning.signature(w != 0, linear.fitting_block_shapes(w))
    for bad in [{"format": 7}, {"format": "csr", "chunk_cols": "x"}, {"format": "bsr4x1", "chunk_cols": 4}]:
        cache.entries[sig] = bad
        lin = tuning.choose(w, b, cache)  # built as the entry says when it can, else measured
        assert_computes(lin, w, b)


def test_unwritable_cache_warns_and_still_chooses(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SPARSEBERT_CACHE_DIR", str(blocker / "sub"))
    monkeypatch.setattr(tuning, "_default_cache", None)
    w, b = pruned(4)
    with pytest.warns(UserWarning, match="cannot write the tuning cache"):
        lin = dispatch.make_linear(w, b, "auto")
    assert_computes(lin, w, b)


def test_block_pruned_weight_times_its_block_format(cache_file):
    w, b = pruned(5, N=128, K=96, sparsity=0.9, block=(4, 1))
    lin = dispatch.make_linear(w, b, "auto")
    assert any(k.startswith("bsr4x1") for k in lin.choice["timings_ms"])
    assert_computes(lin, w, b)


def test_dense_weight_is_not_timed(cache_file):
    rng = np.random.default_rng(6)
    w, b = rng.standard_normal((64, 32)).astype(np.float32), np.zeros(64, np.float32)
    lin = dispatch.make_linear(w, b, "auto")
    assert lin.format == "dense" and lin.choice["timings_ms"] == {}


def test_forced_format_says_so(cache_file):
    w, b = pruned(7)
    lin = dispatch.make_linear(w, b, "csr")
    assert lin.choice == {"by": "forced", "requested": "csr"}
    assert not cache_file.exists()
    with pytest.raises(ValueError, match="chunk_cols"):
        linear.build_linear(w, b, "csr", chunk_cols=0)


def test_tune_command_fills_cache_then_hits(cache_file, tmp_path, capsys):
    pytest.importorskip("torch")
    from make_checkpoints import make_random_bert

    from sparsebert import cli

    path = make_random_bert(tmp_path / "m", hidden=32, layers=2, heads=4, intermediate=64,
                            vocab=100, sparsity=0.9)
    out = tmp_path / "tune.json"
    assert cli.main(["tune", path, "--json", str(out)]) == 0
    first = json.loads(out.read_text())
    assert first["measured"] >= 1 and first["cache"] == str(cache_file)
    assert cache_file.exists()
    tuning._default_cache = None
    assert cli.main(["tune", path, "--json", str(out)]) == 0
    second = json.loads(out.read_text())
    assert second["measured"] == 0 and second["from_cache"] == first["measured"]

    import sparsebert

    report = sparsebert.load(path).sparsity_report()
    assert {r["choice"]["by"] for r in report["linears"]} == {"cache"}
    assert all(r["choice"]["signature"] for r in report["linears"])


def _fused_pair(seed=10, H=64, I=256):
    from sparsebert.ffn import fuse_ffn

    w1, b1 = pruned(seed, I, H, 0.8)
    w2, b2 = pruned(seed + 1, H, I, 0.8)
    return fuse_ffn(linear.build_linear(w1, b1, "csr"), linear.build_linear(w2, b2, "csr"), "gelu")


def test_fused_ffn_tile_is_measured_then_cached(cache_file, monkeypatch):
    from sparsebert.kernels import ffn_fused

    pair = _fused_pair()
    timed = []

    def fake_time(fn, x):  # 128 "faster": the choice must follow the timings, not the default
        fn(x)  # the call the tuner times runs (and computes), on a copy of the pair
        timed.append(x.shape)
        return 2e-3 if len(timed) % 2 else 1e-3  # the tuner times 64, then 128

    monkeypatch.setattr(tuning, "time_call", fake_time)
    if ffn_fused.TILES == (64,):  # no AVX-512: one width, nothing to time or cache
        assert tuning.choose_ffn_tile(pair) == 64 and timed == [] and not cache_file.exists()
        monkeypatch.setattr(ffn_fused, "TILES", (64, 128))  # the kernels compute 128 there too
    assert tuning.choose_ffn_tile(pair) == 128 == pair.tile and len(timed) == 2  # 64, then 128
    assert pair.tile_choice["by"] == "measured" and pair.tile_choice["timings_ms"] == {"64": 2.0, "128": 1.0}
    again = _fused_pair()
    tuning._default_cache = None  # a new process: read from the file
    assert tuning.choose_ffn_tile(again) == 128 and again.tile_choice["by"] == "cache" and len(timed) == 2
    # A hand-edited entry with a width the kernels do not take is measured again, never used.
    data = json.loads(cache_file.read_text())
    entries = data["machines"][tuning.machine_key()]["entries"]
    (sig,) = [k for k in entries if k.startswith("fused ffn")]
    entries[sig]["tile"] = 96
    cache_file.write_text(json.dumps(data))
    tuning._default_cache = None
    third = _fused_pair()
    assert tuning.choose_ffn_tile(third) == 128 and third.tile_choice["by"] == "measured" and len(timed) == 4


def test_auto_models_tune_the_fused_tile_on_first_use_and_forced_ones_keep_64(cache_file, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from make_checkpoints import make_random_bert

    import sparsebert
    from sparsebert import linear_cost
    from sparsebert.ffn import FusedFFN
    from sparsebert.kernels import ffn_fused

    monkeypatch.setattr("numba.get_num_threads", lambda: 2)
    path = make_random_bert(tmp_path / "m", hidden=64, layers=2, heads=4, intermediate=256,
                            vocab=100, max_position=128, sparsity=0.85)
    # CSR predicted cheaper than dense: the tuner times only CSR (no block shape fits random
    # unstructured weights), so every FFN pair is CSR and fused.
    monkeypatch.setattr(linear_cost, "predicted_cost", lambda w, kind: 0.5)
    auto = sparsebert.load(path, formats="auto")
    assert all(isinstance(layer.fused_ffn, FusedFFN) for layer in auto.encoder.layers)
    assert auto.sparsity_report()["total"]["fused_ffn_tile_choice"] == [None, None]  # not chosen yet
    ids = np.random.default_rng(0).integers(5, 100, size=(2, 16))
    auto(ids)  # short sequences: never a wide tile, so still not chosen
    assert auto.sparsity_report()["total"]["fused_ffn_tile_choice"] == [None, None]
    ids = np.random.default_rng(0).integers(5, 100, size=(4, 128))
    want = auto(ids).last_hidden_state  # the first long batch chooses, then runs the chosen width
    total = auto.sparsity_report()["total"]
    if len(ffn_fused.TILES) > 1:
        choices = total["fused_ffn_tile_choice"]
        assert [c["by"] for c in choices] == ["measured", "cache"]  # one signature
        fastest = int(min(choices[0]["timings_ms"], key=choices[0]["timings_ms"].get))
        assert total["fused_ffn_tile"] == [fastest, fastest]  # and the layers run it
    else:
        assert total["fused_ffn_tile"] == [64, 64] and total["fused_ffn_tile_choice"] == [None, None]
    forced = sparsebert.load(path, formats="csr")
    np.testing.assert_allclose(forced(ids).last_hidden_state, want, rtol=0, atol=1e-5)
    total = forced.sparsity_report()["total"]
    assert total["fused_ffn_tile"] == [64, 64] and total["fused_ffn_tile_choice"] == [None, None]
