"""sparsebert on Ray Data, on a 2-CPU local cluster this module starts once (loopback only) and stops.

Every embedding is checked against `Model.encode` run in this process on the same texts; every job's
output ids are checked complete and unique by reading the Parquet files, independently of the job's
own end-of-run check. One test SIGKILLs an actor process mid-job.
"""

import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="pip install 'sparsebert[ray]'")
pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

from sparsebert.cli import main  # noqa: E402
from sparsebert.encode_job import encode_table  # noqa: E402
from sparsebert.ray_data import local_actor_pids  # noqa: E402
from sparsebert.tables import read_output  # noqa: E402

WORDS = ("the a river model quiet sparse engine reads long short winter light of and to in "
         "every stone carries music beyond graph tokens small whole runs cold bright").split()


def make_texts(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n)]


def init_loopback_cluster():
    """A 2-CPU local Ray whose sockets all stay on 127.0.0.1: by default Ray swaps loopback for the
    machine's network address (so that other nodes could join); Ray's switch for single-machine
    clusters keeps it on loopback."""
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read by the processes ray.init starts
    ray_constants.ENABLE_RAY_CLUSTER = False  # already read by this one
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert ray._private.worker._global_node.node_ip_address == "127.0.0.1"


@pytest.fixture(scope="module")
def cluster():
    saved = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    init_loopback_cluster()
    yield
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    else:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = saved


@pytest.fixture(scope="module")
def model(minilm_path):
    import sparsebert

    return sparsebert.load(minilm_path)


def assert_same_embeddings(out_ids, out_emb, text_of, model):
    """Output rows equal model.encode of the texts with the same ids (text_of: id → text)."""
    expected = model.encode([text_of[i] for i in out_ids])
    assert out_emb.shape == expected.shape and out_emb.dtype == np.float32
    diff = float(np.abs(out_emb - expected).max())
    assert diff <= 1e-5, f"Ray embeddings differ from local encode by {diff:.3g}"


def test_text_file_on_ray_equals_local_encode(cluster, model, minilm_path, tmp_path):
    texts = make_texts(300, seed=1)
    texts[7] = ""  # a bad row: reported with its id, not a crash
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    res = encode_table(minilm_path, tmp_path / "in.txt", tmp_path / "out", ray=True, actors=2,
                       rows_per_piece=64, rows_per_shard=100)
    assert res["rows"] == 300 and res["bad_rows"] == 1
    assert res["first_bad_rows"] == [{"id": 7, "error": "empty text"}]
    assert res["files"] >= 2  # shards of ~100 rows
    ids, emb, errors = read_output(tmp_path / "out")
    assert ids == list(range(300))
    assert errors[7] == "empty text" and np.isnan(emb[7]).all()
    keep = [i for i in range(300) if i != 7]
    assert_same_embeddings([ids[i] for i in keep], emb[keep], dict(enumerate(texts)), model)


