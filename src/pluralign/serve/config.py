"""Settings of `pluralign serve`: what is loaded, where it listens, and every limit a request meets."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pluralign.config import option
from pluralign.errors import ConfigError

UNKNOWN_USERS = ("refuse", "population")  # what a personalised model does for a user it has nothing for


@dataclass
class ServeConfig:
    model: str = option("", help="Policy model directory (a transformers causal LM and its tokenizer).")
    rewards: list[str] = option(default_factory=list, help="Reward sources: 'gold' (sandbox attributes), a "
                                "reward-model directory, or module:function, optionally named NAME=SOURCE "
                                "(default name: the directory's); the first is the default.")
    models: list[str] = option(default_factory=list, help="Extra model directories for fusion decoders "
                               "(genarm autoregressive RMs, mod objective models).")
    served_name: str = option("", help="Model id clients use; default: the model directory's name.")
    host: str = option("127.0.0.1", help="Bind address. Loopback by default: expose it deliberately.")
    port: int = option(8000, help="TCP port (0: any free port).")
    api_key_file: str = option("", help="File with one API key per line ('#' comments). Keys are also read "
                               "from $PLURALIGN_API_KEYS (comma-separated). No keys: no authentication.")
    rate_limit: int = option(600, help="Requests per key in any 60 s window (429 beyond).")
    max_concurrent: int = option(64, help="Requests in flight per key (429 beyond).")
    max_body_bytes: int = option(1 << 20, help="Largest request body in bytes (413 beyond).")
    max_prompt_tokens: int = option(2048, help="Longest prompt in tokens (400 beyond).")
    max_tokens: int = option(512, help="Largest max_tokens a request may ask for (400 beyond).")
    default_max_tokens: int = option(64, help="max_tokens when a request gives none.")
    max_n: int = option(8, help="Largest number of choices (n) per request.")
    max_best_of: int = option(64, help="Largest alignment candidate count (best_of / controls.n).")
    deadline_s: float = option(120.0, help="Seconds a request may take, queueing included (504 beyond).")
    batching: bool = option(True, help="Dynamic batching: requests arriving together share forward passes.")
    batch_window_ms: float = option(5.0, help="How long the batcher waits for more requests after the first.")
    max_batch: int = option(32, help="Most requests decoded in one batch.")
    max_batch_rows: int = option(256, help="Most sequences (prompts x samples) decoded at once.")
    queue_size: int = option(256, help="Requests waiting for the model; 503 when full.")
    cors_origins: list[str] = option(default_factory=list, help="Origins allowed by CORS; none: CORS off.")
    graceful_timeout_s: float = option(30.0, help="On shutdown, how long in-flight requests may finish.")
    device: str = option("", help="torch device for the models (default: cuda when available, else cpu).")
    unknown_users: str = option("refuse", help="A request whose user or group the personalised model (statements, "
                                "person vectors, control tokens) has nothing for: 'refuse' (400 naming it) or "
                                "'population' (answered by the population model, with a warning in the log).")

    def __post_init__(self) -> None:
        # Checked before anything loads: a port out of range was a traceback from the socket layer.
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"serve: '{name}' must be {rule}, got {getattr(self, name)!r}", field=name)

        if self.unknown_users not in UNKNOWN_USERS:
            raise bad("unknown_users", " or ".join(repr(u) for u in UNKNOWN_USERS))
        if not self.host.strip():  # an empty address binds every interface: the opposite of the loopback default
            raise bad("host", "an address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface)")
        if not 0 <= self.port <= 65535:
            raise bad("port", "in [0, 65535] (0: any free port)")
        for name in ("rate_limit", "max_concurrent", "max_body_bytes", "max_prompt_tokens", "max_tokens", "max_n",
                     "max_best_of", "max_batch", "max_batch_rows", "queue_size"):
            if getattr(self, name) < 1:
                raise bad(name, ">= 1")
        if not 1 <= self.default_max_tokens <= self.max_tokens:
            raise bad("default_max_tokens", f"in [1, max_tokens={self.max_tokens}]")
        if not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise bad("deadline_s", "a finite number > 0")
        for name in ("batch_window_ms", "graceful_timeout_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "a finite number >= 0")
