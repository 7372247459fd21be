"""Prompt files: the one reader of prompts for decoding (`pluralign decode --prompts`), evaluation (an eval
config's `prompts`) and online training (`train grpo … data=`).

A prompt file is a ``.txt`` file (one prompt per non-empty line, taken as written) or any source the data
readers take (`pluralign.data.formats`: JSONL, JSON, CSV, Parquet, a saved `datasets` directory, a hub data
set). There a row is a string, or an object whose prompt is under any spelling or in any form
`pluralign.data` knows (``prompt``, ``instruction``, a whole conversation, Arena's two conversations, …): a
held-out feedback file is a prompt file as it is. A row's other fields (``user``, ``weights``, per-request
controls) are kept for the caller.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pluralign.data.conversations import messages_of
from pluralign.data.field_checks import check_prompt, hostile_issues
from pluralign.data.formats import file_error, raw_rows
from pluralign.data.validate import canonical
from pluralign.errors import DataError, Problem


@dataclass(frozen=True)
class PromptRow:
    """One prompt and the row it came from: `fields` is the row with canonical names, `fields["prompt"]`
    plain text or chat messages."""

    source: str
    line: int
    fields: dict[str, Any]

    @property
    def prompt(self) -> Any:
        return self.fields["prompt"]

    def problem(self, field: str, message: str) -> Problem:
        return Problem(self.source, self.line, field, message)


def read_prompt_rows(paths: Sequence[str | os.PathLike]) -> list[PromptRow]:
    """Every prompt of the files, in order. Raises `DataError` listing every unreadable row and every row
    without a usable prompt (by file, line and field), or naming a file that holds no prompt at all."""
    rows: list[PromptRow] = []
    problems: list[Problem] = []
    for path in paths:
        before = len(rows)
        if Path(path).suffix.lower() == ".txt":
            rows += _text_rows(Path(path))
        else:
            _table_rows(path, rows, problems)
        if len(rows) == before and not problems:
            problems.append(Problem(str(path), None, None, "no prompts"))
    if problems:
        raise DataError(problems)
    return rows


def _text_rows(path: Path) -> list[PromptRow]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise file_error(str(path), "no such file") from None
    except UnicodeDecodeError:
        raise file_error(str(path), "not UTF-8 text") from None
    except OSError as e:
        raise file_error(str(path), f"cannot read file: {e.strerror or e}") from None
    return [PromptRow(str(path), i, {"prompt": line}) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _table_rows(path: str | os.PathLike, rows: list[PromptRow], problems: list[Problem]) -> None:
    name, raw, tabular = raw_rows(path)
    for row in raw:
        if row.issues:
            problems += [Problem(name, row.line, field, message) for field, message in row.issues]
            continue
        data = {"prompt": row.data} if isinstance(row.data, str) else canonical(row.data)
        if not isinstance(data, dict):
            problems.append(Problem(name, row.line, None, "not a prompt or a JSON object"))
            continue
        prompt = data.get("prompt")
        if tabular:
            data = _cells(data)
            if isinstance(prompt, str):
                prompt = messages_of(prompt) or prompt  # chat messages held as JSON text in a cell
        if prompt is None:
            problems.append(Problem(name, row.line, "prompt", "missing prompt"))
            continue
        # The data files' own checks: a prompt file's chat is held to the roles and last turn training is, and
        # no field may hold what no tokenizer encodes (a lone surrogate, which JSON allows) or nest past reason.
        hostile = [issue for key, value in {**data, "prompt": prompt}.items()
                   for issue in hostile_issues(str(key), value)]
        prompt, issues = check_prompt("prompt", prompt)
        issues = hostile or issues
        if issues:
            problems += [Problem(name, row.line, field, message) for field, message in issues]
        else:
            rows.append(PromptRow(name, row.line, {**data, "prompt": prompt}))


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    """A table row's control cells as values: JSON text (numbers, lists, objects: `n`, `weights`,
    `direction`, …) decoded, empty cells dropped; the prompt and the user are text as written."""
    out = {}
    for key, cell in row.items():
        if isinstance(cell, str) and key not in ("prompt", "user"):
            if not cell.strip():
                continue
            try:
                value = json.loads(cell)
            except (ValueError, RecursionError):  # not JSON (plain text), or nested past the stack
                value = cell
            cell = value if isinstance(value, int | float | list | dict) else cell
        out[key] = cell
    return out
