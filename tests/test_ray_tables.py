"""The table side of `sparsebert encode` without Ray: input scanning and its errors, Parquet output,
and the end-of-job check that every input id was written exactly once (it must catch a lost row, a
duplicated row and a swapped id)."""

import json

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="pip install 'sparsebert[ray]'")
import pyarrow.parquet as pq  # noqa: E402

from sparsebert.cli import main  # noqa: E402
from sparsebert.encode_job import encode_table  # noqa: E402
from sparsebert.errors import InputError, MissingDependencyError, SparseBertError  # noqa: E402
from sparsebert.tables import (id_checksum, read_output, read_piece, scan_input,  # noqa: E402
                               verify_output)

TEXTS = ["the river runs cold", "a quiet engine", "", "sparse models read long tokens",
         "winter light", "   ", "every stone carries music", "small graph", "bright whole runs"]


def test_text_scan_pieces_cover_every_line_once(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"one\r\ntwo\n\nfour\nfive\xff\nsix")  # CRLF, empty, bad UTF-8, no final newline
    plan = scan_input(path, rows_per_piece=2)
    assert (plan.format, plan.count, len(plan.pieces)) == ("text", 6, 3)
    assert plan.checksum == id_checksum(np.arange(6))
    rows = [read_piece(p) for p in plan.pieces]
    ids = [i for r in rows for i in r[0]]
    texts = [t for r in rows for t in r[1]]
    errors = [e for r in rows for e in r[2]]
    assert ids == list(range(6))
    assert texts == ["one", "two", None, "four", None, "six"]
    assert errors[2] == "empty text" and "not UTF-8" in errors[4]


def test_checksum_is_order_independent_and_sensitive():
    ids = np.arange(1000, dtype=np.int64)
    assert id_checksum(ids) == id_checksum(ids[::-1].copy())
    assert id_checksum(ids) != id_checksum(np.concatenate([ids[:-1], ids[:1]]))  # a row lost, one doubled
    assert id_checksum(["a", "b"]) == id_checksum(["b", "a"]) != id_checksum(["a", "a"])


@pytest.mark.parametrize("content, match", [
    ('{"id": 1, "text": "a"}\nnot json\n', "line 2 is not valid JSON"),
    ('{"id": 1, "text": "a"}\n[1, 2]\n', "line 2 is not a JSON object"),
    ('{"id": 1, "text": "a"}\n{"text": "b"}\n', "line 2: id None does not match"),
    ('{"id": 1, "text": "a"}\n{"id": "x", "text": "b"}\n', "line 2: id 'x' does not match"),
    ('{"id": 1.5, "text": "a"}\n', "must be an integer or a string"),
])
def test_malformed_jsonl_fails_before_any_compute(tmp_path, content, match):
    path = tmp_path / "in.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=match):
        scan_input(path)


def test_parquet_scan_errors_and_row_number_ids(tmp_path):
    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "no_text.parquet")
    with pytest.raises(InputError, match="no column 'text'.*--text-column"):
        scan_input(tmp_path / "no_text.parquet")
    pq.write_table(pa.table({"id": [0.5, 1.5], "text": ["a", "b"]}), tmp_path / "float_ids.parquet")
    with pytest.raises(InputError, match="ids must be integers or strings"):
        scan_input(tmp_path / "float_ids.parquet")
    plan = scan_input(tmp_path / "no_text.parquet", text_column="body")
    assert plan.id_column is None and plan.count == 2 and plan.checksum == id_checksum(np.arange(2))
    with pytest.raises(InputError, match="does not exist"):
        scan_input(tmp_path / "missing.txt")


def test_local_table_encode_equals_model_encode(minilm_path, tmp_path):
    import sparsebert

    ids = [10 * i + 1 for i in range(len(TEXTS))]
    pq.write_table(pa.table({"id": ids, "text": TEXTS}), tmp_path / "in.parquet", row_group_size=4)
    res = encode_table(minilm_path, tmp_path / "in.parquet", tmp_path / "out", rows_per_piece=3,
                       rows_per_shard=4)
    assert res["rows"] == 9 and res["bad_rows"] == 2 and res["files"] >= 2
    assert [b["id"] for b in res["first_bad_rows"]] == [21, 51]
    out_ids, emb, errors = read_output(tmp_path / "out")
    assert out_ids == ids
    good = [i for i, t in enumerate(TEXTS) if t.strip()]
    expected = sparsebert.load(minilm_path).encode([TEXTS[i] for i in good])
    assert emb.dtype == np.float32 and emb.shape == (9, 384)
    assert float(np.abs(emb[good] - expected).max()) <= 1e-5
    assert np.isnan(emb[2]).all() and errors[5] == "empty text"
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        encode_table(minilm_path, tmp_path / "in.parquet", tmp_path / "out")


