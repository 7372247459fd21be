"""Rated responses in the forms public data sets store them, read as rated rows.

- **Wide columns**, one ``ratings.<objective>`` column per objective (a table's form of the ratings
  object): `gather_wide`.
- **Plain numeric columns** beside prompt and response (HelpSteer, HelpSteer2: ``helpfulness``,
  ``correctness``, ``coherence``, ``complexity``, ``verbosity``): read as the ratings when the kind is
  given as rated (`numeric_columns`). Told by its fields alone such a row is a demonstration (a prompt and
  a response), so readers warn when they leave numbers in `meta` that could have been ratings.
- **One row holding several rated responses** (UltraFeedback: ``instruction`` and ``completions``, each
  with a ``response`` and ``annotations`` {aspect: {"Rating": "4", "Rationale": ...}}): one rated row per
  completion, at the source row's line (`completion_rows`; a table holds the list as JSON text in its
  cell). A rating of "N/A" is a problem of that completion, named by its field
  (``completions[2].annotations.honesty``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pluralign.data.conversations import list_of
from pluralign.data.field_checks import as_float, short

WIDE_PREFIX = "ratings."
# Columns that number rows rather than rate them, never read as ratings.
ID_NAMES = frozenset({"id", "idx", "index", "row", "line"})


def number_of(value: Any) -> float | None:
    """`value` as a finite float (numbers, as `as_float` reads them, and numeric text), else None."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:  # text that is no number (or no text at all)
            return None
    number = as_float(value)
    return number if number is not None and math.isfinite(number) else None


def gather_wide(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """``ratings.<objective>`` columns as the `ratings` object; a numeric cell's text becomes its number
    (other text is kept, so the ratings check names the field)."""
    wide = [k for k in row if isinstance(k, str) and k.startswith(WIDE_PREFIX) and len(k) > len(WIDE_PREFIX)]
    if not wide or "ratings" in row:
        return row
    ratings = {}
    for key in wide:
        value = row[key]
        if isinstance(value, str) and not value.strip():
            continue
        number = number_of(value)
        ratings[key[len(WIDE_PREFIX):]] = value if number is None else number
    rest = {k: v for k, v in row.items() if k not in wide}
    return {**rest, "ratings": ratings} if ratings else rest


def numeric_columns(row: Mapping[str, Any], taken: set[str] | frozenset[str]) -> dict[str, float]:
    """The columns of `row`, other than the fields in `taken` and row numbers (`ID_NAMES`, ``*_id``), whose
    values are numbers or numeric text: a HelpSteer-style row's ratings."""
    out = {}
    for name, value in row.items():
        if not isinstance(name, str) or name in taken or name.lower() in ID_NAMES or name.lower().endswith("_id"):
            continue
        number = number_of(value)
        if number is not None:
            out[name] = number
    return out


def with_numeric_ratings(row: Mapping[str, Any], taken: set[str] | frozenset[str]) -> Mapping[str, Any]:
    """A row of the rated kind without a `ratings` field: its numeric columns become the ratings."""
    if row.get("ratings") is not None:
        return row
    numeric = numeric_columns(row, taken)
    if not numeric:
        return row
    return {**{k: v for k, v in row.items() if k not in numeric}, "ratings": numeric}


def _completions(data: Any) -> list | None:
    """A row's ``completions`` list (a table's cell holds it as JSON text), or None."""
    return list_of(data.get("completions")) if isinstance(data, Mapping) else None


def is_completions_row(data: Any) -> bool:
    """Whether a row holds several rated responses in a ``completions`` list (UltraFeedback's form)."""
    items = _completions(data)
    return bool(items) and any(isinstance(c, Mapping) and ("response" in c or "annotations" in c) for c in items)


def _aspect_rating(value: Any) -> Any:
    """An annotation's rating: ``{"Rating": "4", ...}`` (UltraFeedback) or the rating itself."""
    return value.get("Rating", value.get("rating")) if isinstance(value, Mapping) else value


def completion_rows(data: Mapping[str, Any]) -> list[tuple[dict[str, Any] | None, list[tuple[str, str]]]]:
    """One (rated row, issues) per completion of an UltraFeedback-style row: its prompt (``prompt`` or
    ``instruction``), the completion's response, its ratings (``annotations`` or ``ratings``), and its
    other fields (model, overall score, critique, …) with the row's own as `meta`."""
    prompt = data.get("prompt", data.get("instruction"))
    shared = {k: v for k, v in data.items() if k not in ("completions", "prompt", "instruction")}
    out = []
    for i, item in enumerate(_completions(data) or []):
        where = f"completions[{i}]"
        if not isinstance(item, Mapping):
            out.append((None, [(where, "expected an object with a response and its ratings")]))
            continue
        source = "annotations" if "annotations" in item else "ratings"
        given = item.get(source)
        if not isinstance(given, Mapping) or not given:
            out.append((None, [(f"{where}.{source}", "expected an object of aspect -> rating")]))
            continue
        ratings, issues = {}, []
        for aspect, value in given.items():
            rating = number_of(_aspect_rating(value))
            if rating is None:
                issues.append((f"{where}.{source}.{aspect}", f"not a numeric rating: {short(_aspect_rating(value))}"))
            else:
                ratings[str(aspect)] = rating
        if "response" not in item:
            issues.append((f"{where}.response", "missing field"))
        meta = {**shared, **{k: v for k, v in item.items() if k not in ("response", source)}}
        row = {"prompt": prompt, "response": item.get("response"), "ratings": ratings, "meta": meta}
        out.append((None, issues) if issues else (row, []))
    return out
