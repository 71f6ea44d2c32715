"""`sparsebert serve`: an HTTP server for embeddings and task pipelines, with dynamic batching.

    pip install 'sparsebert[serve]'
    sparsebert serve path/to/model [--task text-classification] [--port 8080] [--api-key KEY]

`create_app(model, config, pipeline=None)` builds the Starlette application (`app.py`: endpoints,
limits, errors); `batcher.py` forms token-budget batches across requests and runs them on one model
thread; `metrics.py` renders Prometheus text; `cli.py` adds the subcommand and runs uvicorn.
The runtime (`import sparsebert`) never imports this package; starlette and uvicorn are imported here
only, and their absence raises MissingDependencyError with the pip line.

Left out: multiple model replicas or processes per server (run one server per core group behind a
proxy), TLS, hot model reloading.
References: OpenAI embeddings API (https://platform.openai.com/docs/api-reference/embeddings),
text-embeddings-inference's /embed (https://huggingface.github.io/text-embeddings-inference/),
Prometheus text format 0.0.4.
"""

from __future__ import annotations

from ..errors import MissingDependencyError

_PIP = "pip install 'sparsebert[serve]'"


def _require_serve_stack() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"sparsebert serve needs starlette and uvicorn ({exc.name} is missing); install them "
            f"with `{_PIP}`"
        ) from exc


def create_app(model, config=None, pipeline=None):
    """The ASGI app serving `model` (a sparsebert.Model) and, optionally, a task `pipeline` on it."""
    _require_serve_stack()
    from .app import EmbeddingServer, ServeConfig

    return EmbeddingServer(model, config or ServeConfig(), pipeline).app()


__all__ = ["create_app"]
