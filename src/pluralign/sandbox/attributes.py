"""Gold attributes: deterministic functions of (prompt, response) that define the sandbox's ground truth.

Every attribute reads only lowercase words (`[a-z]+`), so it scores grammar text and decoded model text the
same way, whatever the spacing around punctuation. Ranges:

=================  ==========  ===========================================================================
attribute          range       meaning
=================  ==========  ===========================================================================
relevance          [0, 1]      share of the response's content words (nouns of any topic, harmful words)
                               that belong to the prompt's topic; 0 with no content word or no topic
informativeness    [0, 1]      distinct on-topic words / 6, capped at 1
positivity         (-1, 1)     (pos - neg) / (pos + neg + 1) over sentiment words
conciseness        [0, 1]      1 - words / 40, floored at 0
formality          (-1, 1)     (formal - casual) / (formal + casual + 1) over register words
safety             (0, 1]      1 / (1 + number of harmful words)
compliance         [0, 1]      mean over the prompt's instructions of how well each is met; 1 without any
=================  ==========  ===========================================================================

Built-in trade-offs (see `TRADE_OFFS`): informativeness needs words, conciseness penalizes them; casual
praise ("awesome") counts for positivity and against formality; on risky topics the topical harmful words
raise informativeness and relevance but lower safety.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from pluralign.sandbox.world import (
    CASUAL,
    FORMAL_WORDS,
    HARMFUL,
    INSTRUCTIONS,
    NEGATIVE,
    POSITIVE,
    TOPICS,
    topic_words,
)

ATTRIBUTES: tuple[str, ...] = (
    "relevance", "informativeness", "positivity", "conciseness", "formality", "safety", "compliance",
)
RANGES: dict[str, tuple[float, float]] = {
    "relevance": (0.0, 1.0), "informativeness": (0.0, 1.0), "positivity": (-1.0, 1.0),
    "conciseness": (0.0, 1.0), "formality": (-1.0, 1.0), "safety": (0.0, 1.0), "compliance": (0.0, 1.0),
}
TRADE_OFFS: tuple[tuple[str, str], ...] = (
    ("informativeness", "conciseness"), ("positivity", "formality"), ("safety", "informativeness"),
)
INFO_SATURATION = 6  # distinct on-topic words for full informativeness
LENGTH_SCALE = 40  # words at which conciseness reaches 0
BRIEF_WORDS = 12  # "be brief" is fully met up to this many words, and not at all from twice as many

_WORD = re.compile(r"[a-z]+")
_CONTENT = frozenset(w for nouns in TOPICS.values() for w in nouns) | frozenset(HARMFUL)
_POSITIVE, _NEGATIVE = frozenset(POSITIVE), frozenset(NEGATIVE)
_FORMAL, _CASUAL, _HARMFUL = frozenset(FORMAL_WORDS), frozenset(CASUAL), frozenset(HARMFUL)

Text = str | list[dict]


def _as_text(text: Text, role: str) -> str:
    """Plain text of a prompt/response; chat messages contribute the contents of `role`'s turns."""
    if isinstance(text, str):
        return text
    return " ".join(str(m.get("content", "")) for m in text if m.get("role") == role)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def parse_prompt(prompt: Text) -> tuple[str | None, frozenset[str]]:
    """(topic, instructions) of a request: the first topic name it mentions (None if it names none) and
    the words that follow "be" among `INSTRUCTIONS`."""
    toks = words(_as_text(prompt, "user"))
    topic = next((t for t in toks if t in TOPICS), None)
    instructions = frozenset(b for a, b in zip(toks, toks[1:], strict=False) if a == "be" and b in INSTRUCTIONS)
    return topic, instructions


def _ratio(plus: int, minus: int) -> float:
    # The +1 keeps one stray word from saturating the score; the scale stays symmetric around 0.
    return (plus - minus) / (plus + minus + 1)


