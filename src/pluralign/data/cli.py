"""`pluralign data validate | convert | stats`: check, convert and summarize feedback files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pluralign.data.convert import convert
from pluralign.data.io import (
    check_records_path,
    default_rejects_path,
    read_checked,
    read_records,
    write_records,
    write_rejects,
)
from pluralign.data.records import KINDS, kind_of
from pluralign.data.stats import format_summary, summary
from pluralign.errors import DataError, PluralignError


def register(subparsers: argparse._SubParsersAction) -> None:
    from pluralign.cli import path_arg

    data = subparsers.add_parser("data", help="check, convert and summarize feedback files")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    kind_help = "kind of feedback (default: told by the fields)"

    validate = actions.add_parser("validate", help="check every row and report every problem")
    validate.add_argument("file", type=path_arg, help=".jsonl, .json, .csv, .parquet or a saved datasets directory")
    validate.add_argument("--kind", choices=list(KINDS), help=kind_help)
    validate.add_argument(
        "--skip-invalid",
        action="store_true",
        help="keep the good rows; write the bad ones, with reasons, to a rejects file",
    )
    validate.add_argument("--rejects", help="rejects file (default: <stem>.rejects.jsonl next to FILE)")
    validate.add_argument(
        "--out", help="where to write the good rows (default with --skip-invalid: <stem>.valid.<ext>)"
    )
    validate.set_defaults(func=run_validate)

    conv = actions.add_parser("convert", help="convert between formats and kinds of feedback")
    conv.add_argument("input", type=path_arg, help="input file or datasets directory")
    conv.add_argument("output", type=path_arg, help="output file; the format follows its extension")
    conv.add_argument("--to", choices=list(KINDS), help="kind to convert to (default: keep the input's kind)")
    conv.add_argument("--kind", choices=list(KINDS), help=f"input {kind_help}")
    conv.add_argument("--objective", help="rated input: the objective to order or threshold by")
    conv.add_argument(
        "--weights", help="rated input: a weighted sum of objectives instead, e.g. helpful=0.7,safe=0.3"
    )
    conv.add_argument(
        "--threshold", type=float, help="rated -> binary: ratings at or above this are positive"
    )
    conv.set_defaults(func=run_convert)

    stats = actions.add_parser("stats", help="counts per kind, user, group and objective; length percentiles")
    stats.add_argument("file", type=path_arg)
    stats.add_argument("--kind", choices=list(KINDS), help=kind_help)
    stats.add_argument("--json", action="store_true", help="print the summary as JSON")
    stats.set_defaults(func=run_stats)


def run_validate(args: argparse.Namespace) -> int:
    if args.rejects and not args.skip_invalid:  # else ignored: without --skip-invalid bad rows stop the command
        raise PluralignError("--rejects names where --skip-invalid sets the bad rows aside; add --skip-invalid")
    if args.out:  # checked after the file was read: it printed "all valid" and then refused --out
        check_records_path(args.out, "--out")
    checked = read_checked(args.file, args.kind)
    total = len(checked.records) + len(checked.rejects)
    if not args.skip_invalid:
        if checked.rejects:
            raise DataError(checked.problems)
        print(f"{args.file}: all {total} {checked.kind} records are valid")
        if args.out:
            print(f"wrote {write_records(args.out, checked.records)}")
        return 0
    if checked.rejects:
        print(
            f"warning: skipped {len(checked.rejects)} invalid row(s); {DataError(checked.problems)}",
            file=sys.stderr,
        )
    rejects = write_rejects(args.rejects or default_rejects_path(args.file), checked)
    out = write_records(args.out or default_valid_path(args.file), checked.records)
    print(f"{args.file}: kept {len(checked.records)} of {total} {checked.kind} rows -> {out}")
    print(f"{len(checked.rejects)} rejected row(s) with reasons -> {rejects}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    check_records_path(args.output, "output")
    records = read_records(args.input, args.kind)
    source = kind_of(records[0])
    out = convert(
        records,
        args.to or source,
        objective=args.objective,
        weights=parse_weights(args.weights),
        threshold=args.threshold,
    )
    path = write_records(args.output, out)
    print(f"converted {len(records)} {source} records to {len(out)} {args.to or source} records -> {path}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    stats = summary(read_records(args.file, args.kind))
    print(json.dumps(stats, indent=2) if args.json else format_summary(stats))
    return 0


def default_valid_path(source: str) -> Path:
    """``data.csv`` -> ``data.valid.csv``; a datasets directory -> ``<dir>.valid.jsonl``."""
    path = Path(source)
    suffix = ".jsonl" if path.is_dir() else path.suffix
    return path.with_name(f"{path.stem}.valid{suffix}")


def parse_weights(text: str | None) -> dict[str, float] | None:
    """``"helpful=0.7,safe=0.3"`` -> ``{"helpful": 0.7, "safe": 0.3}``."""
    from pluralign.conditioning import parse_vector

    if text is None:
        return None
    weights = parse_vector(text, "--weights")
    if not isinstance(weights, dict) or "" in weights:
        raise PluralignError(f"--weights: expected name=number pairs separated by commas, got {text!r}")
    return weights

