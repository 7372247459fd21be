"""One self-contained HTML report (plots inline as base64 PNG, no scripts, responsive CSS that reads on a
phone) from a results dict.

Results schema (every key optional; unknown keys are ignored)::

    {
      "title": "pluralign report", "description": "free text",
      "judge": "gold utility",                                # what "reward" is: axis and column labels
      "per_group_judge": "gold utility",                      # what "per_group" is, when not the judge's
      "runs": [{"name": "dpo-0.1", "method": "dpo",          # method groups colours and Pareto fronts
                "kl": 1.2, "kl_se": 0.1, "reward": 0.53, "reward_se": 0.01, # → reward–KL plot and frontier; 95% CI ±1.96 se
                "kl_is_bound": False,                         # true: kl is an upper bound (best-of-N), shown "≤"
                "n": 128,                                     # prompts the means are over
                "reward_n": 120,                              # when fewer: the answers the judge could grade
                "per_group": {"group": utility, ...},         # → per-group bars + worst/P20/Gini
                "per_group_se": {"group": se, ...}, "per_group_n": {"group": n, ...},  # → per-group table
                "samples": [{"prompt": ..., "response": ..., "score": 0.4}],     # → sample generations
                "objectives": {"helpful": 0.7, ...},          # → Pareto fronts + hypervolume
                "objectives_se": {"helpful": 0.02, ...},      # → 95% CIs in the runs table
                "win_rate": {"win_rate": 61.0, "ci": [55, 67], "lc_win_rate": 58.2},
                "metrics": {"any_number": 1.0}}],             # → extra columns of the runs table
      "pareto": {"objectives": ["helpful", "harmless"], "reference": [0, 0]},  # default: first two
                                                                               # objectives, ref below all
      "calibration": [{"name": "RM", "probs": [...], "labels": [...]}        # or "rows" (+ "rows_after")
                      ],
      "judge_reliability": [{"judge": "gpt", "acc_both": 0.66, ...}],        # keys of reliability_report
      "judge_replies": {"read": 230, "unreadable": 10, "failed": 0},         # an LLM judge's, from eval
      "curves": [{"name": "run", "rows": [{"step": 1, "loss": 0.7}, ...]}],  # training logs
      "tables": [{"title": "...", "columns": ["a", "b"], "rows": [[1, 2]]}]
    }

`pluralign.evaluate.run_dirs.load_run_dirs` builds this from run directories holding ``results.json`` (this schema) and/or
``metrics.jsonl`` (a training log: plotted as curves; its last ``kl``/``reward`` values make a run
when ``results.json`` has none) and, for a reward-model run, its evaluations (``report/eval.json``,
``model/eval/rm_eval.json``: calibration and an accuracy table). Directories whose runs were scored by
different judges (``judge``, "reward" when absent) are refused rather than merged: their numbers would
share one column and axis.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pluralign.evaluate import plots
from pluralign.evaluate.fairness import fairness_summary, gini_defined
from pluralign.evaluate.pareto import default_reference
from pluralign.evaluate.results_check import check_results, pareto_objectives
from pluralign.runs import atomic_write_text

RELIABILITY_COLUMNS = ("acc_both", "acc_random", "acc_random_denoised", "position_bias", "length_bias",
                       "position_consistency", "preference_fairness", "prob_prefer_longer", "flip_noise",
                       "repetition_stability", "agreement_accuracy", "kappa", "n", "n_decided",
                       "n_unreadable")

CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#dde1e8;--card:#fff;--bg:#f5f6f8;--accent:#2f5bd3}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:16px}
h1{font-size:1.6rem;margin:.4em 0}h2{font-size:1.2rem;margin:1.4em 0 .5em;border-bottom:2px solid var(--accent);padding-bottom:.2em}
.muted{color:var(--muted);font-size:.9rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(440px,100%),1fr));gap:14px;margin:8px 0}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:10px;padding:10px}
figure img{display:block;width:100%;height:auto}
figcaption{font-size:.85rem;color:var(--muted);margin-top:6px}
.table-wrap{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:10px;margin:8px 0}
table{border-collapse:collapse;width:100%;font-size:.9rem}
th,td{padding:6px 10px;text-align:right;white-space:nowrap;border-bottom:1px solid var(--line)}
th{white-space:normal;vertical-align:bottom}
th.text{text-align:left}
td.text{white-space:pre-wrap;text-align:left;min-width:12em;max-width:28em;word-break:break-word}
th:first-child,td:first-child{text-align:left;position:sticky;left:0;background:var(--card)}
th,th:first-child{background:#eef1f6}
@media (max-width:600px){body{font-size:15px}main{padding:10px}th,td{padding:5px 7px}}
"""


