"""Commands `pluralign eval` and `pluralign report`.

`pluralign eval --config FILE` runs the evaluations listed in a YAML config (see
:mod:`pluralign.evaluate.runner`) and writes a results JSON; `pluralign eval rm ...` (reward-model
evaluation) is added by :mod:`pluralign.reward.cli` when that module is present. `pluralign report
RUN_DIR...` renders one self-contained HTML report from run directories (results.json and/or
metrics.jsonl; schema in :mod:`pluralign.evaluate.report`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
import textwrap
from pathlib import Path

from pluralign.cli import DefaultsHelpFormatter, path_arg
from pluralign.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate models and decoders from a YAML config (`eval rm`: reward models)",
        description="Generate with every model/decoder of the config on its prompts, judge the outputs "
                    "(gold, reward model or LLM judge), and write results JSON: reward, KL to the reference, "
                    "win rate with bootstrap CI and length control, per-group utility, objectives.",
        formatter_class=DefaultsHelpFormatter)
    p.add_argument("--config", help="YAML evaluation config (see pluralign.evaluate.runner).")
    p.add_argument("--out", default=None, help="Results JSON (default: the config's `out`, else results.json "
                                                "next to the config).")
    p.add_argument("--report", default=None, help="Also render the HTML report to this file.")
    p.add_argument("--help-config", action="store_true", help="print every key of the YAML config, with its "
                                                              "meaning and an example, and exit")
    p.set_defaults(func=run_eval)
    sub = p.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    if importlib.util.find_spec("pluralign.reward.cli") is not None:
        module = importlib.import_module("pluralign.reward.cli")
        if hasattr(module, "register_eval_rm"):
            module.register_eval_rm(sub)

    r = subparsers.add_parser(
        "report", help="render one self-contained HTML report from run directories",
        description="Read results.json and/or metrics.jsonl from each RUN_DIR and write one HTML file with "
                    "inline plots: reward-KL frontier, Pareto fronts with hypervolume, per-group utility, "
                    "calibration diagrams, judge reliability, training curves and tables.",
        formatter_class=DefaultsHelpFormatter)
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", type=path_arg, help="Run directories.")
    r.add_argument("--out", default=None, help="HTML file (default: RUN_DIR/report/report.html of the first).")
    r.add_argument("--title", default=None, help="Report title.")
    r.set_defaults(func=run_report)


def run_eval(args: argparse.Namespace) -> int:
    from pluralign.config import read_yaml
    from pluralign.evaluate.report import write_report
    from pluralign.evaluate.runner import evaluate_config
    from pluralign.runs import atomic_write_json, check_writable

    if args.help_config:
        print(config_help())
        return 0
    if not args.config:
        raise ConfigError("`pluralign eval` needs --config FILE (or a subcommand, e.g. `pluralign eval rm`)")
    path = Path(args.config)
    cfg = read_yaml(path)
    name = cfg.get("out", "results.json")  # not a path: refused naming the key by evaluate_config's checks
    out = Path(args.out) if args.out else path.parent / name if isinstance(name, str) and name else None
    if out is not None:  # found only once every model had generated and been judged, with nothing written
        check_writable(out, "--out" if args.out else f"{path}: out")
    if args.report:
        check_writable(args.report, "--report")
    results = evaluate_config(cfg, where=str(path), base_dir=path.parent)
    atomic_write_json(out, results)
    print("\n".join(summary_lines(results)))
    for note in verdict_warnings(results):
        print(f"warning: {note}", file=sys.stderr)
    print(f"results: {out}")
    if args.report:
        print(f"report: {write_report(results, args.report)}")
    return 0


def config_help() -> str:
    """The evaluation config's keys, as `pluralign.evaluate.runner` documents them (one text: the keys a
    config may hold are checked against the same module's lists)."""
    from pluralign.evaluate import runner

    doc = runner.__doc__ or ""
    start = doc.index("Config (YAML)")
    return textwrap.dedent(doc[start:]).strip()


