"""Reading and writing feedback records: JSONL, JSON, CSV, Parquet and `datasets`.

The format follows the file extension (``.jsonl``, ``.json``, ``.csv``, ``.parquet``); a directory is a
dataset saved with ``datasets.Dataset.save_to_disk``, and a ``datasets.Dataset`` object is read as is.
The kind of feedback is given, or told by the fields most rows have.

Reading collects every problem before failing (`DataError`). With ``skip_invalid=True`` the good rows
are kept and each rejected row is written, with its reasons, to a side file: nothing is dropped
silently. In CSV and Parquet, chat messages, lists and dicts are stored as JSON text in their cell.

Reading is total: any bytes give records or problems located by file, line and field — never another
exception. Malformed JSON, numbers beyond a float, nesting past the stack, cells of any size and bytes
that are not UTF-8 are problems of their own line (so `skip_invalid` rejects just that row). Each
format's raw rows come from `pluralign.data.formats`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pluralign.data.formats import FORMATS, Source, file_error, import_datasets, raw_rows
from pluralign.data.rated_forms import completion_rows, is_completions_row, numeric_columns
from pluralign.data.records import KINDS, Record, kind_of
from pluralign.data.validate import (
    ALIASES,
    RawRow,
    Reject,
    canonical,
    check_rows,
    detect_kind,
    field_names,
    kind_requirements,
    majority_kind,
    parse_row,
)
from pluralign.data.verdict_pairs import is_per_objective_row, per_objective_rows
from pluralign.errors import ConfigError, DataError, PluralignError, Problem
from pluralign.runs import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    check_writable,
)


@dataclass
class Checked:
    """The outcome of reading one source: good records and rejected rows."""

    source: str
    kind: str
    records: list[Record]
    rejects: list[Reject]
    # The line (or row) each record came from: blank lines, rejected rows and rows holding several records
    # make it differ from the record's position, and checks made after reading must name the same line.
    lines: list[int]

    @property
    def problems(self) -> list[Problem]:
        return [p for r in self.rejects for p in r.problems]


# ---------------------------------------------------------------------------------------------------
# Records <-> plain dicts.


def record_to_dict(record: Record) -> dict[str, Any]:
    """The record's fields as a JSON-ready dict; fields left as None are omitted."""
    return {k: v for k, v in asdict(record).items() if v is not None}


def record_from_dict(row: dict[str, Any], kind: str | None = None) -> Record:
    """Check and build one record; raises DataError naming every bad field."""
    kind = _known_kind(kind) if kind else detect_kind(row)
    record, issues = parse_row(row, kind)
    if record is None:
        raise DataError([Problem("<record>", None, f, m) for f, m in issues])
    return record


# ---------------------------------------------------------------------------------------------------
# Reading.


def read_records(
    source: Source,
    kind: str | None = None,
    *,
    skip_invalid: bool = False,
    rejects_path: str | os.PathLike | None = None,
) -> list[Record]:
    """Read every record of a file, directory or `datasets.Dataset`.

    Raises DataError listing all problems; with `skip_invalid` returns the good records and writes the
    rejected rows with their reasons to `rejects_path` (default ``<stem>.rejects.jsonl`` next to the
    input; always written, empty when nothing was rejected, so a stale file never misleads).
    """
    return read_located(source, kind, skip_invalid=skip_invalid, rejects_path=rejects_path).records


def read_located(
    source: Source,
    kind: str | None = None,
    *,
    skip_invalid: bool = False,
    rejects_path: str | os.PathLike | None = None,
    partial_ratings: bool = False,
) -> Checked:
    """`read_records`, keeping each record's source line (`Checked.lines`), for checks made after reading
    (a recipe's objectives, groups, conditioning) to name the line the reader's own checks would.
    `partial_ratings`: see `read_checked`."""
    checked = read_checked(source, kind, partial_ratings=partial_ratings)
    if not skip_invalid:
        if checked.rejects:
            raise DataError(checked.problems)
        return checked
    write_rejects(rejects_path or default_rejects_path(source), checked)
    return checked


