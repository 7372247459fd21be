"""API keys and per-key limits.

Keys come from a file and/or $PLURALIGN_API_KEYS. A presented key is compared with every configured key
by `hmac.compare_digest` (constant time, and no early exit across keys), so response timing does not
reveal how much of a key was right. Keys are never logged or echoed: a request is known by the index of
its key ("key0", ...), which is what limits and metrics use.
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from pluralign.config import read_text
from pluralign.errors import ConfigError
from pluralign.serve.errors import APIError

ENV_KEYS = "PLURALIGN_API_KEYS"


def load_keys(path: str = "", env: str = ENV_KEYS) -> list[str]:
    """Keys from `path` (one per line, blank lines and '#' comments skipped) and from $env."""
    keys: list[str] = []
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--api-key-file {path}: no such file")
        try:
            text = read_text(p, "the API keys")
        except ConfigError as e:
            raise ConfigError(f"--api-key-file {e}", field="api_key_file") from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
        if not keys:
            raise ConfigError(f"--api-key-file {path}: no keys in it")
    keys += [k.strip() for k in os.environ.get(env, "").split(",") if k.strip()]
    return keys


class Keys:
    def __init__(self, keys: list[str]):
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, authorization: str | None) -> str:
        """The caller's key id from an `Authorization: Bearer KEY` header; 401 when keys are configured and
        the header is missing or wrong. Without keys every caller is "anonymous"."""
        if not self._keys:
            return "anonymous"
        scheme, _, token = (authorization or "").partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        match = -1
        for i, key in enumerate(self._keys):  # visit every key: timing does not depend on which matched
            if hmac.compare_digest(presented, key) and match < 0:
                match = i
        if match < 0:
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")
        return f"key{match}"


class Limiter:
    """Per-key sliding-window rate limit (`rate` requests in any `window` seconds) and a cap on requests
    in flight. `admit(key)` raises 429 or returns a release function that must be called exactly once."""

    def __init__(self, rate: int, max_concurrent: int, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.rate, self.max_concurrent, self.window, self.clock = rate, max_concurrent, window, clock
        self._seen: dict[str, deque[float]] = {}
        self._inflight: dict[str, int] = {}
        self._lock = threading.Lock()

    def inflight(self, key: str | None = None) -> int:
        with self._lock:
            return sum(self._inflight.values()) if key is None else self._inflight.get(key, 0)

    def admit(self, key: str) -> Callable[[], None]:
        now = self.clock()
        with self._lock:
            seen = self._seen.setdefault(key, deque())
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if len(seen) >= self.rate:
                retry = max(1, int(seen[0] + self.window - now + 0.999))
                raise APIError(429, f"rate limit reached: {self.rate} requests per {self.window:g} s",
                               code="rate_limit_exceeded", headers={"Retry-After": str(retry)})
            if self._inflight.get(key, 0) >= self.max_concurrent:
                raise APIError(429, f"too many requests in flight for this key (limit {self.max_concurrent})",
                               code="concurrency_limit_exceeded", headers={"Retry-After": "1"})
            seen.append(now)
            self._inflight[key] = self._inflight.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._inflight[key] -= 1

        return release
