"""`pluralign serve`: an OpenAI-compatible HTTP server with per-request alignment controls.

Endpoints: /v1/models, /v1/completions, /v1/chat/completions (JSON or server-sent events), /v1/rewards
(reward scores per objective, per user for PAL), /health (503 until the model is loaded), /metrics
(Prometheus text). The alignment controls (method, weights, user, best_of, reward, any `Controls` field)
travel in the request body: the `openai` client sends them with `extra_body` (see `protocol`).

Framework: Starlette on uvicorn. Starlette is the small, well-kept ASGI toolkit that FastAPI is built on;
we use it directly because every request body here is parsed and checked by hand anyway (the error
format and status codes must be OpenAI's, not pydantic's 422 for everything), so FastAPI's model layer
would add a dependency and a second validation path without doing any of the work. Uvicorn gives the
HTTP/1.1 server, keep-alive, client-disconnect events for streaming, and graceful shutdown (stop
accepting, let in-flight requests finish, then run our shutdown, which drains the queue).

Layout: `config` (settings and limits), `limits` (API keys, rate and concurrency limits), `protocol`
(request parsing, response shapes), `engine` (the worker thread and its dynamic batcher), `app` (routes
and streaming), `metrics`, `runner` (uvicorn, in the foreground or a background thread), `cli`.
The server's dependencies are the `serve` extra (`pip install 'pluralign[serve]'`).
The vLLM backend is not implemented: generation always runs on the batched KV-cached sampler.
"""

from typing import Any

# Imported on first use, so that `pluralign --help` and the config work without the `serve` extra.
_EXPORTS = {"create_app": "pluralign.serve.app", "ServeConfig": "pluralign.serve.config",
            "Loaded": "pluralign.serve.engine", "Background": "pluralign.serve.runner", "serve": "pluralign.serve.runner"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pluralign.serve' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
