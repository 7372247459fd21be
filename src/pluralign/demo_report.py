"""What `pluralign demo` writes and prints: its results dict in the report's schema
(`pluralign.evaluate.report`), its plots and the text summary, from the gold evaluations, the reward models'
seed reports and the steering table that `pluralign.demo.run_demo` measured."""

from __future__ import annotations

from pluralign.runs import RunDir, atomic_write_bytes


def _run_entry(name: str, method: str, ev: dict, target: str, samples: list[dict]) -> dict:
    wr = ev["win_rate"][target] if ev.get("win_rate") else None
    return {
        "name": name, "method": method, "kl": (ev["kl"] or {"mean": 0.0})["mean"],
        "kl_se": (ev["kl"] or {"se": 0.0})["se"], "n": ev["n_prompts"],
        "reward": ev["population_utility"]["mean"], "reward_se": ev["population_utility"]["se"],
        "per_group": {g: v["mean"] for g, v in ev["groups"].items()},
        "per_group_se": {g: v["se"] for g, v in ev["groups"].items()},
        "per_group_n": {g: ev["n_prompts"] for g in ev["groups"]},
        "objectives": {a: v["mean"] for a, v in ev["attributes"].items()},
        "objectives_se": {a: v["se"] for a, v in ev["attributes"].items()},
        "win_rate": {"win_rate": 100 * wr["mean"], "ci": [100 * (wr["mean"] - 1.96 * wr["se"]), 100 * (wr["mean"] + 1.96 * wr["se"])]}
        if wr else None,
        "samples": samples,
    }


def _rm_stats(rms: dict, groups: list[str]) -> dict:
    """Seed means with 95% t-intervals (`pluralign.sandbox.gold.seed_ci`): {(model, group or 'all'): (mean %, CI half-width %)}, plus ('pal-bt', g): the paired seed difference."""
    from pluralign.sandbox.gold import seed_ci

    out = {}
    for name, reports in rms.items():
        for g in [*groups, "all"]:
            out[name, g] = seed_ci([100 * (r["accuracy"] if g == "all" else r["per_group"].get(g, float("nan")))
                                    for r in reports])
    if {"bt", "pal"} <= set(rms):
        for g in [*groups, "all"]:
            diffs = [100 * ((p["accuracy"] - b["accuracy"]) if g == "all" else (p["per_group"][g] - b["per_group"][g]))
                     for p, b in zip(rms["pal"], rms["bt"], strict=True)]
            out["pal-bt", g] = seed_ci(diffs)
    return out


def pal_verdict(stats: dict, group: str) -> str:
    """What the seeds say about PAL vs BT on `group`, without claiming more than the interval allows."""
    d, h = stats["pal-bt", group]
    if h != h:  # NaN: a single seed
        return f"PAL − BT on '{group}': {d:+.1f} accuracy points on one seed, which gives no interval; set rm_seeds ≥ 2 to compare."
    said = f"PAL − BT on '{group}': {d:+.1f} ± {h:.1f} accuracy points (95% CI over seeds)"
    if d - h > 0:
        return said + f": PAL beats the shared BT model on '{group}'."
    if d + h < 0:
        return said + f": PAL scored below the shared BT model on '{group}' here."
    return said + ": no clear difference at this many seeds and pairs."


