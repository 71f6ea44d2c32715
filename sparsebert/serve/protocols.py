"""The server's wire protocols: request bodies in, validated arguments out, and the response bodies.

Pure functions on parsed JSON; no HTTP, no model, no batching (those are `app.py`'s). Each protocol
is the shape its clients already speak:
- OpenAI embeddings (`POST /v1/embeddings`): `input` str or list of str, `model`, `encoding_format`
  float or base64, `dimensions` only equal to the model's width; answers `data` + `usage`;
- Hugging Face text-embeddings-inference (`POST /embed`): `inputs`, `normalize`, `truncate`;
  answers a list of vectors;
- the Hugging Face Inference API (`POST /predict`): `{"inputs": ..., "parameters": {...}}` for the
  server's task pipeline.
Errors are `HTTPError`s, rendered in the OpenAI shape `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import base64
import json

import numpy as np


class HTTPError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


_ERROR_TYPES = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
                422: "invalid_request_error", 503: "overloaded_error"}


def error_body(err: HTTPError) -> dict:
    """The OpenAI error shape, which every endpoint answers with."""
    return {"error": {"message": err.message, "type": _ERROR_TYPES.get(err.status, "server_error"),
                      "param": err.param, "code": err.code}}


def check_texts(value, field: str, max_inputs: int) -> list[str]:
    """A request's texts: a string or a non-empty list of non-blank strings, at most max_inputs."""
    if value is None:
        raise HTTPError(422, f"'{field}' is required: a string or a list of strings", field)
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise HTTPError(422, f"'{field}' must be a string or a list of strings, got "
                             f"{type(value).__name__}", field)
    if not texts:
        raise HTTPError(422, f"'{field}' is empty: send at least one string", field)
    if len(texts) > max_inputs:
        raise HTTPError(413, f"'{field}' has {len(texts)} inputs; the limit is "
                             f"{max_inputs} per request (split the request)",
                        field, "too_many_inputs")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            hint = "; token-id inputs are not supported, send text" if isinstance(t, (int, list)) else ""
            raise HTTPError(422, f"'{field}[{i}]' must be a string, got {type(t).__name__}{hint}",
                            f"{field}[{i}]")
        if not t.strip():
            raise HTTPError(422, f"'{field}[{i}]' is empty or whitespace: send non-empty text",
                            f"{field}[{i}]")
    return texts


def openai_request(body: dict, dim: int, max_inputs: int) -> tuple[list[str], str]:
    """OpenAI embeddings request -> (texts, encoding format "float" or "base64")."""
    texts = check_texts(body.get("input"), "input", max_inputs)
    fmt = body.get("encoding_format", "float")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise HTTPError(422, f"'encoding_format' must be 'float' or 'base64', got {fmt!r}",
                        "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or dims != dim):
        raise HTTPError(422, f"'dimensions' {dims!r} is not supported: this model returns "
                             f"{dim}-dimensional embeddings only (omit 'dimensions')",
                        "dimensions", "unsupported_dimensions")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise HTTPError(422, f"'model' must be a string, got {type(model).__name__}", "model")
    return texts, fmt


def openai_response(emb: np.ndarray, fmt: str, model_name: str, tokens: int) -> dict:
    if fmt == "float":
        vectors = emb.tolist()
    else:
        vectors = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in emb]
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def tei_request(body: dict, max_inputs: int) -> tuple[list[str], bool, bool]:
    """text-embeddings-inference `/embed` request -> (texts, normalize, truncate)."""
    texts = check_texts(body.get("inputs"), "inputs", max_inputs)
    normalize = body.get("normalize", True)
    truncate = body.get("truncate", False)
    for name, value in (("normalize", normalize), ("truncate", truncate)):
        if not isinstance(value, bool):
            raise HTTPError(422, f"'{name}' must be true or false, got {value!r}", name)
    direction = body.get("truncation_direction", "Right")
    if direction not in ("Right", "right"):
        raise HTTPError(422, f"'truncation_direction' {direction!r} is not supported; only 'Right'",
                        "truncation_direction")
    return texts, normalize, truncate


def predict_request(body: dict, pipeline, max_inputs: int) -> tuple[list, bool, tuple]:
    """Inference API request for `pipeline` -> (inputs, whether one input came unwrapped, the
    parameters as a hashable batching key)."""
    inputs = body.get("inputs")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise HTTPError(422, f"'parameters' must be an object, got {type(params).__name__}", "parameters")
    unknown = sorted(set(params) - set(pipeline.defaults))
    if unknown:
        raise HTTPError(422, f"unknown parameters {unknown} for {pipeline.task}; it accepts "
                             f"{sorted(pipeline.defaults)}", "parameters")
    single = not isinstance(inputs, list)
    items = [inputs] if single else inputs
    if pipeline.task == "question-answering":
        items = qa_inputs(items, max_inputs)
    else:
        items = check_texts(inputs, "inputs", max_inputs)
    try:
        key = tuple(sorted(params.items()))
        hash(key)
    except TypeError:
        raise HTTPError(422, "'parameters' values must be strings, numbers or booleans", "parameters") from None
    return items, single, key


def qa_inputs(items: list, max_inputs: int) -> list:
    """question-answering inputs: {question, context} objects with non-empty strings."""
    if not items:
        raise HTTPError(422, "'inputs' is empty: send at least one {question, context} object", "inputs")
    if len(items) > max_inputs:
        raise HTTPError(413, f"'inputs' has {len(items)} inputs; the limit is {max_inputs}",
                        "inputs", "too_many_inputs")
    for i, x in enumerate(items):
        if not (isinstance(x, dict) and isinstance(x.get("question"), str)
                and isinstance(x.get("context"), str) and x["question"].strip() and x["context"].strip()):
            raise HTTPError(422, f"'inputs[{i}]' must be an object with non-empty string 'question' "
                                 "and 'context'", f"inputs[{i}]")
    return [{"question": x["question"], "context": x["context"]} for x in items]


def jsonable(x):
    """Pipeline results as JSON values (NumPy arrays and scalars to lists and numbers)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x
