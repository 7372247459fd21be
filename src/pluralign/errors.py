"""User-facing errors.

A `PluralignError` is a user mistake (bad file, bad option, bad config): the CLI prints its message and
exits with code 2, never a traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class PluralignError(Exception):
    """A problem the user can fix; the message says what and where."""


@dataclass(frozen=True)
class Problem:
    """One problem found in an input: where it is and what is wrong."""

    source: str  # file name (or "<dataset>")
    line: int | None  # 1-based: the line a row starts on, or the row number where a file has no lines (Parquet); None when the whole file is at fault
    field: str | None  # the offending field, None for whole-row problems (e.g. malformed JSON)
    message: str

    def __str__(self) -> str:
        where = self.source + (f":{self.line}" if self.line is not None else "")
        what = f" field '{self.field}':" if self.field else ""
        return f"{where}:{what} {self.message}"


class DataError(PluralignError):
    """One or more problems in input data. `problems` holds all of them, not just the first."""

    def __init__(self, problems: list[Problem], max_shown: int = 20):
        self.problems = list(problems)
        shown = "\n".join(f"  {p}" for p in self.problems[:max_shown])
        more = len(self.problems) - max_shown
        tail = f"\n  … and {more} more problem(s)" if more > 0 else ""
        super().__init__(f"{len(self.problems)} problem(s) in input data:\n{shown}{tail}")


class ConfigError(PluralignError):
    """A bad configuration key or value; `field`, when given, names it (the server's 400 answers say which)."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field
