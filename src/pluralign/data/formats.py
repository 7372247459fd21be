"""Raw rows of each source format — JSONL, JSON (a list of objects, or JSON Lines as `datasets` names them),
CSV, Parquet, a saved `datasets` directory, a split of a
Hugging Face hub data set (``owner/name:split``) or a `datasets.Dataset` — before any checks (`pluralign.data.validate`). A row that cannot even be parsed
(malformed JSON, bytes that are not UTF-8, a CSV line with too many cells) comes back with its problem, at
its line; only a whole-file problem (no such file, an unreadable header) raises.

Every row is located 1-based, as an editor or a table viewer counts: JSONL and CSV rows by the line they
start on (a CSV's first data row is line 2, after the header), a JSON list's elements by the line each
starts on, and rows of a Parquet file or a `datasets.Dataset` (which have no lines) by their row number,
the first row being 1."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from pluralign.data.field_checks import Issue
from pluralign.data.validate import RawRow, json_failure
from pluralign.errors import DataError, PluralignError, Problem

FORMATS = (".jsonl", ".json", ".csv", ".parquet")
Source = str | os.PathLike | Any  # a path, or a `datasets.Dataset`


def file_error(source: str, message: str, line: int | None = None) -> DataError:
    """A problem with a whole file (or its header), not with one row."""
    return DataError([Problem(source, line, None, message)])


def raw_rows(source: Source) -> tuple[str, list[RawRow], bool]:
    """(source name, rows, whether cells hold JSON text for structured values)."""
    if not isinstance(source, str | os.PathLike):
        return _dataset_rows(source, "<dataset>")
    path = Path(source)
    name = str(source)
    if path.is_dir():
        return _dataset_rows(_load_dataset_dir(path), name)
    suffix = path.suffix.lower()
    if suffix not in FORMATS and not path.exists() and HUB_ID.fullmatch(name):
        return _dataset_rows(_load_hub_dataset(name), name)
    if suffix not in FORMATS:
        raise file_error(
            name, f"unknown format {suffix!r}; use one of {', '.join(FORMATS)}, a saved datasets directory or a "
            "Hugging Face hub data set as owner/name[:split]"
        )
    try:
        if suffix == ".parquet":
            return name, _parquet_rows(path, name), True
        data = path.read_bytes()
    except FileNotFoundError:
        raise file_error(name, "no such file") from None
    except OSError as e:
        raise file_error(name, f"cannot read file: {e.strerror or e}") from None
    if suffix == ".jsonl":
        return name, _jsonl_rows(data), False
    if suffix == ".json":
        return name, _json_rows(_decode_utf8(data, name), name), False
    # Undecodable bytes become lone surrogates (U+DC80-U+DCFF) that mark their own row as not UTF-8.
    return name, _csv_rows(data.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape"), name), True


def _decode_utf8(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise file_error(name, "not UTF-8 text", line=line) from None


class _RepeatedKeys:
    """An `object_pairs_hook` noting keys an object gives more than once: JSON would keep the last without a
    word (a CSV header may not repeat a column either), so which value was meant is the user's to say."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.decoder = json.JSONDecoder(object_pairs_hook=self)

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            seen: set[str] = set()
            self.keys += [k for k, _ in pairs if k in seen or seen.add(k)]
        return obj

    def issues(self) -> list[Issue]:
        """The repeats met since the last call, as issues of the row just parsed."""
        keys, self.keys = dict.fromkeys(self.keys), []
        return [(key, "given more than once in one object; JSON would keep only the last") for key in keys]


def _jsonl_rows(data: bytes) -> list[RawRow]:
    rows = []
    repeated = _RepeatedKeys()
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue  # blank lines hold no record
        try:
            text = line.decode("utf-8-sig").rstrip("\r")
        except UnicodeDecodeError:
            rows.append(RawRow(number, line.decode("utf-8", "replace"), None, [(None, "not UTF-8 text")]))
            continue
        try:
            rows.append(RawRow(number, text, repeated.decoder.decode(text), repeated.issues()))
        except json.JSONDecodeError as e:
            rows.append(RawRow(number, text, None, [(None, f"malformed JSON: {e.msg} (column {e.colno})")]))
        except (ValueError, RecursionError) as e:  # an integer past the digit limit, nesting past the stack
            rows.append(RawRow(number, text, None, [(None, f"unusable JSON: {json_failure(e)}")]))
        repeated.issues()  # none carried to the next line from one that failed part-way
    return rows



def _json_rows(text: str, name: str) -> list[RawRow]:
    if not text.strip():  # as an empty JSONL or CSV file: no records, not a JSON syntax error at column 1
        return []
    try:
        elements = _json_elements(text)
        value = json.loads(text) if elements is None else None  # not an array: say what it is, or where it breaks
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            # one object after another: JSON Lines named .json, as `datasets`' to_json writes by default
            return _jsonl_rows(text.encode("utf-8"))
        raise file_error(name, f"malformed JSON: {e.msg} (column {e.colno})", line=e.lineno) from None
    except (ValueError, RecursionError) as e:
        raise file_error(name, f"unusable JSON: {json_failure(e)}") from None
    if elements is None:
        raise file_error(name, f"expected a JSON list of objects, got {type(value).__name__}")
    return [RawRow(line, row, row, issues) for line, row, issues in elements]


_JSON_SPACE = re.compile(r"[ \t\n\r]*")  # the whitespace JSON allows between tokens


