"""Checks of one field's value by its type (`FIELD_CHECKS`), of a whole row once its fields are fine
(`ROW_CHECKS`), and of what no field check looks for (`hostile_issues`). Each returns the cleaned value
and a list of (field, message) issues, never raises."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from itertools import pairwise
from typing import Any

Issue = tuple[str | None, str]  # (field or None for the whole row, message)
MAX_DEPTH = 32  # deeper nesting than any record needs (messages are 2 levels, meta rarely more)
ROLES = ("system", "user", "assistant")  # the chat roles every renderer and chat template knows


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def short(value: Any) -> str:
    """A repr for messages, cut short (a 5000-digit integer must not flood the report)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints past Python's digit limit refuse to print
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= 60 else text[:57] + "..."


def as_float(value: Any) -> float | None:
    """The number as a float, None when it is not one or does not fit (an integer beyond 1.8e308)."""
    if not _is_number(value):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _check_number(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if not _is_number(value):
        return value, [(name, f"expected a number, got {type_name(value)} {short(value)}")]
    number = as_float(value)
    if number is None:
        return value, [(name, f"number too large for a float: {short(value)}")]
    if not math.isfinite(number):
        return value, [(name, f"non-finite value {number}")]
    return number, []


def _check_list(name: str, value: Any, check) -> tuple[Any, list[Issue]]:
    if not isinstance(value, list):
        return value, [(name, f"expected a list, got {type_name(value)}")]
    out, issues = [], []
    for i, item in enumerate(value):
        item, item_issues = check(f"{name}[{i}]", item)
        out.append(item)
        issues += item_issues
    return out, issues


def _check_messages(name: str, messages: list) -> list[Issue]:
    if not messages:
        return [(name, "empty list of chat messages")]
    issues: list[Issue] = []
    for i, message in enumerate(messages):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            issues.append(
                (
                    where,
                    f"a chat message must be an object with 'role' and 'content', got {type_name(message)}",
                )
            )
            continue
        role, content = message.get("role"), message.get("content")
        # A misspelt role ("usr") is rendered wrongly or dropped by a chat template, yet the row was trained on.
        if role not in ROLES:
            issues.append((f"{where}.role", f"expected one of {', '.join(ROLES)}, got {short(role)}"))
        if not isinstance(content, str):
            issues.append((f"{where}.content", f"expected a string, got {type_name(content)}"))
    if not issues and not any(m["content"].strip() for m in messages):
        issues.append((name, "empty text (every message is blank)"))
    return issues


def _check_text(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if isinstance(value, str):
        return value, [] if value.strip() else [(name, "empty text")]
    if isinstance(value, list):
        return value, _check_messages(name, value)
    return value, [(name, f"expected text or a list of chat messages, got {type_name(value)}")]


def check_prompt(name: str, value: Any) -> tuple[Any, list[Issue]]:
    """A prompt: text, or chat messages that end with the user's turn (the model answers that turn)."""
    value, issues = _check_text(name, value)
    if issues or not isinstance(value, list) or value[-1]["role"] == "user":
        return value, issues
    last = len(value) - 1
    return value, [(f"{name}[{last}].role", f"a prompt ends with the user's turn, this one with a "
                                            f"{value[last]['role']!r} turn")]


def _check_rank(name: str, value: Any) -> tuple[Any, list[Issue]]:
    number = as_float(value)
    if number is not None and math.isfinite(number) and number == int(number) and 1 <= number <= 2**31:
        return int(value), []
    return value, [(name, f"expected a rank (an integer ≥ 1), got {short(value)}")]


def _check_bool(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if isinstance(value, bool):
        return value, []
    if _is_number(value) and value in (0, 1):
        return bool(value), []
    return value, [(name, f"expected true or false, got {short(value)}")]


def _check_ratings(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if not isinstance(value, dict):
        return value, [(name, f"expected an object of objective -> number, got {type_name(value)}")]
    if not value:
        return value, [(name, "no ratings")]
    out, issues = {}, []
    for key, rating in value.items():
        out[key], item_issues = _check_number(f"{name}.{key}", rating)
        issues += item_issues
    return out, issues


def _check_string(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if not isinstance(value, str):
        return value, [(name, f"expected a string, got {type_name(value)}")]
    return value, [] if value.strip() else [(name, "empty text")]


def person_id(value: Any) -> str | None:
    """A user's or group's id as the name it is, so that one person is one id in every file and request: an
    integer as its digits, also one written as 3.0 (pandas writes an integer column with gaps as floats), a
    text without the spaces around it (a CSV cell after ', '); None when `value` is neither."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy's too, as requests allow
        return str(int(value))
    return value.strip() if isinstance(value, str) else None


def _check_id(name: str, value: Any) -> tuple[Any, list[Issue]]:
    # Numeric user/group ids are common in collected data; they are names, so keep them as strings.
    found = person_id(value)
    if found is None:
        return value, [(name, f"expected a text or an integer id, got {type_name(value)} {short(value)}")]
    return found, [] if found else [(name, "empty text")]


def _check_polarity(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if value in ("positive", "negative"):
        return value, []
    return value, [(name, f"expected 'positive' or 'negative', got {value!r}")]


def _check_meta(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if not isinstance(value, dict):
        return value, [(name, f"expected an object, got {type_name(value)}")]
    return value, []


FIELD_CHECKS = {
    "text": _check_text,
    "prompt": check_prompt,
    "texts": lambda n, v: _check_list(n, v, _check_text),
    "number": _check_number,
    "numbers": lambda n, v: _check_list(n, v, _check_number),
    "ranks": lambda n, v: _check_list(n, v, _check_rank),
    "bool": _check_bool,
    "ratings": _check_ratings,
    "string": _check_string,
    "id": _check_id,
    "polarity": _check_polarity,
    "meta": _check_meta,
}


# ---------------------------------------------------------------------------------------------------
# Whole-row checks, run once every field is individually fine.


def _pairwise_issues(values: dict[str, Any]) -> list[Issue]:
    issues: list[Issue] = []
    if values["chosen"] == values["rejected"]:
        issues.append(("rejected", "identical to chosen"))
    if values.get("margin", 0.0) < 0:
        issues.append(("margin", f"negative margin {values['margin']} (chosen must be the better one)"))
    return issues


def _ranked_issues(values: dict[str, Any]) -> list[Issue]:
    n = len(values["responses"])
    issues: list[Issue] = []
    if n < 2:
        issues.append(("responses", f"a ranked list needs at least 2 responses, got {n}"))
    if "scores" not in values and "ranks" not in values:
        issues.append(("scores", "a ranked list needs 'scores' or 'ranks'"))
    for name in ("scores", "ranks"):
        if name in values and len(values[name]) != n:
            issues.append((name, f"has {len(values[name])} values for {n} responses"))
    if not issues and "scores" in values and "ranks" in values:
        issues += _order_issues(values["scores"], values["ranks"])
    return issues


def _order_issues(scores: list[float], ranks: list[int]) -> list[Issue]:
    """Scores (higher is better) and ranks (1 = best) given together must order the responses alike: every
    reader goes by the scores, so ranks that say otherwise would be dropped without a word. Neighbours in
    score order suffice (the orders then agree on every pair), so a long list costs a sort, not n² checks."""
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    for a, b in pairwise(order):
        if (scores[a] == scores[b]) != (ranks[a] == ranks[b]) or ranks[a] > ranks[b]:
            i, j = sorted((a, b))
            return [("ranks", f"orders responses {i} and {j} unlike the scores ({ranks[i]}, {ranks[j]} "
                              f"against {scores[i]:g}, {scores[j]:g}); give one of them, or both alike")]
    return []


ROW_CHECKS = {"pairwise": _pairwise_issues, "ranked": _ranked_issues}


def hostile_issues(name: str, value: Any) -> list[Issue]:
    """Problems no field check looks for, anywhere inside `value`: nesting deeper than MAX_DEPTH and
    strings with lone UTF-16 surrogates (JSON allows "\\ud800"; UTF-8 and every tokenizer refuse it)."""
    stack = [(name, value, 0)]
    while stack:
        where, v, depth = stack.pop()
        if depth > MAX_DEPTH:
            return [(name, f"nested more than {MAX_DEPTH} levels deep")]
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return [(where, f"lone UTF-16 surrogate U+{ord(v[e.start]):04X} at character {e.start} "
                                "(not valid Unicode text)")]
        elif isinstance(v, Mapping):
            stack += [(f"{where}.{k}", item, depth + 1) for k, item in v.items()]
            stack += [(where, k, depth + 1) for k in v if isinstance(k, str)]
        elif isinstance(v, list | tuple):
            stack += [(f"{where}[{i}]", item, depth + 1) for i, item in enumerate(v)]
    return []
