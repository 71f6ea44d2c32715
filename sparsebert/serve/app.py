"""The ASGI application (Starlette): embeddings and pipeline endpoints over one dynamic batcher.

This module is the HTTP plumbing (body limits, auth, queueing, disconnects, metrics, routes) and
the model thread; what each endpoint accepts and answers is in `protocols.py`.

Endpoints (wire-compatible with what clients already speak):
- POST /v1/embeddings: OpenAI embeddings API (`input` str or list of str, `model`, `encoding_format`
  float or base64, `dimensions` only equal to the model's width, `usage` token counts); the `openai`
  Python client works against it (it asks for base64 by default).
- POST /embed: Hugging Face text-embeddings-inference shape (`inputs`, `normalize`, `truncate`);
  answers a list of vectors.
- POST /predict: the `--task` pipeline (text-classification, token-classification, question-answering,
  fill-mask), `{"inputs": ..., "parameters": {...}}` as the Hugging Face Inference API.
- GET /health, GET /info (model, layers, sparsity, formats, version, limits), GET /metrics
  (Prometheus text).

Embeddings are `Model.encode`'s arithmetic (`batching.pool`: mean over the mask, then L2 normalisation), run
on batches formed across requests by `batcher.Batcher`. Errors are JSON in the OpenAI shape,
`{"error": {"message", "type", "param", "code"}}`: 413 for a body, input count or input length over a
limit, 422 for malformed or empty inputs, 401 without the API key, 503 with Retry-After when the
queue is full or the server is draining.

Left out: token-id inputs (`input` as integer lists: our tokenizer is not OpenAI's), sparse or
reranking endpoints, TEI's left truncation, streaming responses, TLS (put a proxy in front).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import time

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import SparseBertError
from ..batching import l2_normalize, pool
from ..tokenizer import collate
from .batcher import Batcher, QueueFull, ShuttingDown
from .metrics import ServerMetrics
from .protocols import (HTTPError, error_body, jsonable, openai_request, openai_response,
                        predict_request, tei_request)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Server limits. Token counts include the [CLS]/[SEP] specials, as the model sees them."""

    max_batch_tokens: int = 8192  # padded tokens (rows x longest) per encoder batch
    max_batch_size: int = 32  # rows per encoder batch (Model.encode's default batch_size)
    max_wait_ms: float = 5.0  # how long the oldest queued text may wait for a batch to fill
    max_queue: int = 2048  # texts waiting for a batch; beyond it: 503 + Retry-After
    max_inputs: int = 256  # texts per request; beyond it: 413
    max_body_bytes: int = 2 * 1024 * 1024  # request body; beyond it: 413
    auto_truncate: bool = False  # truncate over-long texts instead of answering 413 (TEI's flag)
    api_key: str | None = None  # bearer token required on every endpoint but /health
    model_name: str = "sparsebert"

    def __post_init__(self):
        for name in ("max_batch_tokens", "max_batch_size", "max_queue", "max_inputs", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if self.max_inputs > self.max_queue:
            raise ValueError(f"max_inputs ({self.max_inputs}) must not exceed max_queue "
                             f"({self.max_queue}): such a request could never be queued")


def _error_response(err: HTTPError) -> JSONResponse:
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers)