def read_checked(source: Source, kind: str | None = None, *, partial_ratings: bool = False) -> Checked:
    """Read and check every row without raising for bad rows (whole-file problems still raise).
    Rated rows must rate the same objectives (one that rates others is most often a misspelt name), unless
    `partial_ratings`: masked ratings, each row rating some objectives, as a multi-objective reward model
    trains on them."""
    name, rows, tabular = raw_rows(source)
    if not rows:
        raise file_error(name, "no records found")
    rows = _expand_rows(rows)
    told = kind is None
    if told:
        kind = majority_kind(rows)
        if kind is None:
            raise file_error(name, _undetectable(rows))
    records, lines, rejects = check_rows(rows, _known_kind(kind), name, tabular=tabular,
                                         partial_ratings=partial_ratings)
    if told and kind == "demonstration" and records:
        numeric = _rating_columns(rows)
        if numeric:
            warnings.warn(f"{name}: read as demonstrations, with the numeric column(s) {', '.join(numeric)} kept as "
                          f"meta; to read them as per-objective ratings give the kind: --kind rated (kind='rated' in "
                          f"Python), or for training (which reads no kind) {as_rated_hint(name)}", stacklevel=2)
    return Checked(name, kind, records, rejects, lines)


def as_rated_hint(name: str) -> str:
    """How to turn a file of HelpSteer-style numeric columns into rated records once, for readers that
    take no kind (training)."""
    return f"write them as ratings once: pluralign data convert {name} OUT --kind rated"


def _rating_columns(rows: list[RawRow]) -> dict[str, float]:
    """The columns of the first well-formed row that the rated kind would read as its ratings
    (`with_numeric_ratings`): not a record's whole meta, whose given `meta` object no kind reads as ratings."""
    row = next((r.data for r in rows if isinstance(r.data, Mapping) and not r.issues), None)
    return numeric_columns(canonical(row), set(field_names("rated"))) if row is not None else {}


def _expand_rows(rows: list[RawRow]) -> list[RawRow]:
    """Rows that hold several records — UltraFeedback's rated ``completions`` (`rated_forms`), a verdict per
    objective on two responses (`verdict_pairs`) — as one row per record, each at its source row's line."""
    splitters = ((is_completions_row, completion_rows), (is_per_objective_row, per_objective_rows))
    out = []
    for row in rows:
        split = None if row.issues else next((rows_of for holds, rows_of in splitters if holds(row.data)), None)
        if split is None:
            out.append(row)
        else:
            out += [RawRow(row.line, row.raw, data, list(issues)) for data, issues in split(row.data)]
    return out


def default_rejects_path(source: Source) -> Path:
    if not isinstance(source, str | os.PathLike):
        raise PluralignError("reading an in-memory dataset with skip_invalid needs an explicit rejects_path")
    path = Path(source)
    return path.with_name(path.stem + ".rejects.jsonl")


def write_rejects(path: str | os.PathLike, checked: Checked) -> Path:
    """One JSON line per rejected row: where it was, its original text or row, and every reason."""
    rows = [
        {
            "source": checked.source,
            "line": r.line,
            "raw": _jsonable(r.raw),
            "reasons": [f"{p.field}: {p.message}" if p.field else p.message for p in r.problems],
        }
        for r in checked.rejects
    ]
    return atomic_write_jsonl(path, rows)


