"""Checking raw rows and turning them into records.

Every problem is collected, never just the first: a row is checked field by field, then as a whole
(chosen identical to rejected, list lengths that disagree, …), then against the other rows (rated rows
must all rate the same objectives). Problems name the file, the line or row and the field.

The checks are total: whatever a row holds — numbers too large for a float, strings with lone UTF-16
surrogates (which no tokenizer can encode), values nested deeper than any record needs — it becomes a
record or a located problem, never another exception. Common field spellings of public data sets
(`question`/`instruction` for the prompt, `chosen_response`, a `scores` object for ratings, …) are read
as the canonical field names (`ALIASES`).

Tabular sources (CSV, Parquet, `datasets`) hold structured values — chat messages, lists, dicts — as
JSON text in a cell; `decode_cells` turns them back before the checks, so one set of checks serves
every format.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from pluralign.data.records import KINDS, Rated, Record
from pluralign.errors import DataError, Problem

Issue = tuple[str | None, str]  # (field or None for the whole row, message)

# The type of every field name any kind uses; one name has one meaning across kinds.
FIELD_TYPES: dict[str, str] = {
    "prompt": "text",
    "chosen": "text",
    "rejected": "text",
    "response": "text",
    "responses": "texts",
    "margin": "number",
    "scores": "numbers",
    "ranks": "ranks",
    "label": "bool",
    "ratings": "ratings",
    "judgment": "string",
    "polarity": "polarity",
    "user": "id",
    "group": "id",
    "objective": "string",
    "section": "string",
    "meta": "meta",
}
STRUCTURED = {"texts", "numbers", "ranks", "ratings", "meta"}  # always JSON text in a tabular cell

# Other spellings public data sets use, read as the canonical name when that name is absent and exactly one
# of its aliases is present.
ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("question", "instruction", "query", "input"),
    "chosen": ("chosen_response", "response_chosen", "preferred", "better_response"),
    "rejected": ("rejected_response", "response_rejected", "dispreferred", "worse_response"),
    "response": ("completion", "output", "answer"),
    "ratings": ("scores", "rating"),  # an object of objective -> number, without `responses`
}
MAX_DEPTH = 32  # deeper nesting than any record needs (messages are 2 levels, meta rarely more)

# Fields whose presence tells the kind of a row, checked in this order.
_KIND_MARKERS = (
    ("pairwise", ("chosen", "rejected")),
    ("ranked", ("responses",)),
    ("judged", ("judgment",)),
    ("rated", ("ratings",)),
    ("binary", ("label",)),
)


@dataclass
class RawRow:
    """One row as read from a source, before checking."""

    line: int  # 1-based line (JSONL, CSV) or row index (JSON list, Parquet, datasets)
    raw: Any  # the original text of the row, or the row object itself
    data: Any = None  # the parsed row (a dict when well-formed)
    issues: list[Issue] = field(default_factory=list)  # problems met while parsing (malformed JSON, …)


@dataclass
class Reject:
    """A row that failed the checks, with every reason."""

    line: int
    raw: Any
    problems: list[Problem]


def field_names(kind: str) -> list[str]:
    return [f.name for f in fields(KINDS[kind])]


def required_fields(kind: str) -> list[str]:
    return [f.name for f in fields(KINDS[kind]) if f.default is MISSING and f.default_factory is MISSING]


def canonical(row: Any) -> Any:
    """`row` with aliased field names renamed to the canonical ones (`ALIASES`); other values unchanged."""
    if not isinstance(row, Mapping):
        return row
    renames = {}
    for name, aliases in ALIASES.items():
        if name in row:
            continue
        present = [a for a in aliases if a in row and row[a] is not None]
        if len(present) != 1:
            continue
        if name == "ratings" and ("responses" in row or isinstance(row[present[0]], list)):
            continue  # `scores` of a ranked list, not ratings
        renames[present[0]] = name
    return {renames.get(k, k): v for k, v in row.items()} if renames else row


def kind_requirements() -> str:
    """What each kind needs, for messages about rows whose kind cannot be told."""
    return "; ".join(
        f"{kind} needs {' and '.join(markers)}"
        + (" plus scores or ranks" if kind == "ranked" else "")
        + (f" (with {', '.join(n for n in required_fields(kind) if n not in markers)})"
           if any(n not in markers for n in required_fields(kind)) else "")
        for kind, markers in _KIND_MARKERS
    )


def guess_kind(row: Mapping[str, Any]) -> str | None:
    """The kind whose marker fields the row has (aliases included), or None."""
    row = canonical(row)
    for kind, markers in _KIND_MARKERS:
        if all(m in row for m in markers):
            return kind
    return None


def detect_kind(row: Mapping[str, Any]) -> str:
    """The kind of one row, told by its fields; raises DataError when they fit no kind."""
    kind = guess_kind(row) if isinstance(row, Mapping) else None
    if kind is None:
        have = sorted(map(str, row)) if isinstance(row, Mapping) else type(row).__name__
        raise DataError([Problem("<row>", None, None,
                                 f"cannot tell the kind of a row with fields {have}: {kind_requirements()}")])
    return kind


def majority_kind(rows: Iterable[RawRow]) -> str | None:
    """The most common kind among well-formed rows (earliest wins ties), so one bad row cannot
    mislead detection."""
    votes = Counter(guess_kind(r.data) for r in rows if isinstance(r.data, Mapping) and not r.issues)
    votes.pop(None, None)
    return votes.most_common(1)[0][0] if votes else None


# ---------------------------------------------------------------------------------------------------
# Field checks: each takes (field, value) and returns (normalized value, issues).


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _short(value: Any) -> str:
    """A repr for messages, cut short (a 5000-digit integer must not flood the report)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints past Python's digit limit refuse to print
        text = f"<{type(value).__name__} too large to print>"
    return text if len(text) <= 60 else text[:57] + "..."