def test_cli_jsonl_with_string_ids_and_bad_rows(cluster, model, minilm_path, tmp_path, capsys):
    texts = make_texts(120, seed=2)
    rows = [{"id": f"doc-{i:04d}", "text": t} for i, t in enumerate(texts)]
    rows[3]["text"] = 42
    rows[50]["text"] = None
    del rows[99]["text"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "emb.parquet"
    # one actor with both CPUs: Numba gets 2 threads, and no separate read stage may wait for a CPU
    assert main(["encode", minilm_path, "--input", str(tmp_path / "in.jsonl"), "--output", str(out),
                 "--ray", "--actors", "1", "--cpus-per-actor", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 120 and summary["bad_rows"] == 3 and summary["engine"] == "ray"
    table = pq.read_table(out)
    assert table.schema.field("id").type == pa.string()
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 384)
    ids, emb, errors = read_output(out)
    bad = {i: e for i, e in zip(ids, errors) if e is not None}
    assert set(bad) == {"doc-0003", "doc-0050", "doc-0099"}
    assert "int" in bad["doc-0003"] and "NoneType" in bad["doc-0050"] and "no 'text'" in bad["doc-0099"]
    good = [i for i in range(120) if i not in (3, 50, 99)]
    assert_same_embeddings([ids[i] for i in good], emb[good],
                           {f"doc-{i:04d}": t for i, t in enumerate(texts)}, model)


def test_encode_dataset_user_pipeline_texts_and_token_ids(cluster, model, minilm_path):
    from sparsebert.ray_data import encode_dataset

    texts = make_texts(80, seed=3)
    ds = ray.data.from_items([{"id": 1000 + i, "text": t} for i, t in enumerate(texts)])
    table = pa.concat_tables(list(encode_dataset(ds, minilm_path, actors=1, rows_per_batch=32)
                                  .iter_batches(batch_format="pyarrow", batch_size=None))).sort_by("id")
    assert table.column("id").to_pylist() == [1000 + i for i in range(80)]
    emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    assert float(np.abs(emb - model.encode(texts)).max()) <= 1e-5

    enc = model.tokenizer(texts[:10]).encodings
    token_rows = [{"id": i, "input_ids": list(e.ids)} for i, e in enumerate(enc)]
    token_rows.append({"id": 10, "input_ids": [101, 10 ** 6, 102]})  # out of vocabulary: a bad row
    ds = ray.data.from_items(token_rows)
    table = pa.concat_tables(list(encode_dataset(ds, minilm_path, actors=1, token_column="input_ids")
                                  .iter_batches(batch_format="pyarrow", batch_size=None))).sort_by("id")
    errors = table.column("error").to_pylist()
    assert errors[:10] == [None] * 10 and "token ids" in errors[10]
    emb = np.array(table.column("embedding").to_pylist()[:10], dtype=np.float32)
    assert float(np.abs(emb - model.encode(texts[:10])).max()) <= 1e-5


def test_embedder_takes_numba_threads_from_the_actor_cpus(cluster, minilm_path):
    from sparsebert.ray_data import Embedder

    @ray.remote
    def threads_in_worker():
        import numba

        e = Embedder(minilm_path)
        return e.threads, numba.get_num_threads()

    for cpus in (1, 2):
        assert ray.get(threads_in_worker.options(num_cpus=cpus).remote()) == (cpus, cpus)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor processes through /proc")
def test_killed_actor_mid_job_loses_and_duplicates_nothing(cluster, model, minilm_path, tmp_path):
    texts = make_texts(600, seed=4)
    table = pa.table({"id": pa.array(np.arange(600, dtype=np.int64) * 7 + 3), "text": texts})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=250)
    killed = []

    def kill_one_actor(done, total):
        if killed or done < 60:
            return
        pids = local_actor_pids()
        assert pids, "no Ray Data actor process found to kill"
        os.kill(pids[0], signal.SIGKILL)
        killed.append((pids[0], done))

    res = encode_table(minilm_path, tmp_path / "in.parquet", tmp_path / "out", ray=True, actors=2,
                       rows_per_piece=30, on_progress=kill_one_actor)
    assert killed and killed[0][1] < 600, "the actor was not killed mid-job"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0][0], 0)
    assert res["rows"] == 600 and res["bad_rows"] == 0
    ids = pq.read_table(tmp_path / "out", columns=["id"]).column("id").to_pylist()
    assert len(ids) == 600 and sorted(ids) == [i * 7 + 3 for i in range(600)]
    out_ids, emb, _ = read_output(tmp_path / "out")
    assert_same_embeddings(out_ids, emb, {i * 7 + 3: t for i, t in enumerate(texts)}, model)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor processes through /proc")
def test_repeated_kills_over_a_longer_job(cluster, model, minilm_path, tmp_path, request):
    """Nightly size: 4,000 rows, an actor killed at every ~15% of progress (each restarted actor
    is a new target); every id still written exactly once, every embedding equal to local."""
    expr = request.config.getoption("markexpr") or ""
    if "slow" not in expr or "not slow" in expr:
        pytest.skip("long run: select with -m slow")
    texts = make_texts(4000, seed=5)
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    kills = []

    def kill_often(done, total):
        if done >= 0.15 * total * (len(kills) + 1) and done < total:
            pids = local_actor_pids()
            if pids:
                os.kill(pids[len(kills) % len(pids)], signal.SIGKILL)
                kills.append(done)

    res = encode_table(minilm_path, tmp_path / "in.txt", tmp_path / "out", ray=True, actors=2,
                       rows_per_piece=50, on_progress=kill_often)
    assert len(kills) >= 3 and res["rows"] == 4000
    out_ids, emb, _ = read_output(tmp_path / "out")
    assert out_ids == list(range(4000))
    assert_same_embeddings(out_ids, emb, dict(enumerate(texts)), model)