# ---- formatting ---------------------------------------------------------------------------------
def fmt(v: Any) -> str:
    """A table cell: numbers to 4 significant digits, missing/NaN as an em dash, lists joined."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(fmt(x) for x in v) + "]"
    return str(v)


def table_html(columns: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: Sequence[int] = ()) -> str:
    """A scrollable table; `text_columns` (indices) hold prose, wrapped and left-aligned."""
    head = "".join(f"<th{' class=text' if i in text_columns else ''}>{html.escape(str(c))}</th>" for i, c in enumerate(columns))
    cls = ['<td class="text">' if i in text_columns else "<td>" for i in range(len(columns))]
    body = "".join("<tr>" + "".join(f"{cls[i] if i < len(cls) else '<td>'}{html.escape(fmt(c))}</td>"
                                     for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def mean_ci(mean: Any, se: Any, z: float = 1.96) -> str:
    """'0.512 [0.48, 0.544]': a mean with its normal 95% interval (just the mean when se is unknown)."""
    if not plots._finite(mean):
        return "—"
    if not plots._finite(se):
        return fmt(float(mean))
    return f"{fmt(float(mean))} [{fmt(mean - z * se)}, {fmt(mean + z * se)}]"


def figure_html(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


# ---- sections -----------------------------------------------------------------------------------
def _runs_table(runs: Sequence[dict], judge: str = "reward") -> str:
    objectives = list(dict.fromkeys(o for r in runs for o in r.get("objectives", {})))
    extra = list(dict.fromkeys(k for r in runs for k in r.get("metrics", {})))
    has_groups = any(r.get("per_group") for r in runs)
    wrs = [r.get("win_rate") if isinstance(r.get("win_rate"), dict) else {} for r in runs]
    # a column only when some run has its numbers: no column of dashes
    wr_cols = [(k, c) for k, c in (("baseline", "win rate against"), ("win_rate", "win rate (%)"), ("ci", "win rate 95% CI"),
                                   ("lc_win_rate", "LC win rate (%)"))
               if any(w.get(k) is not None for w in wrs)]
    has_n = any(r.get("n") is not None for r in runs)
    kl_col = "KL (95% CI)" if any(plots._finite(r.get("kl_se")) for r in runs) else "KL"
    cols = ["run", "method"] + (["n"] if has_n else []) + [kl_col, f"{judge} (95% CI)"] + [c for _, c in wr_cols] \
        + (["worst group", "P20 satisfaction", "Gini"] if has_groups else []) + objectives + extra
    rows = []
    for r, wr in zip(runs, wrs, strict=True):
        row = [r.get("name", ""), r.get("method", "")] + ([r.get("n")] if has_n else []) \
            + [("≤ " if r.get("kl_is_bound") and plots._finite(r.get("kl")) else "") + mean_ci(r.get("kl"), r.get("kl_se")),
               mean_ci(r.get("reward"), r.get("reward_se"))]
        row += [wr.get(k) for k, _ in wr_cols]
        if has_groups:
            fs = fairness_summary(r["per_group"]) if r.get("per_group") else {}
            row += [fs.get("worst_group"), fs.get("p20_satisfaction"), fs.get("gini")]
        row += [mean_ci(r.get("objectives", {}).get(o), r.get("objectives_se", {}).get(o)) for o in objectives]
        row += [r.get("metrics", {}).get(k) for k in extra]
        rows.append(row)
    return table_html(cols, rows) + _gini_note(runs)


def _gini_note(runs: Sequence[dict]) -> str:
    """Why a run's Gini is a dash: the coefficient needs non-negative per-group utilities."""
    undefined = [str(r.get("name", "")) for r in runs if r.get("per_group") and not gini_defined(r["per_group"])]
    if not undefined:
        return ""
    return (f'<p class="muted">Gini is undefined (—) for {html.escape(", ".join(undefined))}: it needs every '
            "per-group utility known and non-negative with a positive mean, and these runs have a negative, "
            "missing or all-zero one.</p>")