def _undetectable(rows: list[RawRow]) -> str:
    """Why no kind fits: the fields the rows have (with the first line), and what each kind needs."""
    seen: dict[str, int] = {}
    for row in rows:
        if isinstance(row.data, dict) and not row.issues:
            for key in canonical(row.data):
                seen.setdefault(str(key), row.line)
    if not seen:
        first = rows[0]
        field, message = first.issues[0] if first.issues else (None, "")
        why = f"; line {first.line}:{f' field {field!r}:' if field else ''} {message}" if first.issues else ""
        return f"no row is an object with fields{why}"
    fields = ", ".join(f"{k} (line {line})" for k, line in list(seen.items())[:20])
    spellings = "; ".join(f"{name}: {'/'.join(aliases)}" for name, aliases in ALIASES.items())
    return (f"cannot tell the kind of feedback: the rows have fields {fields}; {kind_requirements()}. "
            f"Other spellings read as these names: {spellings}. Rename the fields or give the kind explicitly")


def _jsonable(value: Any) -> Any:
    """`value` with anything JSON cannot hold (bytes, dates, … from a foreign table) as its repr, so that
    writing a reject can never fail."""
    try:
        return json.loads(json.dumps(value, default=repr))
    except (ValueError, RecursionError):  # nested past the stack, an integer past the digit limit
        import reprlib

        return reprlib.repr(value)


def _known_kind(kind: str) -> str:
    if kind not in KINDS:
        raise PluralignError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    return kind


# ---------------------------------------------------------------------------------------------------
# Writing.


def record_format(path: str | os.PathLike) -> str:
    """The format records are written to `path` in (its extension), or a `PluralignError` when it has
    none `write_records` writes; callers check it before the work that makes the records."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise PluralignError(
            f"cannot write {path}: unknown format {suffix!r}; use one of {', '.join(FORMATS)}"
        )
    return suffix


def check_records_path(path: str | os.PathLike, flag: str) -> None:
    """Before the work that makes records: a `ConfigError` naming `flag` when `path` has no format
    `write_records` writes or is in a place that cannot be written (found after the work, it was lost)."""
    try:
        record_format(path)
    except PluralignError as e:
        raise ConfigError(f"{flag}: {e}") from None
    check_writable(path, flag)


def write_records(path: str | os.PathLike, records: Sequence[Record]) -> Path:
    """Write records of one kind, atomically, in the format of the path's extension."""
    path = Path(path)
    suffix = record_format(path)
    kind = _single_kind(records)
    if suffix == ".jsonl":
        return atomic_write_jsonl(path, map(record_to_dict, records))
    if suffix == ".json":
        return atomic_write_json(path, [record_to_dict(r) for r in records])
    columns = _columns(records, kind)
    if suffix == ".csv":
        return atomic_write_text(path, _csv_text(columns))
    return atomic_write_bytes(path, _parquet_bytes(columns))


def to_dataset(records: Sequence[Record]) -> Any:
    """A `datasets.Dataset` with one column per field, structured values as JSON text (as in Parquet)."""
    return import_datasets().Dataset.from_dict(_columns(records, _single_kind(records)))


def _single_kind(records: Sequence[Record]) -> str | None:
    """The one kind of `records` (None when empty); a file holds a single kind so it reads back."""
    kinds = {kind_of(r) for r in records}
    if len(kinds) > 1:
        raise PluralignError(
            f"cannot write records of several kinds ({', '.join(sorted(kinds))}) to one file"
        )
    return kinds.pop() if kinds else None


def _columns(records: Sequence[Record], kind: str | None) -> dict[str, list[Any]]:
    """Tabular layout: one column per field some record sets, in field order; None where unset."""
    if kind is None:
        return {}
    rows = [record_to_dict(r) for r in records]
    names = [n for n in field_names(kind) if any(n in row for row in rows)]
    return {n: [_to_cell(row.get(n)) for row in rows] for n in names}


def _to_cell(value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else value


def _csv_text(columns: dict[str, list[Any]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180; a "\n" terminator leaves a field's lone "\r" unquoted
    if columns:
        writer.writerow(columns)
        writer.writerows(zip(*(map(_csv_cell, col) for col in columns.values()), strict=True))
    return buffer.getvalue()


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _parquet_bytes(columns: dict[str, list[Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue().to_pybytes()