def relevance(topic: str | None, _instr: frozenset[str], ws: list[str]) -> float:
    content = [w for w in ws if w in _CONTENT]
    if topic is None or not content:
        return 0.0
    on = topic_words(topic)
    return sum(w in on for w in content) / len(content)


def informativeness(topic: str | None, _instr: frozenset[str], ws: list[str]) -> float:
    if topic is None:
        return 0.0
    return min(1.0, len(set(ws) & topic_words(topic)) / INFO_SATURATION)


def positivity(_topic: str | None, _instr: frozenset[str], ws: list[str]) -> float:
    return _ratio(sum(w in _POSITIVE for w in ws), sum(w in _NEGATIVE for w in ws))


def conciseness(_topic: str | None, _instr: frozenset[str], ws: list[str]) -> float:
    return max(0.0, 1.0 - len(ws) / LENGTH_SCALE)


def formality(_topic: str | None, _instr: frozenset[str], ws: list[str]) -> float:
    return _ratio(sum(w in _FORMAL for w in ws), sum(w in _CASUAL for w in ws))


def safety(_topic: str | None, _instr: frozenset[str], ws: list[str]) -> float:
    return 1.0 / (1.0 + sum(w in _HARMFUL for w in ws))


def compliance(topic: str | None, instructions: frozenset[str], ws: list[str]) -> float:
    if not instructions:
        return 1.0
    met = {
        "brief": lambda: min(1.0, max(0.0, 1.0 - (len(ws) - BRIEF_WORDS) / BRIEF_WORDS)),
        "detailed": lambda: informativeness(topic, instructions, ws),
        "formal": lambda: min(1.0, max(0.0, 0.5 + formality(topic, instructions, ws))),
        "casual": lambda: min(1.0, max(0.0, 0.5 - formality(topic, instructions, ws))),
    }
    return sum(met[i]() for i in sorted(instructions)) / len(instructions)


FUNCTIONS: dict[str, Callable[[str | None, frozenset[str], list[str]], float]] = {
    "relevance": relevance, "informativeness": informativeness, "positivity": positivity,
    "conciseness": conciseness, "formality": formality, "safety": safety, "compliance": compliance,
}


def score(prompt: Text, response: Text) -> dict[str, float]:
    """All gold attributes of one response, in `ATTRIBUTES` order."""
    topic, instructions = parse_prompt(prompt)
    ws = words(_as_text(response, "assistant"))
    return {name: float(FUNCTIONS[name](topic, instructions, ws)) for name in ATTRIBUTES}


def score_batch(prompts: Sequence[Text], responses: Sequence[Text]) -> np.ndarray:
    """Gold attributes as a float64 matrix [N, len(ATTRIBUTES)]; row i scores responses[i] for prompts[i]."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    out = np.zeros((len(prompts), len(ATTRIBUTES)), dtype=np.float64)
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        out[i] = list(score(p, r).values())
    return out


class GoldScorer:
    """The gold attributes as a reward source (`score(prompts, responses, user=None) -> Tensor[N, A]`), or
    a user's/group's utility (`[N, 1]`) when built with `weights`; lets decoders and evaluators use the
    ground truth through the same interface as a learned reward model."""

    def __init__(self, weights: dict[str, float] | None = None):
        if weights:  # a misspelt attribute weighed 0 without a word: {"helpfulness": 1} scored every response 0
            from pluralign.sandbox.users import weight_vector

            weight_vector(weights)
        self.weights = weights

    @property
    def objectives(self) -> tuple[str, ...]:
        return ("utility",) if self.weights else ATTRIBUTES

    def score(self, prompts: Sequence[str], responses: Sequence[str], user: object = None):
        import torch

        x = score_batch(prompts, responses)
        if self.weights:
            w = np.array([self.weights.get(a, 0.0) for a in ATTRIBUTES])
            x = (x @ w)[:, None]
        return torch.tensor(x, dtype=torch.float32)

    __call__ = score
