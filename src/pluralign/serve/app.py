"""The HTTP side: routes, authentication, limits, streaming and errors (see `pluralign.serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from pluralign.decode.api import names as method_names
from pluralign.decode.api import weights_order_problem
from pluralign.decode.cli import unused_controls
from pluralign.decode.kv import context_window, window_problem
from pluralign.decode.rewards import objective_names, weight_vector, weighted, weights_problem
from pluralign.errors import PluralignError
from pluralign.serve import protocol as P
from pluralign.serve.checks import check_extra, conditioned_prompts, method_inputs_problem, prompt_token_ids
from pluralign.serve.config import ServeConfig
from pluralign.serve.engine import PLAIN, Engine, Job
from pluralign.serve.errors import APIError
from pluralign.serve.limits import Keys, Limiter, load_keys
from pluralign.serve.loading import Loaded
from pluralign.serve.metrics import Metrics

log = logging.getLogger("pluralign.serve")


class SSEResponse(StreamingResponse):
    """A server-sent-event stream that runs `on_close` however it ends (finished, failed, or the client
    went away), so the request's slot is freed and its work cancelled."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class Server:
    """State shared by the handlers: config, engine, keys, limits, metrics."""

    def __init__(self, cfg: ServeConfig, loaded: Loaded | None = None, keys: list[str] | None = None):
        self.cfg = cfg
        self.metrics = Metrics()
        self.engine = Engine(cfg, self.metrics, loaded)
        self.keys = Keys(load_keys(cfg.api_key_file) if keys is None else keys)
        self.limiter = Limiter(cfg.rate_limit, cfg.max_concurrent)
        self.started = int(time.time())

    # --- plumbing shared by every /v1 route
    async def read_body(self, request: Request) -> dict:
        cap = self.cfg.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > cap:
            raise APIError(413, f"request body larger than {cap} bytes", code="body_too_large")
        raw, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size > cap:
                raise APIError(413, f"request body larger than {cap} bytes", code="body_too_large")
            raw.append(part)
        return P.parse_json(b"".join(raw))

    def route(self, endpoint: str, handler: Callable, body: bool = True) -> Callable:
        async def run(request: Request) -> Response:
            t0, release, resp = time.monotonic(), None, None
            try:
                release = self.limiter.admit(self.keys.identify(request.headers.get("authorization")))
                data = await self.read_body(request) if body else {}
                resp = await handler(request, data, release)
            except APIError as e:
                resp = e.response()
            except PluralignError as e:
                resp = APIError(422, str(e), code="unprocessable", param=getattr(e, "field", None)).response()
            finally:
                if not isinstance(resp, SSEResponse):
                    if release is not None:
                        release()
                    self.metrics.request(endpoint, resp.status_code if resp is not None else 500,
                                         time.monotonic() - t0 if body else None)
            return resp

        return run

    def ready(self) -> Loaded:
        if self.engine.state != "ready":
            raise APIError(503, f"model is not ready ({self.engine.state})", code="model_not_ready",
                           headers={"Retry-After": "1"})
        return self.engine.loaded

    # --- handlers
    async def health(self, request: Request) -> Response:
        e = self.engine
        body = {"status": e.state, "model": e.loaded.name if e.loaded else None, "queue": e.queue.qsize()}
        if e.error:
            body["error"] = e.error
        return JSONResponse(body, status_code=200 if e.state == "ready" else 503)

    async def metrics_text(self, request: Request, _: dict, __: Any) -> Response:
        e = self.engine
        text = self.metrics.render({"model_ready": float(e.state == "ready"), "queue_depth": e.queue.qsize(),
                                    "requests_in_flight": self.limiter.inflight(), "batch_active_requests": e.active})
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def models(self, request: Request, _: dict, __: Any) -> Response:
        loaded = self.ready()
        data = [{"id": loaded.name, "object": "model", "created": self.started, "owned_by": "pluralign",
                 "pluralign": {"kind": "policy", "methods": [PLAIN, *method_names()], "rewards": list(loaded.rewards)}}]
        for name, src in loaded.rewards.items():
            data.append({"id": name, "object": "model", "created": self.started, "owned_by": "pluralign",
                         "pluralign": {"kind": "reward", "objectives": getattr(src, "objectives", None)}})
        return JSONResponse({"object": "list", "data": data})

    async def completions(self, request: Request, body: dict, release: Callable[[], None]) -> Response:
        return await self.generate(request, body, release, chat=False)

    async def chat(self, request: Request, body: dict, release: Callable[[], None]) -> Response:
        return await self.generate(request, body, release, chat=True)

    def check_request(self, body: dict, chat: bool) -> tuple[str, list[Any], int, Any, int]:
        loaded = self.ready()
        model = body.get("model")
        if model is not None and model != loaded.name:
            raise APIError(404, f"model {model!r} is not served here; served: {loaded.name!r}", param="model",
                           code="model_not_found")
        P.check_known(body, "/v1/chat/completions" if chat else "/v1/completions")
        P.check_unsupported(body)
        method = body.get("method", PLAIN)
        if not isinstance(method, str) or method not in (PLAIN, *method_names()):
            raise APIError(400, f"unknown method {method!r}; known: {[PLAIN, *method_names()]}", param="method",
                           code="unknown_method")
        if method == PLAIN and body.get("best_of") is not None:
            raise APIError(400, "'best_of' is the candidate count of an alignment method: set 'method' too",
                           param="best_of")
        prompts = [P.chat_prompt(body.get("messages"))] if chat else P.completion_prompts(body)
        vocab = getattr(getattr(loaded.model, "config", None), "vocab_size", None)
        for i, p in enumerate(prompts):  # token ids the model has no embedding for failed the batch: a 500
            if vocab and not chat and not isinstance(p, str) and not all(0 <= t < vocab for t in p):
                raise APIError(400, f"prompt {i}: token ids must be in [0, {vocab}) for this model", param="prompt",
                               code="invalid_prompt")
        n = P._number(body, "n", int, 1, 1, self.cfg.max_n)
        controls = P.controls_from(body, self.cfg)
        check_extra(method, controls)
        if not chat and "chat_template" not in body and "chat_template" not in (body.get("controls") or {}):
            controls = controls.replace(chat_template="never")  # /v1/completions: the prompt as given (OpenAI)
        source = self.engine.reward_source(body.get("reward"))
        if why := method_inputs_problem(method, source is not None, bool(loaded.models)):
            raise APIError(422, why, param="method", code="method_unavailable")
        # steering nothing reads (no scheme, and no decoder's reward, or one that reads no direction or group)
        # would answer as if it had steered; `user` is OpenAI's end-user id as well, left out of this check
        unread = unused_controls(loaded.model, None if method == PLAIN else source, [controls.replace(user=None)],
                                 loaded.models if method == "mod" else [], name="the served model")
        if unread:
            fields = unread.split(" given")[0].split(", ")  # a reward reads weights, never direction or group
            advice = ("; use an alignment method (e.g. 'method': 'bon' with a reward)"
                      if method == PLAIN and fields == ["weights"] else "")
            raise APIError(400, unread + advice, param=unread.split(",")[0].split()[0], code="unused_control")
        if source is not None and (why := weights_problem(source, controls.weights)
                                   or method != PLAIN and weights_order_problem(loaded.model, source, controls.weights)):
            raise APIError(422, f"weights: {why}", param="weights", code="invalid_weights")
        ids = prompt_token_ids(loaded.tokenizer, conditioned_prompts(loaded.model, loaded.tokenizer, prompts, controls,
                                                                   self.cfg.unknown_users),
                               controls.chat_template)
        longest = max(len(x) for x in ids)
        if longest > self.cfg.max_prompt_tokens:
            raise APIError(400, f"prompt has {longest} tokens, above the limit {self.cfg.max_prompt_tokens}",
                           param="prompt", code="context_length_exceeded")
        if why := window_problem(longest, controls.max_new_tokens, context_window(loaded.model)):
            raise APIError(400, why.replace("max_new_tokens", "max_tokens"), param="max_tokens",
                           code="context_length_exceeded")
        if len(prompts) * n > self.cfg.max_batch_rows:
            raise APIError(400, f"{len(prompts)} prompts x n={n} exceeds {self.cfg.max_batch_rows} sequences",
                           param="n")
        return method, prompts, n, controls, sum(len(x) for x in ids)

    async def generate(self, request: Request, body: dict, release: Callable[[], None], chat: bool) -> Response:
        method, prompts, n, controls, prompt_tokens = self.check_request(body, chat)
        stream = body.get("stream", False)
        ignore_eos = body.get("ignore_eos", False)
        if not isinstance(stream, bool) or not isinstance(ignore_eos, bool):
            raise APIError(400, "'stream' and 'ignore_eos' must be true or false", code="invalid_type")
        if ignore_eos and method != PLAIN:
            raise APIError(400, "'ignore_eos' applies to method 'none' only", param="ignore_eos")
        usage_chunk = P.include_usage(body, stream)  # checked before the request is queued
        logprobs = P.logprobs_request(body, chat)
        if logprobs is not None and method != PLAIN:
            raise APIError(400, "token log-probs are returned for plain sampling (method 'none') only: a "
                           "decoder's answer is not the model's own sample", param="logprobs")
        job = Job(logprobs=logprobs, chat=chat, ignore_eos=ignore_eos, method=method, prompts=prompts, n=n, controls=controls, reward=body.get("reward"), stream=stream,
                  deadline=time.monotonic() + self.cfg.deadline_s, loop=asyncio.get_running_loop(),
                  events=asyncio.Queue())
        self.engine.submit(job)
        rid, model = P.new_id("chatcmpl" if chat else "cmpl"), self.engine.loaded.name
        if not stream:
            kind, *rest = await self.wait(request, job)
            if kind == "error":
                raise rest[0]
            return JSONResponse(P.completion_body(rid, model, rest[0], prompt_tokens, rest[1], chat))
        t0 = time.monotonic()

        def close() -> None:
            job.cancelled.set()
            release()
            self.metrics.request("chat" if chat else "completions", 200, time.monotonic() - t0)

        return SSEResponse(self.sse(job, rid, model, chat, len(prompts) * n, prompt_tokens, usage_chunk), close)

    async def wait(self, request: Request, job: Job) -> tuple:
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), 0.25)
            except TimeoutError:
                if await request.is_disconnected():
                    job.cancelled.set()
                    raise APIError(499, "client closed the request", code="client_closed") from None
                if time.monotonic() > job.deadline + 1.0:
                    job.cancelled.set()
                    raise APIError(504, "request deadline passed", code="timeout") from None
                continue
            if event[0] != "delta":
                return event

    async def sse(self, job: Job, rid: str, model: str, chat: bool, n_choices: int, prompt_tokens: int,
                  include_usage: bool) -> AsyncIterator[str]:
        if chat:
            for i in range(n_choices):
                yield P.chunk(rid, model, i, chat, text="", role=True)
        while True:
            try:
                event = await asyncio.wait_for(job.events.get(), max(0.1, job.deadline + 1.0 - time.monotonic()))
            except TimeoutError:
                event = ("error", APIError(504, "request deadline passed", code="timeout"))
            if event[0] == "delta":
                yield P.chunk(rid, model, event[1], chat, text=event[2], logprobs=event[3])
                continue
            if event[0] == "error":
                yield f"data: {json.dumps(event[1].body())}\n\n"
                return
            choices = event[1]
            for i, c in enumerate(choices):
                yield P.chunk(rid, model, i, chat, finish=c["finish_reason"], ext=P.extension(c))
            if include_usage:
                body = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                        "created": int(time.time()), "model": model, "choices": [],
                        "usage": P.usage(prompt_tokens, choices)}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
            return

    async def rewards(self, request: Request, body: dict, _: Any) -> Response:
        self.ready()
        P.check_known(body, P.REWARDS)
        pairs = body.get("input")
        if isinstance(pairs, list):
            if not all(isinstance(x, dict) for x in pairs):
                raise APIError(400, "'input' must be a list of {prompt, response} objects", param="input")
            prompts, responses = [x.get("prompt") for x in pairs], [x.get("response") for x in pairs]
            where = "input[{}].prompt"
        else:
            prompts, responses = body.get("prompts"), body.get("responses")
            where = "prompts[{}]"
        if not (isinstance(prompts, list) and isinstance(responses, list) and prompts and len(prompts) == len(responses)):
            raise APIError(400, "give 'input': [{prompt, response}, ...] or equal-length 'prompts' and 'responses'",
                           param="input")
        prompts = [p if isinstance(p, str) else P.chat_prompt(p, where.format(k)) for k, p in enumerate(prompts)]
        if not all(isinstance(r, str) for r in responses):
            raise APIError(400, "every response must be a string", param="responses")
        if len(prompts) > self.cfg.max_batch_rows:
            raise APIError(400, f"at most {self.cfg.max_batch_rows} pairs per request", param="input")
        name = body.get("reward", body.get("model"))
        users = body.get("users")
        if users is not None and not (isinstance(users, list) and users):
            raise APIError(400, "'users' must be a non-empty list", param="users")
        weights = body.get("weights")
        # checked and read as a decoding request's are (an integer is an id, not a reward model's row)
        checked = [P.checked_controls(weights=weights, user=u).user for u in (users if users is not None else [body.get("user")])]
        per_user = {}
        for u in checked:
            per_user[u] = await asyncio.to_thread(self.engine.score, name, prompts, responses, u)
        source = self.engine.reward_source(name)
        first = next(iter(per_user.values()))
        objectives = objective_names(source, first.shape[1] if first.dim() == 2 else 1)
        try:
            w = weight_vector(weights, objectives) if weights is not None else None
            rewards = {u: weighted(s if s.dim() == 2 else s[:, None], w)
                       for u, s in per_user.items()} if w is not None else {}
        except PluralignError as e:
            raise APIError(422, f"weights: {e}", param="weights", code="invalid_weights") from None
        data = []
        for i in range(len(prompts)):
            row: dict[str, Any] = {"index": i}
            for u, s in per_user.items():
                s2 = s if s.dim() == 2 else s[:, None]
                entry: dict[str, Any] = {"scores": dict(zip(objectives, s2[i].tolist(), strict=True))}
                if w is not None:
                    entry["reward"] = float(rewards[u][i])
                if users is None:
                    row.update(entry)
                else:
                    row.setdefault("per_user", {})[str(u)] = entry
            data.append(row)
        return JSONResponse({"object": "list", "model": name or next(iter(self.engine.loaded.rewards), None),
                             "objectives": objectives, "data": data})


