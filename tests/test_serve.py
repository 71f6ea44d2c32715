"""`sparsebert serve` against a real server process on 127.0.0.1: results, clients, limits, shutdown.

Each server is a child process (`sparsebert.serve.testing.ServerProcess`) on a free loopback port,
stopped with SIGTERM. Reference: `Model.encode` on the same texts in this process (itself checked
against sentence-transformers in test_reference_hf.py). Request counts are bounded; no timed
assertions. The long load runs are benchmarks/load_serve.py.
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import sparsebert  # noqa: E402
from sparsebert.serve.batcher import plan_batches  # noqa: E402
from sparsebert.serve.testing import ServerProcess  # noqa: E402

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}

WORDS = ("river mountain sparse kernel batch token server client queue memory latency window garden "
         "violin harbour lantern winter copper meadow falcon orchard").split()


def make_texts(n: int, seed: int) -> list[str]:
    """Distinct sentences of 2-60 words, so a mixed-up response cannot pass for the right one."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(2, 60)))
        out.append(f"item {seed}-{i}: " + " ".join(words))
    return out


@pytest.fixture(scope="module")
def model(minilm_path):
    return sparsebert.load(minilm_path)


@pytest.fixture(scope="module")
def server(minilm_path):
    with ServerProcess.sparsebert(minilm_path, "--api-key", KEY, "--max-inputs", "64",
                                  "--max-body-bytes", "65536", "--max-queue", "512",
                                  "--model-name", "all-MiniLM-L6-v2") as srv:
        yield srv


def post(srv, path, body, headers=AUTH, **kw):
    return httpx.post(srv.url + path, json=body, headers=headers, timeout=60, **kw)


def assert_same_texts(emb, model, texts, tol=1e-5):
    """Close to encode (batch composition moves the last bits) and each row nearest its own text."""
    ref = model.encode(texts)
    assert emb.shape == ref.shape and emb.dtype == np.float32
    assert float(np.abs(emb - ref).max()) <= tol
    assert (np.argmax(emb @ ref.T, axis=1) == np.arange(len(texts))).all()


# --- batch planning (pure) ---------------------------------------------------------------------


def test_plan_batches_respects_budget_and_size():
    lengths = [5, 40, 7, 40, 12, 3, 300, 9]
    batches = plan_batches(lengths, max_batch_tokens=100, max_batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [6]  # a row over the budget runs alone
    for b in batches:
        assert len(b) <= 3
        if len(b) > 1:
            assert len(b) * max(lengths[i] for i in b) <= 100
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


# --- results ---------------------------------------------------------------------------------


def test_embeddings_bitwise_equal_encode(server, model):
    """A request served alone runs in encode's own batches (sorted, 32 rows): identical bits."""
    texts = make_texts(38, seed=1) + ["The quick brown fox", "a"]  # two batches
    ref = model.encode(texts)
    r = post(server, "/v1/embeddings", {"input": texts, "model": "all-MiniLM-L6-v2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "all-MiniLM-L6-v2"
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    emb = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert np.array_equal(emb, ref)
    tokens = sum(len(e.ids) for e in model.tokenize(texts).encodings)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

    r = post(server, "/v1/embeddings", {"input": texts, "model": "x", "encoding_format": "base64"})
    emb64 = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]])
    assert np.array_equal(emb64, ref)

    r = post(server, "/embed", {"inputs": texts[0]})
    assert np.array_equal(np.array(r.json(), dtype=np.float32), model.encode(texts[:1]))
    r = post(server, "/embed", {"inputs": texts[:5], "normalize": False})
    assert np.array_equal(np.array(r.json(), dtype=np.float32), model.encode(texts[:5], normalize=False))