class EmbeddingServer:
    """Owns the model, the optional task pipeline, the batcher and the metrics; builds the app."""

    def __init__(self, model, config: ServeConfig, pipeline=None):
        if model.tokenizer is None:
            raise SparseBertError("serving needs a tokenizer; load the model with tokenizer=...")
        self.model = model
        self.pipeline = pipeline
        self.config = config
        self.in_flight = 0
        self.metrics = ServerMetrics(lambda: self.batcher.queue_depth, lambda: self.in_flight)
        self.batcher = Batcher(self._run_batch, max_batch_tokens=config.max_batch_tokens,
                               max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                               max_queue=config.max_queue, metrics=self.metrics)
        self.dim = model.config.hidden_size
        self.max_length = model.tokenizer.max_length

    # -- the model thread ----------------------------------------------------------------------

    def _run_batch(self, key, payloads: list) -> list:
        if key is None:  # embeddings: payloads are tokenizer encodings
            ids, mask, types = collate(payloads, self.model.tokenizer.pad_id)
            hidden = self.model(ids, mask, types).last_hidden_state  # (B, T, H)
            # Model.encode's mean pooling, normalised later per request (normalize is per request)
            return list(pool(hidden, mask, "mean", normalize=False))
        options = dict(key)
        try:
            return self.pipeline(list(payloads), **options)
        except (SparseBertError, ValueError, TypeError):
            # One bad input must not fail the other requests of its batch: run them one by one.
            out = []
            for p in payloads:
                try:
                    out.append(self.pipeline([p], **options)[0])
                except (SparseBertError, ValueError, TypeError) as exc:
                    out.append(exc)
            return out

    # -- request plumbing ----------------------------------------------------------------------

    def _check_auth(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise HTTPError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                            code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _read_json(self, request: Request) -> dict:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                            code="body_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(422, f"request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise HTTPError(422, f"request body must be a JSON object, got {type(body).__name__}",
                            code="invalid_body")
        return body

    def _tokenize(self, texts: list[str], field: str, truncate: bool) -> list:
        encodings = self.model.tokenizer.backend.encode_batch(texts)
        if not truncate:
            for i, e in enumerate(encodings):
                if e.overflowing:
                    raise HTTPError(413, f"'{field}[{i}]' is longer than the model's limit of "
                                         f"{self.max_length} tokens; shorten it, or set truncate "
                                         f"(/embed) or start the server with --auto-truncate",
                                    f"{field}[{i}]", "input_too_long")
        return encodings

    async def _submit(self, request: Request, lengths, payloads, key=None) -> list:
        """Queue the texts and wait for their results; drop them if the client goes away."""
        try:
            job = self.batcher.submit(lengths, payloads, key)
        except QueueFull as exc:
            self.metrics.rejected.inc("queue_full")
            raise HTTPError(503, f"server overloaded: {exc}; retry later", code="queue_full",
                            headers={"Retry-After": "1"}) from None
        except ShuttingDown as exc:
            self.metrics.rejected.inc("shutting_down")
            raise HTTPError(503, str(exc), code="shutting_down", headers={"Retry-After": "1"}) from None
        # After the body is read, the next ASGI receive() only returns on disconnect.
        disconnect = asyncio.ensure_future(request.receive())
        try:
            await asyncio.wait({job.future, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not disconnect.done():
                disconnect.cancel()
        if not job.future.done():
            self.batcher.cancel(job)
            raise _ClientGone()
        return job.future.result()

    def _handler(self, endpoint: str, func):
        async def handle(request: Request) -> Response:
            start = time.perf_counter()
            self.in_flight += 1
            status = 500
            try:
                self._check_auth(request)
                response = await func(request)
            except HTTPError as err:
                response = _error_response(err)
            except _ClientGone:
                status = 499  # nginx's code for "client closed request": nobody reads this response
                response = Response(status_code=499)
            finally:
                self.in_flight -= 1
            status = response.status_code
            self.metrics.requests.inc(endpoint, str(status))
            self.metrics.latency.observe(time.perf_counter() - start, endpoint)
            return response
        return handle

    # -- endpoints -----------------------------------------------------------------------------

    async def _embed_texts(self, request, texts, field, endpoint, normalize, truncate) -> tuple:
        encodings = self._tokenize(texts, field, truncate)
        lengths = [len(e.ids) for e in encodings]
        rows = await self._submit(request, lengths, encodings)
        emb = np.stack(rows)
        if normalize:  # Model.encode's normalisation
            l2_normalize(emb)
        tokens = int(sum(lengths))
        self.metrics.inputs.inc(endpoint, amount=len(texts))
        self.metrics.tokens.inc(amount=tokens)
        return emb, tokens

    async def openai_embeddings(self, request: Request) -> Response:
        texts, fmt = openai_request(await self._read_json(request), self.dim, self.config.max_inputs)
        emb, tokens = await self._embed_texts(request, texts, "input", "/v1/embeddings", True,
                                              self.config.auto_truncate)
        return JSONResponse(openai_response(emb, fmt, self.config.model_name, tokens))

    async def tei_embed(self, request: Request) -> Response:
        texts, normalize, truncate = tei_request(await self._read_json(request), self.config.max_inputs)
        emb, _ = await self._embed_texts(request, texts, "inputs", "/embed", normalize,
                                         truncate or self.config.auto_truncate)
        return JSONResponse(emb.tolist())

    async def predict(self, request: Request) -> Response:
        if self.pipeline is None:
            raise HTTPError(404, "this server runs no task pipeline; start it with --task", code="no_task")
        items, single, key = predict_request(await self._read_json(request), self.pipeline,
                                             self.config.max_inputs)
        lengths = [max(1, len(json.dumps(x)) // 4) for x in items]  # rough token estimate for batching
        results = await self._submit(request, lengths, items, key)
        for i, r in enumerate(results):
            if isinstance(r, Exception):
                raise HTTPError(422, f"inputs[{i}]: {r}", f"inputs[{i}]")
        self.metrics.inputs.inc("/predict", amount=len(items))
        return JSONResponse(jsonable(results[0] if single else results))

    async def health(self, request: Request) -> Response:
        if self.batcher._closing:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def info(self, request: Request) -> Response:
        report = self.model.sparsity_report()
        cfg = self.model.config
        return JSONResponse(jsonable({
            "model": self.config.model_name,
            "source": str(self.model.source) if self.model.source is not None else None,
            "version": __version__,
            "task": self.pipeline.task if self.pipeline is not None else None,
            "hidden_size": cfg.hidden_size,
            "layers": cfg.num_hidden_layers,
            "max_input_tokens": self.max_length,
            "sparsity": report,
            "limits": dataclasses.asdict(dataclasses.replace(self.config, api_key=None)),
        }))

    async def metrics_text(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type="text/plain; version=0.0.4")

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app):
            await self.batcher.start()
            try:
                yield
            finally:
                await self.batcher.stop()

        async def health(request):  # no API key: load balancers probe it
            return await self.health(request)

        routes = [
            Route("/v1/embeddings", self._handler("/v1/embeddings", self.openai_embeddings), methods=["POST"]),
            Route("/embed", self._handler("/embed", self.tei_embed), methods=["POST"]),
            Route("/predict", self._handler("/predict", self.predict), methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/info", self._handler("/info", self.info), methods=["GET"]),
            Route("/metrics", self._handler("/metrics", self.metrics_text), methods=["GET"]),
        ]
        return Starlette(routes=routes, lifespan=lifespan)


class _ClientGone(Exception):
    """The client disconnected while its texts were queued."""
