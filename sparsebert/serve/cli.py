"""The `sparsebert serve` subcommand: load a model (and task pipeline), run the app on uvicorn.

uvicorn handles SIGTERM/SIGINT: it stops accepting connections, lets in-flight requests finish
(their texts are already queued, and the batcher keeps running until they are answered), then runs
the app's shutdown, which drains the batcher. `--drain-timeout` bounds that wait.
"""

from __future__ import annotations

import argparse
import signal
import sys

DEFAULT_PORT = 8080


def cmd_serve(args) -> None:
    from . import _require_serve_stack

    _require_serve_stack()
    import uvicorn

    from ..api import load
    from .app import EmbeddingServer, ServeConfig

    config = ServeConfig(
        max_batch_tokens=args.max_batch_tokens, max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, max_inputs=args.max_inputs,
        max_body_bytes=args.max_body_bytes, auto_truncate=args.auto_truncate, api_key=args.api_key,
        model_name=args.model_name or args.path.rstrip("/").split("/")[-1],
    )
    pipeline = None
    if args.task is not None:
        from ..pipelines import pipeline as make_pipeline

        pipeline = make_pipeline(args.task, args.path, layers=args.layers)
        model = pipeline.model
    else:
        model = load(args.path, layers=args.layers)
    if config.max_batch_tokens < model.tokenizer.max_length:
        raise ValueError(f"--max-batch-tokens {config.max_batch_tokens} is below the model's input "
                         f"limit of {model.tokenizer.max_length} tokens; raise it")
    model.encode(["warm-up: compile the kernels before the first request"])
    server = EmbeddingServer(model, config, pipeline)
    # The model thread drops the GIL inside every kernel and needs it back between kernels (dozens of
    # times per batch); with the event loop busy parsing requests, each hand-back waits up to the
    # switch interval (5 ms by default), which stretched batches under load. A short interval keeps
    # the model thread's gaps short at little cost to the loop.
    sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    # uvicorn catches SIGTERM/SIGINT while it runs, drains, then re-raises the signal to the handler
    # that was installed before it: make that one a no-op, so a drained server exits with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    uvicorn.run(server.app(), host=args.host, port=args.port, log_level=args.log_level,
                timeout_graceful_shutdown=args.drain_timeout, access_log=False)
    return None


def add_commands(sub) -> None:
    from ..pipelines import TASKS

    p = sub.add_parser(
        "serve", help="HTTP server: OpenAI /v1/embeddings, TEI /embed, /predict, with dynamic batching",
        description="Serve a model over HTTP (needs `pip install 'sparsebert[serve]'`). Requests are "
                    "batched across clients by token budget.")
    p.add_argument("path", help="model: Hugging Face folder, .onnx file or deployment folder")
    p.add_argument("--task", choices=sorted(set(TASKS) - {"feature-extraction", "sentence-embedding"}),
                   default=None, help="also serve this pipeline on POST /predict")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--max-batch-tokens", type=int, default=8192,
                   help="padded tokens (rows x longest) per encoder batch")
    p.add_argument("--max-batch-size", type=int, default=32,
                   help="rows per encoder batch (32, as Model.encode, gives a lone request encode's bits)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="longest wait of the oldest queued text for a batch to fill")
    p.add_argument("--max-queue", type=int, default=2048,
                   help="queued texts; beyond it requests get 503 with Retry-After")
    p.add_argument("--max-inputs", type=int, default=256, help="texts per request (beyond: 413)")
    p.add_argument("--max-body-bytes", type=int, default=2 * 1024 * 1024, help="request body limit (413)")
    p.add_argument("--auto-truncate", action="store_true",
                   help="truncate texts over the model's token limit instead of answering 413")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (not on /health)")
    p.add_argument("--model-name", default=None, help="model name reported by the API (default: folder name)")
    p.add_argument("--layers", type=_layers, default=None, help="keep only these encoder layers")
    p.add_argument("--drain-timeout", type=int, default=30,
                   help="seconds to let in-flight requests finish on SIGTERM")
    p.add_argument("--switch-interval-ms", type=float, default=0.2,
                   help="Python's GIL switch interval in this process (Python's default is 5)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=cmd_serve)


def _layers(value: str) -> list[int]:
    from ..cli import _layers as parse

    return parse(value)
