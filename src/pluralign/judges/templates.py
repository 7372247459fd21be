"""Prompt templates for LLM judges and robust parsing of their verdicts.

The pairwise and single-answer templates follow the MT-Bench judge format (Zheng et al. 2023, "Judging
LLM-as-a-Judge with MT-Bench and Chatbot Arena"): the judge reasons, then ends with ``[[A]]``, ``[[B]]``
or ``[[C]]`` (tie), or with ``Rating: [[k]]``. The weighted template follows AlpacaEval 2's
``weighted_alpaca_eval_gpt4_turbo``: a one-token answer ``m`` / ``M`` read from the token log-probs.
Templates are ordinary ``str.format`` strings with the fields named below; users may pass their own.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from pluralign.data.prompts import transcript
from pluralign.errors import ConfigError

PAIRWISE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. Choose the assistant that follows the user's "
    "instructions and answers the user's question better. Avoid any position biases and ensure that the "
    "order in which the responses were presented does not influence your decision. Do not allow the "
    "length of the responses to influence your evaluation. Be as objective as possible. After providing "
    "your explanation, output your final verdict by strictly following this format: \"[[A]]\" if "
    "assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie."
)

# Fields: {prompt}, {response_a}, {response_b}
PAIRWISE_TEMPLATE = (
    "[User Question]\n{prompt}\n\n"
    "[The Start of Assistant A's Answer]\n{response_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{response_b}\n[The End of Assistant B's Answer]"
)

SINGLE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Consider helpfulness, relevance, accuracy, depth "
    "and level of detail. Begin your evaluation with a short explanation. Be as objective as possible. "
    "After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly "
    "following this format: \"Rating: [[5]]\"."
)


def single_system_for(low: float, high: float) -> str:
    """`SINGLE_SYSTEM` asking for a grade on [low, high]: left at 1 to 10, a judge with another rating range
    graded on 1-10 and its grades above `high` were refused as out of range (a mean of its low grades)."""
    return SINGLE_SYSTEM.replace("on a scale of 1 to 10 ", f"on a scale of {low:g} to {high:g} ")


# Fields: {prompt}, {response}
SINGLE_TEMPLATE = (
    "[Question]\n{prompt}\n\n[The Start of Assistant's Answer]\n{response}\n[The End of Assistant's Answer]"
)

WEIGHTED_SYSTEM = "You are a highly efficient assistant, who evaluates and selects the best large language model (LLM) based on the quality of their responses to a given instruction."

# Fields: {prompt}, {response_a}, {response_b}. The answer is one token: m (= model m, i.e. A) or M (= B).
WEIGHTED_TEMPLATE = (
    "I want you to select which of two models gives the better answer to an instruction.\n\n"
    "## Instruction\n{prompt}\n\n"
    "## Model outputs\n\nModel identifier: m\n{response_a}\n\nModel identifier: M\n{response_b}\n\n"
    "## Task\nAnswer with the identifier of the better model, and nothing else: m or M."
)

_BRACKET = re.compile(r"\[\[\s*(A|B|C|TIE|TIED)\s*\]\]", re.IGNORECASE)
# Outside [[…]] the verdict letters are matched case-sensitively (only "tie" ignores case): the article
# "a" in "my verdict is a tie" must not read as "A wins". Up to four lowercase words may sit between
# "verdict" and its letter ("verdict is a clear win for B", "verdict: assistant B"). An "A" followed by "tie" is
# the article, capitalised as a sentence opens ("Final verdict: A tie."), not "A wins".
_VERDICT = r"(A(?!\s+(?i:tie)\b)|B|C|(?i:tie))\b"
_LOOSE = [
    re.compile(r"(?i:verdict)\W{0,6}(?:(?i:is)\W{0,4})?(?:(?i:[a-z]+)\s+){0,4}?\(?" + _VERDICT),
    re.compile(r"\b(?i:assistant|response|output)\s*\(?(A|B)\)?\s+(?i:is\s+(?:the\s+)?better)"),
    re.compile(r"\b(?i:win\s+for)\s+(?:(?i:assistant|response|output)\s+)?(A|B)\b"),
    # "Answer: B" only when the letter ends its line: "Answer: A helpful reply…" opens with an article
    re.compile(r"\b(?i:answer)\**\s*:\s*\**\s*\(?(A|B|C)\)?\**[.!]?[ \t]*(?:\n|$)"),
    re.compile(r"\b(?i:i\s+prefer)\s+(?:(?i:assistant|response|output)\s+)?\(?(A|B)\b"),
]
_SOLO = re.compile(r"^\W*(?:(?i:a)\s+(?=(?i:tie)))?" + _VERDICT + r"\W*$")  # "B", "(A).", "a tie"
# The default system prompts' format lines, as a small judge may echo them and stop: their [[A]]/[[B]]/[[C]]
# and [[5]] are examples, not a verdict (the last one, [[C]], read as a tie; "[[5]]" as a grade of 5).
_ECHOED_VERDICT_FORMAT = re.compile(r'"\[\[A\]\]" if assistant A is better, "\[\[B\]\]" if assistant B is better, '
                                    r'and "\[\[C\]\]" for a tie', re.IGNORECASE)
_ECHOED_RATING_FORMAT = re.compile(r'"Rating: \[\[5\]\]"', re.IGNORECASE)
# A whole number: "1e3" or "v2" hold none (the "1" of "1e3" read as a grade of 1).
_NUM = r"(?<![\w.])(-?\d+(?:\.\d+)?)(?![\w]|\.\d)"
# A stated scale, taken out before the grade is looked for: its bounds are not the grade ("Rating: 1-10
# scale, 7" read as 1, "Rating (1-10): 7" as nothing). A range low-high with low < high, or "10-point scale".
_SCALE = re.compile(r"(?:\b(?:on|in)\s+an?\s+)?(?:\bscale\s+(?:of|from)\s+)?[(\[]?[^\S\n]*" + _NUM
                    + r"[^\S\n]*(?:-|–|—|\bto\b)[^\S\n]*" + _NUM + r"[^\S\n]*[)\]]?(?:[^\S\n]*-?[^\S\n]*scale\b)?,?"
                    r"|[(\[]?[^\S\n]*" + _NUM + r"[^\S\n]*-?[^\S\n]*point\s+scale\b[^\S\n]*[)\]]?,?", re.IGNORECASE)
_OVER = r"(?:\s*(?:/|\bout\s+of\b)\s*" + _NUM + r")?"  # "7/10", "7 out of 10": the top of the grade's scale
# In order of trust; the last hit of the first pattern that has one is the grade (judges quote before grading).
_RATING = [
    re.compile(r"\[\[\s*" + _NUM + _OVER + r"\s*\]\]"),
    re.compile(r"(?:\brating\b\s*(?:(?:is|of|would\s+be|[:=])\s*)?|\b(?:score|grade)\b\s*(?:is|would\s+be|[:=])\s*)"
               r"\**\s*\[?\s*" + _NUM + _OVER, re.IGNORECASE),
    re.compile(_NUM + r"\s*(?:/|\bout\s+of\b)\s*" + _NUM, re.IGNORECASE),
    re.compile(r"\b(?:give|gave|giving|rate|rating)\s+(?:it|this|the)(?:\s+(?:answer|response|reply))?\s+(?:an?\s+)?"
               + _NUM + _OVER, re.IGNORECASE),
]


PAIRWISE_FIELDS = ("prompt", "response_a", "response_b")
SINGLE_FIELDS = ("prompt", "response")


def check_template(name: str, template: Any, fields: Sequence[str]) -> str:
    """`template` if it is a ``str.format`` string naming exactly `fields` (each at least once; literal
    braces doubled), else a `ConfigError` naming `name`: an unknown field failed as a KeyError only once
    every model had generated, and a missing one showed the judge nothing in its place."""
    if not isinstance(template, str):
        raise ConfigError(f"{name} must be text, got {type(template).__name__}", field=name)
    try:
        named = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ConfigError(f"{name} is not a str.format template ({e}); write a literal brace as {{{{ or }}}}",
                          field=name) from None
    unknown = sorted(f"{{{f}}}" for f in named if f not in fields)
    lacking = [f"{{{f}}}" for f in fields if f not in named]
    if unknown or lacking:
        parts = ([f"names {', '.join(unknown)}, which it is not given"] if unknown else []) + \
                ([f"lacks {', '.join(lacking)}"] if lacking else [])
        raise ConfigError(f"{name} {' and '.join(parts)}: its fields are {', '.join(f'{{{f}}}' for f in fields)} "
                          "(a literal brace is written {{ or }})", field=name)
    return template


def _verdict_to_pref(token: str) -> float:
    t = token.upper()
    return {"A": 1.0, "B": 2.0}.get(t, 1.5)


def parse_pairwise(text: str | None) -> float:
    """A pairwise verdict → AlpacaEval preference (1 = A, 2 = B, 1.5 = tie) or NaN if none is found.

    The last ``[[X]]`` wins (judges sometimes quote the format before answering); then looser forms
    ("Final verdict: B", "Assistant A is better", "a clear win for B"); then a bare one-letter answer.
    Outside the brackets the letters must be capitals, so the article "a" never counts as a verdict."""
    if not text:
        return math.nan
    text = _ECHOED_VERDICT_FORMAT.sub(" ", text)
    hits = _BRACKET.findall(text)
    if hits:
        return _verdict_to_pref(hits[-1][0])
    for pattern in _LOOSE:
        found = pattern.findall(text)
        if found:
            return _verdict_to_pref(found[-1][0])
    solo = _SOLO.match(text.strip())
    return _verdict_to_pref(solo.group(1)[0]) if solo else math.nan


def parse_rating(text: str | None, low: float = 1.0, high: float = 10.0) -> float:
    """A single-answer grade (``Rating: [[7]]``, ``Rating: 7``, ``7/10``, ``7 out of 10``, ``I give it a 7``)
    → float; NaN (unreadable) when there is none, when it lies outside [low, high], or when it is stated on
    another scale than one topped by `high` ("3/5" is no grade of 3 on 1–10). A stated scale ("on a 1-10
    scale", "(1-10)") is never read as the grade."""
    if not text:
        return math.nan
    text = _ECHOED_RATING_FORMAT.sub(" ", text)
    text = _SCALE.sub(lambda m: " " if _is_range(m) else m.group(0), text)
    for pattern in _RATING:
        found = pattern.findall(text)
        if found:
            value, over = found[-1] if isinstance(found[-1], tuple) else (found[-1], "")
            if over and float(over) != high:
                return math.nan
            value = float(value)
            return value if low <= value <= high else math.nan
    return math.nan


def _is_range(match: re.Match) -> bool:
    """A `_SCALE` match that states a scale: "N-point scale", or a range whose low end is below its high end."""
    low, high, points = match.groups()
    return points is not None or float(low) < float(high)


def weighted_preference(top_logprobs: Sequence[Mapping[str, Any]] | None) -> float:
    """AlpacaEval's ``logprob_parser``: preference = 2 − P(m)/(P(m) + P(M)) from the first token's top
    log-probs (OpenAI format: ``[{"token": "m", "logprob": -0.1}, ...]``). A missing token has
    probability 0; both missing gives NaN."""
    if not top_logprobs:
        return math.nan
    probs = {"m": 0.0, "M": 0.0}
    for entry in top_logprobs:
        token = str(entry.get("token", "")).strip()
        if token in probs:
            probs[token] += math.exp(float(entry["logprob"]))
    total = probs["m"] + probs["M"]
    return math.nan if total == 0 else 2.0 - probs["m"] / total


# Prompts and responses may be chat messages; judges read them as a transcript (one rendering for all).
text_of = transcript