def create_app(cfg: ServeConfig, loaded: Loaded | None = None, keys: list[str] | None = None) -> Starlette:
    """The ASGI app. `loaded` skips loading from `cfg.model` (tests); `keys` replaces the key file/env."""
    srv = Server(cfg, loaded, keys)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        srv.engine.start()
        yield
        await asyncio.to_thread(srv.engine.stop, cfg.graceful_timeout_s)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        msg = {404: f"no such endpoint: {request.url.path}", 405: f"method {request.method} not allowed here"}
        return APIError(exc.status_code, msg.get(exc.status_code, str(exc.detail))).response()

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return APIError(500, "internal server error", code="internal_error").response()

    routes = [
        Route("/health", srv.health, methods=["GET"]),
        Route("/metrics", srv.route("metrics", srv.metrics_text, body=False), methods=["GET"]),
        Route("/v1/models", srv.route("models", srv.models, body=False), methods=["GET"]),
        Route("/v1/completions", srv.route("completions", srv.completions), methods=["POST"]),
        Route("/v1/chat/completions", srv.route("chat", srv.chat), methods=["POST"]),
        Route("/v1/rewards", srv.route("rewards", srv.rewards), methods=["POST"]),
    ]
    middleware = [Middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])] if cfg.cors_origins else []
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: crash})
    app.state.server = srv
    return app