def test_concurrent_clients_get_their_own_results(server, model):
    jobs = [make_texts(int(n), seed=100 + k) for k, n in enumerate(np.tile([1, 3, 7, 16], 12))]

    def call(texts):
        path, key = ("/v1/embeddings", "input") if len(texts) % 2 else ("/embed", "inputs")
        r = post(server, path, {key: texts})
        assert r.status_code == 200, r.text
        data = r.json()
        return np.array([d["embedding"] for d in data["data"]] if path.startswith("/v1") else data,
                        dtype=np.float32)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, jobs))
    flat = [t for texts in jobs for t in texts]
    assert_same_texts(np.concatenate(results), model, flat)


def batch_size_counts(srv) -> dict[str, int]:
    """Cumulative sparsebert_batch_size histogram from /metrics: upper bound -> batches."""
    text = httpx.get(srv.url + "/metrics", headers=AUTH).text
    return {line.split('le="')[1].split('"')[0]: int(line.split()[-1]) for line in text.splitlines()
            if line.startswith("sparsebert_batch_size_bucket")}


def test_openai_client(server, model):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    texts = make_texts(5, seed=7)
    res = client.embeddings.create(input=texts, model="all-MiniLM-L6-v2")  # base64 on the wire
    emb = np.array([d.embedding for d in res.data], dtype=np.float32)
    assert np.array_equal(emb, model.encode(texts))
    assert res.usage.prompt_tokens > 0
    one = client.embeddings.create(input="The quick brown fox", model="m", encoding_format="float")
    assert np.array_equal(np.array(one.data[0].embedding, np.float32), model.encode(["The quick brown fox"])[0])
    with pytest.raises(openai.UnprocessableEntityError, match="dimensions"):
        client.embeddings.create(input="x y", model="m", dimensions=64)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            input="x", model="m")


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path,body,status,param", [
    ("/v1/embeddings", {"input": []}, 422, "input"),
    ("/v1/embeddings", {"model": "m"}, 422, "input"),
    ("/v1/embeddings", {"input": ["ok", 3]}, 422, "input[1]"),
    ("/v1/embeddings", {"input": [[101, 2023]]}, 422, "input[0]"),
    ("/v1/embeddings", {"input": ["ok", "   "]}, 422, "input[1]"),
    ("/v1/embeddings", {"input": "ok", "encoding_format": "int8"}, 422, "encoding_format"),
    ("/v1/embeddings", {"input": "ok", "dimensions": 128}, 422, "dimensions"),
    ("/v1/embeddings", {"input": ["t"] * 65}, 413, "input"),
    ("/v1/embeddings", {"input": ["ok", "word " * 300]}, 413, "input[1]"),
    ("/embed", {"inputs": None}, 422, "inputs"),
    ("/embed", {"inputs": "ok", "normalize": "yes"}, 422, "normalize"),
    ("/embed", {"inputs": {"a": 1}}, 422, "inputs"),
    ("/predict", {"inputs": "ok"}, 404, None),
])
def test_bad_requests_get_json_errors(server, path, body, status, param):
    r = post(server, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"]
    if status == 413 and param == "input":
        assert "64" in err["message"]  # names the limit
    if param == "input[1]" and status == 413:
        assert "256 tokens" in err["message"]


def test_malformed_and_oversized_bodies(server):
    r = httpx.post(server.url + "/v1/embeddings", content=b"{not json", headers=AUTH, timeout=30)
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/embeddings", content=b"[1, 2]", headers=AUTH, timeout=30)
    assert r.status_code == 422
    big = json.dumps({"input": ["x" * 70000]}).encode()
    r = httpx.post(server.url + "/v1/embeddings", content=big, headers=AUTH, timeout=30)
    assert r.status_code == 413 and "65536" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit applies while streaming
        for _ in range(10):
            yield b" " * 10000
    r = httpx.post(server.url + "/embed", content=chunks(), headers=AUTH, timeout=30)
    assert r.status_code == 413


def test_truncate_option(server, model):
    long = "lantern harbour " * 200
    r = post(server, "/embed", {"inputs": [long], "truncate": True})
    assert r.status_code == 200
    assert np.array_equal(np.array(r.json(), np.float32), model.encode([long]))  # encode truncates too


def test_api_key(server):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
        r = post(server, "/v1/embeddings", {"input": "hello"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/metrics").status_code == 401
    assert httpx.get(server.url + "/health").status_code == 200  # probes need no key


def test_info_and_metrics(server, model):
    info = httpx.get(server.url + "/info", headers=AUTH).json()
    assert info["version"] == sparsebert.__version__
    assert info["layers"] == model.config.num_hidden_layers and info["hidden_size"] == 384
    assert {lin["format"] for lin in info["sparsity"]["linears"]} <= {"dense", "csr", "bsr"}
    assert info["limits"]["api_key"] is None  # never echoed
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    for name in ("sparsebert_requests_total{", "sparsebert_request_latency_seconds_bucket{",
                 "sparsebert_batch_size_bucket{", "sparsebert_queue_depth ", "sparsebert_tokens_total ",
                 "sparsebert_batch_tokens_bucket{"):
        assert name in text
    assert 'sparsebert_requests_total{endpoint="/v1/embeddings",status="200"}' in text


# --- overload, disconnects, shutdown ----------------------------------------------------------


@pytest.fixture(scope="module")
def slow_server(minilm_path):
    """A tiny queue and a long batching wait, so queueing, overload and draining are observable."""
    with ServerProcess.sparsebert(minilm_path, "--max-queue", "8", "--max-inputs", "4",
                                  "--max-wait-ms", "400") as srv:
        yield srv


def test_overload_gives_503_not_500_and_bounded_memory(slow_server, model):
    texts = make_texts(4, seed=3)
    rss0 = slow_server.rss_bytes()

    def call(_):
        r = httpx.post(slow_server.url + "/v1/embeddings", json={"input": texts}, timeout=60)
        return r.status_code, r.headers.get("retry-after"), r.json()

    statuses = []
    for _ in range(3):
        with ThreadPoolExecutor(24) as pool:
            statuses += list(pool.map(call, range(24)))
    codes = [s for s, _, _ in statuses]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) > 0 and codes.count(200) >= 2  # at most 8 texts = 2 requests queue at once
    for code, retry, body in statuses:
        if code == 503:
            assert retry == "1" and body["error"]["code"] == "queue_full"
        else:
            emb = np.array([d["embedding"] for d in body["data"]], np.float32)
            assert_same_texts(emb, model, texts)
    assert slow_server.rss_bytes() - rss0 < 100 * 2**20
    counts = batch_size_counts(slow_server)  # requests of 4 texts were batched together
    assert counts["4"] < counts["8"] and counts["8"] == counts["+Inf"]  # never above the queue's 8


def test_disconnected_client_is_dropped_from_queue(slow_server):
    def dropped():
        text = httpx.get(slow_server.url + "/metrics").text
        return next(float(line.split()[-1]) for line in text.splitlines()
                    if line.startswith("sparsebert_dropped_inputs_total "))

    before = dropped()
    body = json.dumps({"input": ["first text", "second text"]}).encode()
    with socket.create_connection(("127.0.0.1", slow_server.port)) as s:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        time.sleep(0.05)  # queued, waiting up to 400 ms for a batch to fill
    for _ in range(50):
        if dropped() >= before + 2:
            break
        time.sleep(0.1)
    assert dropped() == before + 2
    assert httpx.get(slow_server.url + "/metrics").text.count("sparsebert_queue_depth 0") == 1


def test_sigterm_drains_accepted_requests(minilm_path, model):
    srv = ServerProcess.sparsebert(minilm_path, "--max-wait-ms", "3000", "--max-batch-size", "64").start()
    texts = [make_texts(3, seed=50 + i) for i in range(6)]
    results = [None] * len(texts)

    def call(i):
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": texts[i]}, timeout=60)
        results[i] = r

    try:
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        for _ in range(200):  # all six queued (the batcher waits 3 s for more)
            queued = "sparsebert_requests_in_flight 7" in httpx.get(srv.url + "/metrics").text
            if queued:  # six + this /metrics request
                break
            time.sleep(0.01)
        assert queued, "the six requests did not all reach the server"
        srv.terminate()
        for t in threads:
            t.join(60)
        code = srv.wait(60)
    finally:
        srv.stop()
    assert code == 0, srv.log()
    for i, r in enumerate(results):
        assert r is not None and r.status_code == 200, r
        emb = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
        assert_same_texts(emb, model, texts[i])
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/health", timeout=5)


# --- /predict and packaging --------------------------------------------------------------------


def test_predict_text_classification(tmp_path):
    pytest.importorskip("transformers")
    from pipeline_models import save_model  # tests/ is on sys.path
    from transformers import BertForSequenceClassification

    folder = str(save_model(tmp_path / "cls", BertForSequenceClassification, 1,
                            id2label={0: "negative", 1: "neutral", 2: "positive"},
                            label2id={"negative": 0, "neutral": 1, "positive": 2}))
    texts = ["the quick brown fox", "paris is the capital of france", "a cat in the house",
             "john works at google in new york city", "the river flows through many countries"]
    ref = sparsebert.pipeline("text-classification", folder)(texts, top_k=2)
    with ServerProcess.sparsebert(folder, "--task", "text-classification") as srv:
        with ThreadPoolExecutor(5) as pool:  # concurrent requests share batches
            got = list(pool.map(lambda t: post(srv, "/predict", {"inputs": t, "parameters": {"top_k": 2}},
                                               headers={}).json(), texts))
        whole = post(srv, "/predict", {"inputs": texts}, headers={}).json()
        bad = post(srv, "/predict", {"inputs": texts, "parameters": {"top_q": 1}}, headers={})
        emb = post(srv, "/embed", {"inputs": texts}, headers={})
    for ours, theirs in zip(got, ref):
        assert [d["label"] for d in ours] == [d["label"] for d in theirs]
        assert np.allclose([d["score"] for d in ours], [d["score"] for d in theirs], atol=1e-5)
    assert [d["label"] for d in whole] == [r[0]["label"] for r in ref]
    assert bad.status_code == 422 and "top_q" in bad.json()["error"]["message"]
    assert emb.status_code == 200 and np.array(emb.json()).shape == (5, 32)


def test_runtime_and_cli_help_do_not_import_the_serve_stack(minilm_path):
    code = ("import sys, sparsebert; m = sparsebert.load(sys.argv[1]); m.encode(['a b']);"
            "from sparsebert.cli import build_parser; build_parser();"
            "bad = [k for k in ('starlette', 'uvicorn', 'torch', 'ray') if k in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, minilm_path], check=True, timeout=300)


def test_missing_serve_stack_names_the_pip_line():
    code = ("import sys; sys.modules['uvicorn'] = None\n"
            "from sparsebert.serve import create_app\n"
            "from sparsebert.errors import MissingDependencyError\n"
            "try:\n    create_app(None)\nexcept MissingDependencyError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'sparsebert[serve]'" in out.stdout, out.stderr


# --- short load run (the long ones: benchmarks/load_serve.py) -------------------------------------


@pytest.mark.parametrize("requests", [pytest.param(300, id="ci"),
                                      pytest.param(20000, id="long", marks=pytest.mark.slow)])
def test_load_no_lost_or_mixed_responses(request, server, model, requests):
    """32 closed-loop clients, one text per request (the load benchmark's generator): every response
    is 200 and carries its own text's vector."""
    expr = request.config.getoption("markexpr") or ""
    if requests > 300 and ("slow" not in expr or "not slow" in expr):
        pytest.skip("long load run: select it with -m slow")
    pytest.importorskip("aiohttp")
    import asyncio
    import os

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from load_serve import run_level

    texts = make_texts(500, seed=11)
    expected = dict(zip(texts, model.encode(texts)))
    row = asyncio.run(run_level(server.url, texts, expected, concurrency=32, requests=requests,
                                time_limit=3600, headers=AUTH))
    assert row["requests"] == requests and row["ok"] == requests, row
    assert row["lost"] == 0 and row["mixed"] == 0, row
