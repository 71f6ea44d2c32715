"""`sparsebert run`: JSON lines out for each task, through `sparsebert.cli.main`, and its errors."""

from __future__ import annotations

import json

import pytest

import sparsebert
from sparsebert.cli import main

pytest.importorskip("transformers")
from pipeline_models import make_models  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return make_models(tmp_path_factory.mktemp("cli_run"))


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_run_text_classification_to_file(models, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text('a cat in the house\n{"text": "where does john live?", "text_pair": "paris"}\n')
    dst = tmp_path / "out.jsonl"
    code, out, err = _run(["run", "text-classification", str(models["cls"]), "--input", str(src),
                           "--output", str(dst), "--top-k", "2", "--batch-size", "1"], capsys)
    assert code == 0, err
    assert json.loads(out)["count"] == 2
    rows = [json.loads(line) for line in dst.read_text().splitlines()]
    pipe = sparsebert.pipeline("text-classification", models["cls"], top_k=2)
    expected = pipe(["a cat in the house", {"text": "where does john live?", "text_pair": "paris"}])
    assert [[d["label"] for d in r] for r in rows] == [[d["label"] for d in r] for r in expected]


@pytest.mark.parametrize("task,key,line,check", [
    ("token-classification", "ner", "john works at google", lambda r: isinstance(r, list)),
    ("fill-mask", "mlm", "the [MASK] fox", lambda r: len(r) == 3 and "token_str" in r[0]),
    ("question-answering", "qa", '{"question": "who works?", "context": "john works at google"}',
     lambda r: r["answer"] in "john works at google"),
    ("sentence-embedding", "base", "the quick fox", lambda r: len(r["embedding"]) == 32),
])
def test_run_each_task_to_stdout(models, tmp_path, capsys, task, key, line, check):
    src = tmp_path / "in.txt"
    src.write_text(f"{line}\n{line}\n")
    argv = ["run", task, str(models[key]), "--input", str(src)]
    if task == "fill-mask":
        argv += ["--top-k", "3"]
    if task == "token-classification":
        argv += ["--aggregation-strategy", "simple"]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in out.splitlines()]
    assert len(rows) == 2 and rows[0] == rows[1] and check(rows[0])


@pytest.mark.parametrize("task,key,content,message", [
    ("question-answering", "qa", "not json\n", "line 1 is not valid JSON"),
    ("question-answering", "qa", '{"question": "q"}\n', "line 1 must be a JSON object"),
    ("text-classification", "cls", '{"text": 3}\n', "text must be a str"),
    ("fill-mask", "mlm", "no mask here\n", "no [MASK]"),
    ("text-classification", "base", "hello\n", "needs a BertForSequenceClassification"),
])
def test_run_bad_input_exits_2_with_one_line(models, tmp_path, capsys, task, key, content, message):
    src = tmp_path / "in.txt"
    src.write_text(content)
    code, out, err = _run(["run", task, str(models[key]), "--input", str(src)], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_run_flag_that_does_not_apply(models, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("john\n")
    code, _, err = _run(["run", "token-classification", str(models["ner"]), "--input", str(src),
                         "--top-k", "2"], capsys)
    assert code == 2 and "--top-k does not apply" in err
    code, _, err = _run(["run", "fill-mask", str(models["mlm"]), "--input", str(tmp_path / "missing")],
                        capsys)
    assert code == 2 and "cannot read input file" in err


def test_run_help_lists_input_formats(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert '{"question": ..., "context": ...}' in help_text and "--batch-size" in help_text