def _tamper(path, fn):
    table = pq.read_table(path)
    pq.write_table(fn(table), path)


@pytest.mark.parametrize("damage", ["lose", "duplicate", "swap"])
def test_verify_output_catches_lost_duplicated_and_wrong_ids(minilm_path, tmp_path, damage):
    (tmp_path / "in.txt").write_text("\n".join(t or "x" for t in TEXTS) + "\n", encoding="utf-8")
    encode_table(minilm_path, tmp_path / "in.txt", tmp_path / "out.parquet")
    plan = scan_input(tmp_path / "in.txt")
    assert verify_output(tmp_path / "out.parquet", plan)["rows"] == 9
    if damage == "lose":
        _tamper(tmp_path / "out.parquet", lambda t: t.slice(1))
    elif damage == "duplicate":
        _tamper(tmp_path / "out.parquet", lambda t: pa.concat_tables([t.slice(1), t.slice(2, 1)]))
    else:
        _tamper(tmp_path / "out.parquet",
                lambda t: t.set_column(0, "id", pa.array([99] + list(range(1, 9)), pa.int64())))
    with pytest.raises(SparseBertError, match="exactly once"):
        verify_output(tmp_path / "out.parquet", plan)


def test_cli_encode_npy_path_unchanged_and_table_errors(minilm_path, tmp_path, capsys):
    import sparsebert

    texts = ["a quiet engine", "winter light"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert main(["encode", minilm_path, "--input", str(tmp_path / "in.txt"),
                 "--output", str(tmp_path / "e.npy")]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 2
    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), sparsebert.load(minilm_path).encode(texts),
                               atol=1e-6)
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n', encoding="utf-8")
    assert main(["encode", minilm_path, "--input", str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "e2.npy")]) == 2
    assert "give a .parquet file or a folder" in capsys.readouterr().err
    assert main(["encode", minilm_path, "--input", str(tmp_path / "in.txt"), "--output",
                 str(tmp_path / "o.parquet"), "--actors", "2"]) == 2
    assert "--address and --actors need --ray" in capsys.readouterr().err


def test_ray_path_without_ray_names_the_extra(minilm_path, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    (tmp_path / "in.txt").write_text("a text\n", encoding="utf-8")
    with pytest.raises(MissingDependencyError, match=r"pip install 'sparsebert\[ray\]'"):
        encode_table(minilm_path, tmp_path / "in.txt", tmp_path / "out", ray=True)
    assert not (tmp_path / "out").exists()


def test_embedder_called_directly_texts_and_token_ids(minilm_path):
    """The map_batches callable outside Ray: one thread, bad rows marked, good rows = Model.encode."""
    pytest.importorskip("ray")
    import sparsebert
    from sparsebert.ray_data import Embedder

    model = sparsebert.load(minilm_path)
    table = Embedder(minilm_path)({"id": np.array([5, 6, 7]), "text": ["winter light", 3.5, "a quiet engine"]})
    assert table.column("id").to_pylist() == [5, 6, 7]
    errors = table.column("error").to_pylist()
    assert errors[0] is None and errors[2] is None and "float" in errors[1]
    emb = table.column("embedding").to_pylist()
    assert emb[1] is None
    np.testing.assert_allclose(np.array([emb[0], emb[2]], dtype=np.float32),
                               model.encode(["winter light", "a quiet engine"]), atol=1e-5)
    tokens = Embedder(minilm_path, token_column="input_ids")
    assert tokens.threads == 1
    ids = list(model.tokenizer(["winter light"]).encodings[0].ids)
    table = tokens({"id": ["a", "b", "c"], "input_ids": [ids, ["x"], []]})
    assert table.column("error").to_pylist()[0] is None
    assert all("token ids" in e for e in table.column("error").to_pylist()[1:])
    np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()[:1], dtype=np.float32),
                               model.encode(["winter light"]), atol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        Embedder(minilm_path, pooling="sum")
