"""The peer a user would otherwise write: sentence-transformers behind a minimal OpenAI-style endpoint.

`python benchmarks/st_server.py MODEL PORT` serves POST /v1/embeddings (one `model.encode` call per
request, no cross-request batching) and GET /health on 127.0.0.1, for benchmarks/load_serve.py when
Infinity is not installed. Not part of sparsebert.
"""

import base64
import sys

import uvicorn
from sentence_transformers import SentenceTransformer
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse
from starlette.routing import Route

model = SentenceTransformer(sys.argv[1], device="cpu")


async def embeddings(request):
    body = await request.json()
    texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    emb = await run_in_threadpool(model.encode, texts, batch_size=32, normalize_embeddings=True)
    if body.get("encoding_format") == "base64":
        vectors = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in emb]
    else:
        vectors = emb.tolist()
    return JSONResponse({"object": "list", "model": body.get("model", ""),
                         "data": [{"object": "embedding", "index": i, "embedding": v}
                                  for i, v in enumerate(vectors)]})


async def health(request):
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"]),
                        Route("/health", health)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