def _group_table(runs: Sequence[dict], judge: str) -> str:
    """Per-group means with their 95% CI and counts, one row per run."""
    runs = [r for r in runs if r.get("per_group")]
    if not runs:
        return ""
    groups = list(dict.fromkeys(g for r in runs for g in r["per_group"]))
    has_n = any(r.get("per_group_n") or r.get("n") is not None for r in runs)
    cols = ["run"] + [f"{g} (95% CI)" for g in groups] + ([f"n {g}" for g in groups] if has_n else [])
    rows = []
    for r in runs:
        se, n = r.get("per_group_se") or {}, r.get("per_group_n") or {}
        rows.append([r.get("name", "")] + [mean_ci(r["per_group"].get(g), se.get(g)) for g in groups]
                    + ([n.get(g, r.get("n")) for g in groups] if has_n else []))
    note = ("" if any(r.get("per_group_se") for r in runs)
            else '<p class="muted">No standard errors were recorded for these means, so no intervals.</p>')
    return f"<h2>{html.escape(judge)} per group</h2>" + table_html(cols, rows) + note


def _samples_section(runs: Sequence[dict]) -> str:
    """The same prompts answered by every run, side by side, with the judge's score of each answer."""
    runs = [r for r in runs if r.get("samples")]
    if not runs:
        return ""
    from pluralign.data.prompts import transcript

    n = max(len(r["samples"]) for r in runs)
    rows = []
    for i in range(n):
        first = next(r["samples"][i] for r in runs if i < len(r["samples"]))
        row: list[Any] = [transcript(first.get("prompt", ""))]
        for r in runs:
            s = r["samples"][i] if i < len(r["samples"]) else {}
            score = s.get("score")
            row.append(str(s.get("response", "—")) + (f"\n(score {fmt(float(score))})" if plots._finite(score) else ""))
        rows.append(row)
    cols = ["prompt"] + [str(r.get("name", "")) for r in runs]
    return "<h2>Sample generations</h2>" + table_html(cols, rows, text_columns=range(len(cols)))


def _comparison_section(curves: Sequence[dict]) -> str:
    """Several training runs side by side: steps and the last logged value of each metric they share."""
    curves = [c for c in curves if c.get("rows")]
    if len(curves) < 2:
        return ""
    keys = [k for k in dict.fromkeys(k for c in curves for row in c["rows"] for k in row)
            if k not in ("step", "epoch", "elapsed_s", "lr") and any(last_value(c["rows"], k) is not None for c in curves)]
    keys = sorted(keys, key=lambda k: (k.startswith("eval/") is False, k))[:12]
    rows = [[c.get("name", ""), last_value(c["rows"], "step")] + [last_value(c["rows"], k) for k in keys] for c in curves]
    return ("<h2>Run comparison</h2>" + table_html(["run", "steps"] + [f"last {k}" for k in keys], rows)
            + '<p class="muted">Last logged value of each metric (eval/ metrics: the last evaluation).</p>')


def _pareto_section(results: dict) -> str:
    spec = results.get("pareto") or {}
    # Given more than two objectives, the fronts are drawn as pairwise projections and the hypervolume is
    # over all of them.
    objectives = pareto_objectives(results)
    scored = [r for r in results.get("runs", []) if r.get("objectives")]
    runs = [r for r in scored if all(plots._finite(r["objectives"].get(o)) for o in objectives)]
    if len(objectives) < 2 or not runs:
        return ""
    # a run lacking one objective's value has no point: named, else it was dropped from the fronts unsaid
    left_out = ", ".join(str(r.get("name", "")) for r in scored if r not in runs)
    import numpy as np

    P = np.array([[r["objectives"][o] for o in objectives] for r in runs], dtype=float)
    ref = list(spec.get("reference") or default_reference(P).tolist())
    png, hvs = plots.pareto_fronts(runs, objectives, ref)
    rows = []
    for m, g in plots.by_method(runs).items():
        front = hvs[m] is not None
        rows.append([m, len(g), plots.front_size(g, objectives), hvs[m] if front else "— (no front)"])
    where = "given" if spec.get("reference") else "default: below every run's worst value"
    caption = f"hypervolume over {', '.join(objectives)} w.r.t. the reference point {fmt(ref)} ({where})"
    if len(objectives) > 2:
        caption += (f"; one panel per pair of objectives{' (the first ' + str(plots.MAX_PROJECTED) + ')' if len(objectives) > plots.MAX_PROJECTED else ''}"
                    f", filled markers joined: runs non-dominated over all {len(objectives)} objectives")
    table = table_html(["method", "runs", "non-dominated runs", "hypervolume"], rows)
    return (f'<h2>Pareto fronts</h2><div class="grid">{figure_html(png, "Pareto fronts", caption)}</div>{table}'
            f'<p class="muted">{html.escape(caption)}. A method with fewer than 2 non-dominated runs has no '
            "front (a single point's box to the reference point says nothing), so no hypervolume is given for it."
            + (f" Left out of the Pareto fronts (no value for every objective): {html.escape(left_out)}." if left_out else "")
            + "</p>")


