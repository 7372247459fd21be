"""`pluralign eval rm --model DIR --data FILE [--out DIR]`: evaluate a saved reward model.

`register_eval_rm(eval_subparsers)` is called by `pluralign.evaluate.cli`; training commands
(`pluralign train rm|morm|pal|binary-rm`) are dispatched by `pluralign.train.cli` to
`pluralign.train.recipes.reward.run`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pluralign.cli import DefaultsHelpFormatter
from pluralign.errors import ConfigError
from pluralign.runs import atomic_write_json, check_writable


def register_eval_rm(eval_subparsers: Any) -> None:
    p = eval_subparsers.add_parser(
        "rm", help="Reward-model accuracy (overall/per user/group/objective), ECE before/after temperature "
                   "scaling, AUROC (binary), RewardBench sections, reliability plot.",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="Reward-model directory (or a run directory holding model/).")
    p.add_argument("--data", required=True, help="Pairwise, ranked or binary feedback file.")
    p.add_argument("--out", default=None, help="Where to write rm_eval.json and reliability.png (default: <model>/eval).")
    p.add_argument("--bins", type=int, default=10, help="Calibration bins.")
    p.add_argument("--device", default=None, help="Device for the model (default: CPU).")
    p.set_defaults(func=eval_rm)


def resolve_model_dir(path: str | Path) -> Path:
    """A reward-model directory, or a training run directory containing one in model/."""
    path = Path(path)
    return path / "model" if (path / "model" / "config.json").exists() else path


def eval_rm(args: argparse.Namespace) -> int:
    from pluralign.data.io import read_located
    from pluralign.evaluate.calibration import plot_reliability
    from pluralign.reward.base import load_reward_model
    from pluralign.reward.evaluation import evaluate_records, unknown_users_warning

    if args.bins < 1:
        raise ConfigError(f"--bins must be >= 1, got {args.bins}")
    model_dir = resolve_model_dir(args.model)
    out = Path(args.out) if args.out else model_dir / "eval"
    check_writable(out, "--out", directory=True)  # else found once the model had scored every record
    model = load_reward_model(model_dir, device=args.device)
    # a multi-objective model trains on masked ratings (rows rating some objectives), and is judged on them too
    records = read_located(args.data, partial_ratings=model.model_type == "multi").records
    report = evaluate_records(model, records, n_bins=args.bins, source=args.data)
    atomic_write_json(out / "rm_eval.json", report)
    (out / "reliability.png").unlink(missing_ok=True)  # an earlier evaluation's plot is not this one's
    if "calibration" in report:
        c = report["calibration"]
        plot_reliability(c["reliability_before"], out / "reliability.png", rows_after=c["reliability_after"],
                         title=f"{Path(args.data).name}: reliability", labels=("raw", f"T = {c['temperature']:.2f}"))
    if (warning := unknown_users_warning(report)) is not None:
        print(f"warning: {warning}", file=sys.stderr)
    print(format_report(report))
    print(f"wrote {out / 'rm_eval.json'}" + (f" and {out / 'reliability.png'}" if "calibration" in report else ""))
    return 0


def format_report(report: dict) -> str:
    """Human-readable summary of an `evaluate_records` report."""
    lines = [f"{report['kind']} records: {report['n']}"]
    if report["kind"] == "binary":
        lines.append(f"AUROC {report['auroc']:.4f}   accuracy {report['accuracy']:.4f}   "
                     f"positive rate {report['positive_rate']:.3f}   mean P {report['mean_probability']:.3f}")
    else:
        lines.append(f"accuracy {report['accuracy']:.4f}   mean margin {report['mean_margin']:.4f}")
    for key in ("per_user", "per_group", "per_objective", "per_section"):
        if report.get(key):
            body = "  ".join(f"{k}={v:.3f}" for k, v in list(report[key].items())[:20])
            more = f"  (+{len(report[key]) - 20} more)" if len(report[key]) > 20 else ""
            lines.append(f"accuracy {key[4:]}: {body}{more}")
    if "rewardbench" in report:
        rb = report["rewardbench"]
        lines.append("RewardBench sections: " + "  ".join(f"{k}={v:.3f}" for k, v in rb["sections"].items())
                     + f"   overall={rb['overall']:.3f}")
    if "calibration" in report:
        c = report["calibration"]
        lines.append(f"ECE before {c['before']['ece']:.4f} → after temperature scaling (T={c['temperature']:.3f}) "
                     f"{c['after']['ece']:.4f}   (ACE {c['before']['ace']:.4f} → {c['after']['ace']:.4f}, "
                     f"MCE {c['before']['mce']:.4f} → {c['after']['mce']:.4f}; fit on {c['n_fit']}, measured on {c['n_test']})")
    from pluralign.reward.evaluation import chance_warning

    if (warning := chance_warning(report)) is not None:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
