"""The prune / inspect / benchmark subcommands end to end through sparsebert.cli.main (and one
through `python -m sparsebert.cli`): outputs, files written, exit status 2 with a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))

from make_checkpoints import make_random_bert  # noqa: E402
from sparsebert.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_random_bert(tmp_path_factory.mktemp("cli") / "bert", hidden=32, layers=3, heads=4,
                            intermediate=64, vocab=100)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_prune_then_inspect(src, tmp_path, capsys):
    dst = tmp_path / "p"
    code, out, err = _run(capsys, "prune", src, dst, "--sparsity", "0.9", "--block", "4x1",
                          "--layers", "0,2")
    assert code == 0, err
    result = json.loads(out)
    assert result["layers_kept"] == [0, 2] and result["block"] == "4x1"
    assert result["encoder_linear_sparsity"] == pytest.approx(0.9, abs=1e-3)

    code, out, err = _run(capsys, "inspect", dst)
    assert code == 0, err
    lines = out.splitlines()
    assert "sparsity" in lines[1] and "FLOPs skipped" in lines[1]
    rows = [ln for ln in lines if ln.split() and ln.split()[0].isdigit()]
    assert len(rows) == 2 * 4  # qkv, attn_out, ffn_in, ffn_out per layer
    assert all("4x1" in ln for ln in rows)
    assert all(89.5 <= float(ln.split()[3].rstrip("%")) <= 90.5 for ln in rows)
    assert lines[-2].startswith("total:")
    assert lines[-1] == "attention (QK^T, PV): float32"  # float linears: float attention

    code, out, err = _run(capsys, "inspect", dst, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["config"]["layers"] == 2 and len(info["linears"]) == 8
    row = info["linears"][0]
    assert {"layer", "name", "shape", "sparsity", "fitting_blocks", "format", "flops_skipped"} <= set(row)
    assert info["total"]["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_prune_global_scope(src, tmp_path, capsys):
    code, out, err = _run(capsys, "prune", src, tmp_path / "g", "--sparsity", "0.5", "--scope", "global")
    assert code == 0, err
    assert json.loads(out)["encoder_linear_sparsity"] == pytest.approx(0.5, abs=1e-4)


def test_benchmark_writes_json(src, tmp_path, capsys):
    out_file = tmp_path / "res" / "b.json"
    code, out, err = _run(capsys, "benchmark", src, "--batch-size", "2", "--seq-len", "8",
                          "--time", "0.05", "--json", out_file)
    assert code == 0, err
    written = json.loads(out_file.read_text())
    assert written["engine"] == "sparsebert" and written["batch_size"] == 2
    assert json.loads(out)["items_per_s"] == written["items_per_s"]


def test_benchmark_onnxruntime(src, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from export_onnx import export_bert_onnx

    onnx_path = export_bert_onnx(src, tmp_path / "m.onnx", "legacy17")
    code, out, err = _run(capsys, "benchmark", onnx_path, "--engine", "onnxruntime",
                          "--batch-size", "2", "--seq-len", "8", "--time", "0.05")
    assert code == 0, err
    assert json.loads(out)["engine"] == "onnxruntime"


def test_benchmark_onnxruntime_int8_of_a_hugging_face_folder(src, tmp_path, capsys, monkeypatch):
    # The user's own comparison in one command: the folder is exported and quantized on the fly.
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("SPARSEBERT_CACHE_DIR", str(tmp_path / "cache"))
    code, out, err = _run(capsys, "benchmark", src, "--engine", "onnxruntime-int8",
                          "--batch-size", "2", "--seq-len", "8", "--time", "0.05")
    assert code == 0, err
    result = json.loads(out)
    assert result["engine"] == "onnxruntime-int8" and result["export_s"] > 0
    assert result["model"]["onnx_file"].startswith(str(tmp_path / "cache"))


def test_inspect_through_a_subprocess(src, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "sparsebert.cli", "inspect", src, "--json"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["config"]["layers"] == 3
    bad = subprocess.run([sys.executable, "-m", "sparsebert.cli", "prune", src, src, "--sparsity", "0.5"],
                         capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "is the source" in bad.stderr


@pytest.mark.parametrize("argv_tail, match", [
    (["prune", "{src}", "{dst}", "--sparsity", "1.5"], "sparsity must be in [0, 1)"),
    (["prune", "{src}", "{dst}", "--sparsity", "0.5", "--block", "3x1"], "does not divide"),
    (["prune", "{src}", "{src}", "--sparsity", "0.5"], "is the source"),
    (["prune", "{tmp}/missing", "{dst}", "--sparsity", "0.5"], "does not exist"),
    (["inspect", "{tmp}/missing"], "does not exist"),
    (["benchmark", "{src}", "--batch-size", "0"], "batch_size"),
    (["benchmark", "{tmp}", "--engine", "onnxruntime", "--time", "0.05"], "model.onnx"),
])
def test_bad_arguments_exit_2_with_one_line(src, tmp_path, capsys, argv_tail, match):
    argv = [a.format(src=src, dst=tmp_path / "dst", tmp=tmp_path) for a in argv_tail]
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and match in err and err.startswith(f"sparsebert {argv[0]}: error:")


def test_non_empty_destination_needs_overwrite(src, tmp_path, capsys):
    dst = tmp_path / "d"
    dst.mkdir()
    (dst / "notes.txt").write_text("keep me")
    code, _, err = _run(capsys, "prune", src, dst, "--sparsity", "0.5")
    assert code == 2 and "--overwrite" in err
    code, _, err = _run(capsys, "prune", src, dst, "--sparsity", "0.5", "--overwrite")
    assert code == 0, err
    assert (dst / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("argv", [
    ["prune", "a", "b"],  # --sparsity is required
    ["prune", "a", "b", "--sparsity", "lots"],
    ["prune", "a", "b", "--sparsity", "0.5", "--scope", "everything"],
    ["prune", "a", "b", "--sparsity", "0.5", "--layers", "0,x"],
    ["benchmark", "a", "--engine", "torch"],
])
def test_argparse_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sparsebert") and "error:" in err[-1]


def test_pruned_output_embeds_like_the_dense_path(src, tmp_path, capsys):
    import sparsebert

    dst = tmp_path / "p"
    assert _run(capsys, "prune", src, dst, "--sparsity", "0.8")[0] == 0
    ids = np.random.default_rng(0).integers(0, 100, size=(2, 10))
    a = sparsebert.load(dst, formats="dense")(ids).last_hidden_state
    b = sparsebert.load(dst)(ids).last_hidden_state
    np.testing.assert_allclose(a, b, atol=1e-5)
