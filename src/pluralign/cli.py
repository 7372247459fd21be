"""The `pluralign` command. Thin by design: each command group lives next to the library code it calls
and adds itself through a `register(subparsers)` function; this file only dispatches and turns user
errors into a message and a non-zero exit code."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from pluralign import __version__
from pluralign.errors import PluralignError

# Each module defines `register(subparsers) -> None`; its parsers set `func(args) -> int`. Keyed by the
# commands each registers, so that `pluralign data …` imports only the data module: a command pays
# for its own imports (torch, transformers) and no other's.
COMMAND_MODULES = {
    "pluralign.data.cli": ("data",),
    "pluralign.sandbox.cli": ("sandbox",),
    "pluralign.train.cli": ("train",),
    "pluralign.losses.cli": ("losses",),
    "pluralign.decode.cli": ("decode",),
    "pluralign.serve.cli": ("serve",),
    "pluralign.evaluate.cli": ("eval", "report"),
    "pluralign.demo": ("demo",),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for `argv`: only the command module it names when it names one, else all of them."""
    parser = argparse.ArgumentParser(prog="pluralign", description="Align language models with many people's preferences.")
    parser.add_argument("--version", action="version", version=f"pluralign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    command = next((a for a in (argv or []) if not a.startswith("-")), None)
    known = {c for commands in COMMAND_MODULES.values() for c in commands}
    for name, commands in COMMAND_MODULES.items():
        if command not in known or command in commands:
            importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with warnings.catch_warnings():  # restores how warnings are shown when the command returns
        warnings.showwarning = _for_people(warnings.showwarning)
        restore = _on_sigterm() if argv[:1] != ["serve"] else lambda: None  # a server drains on its own
        try:
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a reader that has gone shows here, not as an error at exit
            return code
        except PluralignError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (a scheduler's stop, `kill`): see _on_sigterm
            print("terminated" if isinstance(e, Terminated) else "interrupted", file=sys.stderr)
            return 143 if isinstance(e, Terminated) else 130
        except BrokenPipeError:  # the reader went away (`pluralign losses | head`): stop quietly, as cat does
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
            return 141
        finally:
            restore()


def _int_at_least(text: str, least: int, why: str = "") -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}{why}, got {n}")
    return n


def positive_int(text: str) -> int:
    """argparse type for a count: an integer >= 1 (the benchmark and experiment scripts' counts too)."""
    return _int_at_least(text, 1)


def seed_int(text: str) -> int:
    """argparse type for a seed: an integer >= 0 (numpy's random streams take non-negative seeds only)."""
    return _int_at_least(text, 0, " (numpy's random streams take no negative seed)")


def path_arg(text: str) -> str:
    """argparse type for a file or directory argument: not empty (Path('') is the current directory, which a
    typo'd or unset shell variable would then have read, or written into, as if named)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give the file or directory")
    return text


def learning_rate(text: str) -> float:
    """argparse type for a script's learning rate, held to the rule of `loop.learning_rate` (LoopConfig's own
    check), so that a bad one is refused before any work rather than in a training subprocess."""
    from pluralign.errors import ConfigError
    from pluralign.train.loop_config import LoopConfig  # imported only by scripts that take a learning rate

    try:
        value = float(text)
        LoopConfig(learning_rate=value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, where there is one to tell: not None (the help says what an unset
    option does, e.g. "default: <model>/eval"), and not twice where the help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it unwinds as Ctrl-C does: the run lock released,
    half-written files removed, one line said. By default SIGTERM ends the process on the spot."""


def _on_sigterm():
    """Turn SIGTERM into `Terminated` while a command runs (the main thread only: Python delivers signals
    there); returns what puts the previous handler back. A server replaces it with its own drain."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminate(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _for_people(show):
    """pluralign's own warnings as "warning: <message>" lines (a user mistake, not a code location);
    other libraries' as `show` shows them."""
    package = str(Path(__file__).parent)

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if str(filename).startswith(package):
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return show_warning


if __name__ == "__main__":
    sys.exit(main())
