"""The `pluralign` command. Thin by design: each command group lives next to the library code it calls
and adds itself through a `register(subparsers)` function; this file only dispatches and turns user
errors into a message and a non-zero exit code."""

from __future__ import annotations

import argparse
import importlib
import sys

from pluralign import __version__
from pluralign.errors import PluralignError

# Each module defines `register(subparsers) -> None`; its parsers set `func(args) -> int`.
COMMAND_MODULES = (
    "pluralign.data.cli",
    "pluralign.sandbox.cli",
    "pluralign.train.cli",
    "pluralign.decode.cli",
    "pluralign.serve.cli",
    "pluralign.evaluate.cli",
    "pluralign.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pluralign", description="Align language models with many people's preferences.")
    parser.add_argument("--version", action="version", version=f"pluralign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PluralignError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