def results(cfg, pop, before, after, rms, steering, run: RunDir, samples: dict) -> dict:
    from pluralign.sandbox.gold import plus_minus

    groups = pop.group_names
    stats = _rm_stats(rms, groups)
    rm_rows = [[name.upper()] + [plus_minus(*stats[name, g]) for g in [*groups, "all"]]
               + [rms[name][0]["calibration"][k]["ece"] for k in ("before", "after")] for name in rms]
    if ("pal-bt", "all") in stats:
        rm_rows.append(["PAL − BT"] + [plus_minus(*stats["pal-bt", g], "+.1f") for g in [*groups, "all"]] + [None, None])
    counts = {g: rms["bt"][0].get("group_counts", {}).get(g) for g in groups}
    steer_rows = [[f"weights of {w}"] + [steering[w][g] for g in groups] for w in steering]
    gain_rows = [[g, before["groups"][g]["mean"], after["groups"][g]["mean"],
                  after["groups"][g]["mean"] - before["groups"][g]["mean"]] for g in groups]
    # the table row shows the errors before temperature scaling; the plot shows both
    calibration = [{"name": f"{n.upper()} reward model", "rows": r["calibration"]["reliability_before"],
                    "rows_after": r["calibration"]["reliability_after"], "errors": r["calibration"]["before"]}
                   for n, reports in rms.items() for r in reports[:1] if r.get("calibration")]
    return {
        "title": "pluralign demo: aligning a model toward one group, measured against the truth",
        "description": (f"Population '{cfg.population}' ({', '.join(groups)}); {label(cfg.loss)} toward '{cfg.target_group}'. "
                        "Utilities are the sandbox's gold utilities (weighted gold attributes); KL is "
                        "KL(π‖π_base) in nats per response, estimated from samples; win rates are against the base's "
                        f"samples under '{cfg.target_group}' utility."),
        "judge": "gold utility",
        "runs": [_run_entry("base", "base", before, cfg.target_group, samples["base"]),
                 _run_entry(f"{label(cfg.loss)}→{cfg.target_group}", cfg.loss, after, cfg.target_group, samples["dpo"])],
        "pareto": {"objectives": list(_tradeoff())},
        "calibration": calibration,
        "curves": [{"name": f"{label(cfg.loss)} training", "rows": RunDir(run.root / "dpo").read_metrics()}],
        "tables": [
            {"title": f"Gold utility per group, before and after {label(cfg.loss)}", "columns": ["group", "base", label(cfg.loss), "gain"], "rows": gain_rows},
            {"title": f"Reward-model accuracy on held-out pairs (%): mean ± 95% CI over {len(rms['bt'])} seeds; "
                      "held-out pairs per group: " + ", ".join(f"{g} {counts[g]}" for g in groups)
                      + ". " + pal_verdict(stats, _minority(pop)),
             "columns": ["model"] + groups + ["all", "ECE (seed 1)", "ECE after temperature scaling (seed 1)"], "rows": rm_rows},
            {"title": "Per-request steering: utility of each group (columns) when decoding with each group's weights (rows)",
             "columns": ["decoded with"] + groups, "rows": steer_rows},
        ],
    }


def _minority(pop) -> str:
    """The group with the smallest share (the one a pluralistic model should serve better)."""
    return min(zip(pop.shares, pop.group_names, strict=True))[1]


def label(loss: str) -> str:
    """'dpo:1,nll:0.2' -> 'DPO+0.2·NLL': a loss mixture as people write it."""
    terms = [t.split(":") for t in loss.split(",")]
    return "+".join(n.upper() if len(w) == 0 or float(w[0]) == 1 else f"{w[0]}·{n.upper()}" for n, *w in terms)


def _tradeoff() -> tuple[str, str]:
    from pluralign.sandbox.attributes import TRADE_OFFS

    return TRADE_OFFS[0]


def write_plots(run: RunDir, results: dict) -> None:
    from pluralign.evaluate import plots

    for name, png in (("utility_per_group.png", plots.group_bars(results["runs"])),
                      ("reward_vs_kl.png", plots.reward_kl(results["runs"]))):
        if png:
            atomic_write_bytes(run.root / "plots" / name, png)


def summary(cfg, pop, before, after, rms, steering) -> str:
    groups = pop.group_names
    lines = ["", f"{'gold utility':<22}" + "".join(f"{g:>14}" for g in groups) + f"{'KL (nats)':>14}"]
    for name, ev in (("base", before), (f"{label(cfg.loss)} → {cfg.target_group}", after)):
        kl = ev["kl"]["mean"] if ev.get("kl") else 0.0
        lines.append(f"{name:<22}" + "".join(f"{ev['groups'][g]['mean']:>14.3f}" for g in groups) + f"{kl:>14.3f}")
    t = after["groups"][cfg.target_group]["mean"] - before["groups"][cfg.target_group]["mean"]
    se = (after["groups"][cfg.target_group]["se"] ** 2 + before["groups"][cfg.target_group]["se"] ** 2) ** 0.5
    lines.append(f"gain for '{cfg.target_group}': {t:+.3f} ± {1.96 * se:.3f} (95%), bought with KL {after['kl']['mean']:.3f} ± {1.96 * after['kl']['se']:.3f}")
    stats = _rm_stats(rms, groups)
    lines += ["", f"{'RM accuracy (%)':<22}" + "".join(f"{g:>14}" for g in groups) + f"   (mean ± 95% CI, {len(rms['bt'])} seeds)"]
    for name in [*rms, "pal-bt"]:
        if (name, groups[0]) in stats:
            lines.append(f"{name.upper():<22}" + "".join(_cell(*stats[name, g]) for g in groups))
    lines.append(pal_verdict(stats, _minority(pop)))
    lines += ["", f"{'steered with weights':<22}" + "".join(f"{g:>14}" for g in groups)]
    for w, row in steering.items():
        lines.append(f"{'of ' + w:<22}" + "".join(f"{row[g]:>14.3f}" for g in groups))
    return "\n".join(lines)


def _cell(mean: float, half: float) -> str:
    """A 14-character 'mean ±half' column of the text summary; one seed has no interval."""
    return f"{mean:>8.1f} ±{half:>4.1f}" if half == half else f"{mean:>8.1f}   n/a"