def summary_lines(results: dict) -> list[str]:
    """One line per run: its judged reward (± s.e.), KL to the reference and win rate against the baseline."""
    def num(x: object, fmt: str = ".4f") -> str:
        if not (isinstance(x, int | float) and math.isfinite(x)):
            return "-"
        text = format(x, fmt)
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # -1e-7 (noise) prints as 0.0000

    lines = [f"{'run':20s} {'reward':>10s} {'± se':>8s} {'KL':>8s} {'± se':>8s} {'win rate':>9s}   "
             f"({results.get('judge', '')})"]
    for run in results.get("runs", []):
        win = (run.get("win_rate") or {}).get("win_rate")
        kl = ("≤" if run.get("kl_is_bound") and num(run.get("kl")) != "-" else "") + num(run.get("kl"))
        lines.append(f"{run['name'][:20]:20s} {num(run.get('reward')):>10s} {num(run.get('reward_se')):>8s} "
                     f"{kl:>8s} {num(run.get('kl_se')):>8s} {num(win, '.1f'):>9s}")
    return lines


def verdict_warnings(results: dict) -> list[str]:
    """Rewards and win rates resting on fewer grades or verdicts than answers: the judge's replies could not
    all be read."""
    from pluralign.evaluate.plots import _finite as count  # a number: results.json may come from elsewhere

    out = []
    for run in results.get("runs", []):  # the report shows these too, for results.json written elsewhere
        name = run.get("name", "")
        if count(run.get("reward_n")) and count(run.get("n")) and run["reward_n"] < run["n"]:
            mean = " (its reward is their mean)" if run["reward_n"] else ""
            out.append(f"{name}: the judge graded {run['reward_n']} of {run['n']} responses{mean}; an LLM "
                       "judge may be too small to follow the template")
        wr = run.get("win_rate") if isinstance(run.get("win_rate"), dict) else {}
        invalid, valid = wr.get("n_invalid"), wr.get("n_total")
        if count(invalid) and invalid and count(valid):
            out.append(f"{name}: the judge's verdict could not be read for {invalid} of {valid + invalid} pairs "
                       "(left out of its win rate); an LLM judge may be too small to follow the template")
        if wr.get("lc_is_extreme_change") and count(wr.get("lc_win_rate")) and count(wr.get("win_rate")):
            out.append(f"{run['name']}: the length-controlled win rate {wr['lc_win_rate']:.1f} is far from the raw "
                       f"{wr['win_rate']:.1f} (AlpacaEval's check): length explains the verdicts, or the GLM fit "
                       "failed on too few prompts")
    return out + _reply_warnings(results.get("judge_replies"))


def _reply_warnings(replies: object) -> list[str]:
    """An LLM judge's replies that held no verdict or grade, and its requests that failed for good: a pair
    with one unreadable order is judged on the other alone, which the win rate's counts do not show."""
    from pluralign.evaluate.plots import _finite as count

    replies = replies if isinstance(replies, dict) else {}
    read, unread, failed = (replies.get(k) for k in ("read", "unreadable", "failed"))
    out = []
    if count(read) and count(unread) and unread:
        out.append(f"the LLM judge could not read {unread} of its {read + unread} replies (no verdict or grade in "
                   "them; they are not cached, so a rerun asks again)")
    if count(failed) and failed:
        out.append(f"{failed} request(s) to the LLM judge failed for good (on_error: nan): their verdicts and grades "
                   "are missing")
    return out


def run_report(args: argparse.Namespace) -> int:
    from pluralign.evaluate.report import write_report
    from pluralign.evaluate.run_dirs import load_run_dirs

    results = load_run_dirs(args.run_dirs)
    if args.title:
        results["title"] = args.title
    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "report" / "report.html"
    print(f"report: {write_report(results, out)}")
    return 0
