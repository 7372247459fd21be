"""Reading run directories into one results dict for the report (`pluralign.evaluate.report`'s schema):
``results.json`` (that schema), ``metrics.jsonl`` (a training log: plotted as curves; its last ``kl`` /
``reward`` values make a run when ``results.json`` has none) and, for a reward-model run, its evaluations
(``report/eval.json``, ``model/eval/rm_eval.json``: calibration and an accuracy table). Directories whose
runs were scored by different judges are refused rather than merged."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pluralign.errors import ConfigError
from pluralign.evaluate.report import judge_of, last_value
from pluralign.evaluate.results_check import LIST_KEYS, check_results
from pluralign.runs import RunDir


def _check_one_judge(parts: Sequence[dict], sources: Sequence[str]) -> None:
    """Refuse to merge runs scored by different judges: one "reward" column and axis would mix, say, gold
    utility with a reward model's score, and win rates judged by different judges. Parts without runs
    (training curves only) score nothing, so any judge goes with them."""
    scored = [(src, judge_of(part)) for src, part in zip(sources, parts, strict=True) if part.get("runs")]
    for src, judge in scored[1:]:
        if judge != scored[0][1]:
            raise ConfigError(f"cannot merge {scored[0][0]} (judge {scored[0][1]!r}) with {src} (judge {judge!r}): "
                              "their rewards and win rates are not on one scale; make one report per judge")


def merge_results(parts: Sequence[dict], sources: Sequence[str] | None = None) -> dict:
    """Concatenate the list sections of several results dicts; the first title/description/pareto wins.
    Parts whose runs were scored by different judges are refused (a ConfigError naming `sources`, the
    parts' files or directories)."""
    if isinstance(parts, Mapping) or not isinstance(parts, Sequence) or not all(isinstance(p, Mapping) for p in parts):
        # a lone results dict was iterated by its keys and failed with "'str' object has no attribute 'get'"
        raise ConfigError(f"parts: expected a list of results dicts, got {type(parts).__name__}", field="parts")
    _check_one_judge(parts, sources or [f"results #{i + 1}" for i in range(len(parts))])
    out: dict[str, Any] = {k: [] for k in LIST_KEYS}
    for part in parts:
        for k, v in part.items():
            if k in LIST_KEYS:
                out[k].extend(v)
            elif k == "judge_replies":  # each evaluation's own: the first's alone understated the unreadable
                out[k] = _add_counts(out.get(k, {}), v)
            else:
                out.setdefault(k, v)
    return out


def _add_counts(total: dict, counts: Any) -> dict:
    """`total` plus `counts`, key by key, where both hold whole numbers (results.json may come from elsewhere)."""
    counts = counts if isinstance(counts, Mapping) else {}
    whole = lambda x: isinstance(x, int) and not isinstance(x, bool)
    return {k: total.get(k, 0) + counts.get(k, 0) for k in {*total, *counts}
            if whole(total.get(k, 0)) and whole(counts.get(k, 0))}


def load_run_dir(path: str | os.PathLike) -> dict:
    """A results dict from one run directory (``results.json`` and/or ``metrics.jsonl``)."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"run directory not found: {root}")
    results_path, run = root / "results.json", RunDir(root)
    results: dict = {}
    if results_path.exists():
        results = _read_json(results_path)
        check_results(results, str(results_path))
    rows = run.read_metrics()
    if not results and not rows:
        raise ConfigError(f"{root}: neither results.json nor metrics.jsonl found")
    # a reward-model run's evaluations: the recipe's held-out one, and `pluralign eval rm`'s default output
    for path, what in ((run.report / "eval.json", "held-out"), (root / "model" / "eval" / "rm_eval.json", "eval rm")):
        if path.exists():
            for key, entries in reward_eval_sections(_read_json(path), f"{root.name} ({what})", str(path)).items():
                results.setdefault(key, []).extend(entries)
    if rows:
        results.setdefault("curves", []).append({"name": root.name, "rows": rows})
        if not results.get("runs"):
            run_entry = {"name": root.name, "kl": last_value(rows, "kl", "eval/kl", "gold/kl"),
                         "reward": last_value(rows, "reward", "eval/reward", "gold/reward")}
            if run_entry["kl"] is not None or run_entry["reward"] is not None:
                results["runs"] = [run_entry]
    return results


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except (ValueError, RecursionError) as e:  # not UTF-8, numbers past the digit limit, nesting
        raise ConfigError(f"{path}: unreadable JSON: {e}") from None


def reward_eval_sections(report: Any, name: str, source: str) -> dict[str, list]:
    """The report sections of a reward model's evaluation (`pluralign.reward.evaluation.evaluate_records`):
    its reliability diagram (raw and temperature-scaled; ECE/ACE/MCE of the raw model) and a table of its
    accuracy (and AUROC, for binary feedback) overall and per group."""
    if not isinstance(report, dict) or "accuracy" not in report:
        raise ConfigError(f"{source}: not a reward-model evaluation (expected an object with 'accuracy')")
    out: dict[str, list] = {}
    cal = report.get("calibration")
    if isinstance(cal, dict) and cal.get("reliability_before"):
        out["calibration"] = [{"name": name, "rows": cal["reliability_before"], "rows_after": cal.get("reliability_after"),
                               "errors": cal.get("before") or {}}]
    groups = report.get("per_group") or {}
    auroc = ["AUROC"] if "auroc" in report else []
    out["tables"] = [{"title": "Reward-model evaluation: accuracy overall and per group",
                      "columns": ["model", "n", *auroc, "accuracy", *groups],
                      "rows": [[name, report.get("n"), *([report["auroc"]] if auroc else []), report["accuracy"],
                                *groups.values()]]}]
    check_results(out, source)
    return out


def load_run_dirs(paths: Sequence[str | os.PathLike]) -> dict:
    """Merged results of several run directories (all scored by one judge: see `merge_results`)."""
    if isinstance(paths, str | os.PathLike):  # a lone path was read one character at a time ("/: neither …")
        raise ConfigError(f"paths: expected a list of run directories, got the path {str(paths)!r}; wrap it in a list",
                          field="paths")
    return merge_results([load_run_dir(p) for p in paths], [str(p) for p in paths])
