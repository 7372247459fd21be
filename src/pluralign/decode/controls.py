"""Per-request decoding controls (`Controls`): what one request asks of any decoder, checked when it is made
so that a bad value is named (a 400 from the server, exit 2 from the CLI) before anything is decoded."""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pluralign.data.field_checks import person_id
from pluralign.data.prompts import CHAT_TEMPLATE_MODES
from pluralign.errors import ConfigError


@dataclass
class Controls:
    """Per-request decoding controls.

    weights: objective weights (sequence in objective order or {name: w}); n: candidates (BoN, soft BoN,
    rejection proposals, RPS k, blockwise K); beta: KL strength β / temperature λ of the tilt; w:
    guidance weight (ARGS w, CD λ, TQ* α, GenARM α); constraints: {"keywords": [...], "min_words": a,
    "max_words": b} for search; user: passed to per-user reward sources; direction (a preference
    direction, DPA), group and user also steer a conditioned model (`pluralign.conditioning`);
    chat_template: how the prompt is rendered for the policy (auto | always | never,
    `pluralign.data.prompts`; reward sources always receive the prompt itself, text or messages, and
    render it with their own tokenizer); extra: method-specific options (``extra["scores"]``: RiC target
    scores).
    """

    weights: Any = None
    direction: Any = None
    group: Any = None
    n: int = 8
    beta: float = 1.0
    w: float = 1.0
    constraints: dict | None = None
    user: Any = None
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    stop: Sequence[str] | None = None
    seed: int | None = 0
    chat_template: str = "auto"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked when made (CLI, server, Python): a negative beta would otherwise quietly act as best-of-N.
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"controls.{name} must be {rule}, got {getattr(self, name)!r}", field=name)

        for name in ("n", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "an integer >= 1")
        for name in ("beta", "w", "temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not _finite_numbers([value]):
                raise bad(name, f"a finite number (at most {FLOAT32_MAX:.1e} in size)")
        if self.beta <= 0:
            raise bad("beta", "> 0 (the tilt's temperature / KL strength)")
        if self.temperature < 0:  # 0 is greedy decoding
            raise bad("temperature", ">= 0 (0: greedy)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0")
        if isinstance(self.stop, str):  # one stop text, not a sequence of one-character stops
            self.stop = [self.stop]
        if self.stop is not None and not (isinstance(self.stop, Sequence) and all(isinstance(t, str) for t in self.stop)):
            raise bad("stop", "a text or a list of texts")
        if self.stop is not None and "" in self.stop:  # it was ignored: an empty text would end every answer at once
            raise bad("stop", "non-empty texts")
        for name in ("weights", "direction"):
            value = getattr(self, name)
            if value is not None and not _finite_numbers(list(value.values()) if isinstance(value, Mapping) else value):
                raise bad(name, f"finite numbers (at most {FLOAT32_MAX:.1e} in size), in objective order or as "
                          "{objective: number}")
        # a seed of 1.5 and a user given as an object failed inside a decoder (manual_seed, a dict key)
        if self.seed is not None and not (integral(self.seed) and -(2 ** 63) <= self.seed < 2 ** 63):
            raise bad("seed", "a 64-bit integer (or null: a fresh random draw)")  # what torch's generators take
        for name in ("user", "group"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) or integral(value)):
                raise bad(name, "a text or an integer id")
            # the id as training data's are read: 3 is "3" (a PAL reward took the integer for its row index
            # and scored another user), " alice " is "alice"
            setattr(self, name, None if value is None else person_id(value))
        if self.constraints is not None and not _constraints_ok(self.constraints):
            # checked here: {"keywords": 5} failed inside the search (a 500 from the server), and a text
            # {"keywords": "river"} was searched for letter by letter
            raise bad("constraints", 'an object of "keywords" (a list of texts) and "min_words" / "max_words" '
                      '(integers >= 0), e.g. {"keywords": ["river"], "max_words": 20}')
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise bad("chat_template", f"one of {', '.join(CHAT_TEMPLATE_MODES)}")

    def replace(self, **changes: Any) -> Controls:
        return dataclasses.replace(self, **changes)

    def offset_seed(self, k: int) -> Controls:
        """These controls for the k-th of several draws of one request: its own seed for the first, then one
        derived from the seed and k (`row_seed`, in the range a seed must be in). Not seed + k: choice 1 of
        seed 5 was choice 0 of seed 6, so requests with nearby seeds got the same answers."""
        if self.seed is None or k == 0:
            return self
        from pluralign.decode.streams import row_seed

        return self.replace(seed=row_seed(self.seed, "choice", k))


def integral(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _constraints_ok(value: Any) -> bool:
    """DeAL's constraints (`decode.search.constraint_score`): known keys, keywords a list of texts, word
    bounds non-negative integers (or null)."""
    if not isinstance(value, Mapping) or set(value) - {"keywords", "min_words", "max_words"}:
        return False
    keywords = value.get("keywords")
    if keywords is not None and not (isinstance(keywords, Sequence) and not isinstance(keywords, str)
                                     and all(isinstance(k, str) for k in keywords)):
        return False
    return all(value.get(k) is None or (integral(value[k]) and value[k] >= 0) for k in ("min_words", "max_words"))


# Decoders weigh and tilt in float32 (torch's default dtype): a value finite in JSON or Python but beyond
# float32's range (a weight of 1e300) became inf there, and NaN utilities failed a decoder deep inside.
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _finite_numbers(value: Any) -> bool:
    """A flat sequence (list, tuple, tensor, array) of numbers finite in float32, not text or booleans."""
    if isinstance(value, str | bytes) or (isinstance(value, Sequence) and any(isinstance(x, bool | str) for x in value)):
        return False
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return False
    return t.dim() == 1 and bool((t.abs() <= FLOAT32_MAX).all())  # NaN compares false too
