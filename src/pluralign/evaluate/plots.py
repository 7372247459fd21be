"""Figures for the HTML report, each returned as PNG bytes (matplotlib's Agg backend, no display needed).

Inputs are the plain dicts of the results schema (see :mod:`pluralign.evaluate.report`). Every name
that comes from the user (runs, methods, groups, objectives, metrics, run directories) goes through
`label`, so a `$` in it is shown as a dollar sign instead of starting matplotlib math text (where an
unbalanced or malformed `$…$` raises at draw time).
"""

from __future__ import annotations

import io
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.evaluate.frontier import frontier, upper_hull
from pluralign.evaluate.pareto import hypervolume, pareto_front

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    _plt().close(fig)
    return buf.getvalue()


def label(text: Any) -> str:
    """User text as literal matplotlib text: `$` escaped so it never opens math mode."""
    return str(text).replace("$", r"\$")


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def by_method(runs: Sequence[dict]) -> dict[str, list[dict]]:
    """Runs grouped by their ``method`` field (runs without one form the group "runs"), in first-seen order."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(str(r.get("method") or "runs"), []).append(r)
    return groups


def reward_kl(runs: Sequence[dict], ylabel: str = "reward") -> bytes | None:
    """Reward vs KL(π‖π_ref) scatter, one colour per method, with 95% intervals (±1.96 se, where the run
    gives se; a KL that is an upper bound is drawn as a bar from 0 to it), the upper-left frontier (solid) and its concave envelope (dashed). None when fewer than one
    run has both numbers."""
    pts = [r for r in runs if _finite(r.get("kl")) and _finite(r.get("reward"))]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method, group in by_method(pts).items():
        x, y = [r["kl"] for r in group], [r["reward"] for r in group]
        yerr = [1.96 * r["reward_se"] if _finite(r.get("reward_se")) else 0.0 for r in group]
        xerr = [1.96 * r["kl_se"] if _finite(r.get("kl_se")) else 0.0 for r in group]
        # a KL that is only an upper bound (best-of-N) reaches left to 0: the run lies somewhere on that bar
        left = [r["kl"] if r.get("kl_is_bound") else e for r, e in zip(group, xerr, strict=True)]
        right = [0.0 if r.get("kl_is_bound") else e for r, e in zip(group, xerr, strict=True)]
        ax.errorbar(x, y, xerr=[left, right], yerr=yerr, fmt="o", capsize=3, label=label(method), alpha=0.85)
        if len(pts) <= 12:
            for r in group:
                name = label(r.get("name", "")) + (" (KL ≤)" if r.get("kl_is_bound") else "")
                ax.annotate(name, (r["kl"], r["reward"]), fontsize=7, alpha=0.7, xytext=(3, 3),
                            textcoords="offset points")
    kl, rew = np.array([r["kl"] for r in pts]), np.array([r["reward"] for r in pts])
    f, h = frontier(kl, rew), upper_hull(kl, rew)
    if len(f) > 1:
        ax.step(kl[f], rew[f], where="post", color="black", lw=1, label="frontier")
    if len(h) > 1:
        ax.plot(kl[h], rew[h], ls="--", color="grey", lw=1, label="envelope")
    ax.set(xlabel="KL(π ‖ π_ref)  (nats / sequence)", ylabel=ylabel, title=f"{ylabel} vs KL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


MAX_PROJECTED = 4  # objectives drawn pairwise (4 → 6 panels); the hypervolume always uses all of them


def pareto_fronts(runs: Sequence[dict], objectives: Sequence[str], reference: Sequence[float]) -> tuple[bytes, dict[str, float]]:
    """Each method's runs and Pareto front, and the hypervolume of its runs over ALL `objectives` w.r.t.
    `reference` (shown in the legend) — None for a method whose runs have fewer than 2 distinct non-dominated
    points: a single point is no front, and its "hypervolume" is only the box to the reference point,
    which the reference alone decides. Two objectives: one scatter. More: one panel per pair of
    objectives (the first `MAX_PROJECTED`), each with the runs projected onto the pair; the line joins a
    method's runs that are non-dominated over all objectives (markers filled) in the order of the panel's
    x objective, and the reference point's projection is marked."""
    plt = _plt()
    shown = list(range(min(len(objectives), MAX_PROJECTED)))
    pairs = [(i, j) for i in shown for j in shown if i < j]
    cols = min(len(pairs), 3)
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 if cols == 1 else 4.2 * cols, 4.2 if rows == 1 else 3.8 * rows),
                             squeeze=False)
    hvs: dict[str, float] = {}
    for method, group in by_method(runs).items():
        P = np.array([[r["objectives"][o] for o in objectives] for r in group], dtype=float)
        everywhere = pareto_front(P)
        # distinct points: runs that tie on every objective (greedy decoding, a deterministic judge) are one
        # point, whose hypervolume is only its box to the reference point
        hvs[method] = hypervolume(P, reference) if len(np.unique(P[everywhere], axis=0)) >= 2 else None
        hv = f"HV {hvs[method]:.3g}" if hvs[method] is not None else "no front"
        color = None
        for n, (i, j) in enumerate(pairs):
            ax = axes.flat[n]
            dots = ax.plot(P[:, i], P[:, j], "o", alpha=0.35, color=color, mfc="none")[0]
            color = dots.get_color()
            front = pareto_front(P[:, [i, j]]) if len(objectives) == 2 else everywhere[np.argsort(P[everywhere, i], kind="stable")]
            ax.plot(P[front, i], P[front, j], "o-", color=color, alpha=0.85, label=f"{label(method)} ({hv})" if n == 0 else None)
    for n, (i, j) in enumerate(pairs):
        ax = axes.flat[n]
        ax.plot([reference[i]], [reference[j]], "x", color="black", label="reference" if n == 0 else None)
        ax.set(xlabel=label(objectives[i]), ylabel=label(objectives[j]))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(pairs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    title = "Pareto fronts" + (f" (pairwise projections; HV over all {len(objectives)} objectives)" if len(objectives) > 2 else "")
    fig.suptitle(title, fontsize=10)
    return _png(fig), hvs


def front_size(runs: Sequence[dict], objectives: Sequence[str]) -> int:
    """How many of `runs` are non-dominated over `objectives`."""
    return len(pareto_front(np.array([[r["objectives"][o] for o in objectives] for r in runs], dtype=float)))


MAX_BAR_RUNS = 8  # runs drawn in the per-group bars (the report's caption names any left out)


def group_bars(runs: Sequence[dict], max_runs: int = MAX_BAR_RUNS) -> bytes | None:
    """Grouped bars of per-group utility: groups on the x axis, one bar per run (the first `max_runs`)."""
    runs = [r for r in runs if r.get("per_group")][:max_runs]
    if not runs:
        return None
    groups = list(dict.fromkeys(g for r in runs for g in r["per_group"]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    width = 0.8 / len(runs)
    x = np.arange(len(groups))
    for i, r in enumerate(runs):
        vals = [v if _finite(v := r["per_group"].get(g)) else np.nan for g in groups]  # null: not measured
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, vals, width, label=label(r.get("name", i)))
    ax.set_xticks(x, [label(g) for g in groups], rotation=20 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.axhline(0, color="black", lw=0.6)
    ax.set(ylabel="utility", title="Utility per group")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def calibration_diagram(entry: dict) -> tuple[bytes, dict[str, float]]:
    """Reliability diagram through :func:`pluralign.evaluate.calibration.plot_reliability`, from either
    raw ``probs``/``labels`` or precomputed reliability ``rows`` (optionally ``rows_after``)."""
    from pluralign.evaluate import calibration

    n_bins = int(entry.get("n_bins", 10))
    errors: dict[str, float] = dict(entry.get("errors", {}))
    if "probs" in entry:
        rows = calibration.reliability_data(entry["probs"], entry["labels"], n_bins)
        errors = errors or calibration.calibration_errors(entry["probs"], entry["labels"], n_bins)
    else:
        rows = entry["rows"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reliability.png"
        calibration.plot_reliability(rows, path, title=label(entry.get("name", "Reliability")),
                                     rows_after=entry.get("rows_after"))
        return path.read_bytes(), errors


def training_curves(name: str, rows: Sequence[dict], max_panels: int = 4) -> bytes | None:
    """Up to `max_panels` numeric metrics of a metrics.jsonl log against ``step`` (or row index),
    preferring loss, reward, KL and accuracy keys."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("step", "epoch", "time")
            and any(_finite(r.get(k)) for r in rows)]
    if not keys:
        return None
    rank = lambda k: next((i for i, w in enumerate(("loss", "reward", "kl", "acc")) if w in k.lower()), 9)
    keys = sorted(keys, key=rank)[:max_panels]
    plt = _plt()
    ncols = min(2, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows + 0.4), squeeze=False)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    for ax, k in zip(axes.flat, keys, strict=False):
        pts = [(r.get("step", i), r[k]) for i, r in enumerate(rows) if _finite(r.get(k))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set(title=label(k), xlabel="step")
        ax.grid(alpha=0.3)
    fig.suptitle(label(name), fontsize=10)
    return _png(fig)