def _as_float(value: Any) -> float | None:
    """The number as a float, None when it is not one or does not fit (an integer beyond 1.8e308)."""
    if not _is_number(value):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _check_number(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if not _is_number(value):
        return value, [(name, f"expected a number, got {_type_name(value)} {_short(value)}")]
    number = _as_float(value)
    if number is None:
        return value, [(name, f"number too large for a float: {_short(value)}")]
    if not math.isfinite(number):
        return value, [(name, f"non-finite value {number}")]
    return number, []


def _check_list(name: str, value: Any, check) -> tuple[Any, list[Issue]]:
    if not isinstance(value, list):
        return value, [(name, f"expected a list, got {_type_name(value)}")]
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
                    f"a chat message must be an object with 'role' and 'content', got {_type_name(message)}",
                )
            )
            continue
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role.strip():
            issues.append((f"{where}.role", f"expected a non-empty role string, got {role!r}"))
        if not isinstance(content, str):
            issues.append((f"{where}.content", f"expected a string, got {_type_name(content)}"))
    if not issues and not any(m["content"].strip() for m in messages):
        issues.append((name, "empty text (every message is blank)"))
    return issues


def _check_text(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if isinstance(value, str):
        return value, [] if value.strip() else [(name, "empty text")]
    if isinstance(value, list):
        return value, _check_messages(name, value)
    return value, [(name, f"expected text or a list of chat messages, got {_type_name(value)}")]


def _check_rank(name: str, value: Any) -> tuple[Any, list[Issue]]:
    number = _as_float(value)
    if number is not None and math.isfinite(number) and number == int(number) and 1 <= number <= 2**31:
        return int(value), []
    return value, [(name, f"expected a rank (an integer ≥ 1), got {_short(value)}")]


def _check_bool(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if isinstance(value, bool):
        return value, []
    if _is_number(value) and value in (0, 1):
        return bool(value), []
    return value, [(name, f"expected true or false, got {_short(value)}")]


def _check_ratings(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if not isinstance(value, dict):
        return value, [(name, f"expected an object of objective -> number, got {_type_name(value)}")]
    if not value:
        return value, [(name, "no ratings")]
    out, issues = {}, []
    for key, rating in value.items():
        out[key], item_issues = _check_number(f"{name}.{key}", rating)
        issues += item_issues
    return out, issues


def _check_string(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if not isinstance(value, str):
        return value, [(name, f"expected a string, got {_type_name(value)}")]
    return value, [] if value.strip() else [(name, "empty text")]


def _check_id(name: str, value: Any) -> tuple[Any, list[Issue]]:
    # Numeric user/group ids are common in collected data; they are names, so keep them as strings.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), []
    return _check_string(name, value)


def _check_polarity(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if value in ("positive", "negative"):
        return value, []
    return value, [(name, f"expected 'positive' or 'negative', got {value!r}")]


def _check_meta(name: str, value: Any) -> tuple[Any, list[Issue]]:
    if not isinstance(value, dict):
        return value, [(name, f"expected an object, got {_type_name(value)}")]
    return value, []


_CHECKS = {
    "text": _check_text,
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
    return issues


_ROW_CHECKS = {"pairwise": _pairwise_issues, "ranked": _ranked_issues}


def _hostile(name: str, value: Any) -> list[Issue]:
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


def parse_row(row: Any, kind: str) -> tuple[Record | None, list[Issue]]:
    """Check one row (a dict of native values) against `kind`; return the record, or None and every issue."""
    if not isinstance(row, Mapping):
        return None, [(None, f"expected an object with fields, got {_type_name(row)}")]
    row = canonical(row)
    hostile = [issue for key, value in row.items() for issue in _hostile(str(key), value)]
    if hostile:
        return None, hostile
    names, required = field_names(kind), required_fields(kind)
    values: dict[str, Any] = {}
    issues: list[Issue] = []
    for name in names:
        value = row.get(name)
        if value is None:
            if name in required:
                issues.append((name, "missing field"))
            continue
        values[name], field_issues = _CHECKS[FIELD_TYPES[name]](name, value)
        issues += field_issues
    if issues:
        return None, issues
    issues = _ROW_CHECKS[kind](values) if kind in _ROW_CHECKS else []
    if issues:
        return None, issues
    extras = {k: v for k, v in row.items() if k not in names}
    if extras:
        values["meta"] = {**values.get("meta", {}), **extras}
    return KINDS[kind](**values), []


# ---------------------------------------------------------------------------------------------------
# Tabular cells.


def _decode_cell(name: str, cell: str) -> tuple[Any, list[Issue]]:
    kind = FIELD_TYPES[name]
    if kind == "text":
        return _maybe_messages(cell), []
    if cell.strip() == "":
        return None, []
    if kind in STRUCTURED:
        try:
            return json.loads(cell), []
        except json.JSONDecodeError as e:
            return cell, [(name, f"cell is not valid JSON ({e.msg})")]
        except (ValueError, RecursionError) as e:  # a 5000-digit integer, nesting past the stack
            return cell, [(name, f"cell is not usable JSON ({json_failure(e)})")]
    if kind == "number":
        try:
            return float(cell), []
        except ValueError:
            return cell, [(name, f"expected a number, got {_short(cell)}")]
    if kind == "bool":
        lowered = cell.strip().lower()
        if lowered in ("true", "1"):
            return True, []
        if lowered in ("false", "0"):
            return False, []
        return cell, [(name, f"expected true or false, got {cell!r}")]
    return cell, []


def _maybe_messages(cell: str) -> Any:
    """A text cell holding a JSON list of objects is a chat; anything else is plain text."""
    if not cell.lstrip().startswith("["):
        return cell
    try:
        value = json.loads(cell)
    except (ValueError, RecursionError):  # not JSON (or unusable JSON): plain text
        return cell
    return value if isinstance(value, list) and value and all(isinstance(m, dict) for m in value) else cell


def json_failure(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return str(e).split(";")[0]


def decode_cells(row: Mapping[str, Any], kind: str) -> tuple[dict[str, Any], list[Issue]]:
    """Turn a tabular row's cells into native values: JSON text into lists and dicts, numeric and
    boolean text into numbers and booleans; empty cells count as absent."""
    out: dict[str, Any] = {}
    issues: list[Issue] = []
    names = set(field_names(kind))
    for name, cell in row.items():
        if cell is None or (cell == "" and name not in names):
            continue
        if name in names and isinstance(cell, str):
            out[name], cell_issues = _decode_cell(name, cell)
            issues += cell_issues
        else:
            out[name] = cell
    return out, issues


# ---------------------------------------------------------------------------------------------------
# Many rows.


def check_rows(
    rows: Iterable[RawRow], kind: str, source: str, *, tabular: bool = False
) -> tuple[list[Record], list[Reject]]:
    """Check every row; return the good records and the rejected rows with all their problems."""
    checked = [(row, *_check_one(row, kind, tabular)) for row in rows]
    # Rated rows must rate one set of objectives: the most common one (earliest on ties), so that one odd
    # row — even the first — is the one blamed, not all the others.
    sets = Counter(frozenset(r.ratings) for _, r, _ in checked if isinstance(r, Rated))
    common = max(sets, key=lambda s: sets[s], default=None)
    common_line = next((row.line for row, r, _ in checked if isinstance(r, Rated) and frozenset(r.ratings) == common), 0)
    records: list[Record] = []
    rejects: list[Reject] = []
    for row, record, issues in checked:
        if isinstance(record, Rated):
            issues = _objective_issues(record, common, common_line)
        if issues:
            rejects.append(Reject(row.line, row.raw, [Problem(source, row.line, f, m) for f, m in issues]))
        else:
            records.append(record)
    return records, rejects


def _check_one(row: RawRow, kind: str, tabular: bool) -> tuple[Record | None, list[Issue]]:
    if row.issues:
        return None, list(row.issues)
    data = canonical(row.data)
    if tabular and isinstance(data, Mapping):
        data, issues = decode_cells(data, kind)
        if issues:
            return None, issues
    return parse_row(data, kind)


def _objective_issues(record: Rated, expected: frozenset[str], line: int) -> list[Issue]:
    """Rated rows must all rate the same objectives: those most good rows rate."""
    if set(record.ratings) == expected:
        return []
    return [
        (
            "ratings",
            f"rates {sorted(record.ratings)}; expected the objectives of line/row {line}: {sorted(expected)}",
        )
    ]