def render_html(results: dict) -> str:
    """The whole report as one HTML string."""
    check_results(results)
    title = str(results.get("title") or "pluralign report")
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if results.get("description"):
        parts.append(f'<p class="muted">{html.escape(str(results["description"]))}</p>')
    runs = results.get("runs", [])
    judge = judge_of(results)
    if runs:
        parts.append("<h2>Runs</h2>" + _runs_table(runs, judge))
        from pluralign.evaluate.cli import verdict_warnings

        # else means over the answers an LLM judge could read were shown as if every answer had been judged
        if notes := verdict_warnings(results):
            parts.append('<p class="muted">' + "<br>".join(html.escape(n) for n in notes) + "</p>")
        if any(isinstance(r.get("win_rate"), dict) for r in runs):
            parts.append('<p class="muted">Win rate against the baseline in AlpacaEval\'s encoding (draws count '
                         "half); CI: bootstrap 95%; LC: length-controlled (AlpacaEval 2 GLM).</p>")
        figs = []
        rk = plots.reward_kl(runs, ylabel=judge)
        if rk:
            undrawn = ", ".join(str(r.get("name", "")) for r in runs
                                if not (plots._finite(r.get("kl")) and plots._finite(r.get("reward"))))
            figs.append(figure_html(rk, "Reward vs KL", "each point a run, bars its 95% intervals; solid: frontier, "
                                    "dashed: envelope" + (f"; not drawn (no KL or reward): {undrawn}" if undrawn else "")))
        gb = plots.group_bars(runs)
        if gb:
            grouped = sum(1 for r in runs if r.get("per_group"))
            drawn = (f"the first {plots.MAX_BAR_RUNS} of {grouped} runs (all are in the table below)"
                     if grouped > plots.MAX_BAR_RUNS else "each run")
            figs.append(figure_html(gb, "Utility per group", f"per-group utility of {drawn}"))
        if figs:
            parts.append('<div class="grid">' + "".join(figs) + "</div>")
        # `eval` scores the groups with gold utility whatever its judge: a reward model's label on them was wrong
        parts.append(_group_table(runs, str(results.get("per_group_judge") or judge)))
        parts.append(_samples_section(runs))
    parts.append(_pareto_section(results))
    if results.get("calibration"):
        figs, rows = [], []
        for entry in results["calibration"]:
            png, errors = plots.calibration_diagram(entry)
            figs.append(figure_html(png, f"Reliability diagram {entry.get('name', '')}"))
            rows.append([entry.get("name", ""), errors.get("ece"), errors.get("ace"), errors.get("mce")])
        parts.append("<h2>Calibration</h2>" + table_html(["model", "ECE", "ACE", "MCE"], rows)
                     + '<div class="grid">' + "".join(figs) + "</div>")
    if results.get("judge_reliability"):
        entries = results["judge_reliability"]
        cols = [c for c in RELIABILITY_COLUMNS if any(c in e for e in entries)]
        parts.append("<h2>Judge reliability</h2>" + table_html(
            ["judge"] + cols, [[e.get("judge", e.get("name", ""))] + [e.get(c) for c in cols] for e in entries]))
    curves = [(c.get("name", ""), plots.training_curves(str(c.get("name", "")), c.get("rows", [])))
              for c in results.get("curves", [])]
    curves = [(n, png) for n, png in curves if png]
    parts.append(_comparison_section(results.get("curves", [])))
    if curves:
        parts.append('<h2>Training curves</h2><div class="grid">'
                     + "".join(figure_html(png, f"curves {n}") for n, png in curves) + "</div>")
    for t in results.get("tables", []):
        parts.append(f"<h2>{html.escape(str(t.get('title', 'Table')))}</h2>"
                     + table_html(t.get("columns", []), t.get("rows", [])))
    body = "\n".join(p for p in parts if p)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
            f"<body><main>\n{body}\n</main></body></html>\n")


def write_report(results: dict, out_path: str | os.PathLike) -> Path:
    """Render `results` (schema in this module's docstring) to one self-contained HTML file."""
    return atomic_write_text(out_path, render_html(results))


def last_value(rows: Sequence[dict], *keys: str) -> float | None:
    """The last finite value of any of `keys` in a training log's rows (None when there is none)."""
    for row in reversed(rows):
        for k in keys:
            if plots._finite(row.get(k)):
                return float(row[k])
    return None


def judge_of(results: dict) -> str:
    """What a results dict's "reward" numbers are (its ``judge``; "reward" when it does not say)."""
    return str(results.get("judge") or "reward")
