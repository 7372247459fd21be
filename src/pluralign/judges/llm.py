"""An LLM judge over any OpenAI-compatible ``/chat/completions`` HTTP endpoint (OpenAI, vLLM, llama.cpp,
TGI, a local pluralign server…), over httpx.

* Pairwise verdicts in MT-Bench format (Zheng et al. 2023) or AlpacaEval 2's weighted one-token format
  (Dubois et al. 2024), returned in AlpacaEval's encoding (1 = a, 2 = b, 1.5 = tie, NaN = unparseable).
* Each pair is judged in both orders by default and the swapped verdict is un-swapped (3 − p) before
  averaging, which cancels position bias (Wang et al. 2023, "Large Language Models are not Fair
  Evaluators"); ``order="random"`` judges one random order per pair, as AlpacaEval does.
* Transient failures (timeouts, connection errors, HTTP 408/429/5xx) are retried with exponential
  backoff; other HTTP errors fail at once. After the last retry a :class:`JudgeRequestError` is raised
  (or the item becomes NaN with ``on_error="nan"``).
* Successful responses are cached on disk, one JSON file per request, keyed by the SHA-256 of the URL and
  request body (never the API key) and written atomically, so re-running an evaluation is free. Only
  replies whose verdict or grade can be read are cached (and only those are taken from the cache): a server
  that sent garbage, or a judge that answered off-format, is asked again on the next run.
* Requests run in a thread pool of ``concurrency`` workers.

The endpoint is treated as untrusted: ``timeout`` is a deadline for the whole call (connect, send, every
read), not per read, so a server dripping bytes cannot hold a call; a reply larger than
``max_response_bytes`` is refused; redirects are followed only within the same origin (scheme, host,
port), so the API key never reaches another server; and the reply variants OpenAI-compatible servers send
(``message`` as a string, ``content`` as a list of parts, legacy ``text``) are read, while anything else —
no choices, no message, a non-numeric log-prob — is a :class:`JudgeError`, never another exception.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from pluralign.errors import ConfigError
from pluralign.judges import templates as T
from pluralign.judges.base import check_judged, combine_orders, unswap
from pluralign.judges.replies import JudgeError, reply_parts
from pluralign.runs import atomic_write_json, check_writable

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
MAX_REDIRECTS = 5
_DEFAULT_PORTS = {"http": 80, "https": 443}


class JudgeRequestError(JudgeError):
    """The judge endpoint could not be reached or kept failing; the message names the URL and cause."""


class _Transient(Exception):
    """A failure worth retrying."""


class LLMJudge:
    """Judge with a chat model behind an OpenAI-compatible HTTP API.

    `base_url` is the API root (e.g. ``http://127.0.0.1:8000/v1``); the key is read from the environment
    variable named `api_key_env` (``None``: send no key, as local servers usually need none).
    `mode` is ``"verdict"`` (reason, then ``[[A]]``/``[[B]]``/``[[C]]``) or ``"weighted"`` (one token
    m/M, preference from its log-probs). `order` is ``"both"``, ``"random"`` or ``"original"``.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 mode: str = "verdict", order: str = "both", temperature: float = 0.0, max_tokens: int = 512,
                 timeout: float = 60.0, max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0,
                 concurrency: int = 4, cache_dir: str | os.PathLike | None = None, on_error: str = "raise",
                 pairwise_system: str = T.PAIRWISE_SYSTEM, pairwise_template: str = T.PAIRWISE_TEMPLATE,
                 single_system: str = T.SINGLE_SYSTEM, single_template: str = T.SINGLE_TEMPLATE,
                 rating_range: tuple[float, float] = (1.0, 10.0), seed: int = 0,
                 extra_body: dict | None = None, max_response_bytes: int = 4 * 2**20):
        if not (isinstance(base_url, str) and base_url.startswith(("http://", "https://"))):
            # else an AttributeError traceback (a number), or retries of an unusable URL before failing
            raise ConfigError(f"LLMJudge base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                              f"not {base_url!r}")
        if not (isinstance(model, str) and model):
            raise ConfigError(f"LLMJudge model must be the served model's name (text), not {model!r}")
        whole = lambda x, least: isinstance(x, int) and not isinstance(x, bool) and x >= least
        for name, value, least in (("max_tokens", max_tokens, 1), ("concurrency", concurrency, 1),
                                   ("max_retries", max_retries, 0)):
            if not whole(value, least):  # "a" was sent to the server, or a TypeError from the thread pool
                raise ConfigError(f"LLMJudge {name} must be an integer >= {least}, not {value!r}")
        if mode not in ("verdict", "weighted"):
            raise ConfigError(f"LLMJudge mode must be 'verdict' or 'weighted', not {mode!r}")
        if order not in ("both", "random", "original"):
            raise ConfigError(f"LLMJudge order must be 'both', 'random' or 'original', not {order!r}")
        if on_error not in ("raise", "nan"):
            raise ConfigError(f"LLMJudge on_error must be 'raise' or 'nan', not {on_error!r}")
        if not (isinstance(timeout, int | float) and 0 < timeout < math.inf):
            raise ConfigError(f"LLMJudge timeout (seconds for a whole call) must be a positive number, not {timeout!r}")
        low_high = tuple(rating_range) if isinstance(rating_range, list | tuple) else ()
        real = lambda x: isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
        for name, value in (("temperature", temperature), ("backoff", backoff), ("max_backoff", max_backoff)):
            if not (real(value) and value >= 0):  # else a sleep(-1) traceback at the first retry, or HTTP 400 late
                raise ConfigError(f"LLMJudge {name} must be a number >= 0, not {value!r}")
        if not isinstance(extra_body, Mapping | None):  # else a TypeError from dict() naming no argument
            raise ConfigError(f"LLMJudge extra_body must be a mapping of request fields, not {extra_body!r}")
        for name, value in (("pairwise_system", pairwise_system), ("single_system", single_system)):
            if not isinstance(value, str):  # else sent as the message's content, refused by the server at the end
                raise ConfigError(f"LLMJudge {name} must be text, not {value!r}")
        if not (isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0):
            raise ConfigError(f"LLMJudge seed must be an integer >= 0 (order='random' draws the orders), not {seed!r}")
        if not (len(low_high) == 2 and all(map(real, low_high)) and low_high[0] < low_high[1]):  # (10, 1): all NaN
            raise ConfigError(f"LLMJudge rating_range must be (low, high) with low < high, not {rating_range!r}")
        if not (isinstance(max_response_bytes, int) and max_response_bytes > 0):
            raise ConfigError(f"LLMJudge max_response_bytes must be a positive integer, not {max_response_bytes!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.mode, self.order = model, mode, order
        self.api_key = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise ConfigError(f"environment variable {api_key_env} (the judge's API key) is not set; "
                                  "set it, or pass api_key_env=None for a server that needs no key")
        self.temperature, self.max_tokens, self.timeout = temperature, max_tokens, timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.concurrency, self.on_error, self.seed = max(1, concurrency), on_error, seed
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir is not None:  # else found at the first reply cached, once every model had generated
            check_writable(self.cache_dir, "cache_dir", directory=True)
        self.pairwise_system = pairwise_system
        self.pairwise_template = T.check_template("pairwise_template", pairwise_template, T.PAIRWISE_FIELDS)
        self.single_system = T.single_system_for(*low_high) if single_system == T.SINGLE_SYSTEM else single_system
        self.single_template = T.check_template("single_template", single_template, T.SINGLE_FIELDS)
        self.rating_range, self.extra_body = (float(low_high[0]), float(low_high[1])), dict(extra_body or {})
        self.max_response_bytes = max_response_bytes
        self.stats: Counter = Counter()
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None

    # ---- requests -------------------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def _body(self, system: str, user: str, weighted: bool = False) -> dict:
        body = {"model": self.model, "messages": [{"role": "system", "content": system},
                                                  {"role": "user", "content": user}],
                "temperature": self.temperature, "max_tokens": 1 if weighted else self.max_tokens}
        if weighted:
            body.update(logprobs=True, top_logprobs=5)
        body.update(self.extra_body)
        return body

    def _cache_path(self, body: dict) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps({"url": self.url, "body": body}, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def _http(self) -> httpx.Client:
        with self._lock:  # one pooled client, shared by the worker threads (httpx clients are thread-safe)
            if self._client is None:
                limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
                self._client = httpx.Client(follow_redirects=False, limits=limits, trust_env=False)
            return self._client

    def check_reachable(self, setting: str = "base_url") -> None:
        """A `ConfigError` naming `setting` (where the user gave the URL) when nothing answers there (no server, a wrong host or port), so
        an evaluation fails before its models generate, not after. Any HTTP reply to ``GET base_url/models``
        counts as an answer (a server need not list its models), and so does one too slow to come; only a
        connection that fails does not. With replies in `cache_dir` it is a warning: a rerun may need none."""
        probe = self.url.removesuffix("/chat/completions") + "/models"
        try:
            self._http().get(probe, timeout=httpx.Timeout(min(self.timeout, 10.0))).close()
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout):
            return  # connected: a server is there, busy
        except httpx.HTTPError as e:
            problem = (f"{setting} {self.url.removesuffix('/chat/completions')}: nothing answers there "
                       f"({type(e).__name__}: {e}); start the judge's server or correct {setting}")
            if self.cache_dir is not None and next(self.cache_dir.rglob("*.json"), None) is not None:
                warnings.warn(f"{problem}; going on with the replies cached in {self.cache_dir} (any other "
                              "request will fail)", stacklevel=2)
                return
            raise ConfigError(problem, field=setting) from None

    def close(self) -> None:
        """Close the pooled HTTP connections (also done when the judge is garbage-collected)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _post_once(self, body: dict) -> dict:
        """One POST, redirects within the origin included, under one deadline for the whole call."""
        deadline = time.monotonic() + self.timeout
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        payload, url = json.dumps(body).encode("utf-8"), httpx.URL(self.url)
        for _ in range(MAX_REDIRECTS + 1):
            status, raw, location = self._exchange(url, payload, headers, deadline)
            if location is None:
                break
            target = url.join(location)
            if _origin(target) != _origin(url):
                raise JudgeError(f"{self.url}: the server redirected to {target}, another origin; not followed "
                                 "(the API key is only ever sent to the configured server)")
            url = target
        else:
            raise JudgeError(f"{self.url}: more than {MAX_REDIRECTS} redirects")
        if status in RETRYABLE_STATUS:
            raise _Transient(f"HTTP {status}: {raw[:300].decode('utf-8', 'replace')}")
        if not 200 <= status < 300:
            raise JudgeRequestError(f"{self.url}: HTTP {status}: {raw[:300].decode('utf-8', 'replace')}")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise _Transient(f"malformed response body (not JSON): {raw[:200]!r}") from None
        return data

    def _exchange(self, url: httpx.URL, payload: bytes, headers: dict, deadline: float) -> tuple[int, bytes, str | None]:
        """(status, body, redirect location or None); every wait is bounded by what is left of `deadline`."""
        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Transient(f"no complete reply within the {self.timeout} s deadline")
            return remaining

        client = self._http()
        request = client.build_request("POST", url, content=payload, headers=headers, timeout=httpx.Timeout(left()))
        try:
            response = client.send(request, stream=True)
        except httpx.TimeoutException:
            raise _Transient(f"no complete reply within the {self.timeout} s deadline") from None
        except httpx.HTTPError as e:
            raise _Transient(f"{type(e).__name__}: {e}") from None
        try:
            if response.is_redirect:
                return response.status_code, b"", response.headers["location"]
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_response_bytes:
                raise JudgeError(f"{self.url}: reply of {declared} bytes exceeds max_response_bytes="
                                 f"{self.max_response_bytes}")
            # Reads after the headers wait at most until the deadline (httpcore reads this per body).
            request.extensions["timeout"] = dict(request.extensions.get("timeout", {}), read=left())
            chunks, size = [], 0
            for chunk in response.iter_bytes():  # decoded: a compressed bomb is capped too
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise JudgeError(f"{self.url}: reply exceeds max_response_bytes={self.max_response_bytes}")
                chunks.append(chunk)
                left()
            return response.status_code, b"".join(chunks), None
        except httpx.TimeoutException:
            raise _Transient(f"no complete reply within the {self.timeout} s deadline") from None
        except httpx.HTTPError as e:
            raise _Transient(f"{type(e).__name__}: {e}") from None
        finally:
            response.close()

    def complete(self, body: dict, read: Callable[[dict], float] | None = None) -> dict:
        """POST one chat-completions request (cached, retried with backoff); returns the response JSON,
        checked to hold what the judge reads (else a JudgeError, and nothing is cached). With `read` (a reply
        → its verdict or grade), a reply it cannot read (NaN) is neither cached nor taken from the cache:
        stored, a rerun replayed it as "no verdict" for ever, however the judge would answer now."""
        weighted = bool(body.get("logprobs"))
        path = self._cache_path(body)
        if path is not None and path.exists():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))["response"]
                reply_parts(cached, weighted)
                if read is None or not math.isnan(read(cached)):
                    self._count("cache_hits")
                    return cached
            except (ValueError, KeyError, TypeError, RecursionError, JudgeError, OSError):
                pass  # a damaged or unusable cache entry is simply refetched
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                self._count("requests")
                data = self._post_once(body)
                break
            except _Transient as e:
                last = str(e)
                if attempt == self.max_retries:
                    raise JudgeRequestError(f"{self.url}: giving up after {attempt + 1} attempt(s): {last}") from None
                self._count("retries")
                time.sleep(min(self.max_backoff, self.backoff * 2 ** attempt))
        try:
            reply_parts(data, weighted)
        except JudgeError as e:
            raise JudgeError(f"{self.url}: {e}") from None
        if path is not None and (read is None or not math.isnan(read(data))):
            atomic_write_json(path, {"request": body, "response": data})
        return data

    def _complete_all(self, bodies: list[dict], read: Callable[[dict], float] | None = None) -> list[dict | None]:
        """Run requests concurrently (`read`: see `complete`); failures raise, or become None with on_error='nan'."""
        def one(body: dict) -> dict | None:
            try:
                return self.complete(body, read)
            except JudgeError:
                if self.on_error == "raise":
                    raise
                self._count("failed")
                return None

        if self.concurrency == 1 or len(bodies) <= 1:
            return [one(b) for b in bodies]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, bodies))

    # ---- parsing --------------------------------------------------------------------------------
    def _read_pair(self, data: dict) -> float:
        """A reply's pairwise verdict (AlpacaEval encoding, as shown); NaN when it cannot be read."""
        text, top = reply_parts(data, self.mode == "weighted")
        return T.weighted_preference(top) if self.mode == "weighted" else T.parse_pairwise(text)

    def _read_grade(self, data: dict) -> float:
        """A reply's single-answer grade on `rating_range`; NaN when it cannot be read."""
        return T.parse_rating(reply_parts(data, False)[0], *self.rating_range)

    def _parse_pair(self, data: dict | None) -> float:
        if data is None:
            return math.nan
        self._count("replies")
        p = self._read_pair(data)
        if math.isnan(p):
            self._count("malformed")
        return p

    def reply_counts(self) -> dict[str, int]:
        """Replies so far whose verdict or grade was read, those that held none (NaN, "unreadable"), and
        requests that failed for good (on_error='nan'): an unreadable reply on one order of a pair leaves
        the pair judged on the other order alone, which no win-rate count shows."""
        return {"read": self.stats["replies"] - self.stats["malformed"], "unreadable": self.stats["malformed"],
                "failed": self.stats["failed"]}

    # ---- the Judge interface ----------------------------------------------------------------------
    def _pair_bodies(self, prompts: Sequence[Any], a: Sequence[Any], b: Sequence[Any]) -> list[dict]:
        weighted = self.mode == "weighted"
        system = T.WEIGHTED_SYSTEM if weighted else self.pairwise_system
        template = T.WEIGHTED_TEMPLATE if weighted else self.pairwise_template
        return [self._body(system, template.format(prompt=T.text_of(p), response_a=T.text_of(x),
                                                   response_b=T.text_of(y)), weighted)
                for p, x, y in zip(prompts, a, b, strict=True)]

    def judge_order(self, prompts: Sequence[Any], a: Sequence[Any], b: Sequence[Any]) -> np.ndarray:
        """Preferences with `a` shown first, exactly as the judge answered (no un-swapping)."""
        return np.array([self._parse_pair(d) for d in self._complete_all(self._pair_bodies(prompts, a, b), self._read_pair)])

    def pairwise_both(self, prompts: Sequence[Any], a: Sequence[Any], b: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(verdict with a first, verdict with b first un-swapped); both in the original encoding."""
        n = len(prompts)
        bodies = self._pair_bodies(prompts, a, b) + self._pair_bodies(prompts, b, a)
        parsed = np.array([self._parse_pair(d) for d in self._complete_all(bodies, self._read_pair)])
        return parsed[:n], unswap(parsed[n:])

    def pairwise(self, prompts: Sequence[Any], a: Sequence[Any], b: Sequence[Any]) -> np.ndarray:
        """AlpacaEval preferences (1 = a, 2 = b, 1.5 = tie, NaN = no verdict) for each pair."""
        check_judged(prompts, a=a, b=b)
        if self.order == "both":
            return combine_orders(*self.pairwise_both(prompts, a, b))
        if self.order == "original":
            return self.judge_order(prompts, a, b)
        swap = np.random.default_rng(self.seed).random(len(prompts)) < 0.5
        first = [y if s else x for x, y, s in zip(a, b, swap, strict=True)]
        second = [x if s else y for x, y, s in zip(a, b, swap, strict=True)]
        p = self.judge_order(prompts, first, second)
        return np.where(swap, unswap(p), p)

    def single(self, prompts: Sequence[Any], responses: Sequence[Any]) -> np.ndarray:
        """Single-answer grades on `rating_range` (MT-Bench: 1–10); NaN where no grade was parsed."""
        check_judged(prompts, responses=responses)
        bodies = [self._body(self.single_system, self.single_template.format(prompt=T.text_of(p),
                                                                             response=T.text_of(r)))
                  for p, r in zip(prompts, responses, strict=True)]
        out = []
        for data in self._complete_all(bodies, self._read_grade):
            if data is not None:  # a failed request (on_error='nan') is counted as failed, not as unreadable
                self._count("replies")
            score = math.nan if data is None else self._read_grade(data)
            if data is not None and math.isnan(score):
                self._count("malformed")
            out.append(score)
        return np.array(out, dtype=float)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)
