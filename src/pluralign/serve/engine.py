"""The model side of the server: one worker thread owns the models and decodes queued requests in
dynamic batches.

Requests wait in a bounded queue (full: 503). The worker takes the first waiting request, then keeps
collecting for `batch_window_ms` (up to `max_batch` requests), groups what it has by what must be equal
to share a batch, and runs each group as ONE call:
- method "none" (plain sampling): one call of the batched KV-cached sampler (`decode.sampler.sample`)
  for every prompt of the group; its per-step hook streams tokens to their clients and drops the rows
  of clients that disconnected or ran past their deadline, so they stop costing compute at once;
- any registered decoder (bon, soft_bon, args, mod, genarm, ...): one `decode.api.decode` call with one
  `Controls` per row; decoders group rows internally where they must. Sequence-level selection can only
  answer once every candidate exists, so these stream their answer as one chunk, and a disconnect frees
  the client's slot at once but the batch it shares finishes.
A policy that carries a conditioning scheme (weights / direction / user / group reach the model through
it) samples the same way: its scheme rewrites each request's prompt or steers the model for the requests
that share a condition (`decode.api.conditioned_groups`, as `decode()` does for every decoder).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pluralign.decode.api import Controls
from pluralign.decode.rewards import checked_scores, reward_name, takes_user_ids
from pluralign.errors import PluralignError
from pluralign.serve.config import ServeConfig
from pluralign.serve.errors import APIError
from pluralign.serve.loading import Loaded, load
from pluralign.serve.logprobs import choice_logprobs, formatted, token_rows
from pluralign.serve.metrics import Metrics

log = logging.getLogger("pluralign.serve")

PLAIN = "none"


@dataclass
class Job:
    """One HTTP request: its prompts, n choices each, and the channel back to its handler. Choice
    `i * n + k` is sample k of prompt i (OpenAI's order)."""

    method: str
    prompts: list[Any]
    n: int
    controls: Controls
    reward: str | None
    stream: bool
    deadline: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives per token to report (0: the chosen tokens' log-probs only)
    chat: bool = False  # the reply's format (chat or legacy completions)
    cancelled: threading.Event = field(default_factory=threading.Event)
    sent: dict[int, str] = field(default_factory=dict)
    streamed: dict[int, tuple[int, str]] = field(default_factory=dict)  # tokens whose log-probs were sent, their text

    def emit(self, *event: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening any more
            pass

    @property
    def gone(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() > self.deadline

    def key(self) -> tuple:
        """Requests with equal keys share one batched call. OpenAI's `seed` promises the same answer to the same
        request, whatever arrived with it. Plain sampling keeps each request's draws its own (`sample`'s
        `owners`: a prompt repeated by another request does not take the next draws of its stream), so seeded
        requests, whatever their seeds, share a call. A decoding method's call counts a prompt's repeats
        across the call (`decode.streams.occurrences`), so a seeded request for one decodes alone."""
        if self.method != PLAIN:
            return (self.method, self.reward, *(() if self.controls.seed is None else (id(self),)))
        c = self.controls
        return (PLAIN, self.n, self.ignore_eos, c.chat_template, c.max_new_tokens, c.temperature, c.top_k, c.top_p,
                tuple(c.stop or ()), self.logprobs)

    def stream_text(self, choice: int, text: str, final: bool, steps: tuple | None = None) -> None:
        """Send the part of `text` not yet sent. Until the end, hold back what a stop string or an
        unfinished multi-byte character could still change. `steps` = (tokenizer, token ids, their
        log-probs, their alternatives) of the choice so far, when the request asks for log-probs: each
        chunk then carries those of the tokens its text completes."""
        if not self.stream:
            return
        prev = self.sent.get(choice, "")
        if not final:
            hold = max((len(s) for s in self.controls.stop or ()), default=1) - 1
            text = (text[: len(text) - hold] if hold else text).rstrip("\ufffd")
        if not text.startswith(prev):
            return
        logprobs = None
        if steps is not None and self.logprobs is not None:
            done, before = self.streamed.get(choice, (0, ""))
            rows = token_rows(*steps, text, self.logprobs, done, before)
            self.streamed[choice] = (done + len(rows), before + "".join(piece for piece, _, _ in rows))
            logprobs = formatted(rows, self.logprobs, self.chat, offset=len(before)) if rows else None
        if len(text) > len(prev) or logprobs is not None:
            self.emit("delta", choice, text[len(prev):], logprobs)
            self.sent[choice] = text


class Engine:
    def __init__(self, cfg: ServeConfig, metrics: Metrics, loaded: Loaded | None = None):
        self.cfg, self.metrics, self.loaded = cfg, metrics, loaded
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=cfg.queue_size)
        self.state = "loading"
        self.error = ""
        self.active = 0
        self._stop = threading.Event()
        self._reward_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.on_failure: Callable[[], None] | None = None  # called when the model fails to load (see `_failed`)

    # --- lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="pluralign-serve-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new work, finish what is queued, then stop the worker."""
        if self.state in ("ready", "loading"):
            self.state = "draining"
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_ready(self, timeout: float = 120.0) -> bool:
        end = time.monotonic() + timeout
        while self.state == "loading" and time.monotonic() < end:
            time.sleep(0.02)
        return self.state == "ready"

    def _main(self) -> None:
        try:
            if self.loaded is None:
                self.loaded = load(self.cfg)
            if self.state == "loading":
                self.state = "ready"
        except Exception as e:
            self._failed(e)
            return
        self._worker()

    def _failed(self, e: Exception) -> None:
        """A model that will not load: /health says so and requests get 503, or, when `on_failure` is set
        (the CLI stops the server and exits with the message, `runner.serve`), that handler is told."""
        self.state, self.error = "failed", (str(e).strip().splitlines() or [type(e).__name__])[0]
        bug = not isinstance(e, PluralignError)  # not a user mistake: its traceback goes to the log
        if bug or self.on_failure is None:
            log.error("model failed to load: %s", self.error, exc_info=bug)
        if self.on_failure is not None:
            self.on_failure()

    def submit(self, job: Job) -> None:
        if self.state != "ready":
            raise APIError(503, f"model is not ready ({self.state})", code="model_not_ready",
                           headers={"Retry-After": "1"})
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise APIError(503, "server busy: request queue is full, retry later", code="queue_full",
                           headers={"Retry-After": "1"}) from None

    # --- the worker
    def _worker(self) -> None:
        window = self.cfg.batch_window_ms / 1000.0
        most = self.cfg.max_batch if self.cfg.batching else 1
        while True:
            try:
                batch = [self.queue.get(timeout=0.05)]
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            end = time.monotonic() + (window if self.cfg.batching else 0.0)
            while len(batch) < most:
                try:
                    left = end - time.monotonic()
                    batch.append(self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait())
                except queue.Empty:
                    break
            self._run_batch(batch)

    def _run_batch(self, batch: list[Job]) -> None:
        groups: dict[tuple, list[Job]] = {}
        for job in batch:
            if job.cancelled.is_set():
                self.metrics.add("cancelled_total")
            elif job.gone:
                job.emit("error", APIError(504, "request deadline passed while queued", code="timeout"))
            else:
                groups.setdefault(job.key(), []).append(job)
        for jobs in groups.values():
            self.active = len(jobs)
            self._run_safely(jobs)
            self.active = 0

    def _run_safely(self, jobs: list[Job]) -> None:
        try:
            self.metrics.add("batches_total")
            self.metrics.add("batched_requests_total", len(jobs))
            if jobs[0].method == PLAIN:
                self._run_plain(jobs)
            else:
                with self._reward_lock:  # reward models (and their tokenizers) are not shared across threads
                    self._run_method(jobs, jobs[0].method)
        except PluralignError as e:
            if len(jobs) > 1:  # find whose request it was: run each alone
                for job in jobs:
                    self._run_safely([job])
            else:
                jobs[0].emit("error", APIError(422, str(e), code="unprocessable", param=getattr(e, "field", None)))
        except Exception:
            log.exception("decoding failed")  # the traceback stays in the server log
            for job in jobs:
                job.emit("error", APIError(500, "internal error while decoding", code="internal_error"))

    def _run_plain(self, jobs: list[Job]) -> None:
        """Plain sampling, streamed token by token. A conditioned policy samples the same way: its scheme
        rewrites each request's prompt or steers the model, one sampler call per group of requests that
        share a condition (`decode.api.conditioned_groups`)."""
        from pluralign.decode.api import conditioned_groups
        from pluralign.decode.kv import Compute
        from pluralign.decode.sampler import sample

        c, n, tok = jobs[0].controls, jobs[0].n, self.loaded.tokenizer
        owner = [(job, i) for job in jobs for i in range(len(job.prompts))]
        prompts = [job.prompts[i] for job, i in owner]
        drawn: list[tuple[Any, int]] = [None] * len(owner)  # (Samples, its row) of each prompt
        compute = Compute()
        for idx, shown, steered in conditioned_groups(self.loaded.model, tok, prompts,
                                                      [job.controls for job, _ in owner]):
            def on_step(gen: Any, first: int, idx: list[int] = idx) -> None:
                gone = {id(job): job.gone for job in jobs}
                for r, reason in enumerate(gen.reason):
                    job, i = owner[idx[first + r // n]]
                    if reason is not None:
                        continue
                    if gone[id(job)]:
                        gen.reason[r] = "cancelled"
                    elif job.stream:
                        steps = (tok, gen.tokens[r], gen.logps[r], gen.top[r]) if job.logprobs is not None else None
                        job.stream_text(i * n + r % n, gen.text(r), final=False, steps=steps)

            with steered():
                out = sample(self.loaded.model, tok, shown, n=n, max_new_tokens=c.max_new_tokens,
                             temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, stop=c.stop,
                             seed=[owner[i][0].controls.seed for i in idx], owners=[id(owner[i][0]) for i in idx],
                             eos=[] if jobs[0].ignore_eos else None, chat_template=c.chat_template,
                             max_rows=self.cfg.max_batch_rows, on_step=on_step, top_logprobs=jobs[0].logprobs or 0)
            compute.add(out.compute)
            for row, at in enumerate(idx):
                drawn[at] = (out, row)
        choices: dict[int, list[dict]] = {id(job): [] for job in jobs}
        steps: dict[int, list[tuple | None]] = {id(job): [] for job in jobs}
        for (job, _), (out, row) in zip(owner, drawn, strict=True):
            for k in range(n):
                choice = {"text": out.texts[row][k], "tokens": len(out.token_ids[row][k]),
                          "finish_reason": "length" if out.finish[row][k] == "length" else "stop"}
                tokens = None if job.logprobs is None else (  # only a request that asks pays for them
                    tok, out.token_ids[row][k], out.token_logps[row][k].tolist(),
                    out.top_logprobs and out.top_logprobs[row][k])
                if tokens is not None and not job.stream:
                    choice["logprobs"] = choice_logprobs(*tokens, out.texts[row][k], job.logprobs, job.chat)
                choices[id(job)].append(choice)
                steps[id(job)].append(tokens)
        for job in jobs:
            self._finish(job, choices[id(job)], {"forward": compute.forward, "tokens": compute.tokens}, steps[id(job)])

    def _run_method(self, jobs: list[Job], method: str) -> None:
        from pluralign.decode.api import decode
        from pluralign.decode.cli import method_kwargs
        from pluralign.decode.sampler import eos_ids, finish_reason

        reward = self.reward_source(jobs[0].reward)
        prompts, controls, where = [], [], []
        for job in jobs:
            for i, prompt in enumerate(job.prompts):
                for k in range(job.n):
                    prompts.append(prompt)
                    controls.append(job.controls.offset_seed(k))
                    where.append((job, i * job.n + k))
        tok = self.loaded.tokenizer
        res = decode(method, self.loaded.model, tok, prompts, reward=reward, controls=controls,
                     **method_kwargs(method, reward, tok, self.loaded.models))
        per_job: dict[int, list[dict]] = {id(job): [] for job in jobs}
        eos = eos_ids(tok, self.loaded.model)
        for row, (job, _) in enumerate(where):
            ids = res.info["token_ids"][row]  # every decoder reports each answer's generated ids
            choice = {"text": res.texts[row], "tokens": len(ids),
                      "finish_reason": finish_reason(ids, job.controls.max_new_tokens, eos, tok,
                                                    job.controls.stop)}
            if res.scores is not None:
                choice["scores"] = dict(zip(res.objectives, res.scores[row].tolist(), strict=True))
                choice["utility"] = float(res.utility[row])
            per_job[id(job)].append(choice)
        compute = {"forward": res.compute.forward, "tokens": res.compute.tokens,
                   "reward_evals": res.reward_compute.forward}
        for job in jobs:
            self._finish(job, per_job[id(job)], compute)

    def _finish(self, job: Job, choices: list[dict], compute: dict, steps: list[tuple | None] | None = None) -> None:
        """Answer `job`: its last streamed text (and, with `steps`, each choice's token log-probs not yet
        streamed, see `Job.stream_text`), then the choices."""
        if job.cancelled.is_set():
            self.metrics.add("cancelled_total")
            return
        if job.gone:
            job.emit("error", APIError(504, "request deadline passed", code="timeout"))
            return
        for idx, choice in enumerate(choices):
            job.stream_text(idx, choice["text"], final=True, steps=steps[idx] if steps else None)
        self.metrics.add("generated_tokens_total", sum(ch["tokens"] for ch in choices))
        job.emit("done", choices, dict(compute, batch_requests=self.active))

    # --- rewards
    def reward_source(self, name: str | None) -> Any:
        rewards = self.loaded.rewards if self.loaded else {}
        if name is None:
            return next(iter(rewards.values()), None)
        if not isinstance(name, str):  # a list or object was a 500 (unhashable) from /v1/rewards
            raise APIError(400, "'reward' must be the name of a served reward source", param="reward",
                           code="invalid_type")
        if name not in rewards:
            raise APIError(404 if rewards else 422, f"unknown reward source {name!r}; served: {sorted(rewards)}",
                           code="reward_not_found", param="reward")
        return rewards[name]

    def score(self, name: str | None, prompts: list[Any], responses: list[str], user: Any = None) -> Any:
        """Reward scores [N, m] from the named source, checked to be N rows of finite numbers (called from a
        thread pool; one scoring at a time per server)."""
        source = self.reward_source(name)
        if source is None:
            raise APIError(422, "this server has no reward source (start it with --reward)", code="no_reward")
        user = user if takes_user_ids(source) else None  # a multi-objective model's `user` is its weights
        with self._reward_lock:
            return checked_scores(source.score(prompts, responses, user=user), len(responses), reward_name(source))