def _json_elements(text: str) -> list[tuple[int, Any, list[Issue]]] | None:
    """Each element of the JSON array `text` with the 1-based line it starts on (so a record's problems point
    at it as JSONL's do) and its repeated keys, parsed in one pass; None when `text` is not an array. Raises
    json.JSONDecodeError where the array breaks, as json.loads would."""
    repeated = _RepeatedKeys()
    decoder = repeated.decoder
    pos = _JSON_SPACE.match(text).end()
    if not text.startswith("[", pos):
        return None
    pos = _JSON_SPACE.match(text, pos + 1).end()
    elements: list[tuple[int, Any, list[Issue]]] = []
    line, counted = 1, 0
    closed = text.startswith("]", pos)
    while not closed:
        line += text.count("\n", counted, pos)  # counted incrementally: linear in the file's size
        counted = pos
        value, pos = decoder.raw_decode(text, pos)
        elements.append((line, value, repeated.issues()))
        pos = _JSON_SPACE.match(text, pos).end()
        closed = text.startswith("]", pos)
        if not closed and not text.startswith(",", pos):
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
        if not closed:
            pos = _JSON_SPACE.match(text, pos + 1).end()
    end = _JSON_SPACE.match(text, pos + 1).end()
    if end != len(text):
        raise json.JSONDecodeError("Extra data", text, end)
    return elements


def _csv_rows(text: str, name: str) -> list[RawRow]:
    # Feed the reader our own lines so that a row's line numbers map back to its exact original text.
    lines = list(io.StringIO(text, newline=""))
    # A cell may be as long as the file (JSONL takes any line length; CSV must not refuse the same text).
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, min(len(text) + 1, 2**31 - 1)))
    try:
        return _csv_records(lines, name)
    finally:
        csv.field_size_limit(limit)


def _csv_records(lines: list[str], name: str) -> list[RawRow]:
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise file_error(name, f"unreadable CSV header: {e}", line=1) from None
    if not header:
        return []
    if bad := _not_utf8("".join(lines[: reader.line_num])):
        raise file_error(name, f"header is {bad}", line=1)
    if len(set(header)) != len(header):
        raise file_error(name, f"repeated column names in header {header}", line=1)
    rows = []
    try:
        while True:
            start = reader.line_num + 1
            cells = next(reader, None)
            if cells is None:
                break
            raw = "".join(lines[start - 1 : reader.line_num]).rstrip("\r\n")
            if not cells or not raw.strip():
                continue  # a blank or whitespace-only line holds no record, as in JSONL
            if bad := _not_utf8(raw):
                raw = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                rows.append(RawRow(start, raw, None, [(None, bad)]))
            elif len(cells) != len(header):
                rows.append(
                    RawRow(start, raw, None, [(None, f"expected {len(header)} cells, found {len(cells)}")])
                )
            else:
                rows.append(RawRow(start, raw, dict(zip(header, cells, strict=True))))
    except csv.Error as e:
        raise file_error(name, f"unreadable CSV: {e}", line=reader.line_num) from None
    return rows


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


def _not_utf8(text: str) -> str | None:
    """What is wrong with text decoded with surrogateescape, or None when it was valid UTF-8."""
    m = _ESCAPED_BYTE.search(text)
    return None if m is None else f"not UTF-8 text (byte 0x{ord(m.group()) - 0xDC00:02x} at column {m.start() + 1})"


def _parquet_rows(path: Path, name: str) -> list[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise FileNotFoundError(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, ValueError) as e:
        raise file_error(name, f"unreadable Parquet: {e}") from None
    return [RawRow(number, row, row) for number, row in enumerate(table.to_pylist(), start=1)]


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise PluralignError(
            "reading a dataset needs the 'datasets' package: pip install 'pluralign[datasets]'"
        ) from None
    return datasets


def _load_dataset_dir(path: Path):
    datasets = import_datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise file_error(str(path), f"not a dataset saved with save_to_disk: {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(loaded)
        raise file_error(
            str(path),
            f"holds several splits ({splits}); give one split's directory, e.g. {path / next(iter(loaded))}",
        )
    return loaded


# owner/name[:split] of a data set on the Hugging Face hub (a source that is no local file)
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+(:[\w.-]+)?")


def _load_hub_dataset(spec: str):
    """A split of a hub data set (`datasets.load_dataset`, from its cache when offline); a data set of
    several splits must be given one."""
    datasets = import_datasets()
    repo, _, split = spec.partition(":")
    try:
        loaded = datasets.load_dataset(repo, split=split or None)
    except Exception as e:  # offline and not cached, no such data set or split, gated: the library's words
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise file_error(spec, f"no such local file, and not loadable from the Hugging Face hub: {reason}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if len(loaded) != 1:
            raise file_error(spec, f"holds several splits ({', '.join(loaded)}); name one, e.g. {repo}:{next(iter(loaded))}")
        loaded = next(iter(loaded.values()))
    return loaded


def _dataset_rows(dataset: Any, name: str) -> tuple[str, list[RawRow], bool]:
    if not hasattr(dataset, "column_names") or not hasattr(dataset, "__iter__"):
        raise PluralignError(
            f"cannot read records from a {type(dataset).__name__}; give a path or a datasets.Dataset"
        )
    if isinstance(dataset.column_names, dict):  # a DatasetDict maps split -> columns
        raise PluralignError(
            f"a DatasetDict holds several splits ({', '.join(dataset)}); pass one, e.g. dataset['train']"
        )
    return name, [RawRow(number, row, row) for number, row in enumerate(dataset, start=1)], True
