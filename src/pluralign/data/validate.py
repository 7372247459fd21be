"""Checking raw rows and turning them into records.

Every problem is collected, never just the first: a row is checked field by field, then as a whole
(chosen identical to rejected, list lengths that disagree, …), then against the other rows (rated rows
must all rate the same objectives). Problems name the file, the line or row and the field.

The checks are total: whatever a row holds — numbers too large for a float, strings with lone UTF-16
surrogates (which no tokenizer can encode), values nested deeper than any record needs — it becomes a
record or a located problem, never another exception. Common field spellings of public data sets
(`question`/`instruction` for the prompt, `chosen_response`, a `scores` object for ratings, …) are read
as the canonical field names (`ALIASES`); rated responses in other forms (``ratings.<objective>`` columns,
HelpSteer's plain numeric columns, UltraFeedback's ``completions``) as rated rows (`rated_forms`), and
two sides with a verdict (Chatbot Arena's ``conversation_a``/``_b`` and ``winner``) as pairs (`verdict_pairs`).

Tabular sources (CSV, Parquet, `datasets`) hold structured values — chat messages, lists, dicts — as
JSON text in a cell; `decode_cells` turns them back before the checks, so one set of checks serves
every format.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from pluralign.data.conversations import (
    conversation_issues,
    messages_of,
    reply_role_issues,
    split_conversations,
)
from pluralign.data.field_checks import FIELD_CHECKS, ROW_CHECKS, Issue, hostile_issues, short, type_name
from pluralign.data.rated_forms import gather_wide, with_numeric_ratings
from pluralign.data.records import KINDS, Rated, Record
from pluralign.data.verdict_pairs import (
    chosen_and_rejected,
    has_verdict,
    score_issues,
    verdict_issues,
    with_score_margin,
)
from pluralign.errors import DataError, Problem

# The type of every field name any kind uses; one name has one meaning across kinds.
FIELD_TYPES: dict[str, str] = {
    "prompt": "prompt",  # text that ends on the user's turn
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
    "user": ("user_id", "judge", "annotator", "annotator_id", "rater", "rater_id", "worker_id"),  # who gave it
}

# Fields whose presence tells the kind of a row, checked in this order.
_KIND_MARKERS = (
    ("pairwise", ("chosen", "rejected")),
    ("ranked", ("responses",)),
    ("judged", ("judgment",)),
    ("rated", ("ratings",)),
    ("binary", ("label",)),
    ("demonstration", ("response",)),  # last: every kind above with a response is more than a demonstration
)


@dataclass
class RawRow:
    """One row as read from a source, before checking."""

    # 1-based: the line the row starts on (JSONL, CSV, a JSON list's element) or, where a source has no
    # lines (Parquet, datasets), the row number; printed as file:line either way (`Problem`).
    line: int
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
    """`row` with aliased field names renamed to the canonical ones (`ALIASES`) and whole conversations
    split into prompt and reply (`pluralign.data.conversations`); other values unchanged."""
    if not isinstance(row, Mapping):
        return row
    row = split_conversations(with_score_margin(chosen_and_rejected(gather_wide(row))))
    renames = {given[0]: name for name in ALIASES if len(given := _given_aliases(row, name)) == 1}
    return {renames.get(k, k): v for k, v in row.items()} if renames else row


def _given_aliases(row: Mapping[str, Any], name: str) -> list[str]:
    """The other spellings of `name` that `row` gives, when it lacks `name` itself; one is read as it."""
    if name in row:
        return []
    given = [a for a in ALIASES[name] if a in row and row[a] is not None]
    if name == "ratings" and "responses" in row:
        return []  # `scores` of a ranked list, not ratings
    if name == "ratings":
        given = [a for a in given if not isinstance(row[a], list)]  # a list of scores: no objective -> rating
    if name == "user":  # e.g. MT-Bench's judge ["gpt-4", "pair-v2"]: a judge's setup, not a person (kept as meta)
        given = [a for a in given if not isinstance(row[a], list | dict)]  # any other value is judged as a user
    return given


def alias_issues(row: Mapping[str, Any], names: Iterable[str]) -> list[Issue]:
    """Fields among `names` that `row` lacks but gives in two spellings: which one was meant is the user's to
    say (read as neither, a user went to meta without a word and a prompt was reported missing)."""
    return [(name, f"given as both {' and '.join(given)}, each read as {name}: keep one")
            for name in names if name in ALIASES and len(given := _given_aliases(row, name)) > 1]


_OTHER_FORMS = {
    "rated": ", or one ratings.<objective> column per objective",
    "demonstration": ", or messages: a conversation ending in the assistant's turn",
}


def kind_requirements() -> str:
    """What each kind needs, for messages about rows whose kind cannot be told."""
    return "; ".join(
        f"{kind} needs {' and '.join(markers)}"
        + (" plus scores or ranks" if kind == "ranked" else "")
        + (f" (with {', '.join(n for n in required_fields(kind) if n not in markers)})"
           if any(n not in markers for n in required_fields(kind)) else "")
        + _OTHER_FORMS.get(kind, "")
        for kind, markers in _KIND_MARKERS
    )


def guess_kind(row: Mapping[str, Any]) -> str | None:
    """The kind whose marker fields the row has (aliases included), or None."""
    row = canonical(row)
    if has_verdict(row):  # two sides and a verdict left undecided (a tie, a turn at fault): a pair's problem
        return "pairwise"
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


def parse_row(row: Any, kind: str) -> tuple[Record | None, list[Issue]]:
    """Check one row (a dict of native values) against `kind`; return the record, or None and every issue."""
    if not isinstance(row, Mapping):
        return None, [(None, f"expected an object with fields, got {type_name(row)}")]
    row = canonical(row)
    hostile = [issue for key, value in row.items() for issue in hostile_issues(str(key), value)]
    if hostile:
        return None, hostile
    names, required = field_names(kind), required_fields(kind)
    if undecided := verdict_issues(row) or score_issues(row) or conversation_issues(row) or alias_issues(row, names):
        return None, undecided
    if kind == "rated":  # HelpSteer's form: one plain numeric column per objective
        row = with_numeric_ratings(row, set(names))
    values: dict[str, Any] = {}
    issues: list[Issue] = []
    for name in names:
        value = row.get(name)
        if value is None:
            if name in required:
                issues.append((name, "missing field"))
            continue
        values[name], field_issues = FIELD_CHECKS[FIELD_TYPES[name]](name, value)
        issues += field_issues
    if issues:
        return None, issues
    issues = reply_role_issues(values) + (ROW_CHECKS[kind](values) if kind in ROW_CHECKS else [])
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
    if kind in ("text", "prompt"):
        return messages_of(cell) or cell, []  # a JSON list of messages is a chat, else plain text
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
            return cell, [(name, f"expected a number, got {short(cell)}")]
    if kind == "bool":
        lowered = cell.strip().lower()
        if lowered in ("true", "1", "1.0"):  # 1.0: pandas writes an int column holding a gap as floats
            return True, []
        if lowered in ("false", "0", "0.0"):
            return False, []
        return cell, [(name, f"expected true or false, got {cell!r}")]
    return cell, []


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
    rows: Iterable[RawRow], kind: str, source: str, *, tabular: bool = False, partial_ratings: bool = False
) -> tuple[list[Record], list[int], list[Reject]]:
    """Check every row; return the good records, the line (or row) each came from, and the rejected rows
    with all their problems. `partial_ratings`: rated rows may each rate some of the objectives (a
    multi-objective reward model masks the others), not all the same ones."""
    checked = [(row, *_check_one(row, kind, tabular)) for row in rows]
    # Rated rows must rate one set of objectives: the most common one (earliest on ties), so that one odd
    # row — even the first — is the one blamed, not all the others.
    sets = Counter(frozenset(r.ratings) for _, r, _ in checked if isinstance(r, Rated))
    common = max(sets, key=lambda s: sets[s], default=None)
    common_line = next((row.line for row, r, _ in checked if isinstance(r, Rated) and frozenset(r.ratings) == common), 0)
    records: list[Record] = []
    lines: list[int] = []
    rejects: list[Reject] = []
    for row, record, issues in checked:
        if isinstance(record, Rated) and not partial_ratings:
            issues = _objective_issues(record, common, common_line)
        if issues:
            rejects.append(Reject(row.line, row.raw, [Problem(source, row.line, f, m) for f, m in issues]))
        else:
            records.append(record)
            lines.append(row.line)
    return records, lines, rejects


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
