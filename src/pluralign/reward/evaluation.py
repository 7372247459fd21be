"""Held-out evaluation of a reward model on feedback records.

Pairwise data: accuracy 1[r(chosen) > r(rejected)] overall and per user / group / objective / section
(ties count as wrong, as in RewardBench), RewardBench v1 section scores when records carry `section`, and
calibration of P(chosen ≻ rejected) = σ(Δr) with both orientations of each pair (inference spec §B4).
Temperature scaling (Guo et al. 2017) is fitted on one half of the pairs and ECE is reported before and
after it on the other half, so the 'after' number is honest. Ratings are evaluated as the pairs of each
objective. Binary data: AUROC, accuracy at ½, ECE.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from pluralign.data.records import Binary, Judged, Pairwise, Ranked, Rated
from pluralign.errors import ConfigError
from pluralign.evaluate import calibration as cal
from pluralign.reward.binary import auroc


def _user_arg(model: Any, record: Any) -> Any:
    """The `user` argument for one record: its user for PAL models that know it, else None."""
    if getattr(model, "model_type", None) == "pal" and record.user is not None and str(record.user) in model.user_ids:
        return str(record.user)
    return None


def _column(model: Any, objective: str | None, scores: torch.Tensor) -> torch.Tensor:
    """The objective's column of multi-objective scores (the mean when the record names none)."""
    names = list(getattr(model, "objectives", None) or [])
    if scores.shape[1] == 1:
        return scores[:, 0]
    if objective in names:
        return scores[:, names.index(objective)]
    return scores.mean(1)


def score_records(model: Any, records: Sequence[Any], fields: Sequence[str], batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Score `fields` (e.g. chosen, rejected) of each record, one call per user and batch → {field: [N]}."""
    out = {f: torch.zeros(len(records)) for f in fields}
    by_user: dict[Any, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_user[_user_arg(model, r)].append(i)
    for user, idx in by_user.items():
        for s in range(0, len(idx), batch_size):
            chunk = idx[s:s + batch_size]
            prompts = [records[i].prompt for i in chunk]
            for f in fields:
                sc = torch.as_tensor(model.score(prompts, [getattr(records[i], f) for i in chunk], user=user)).float()
                sc = sc[:, None] if sc.dim() == 1 else sc
                for j, i in enumerate(chunk):
                    out[f][i] = _column(model, records[i].objective, sc[j:j + 1])[0]
    return out


def _accuracy_by(records: Sequence[Any], correct: torch.Tensor, attr: str) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for r, c in zip(records, correct.tolist(), strict=True):
        key = getattr(r, attr, None)
        if key is not None:
            groups[str(key)].append(c)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def _split(n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Deterministic halves: temperature is fitted on the first, ECE measured on the second."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return sorted(idx[: n // 2]), sorted(idx[n // 2:])


def calibration_report(margins: torch.Tensor, labels: torch.Tensor | None = None, *, symmetric: bool = True,
                       n_bins: int = 10, seed: int = 0) -> dict[str, Any]:
    """ECE/ACE/MCE before and after temperature scaling (fit on one half, measured on the other)."""
    labels = torch.ones_like(margins) if labels is None else labels.float()
    fit, test = _split(len(margins), seed)
    if len(fit) == 0 or len(test) == 0:
        raise ConfigError("calibration needs at least two examples")
    t = cal.fit_temperature(margins[fit], labels[fit])

    def probs(temp: float):
        p = torch.sigmoid(margins[test] / temp)
        return cal.symmetrize(p, labels[test]) if symmetric else (p, labels[test])

    before, after = probs(1.0), probs(t)
    return {"temperature": t, "n_fit": len(fit), "n_test": len(test),
            "before": cal.calibration_errors(*before, n_bins), "after": cal.calibration_errors(*after, n_bins),
            "reliability_before": cal.reliability_data(*before, n_bins),
            "reliability_after": cal.reliability_data(*after, n_bins)}


def _logits(model: Any, scores: torch.Tensor) -> torch.Tensor:
    """A thumbs-up model's P(positive) scores as logits (others as they are): their differences are the
    log-odds the pairs' margins and calibration read, which differences of probabilities are not."""
    if getattr(model, "output", "logit") != "prob":
        return scores
    return torch.logit(scores.double().clamp(1e-12, 1 - 1e-12)).float()


def evaluate_pairs(model: Any, records: Sequence[Pairwise], *, n_bins: int = 10) -> dict[str, Any]:
    s = {f: _logits(model, v) for f, v in score_records(model, records, ("chosen", "rejected")).items()}
    margins = s["chosen"] - s["rejected"]
    correct = (margins > 0).float()
    report: dict[str, Any] = {
        "kind": "pairwise", "n": len(records), "accuracy": float(correct.mean()), "mean_margin": float(margins.mean()),
        "per_user": _accuracy_by(records, correct, "user"), "per_group": _accuracy_by(records, correct, "group"),
        "per_objective": _accuracy_by(records, correct, "objective"),
        "per_section": _accuracy_by(records, correct, "section"),
    }
    if any(r.section for r in records):
        from pluralign.evaluate.rewardbench import score_pairs

        rb = score_pairs([r.section for r in records], s["chosen"].tolist(), s["rejected"].tolist())
        report["rewardbench"] = {"sections": rb["sections"], "overall": rb["overall"]}
    if len(records) >= 2:
        report["calibration"] = calibration_report(margins, n_bins=n_bins)
    return report


def evaluate_binary(model: Any, records: Sequence[Binary], *, n_bins: int = 10) -> dict[str, Any]:
    s = _logits(model, score_records(model, records, ("response",))["response"])
    labels = torch.tensor([float(r.label) for r in records])
    report = {"kind": "binary", "n": len(records), "auroc": auroc(s, labels),
              "accuracy": float(((s > 0).float() == labels).float().mean()), "positive_rate": float(labels.mean()),
              "mean_probability": float(torch.sigmoid(s).mean()),
              "per_group": _accuracy_by(records, ((s > 0).float() == labels).float(), "group")}
    if len(records) >= 2:
        report["calibration"] = calibration_report(s, labels, symmetric=False, n_bins=n_bins)
    return report


def rated_pairs(records: Sequence[Rated]) -> list[Pairwise]:
    """The pairs of rated responses of each objective (`rated_to_pairwise`), each labelled with it."""
    from pluralign.data.convert import rated_to_pairwise

    objectives = sorted({k for r in records for k in r.ratings})
    return [p for o in objectives for p in rated_to_pairwise(records, objective=o)]


def evaluable(records: Sequence[Any], source: str = "the data") -> list[Any]:
    """`records` as the evaluation scores them: pairwise (ranked lists and ratings converted to pairs; the
    pairs of ratings one per objective, each labelled with it) or binary (judged records: their polarity).
    A `ConfigError` naming `source` for anything else, or for data that gives nothing to score."""
    if not records:
        raise ConfigError(f"{source}: no records to evaluate")
    from pluralign.data.convert import judged_to_binary, pairs_of_lists

    # each kind becomes what it is scored as, so a file mixing pairs, lists and ratings is evaluated whole
    ranked, rated, judged = ([r for r in records if isinstance(r, kind)] for kind in (Ranked, Rated, Judged))
    records = [r for r in records if not isinstance(r, Ranked | Rated | Judged)]
    if ranked:
        records += pairs_of_lists(ranked, source, "evaluate")
    if rated:
        made = rated_pairs(rated)
        if not made and not records:
            raise ConfigError(f"{source}: its ratings give no pairs to evaluate (two responses to one prompt "
                              "rated apart on an objective)")
        records += made
    if judged:
        records += judged_to_binary(judged)
    kinds = sorted({type(r).__name__ for r in records})
    if not set(kinds) <= {"Pairwise", "Binary"}:
        raise ConfigError(f"{source}: reward-model evaluation needs pairwise, ranked, rated, binary or judged "
                          f"records, got {kinds}")
    if len(kinds) > 1:
        raise ConfigError(f"{source}: mixes records scored as pairs (Pairwise, Ranked, Rated) with labels "
                          "(Binary, Judged), which are evaluated by other metrics: evaluate them apart")
    return list(records)


def check_objectives(model: Any, records: Sequence[Any], source: str) -> None:
    """A `ConfigError` for records naming an objective a multi-objective model lacks: `_column` would score
    them by the mean of its objectives (as it does records naming none) and report that as theirs."""
    names = list(getattr(model, "objectives", None) or [])
    if len(names) < 2:  # one output scores every objective
        return
    unknown = sorted({str(r.objective) for r in records if getattr(r, "objective", None) not in (None, *names)})
    if unknown:
        raise ConfigError(f"{source}: records of objective(s) {unknown}, which the model does not score; its "
                          f"objectives are {names}", field="objective")


def evaluate_records(model: Any, records: Sequence[Any], *, n_bins: int = 10, source: str = "the data") -> dict[str, Any]:
    """Evaluate on the records `evaluable` makes of `records`: pairs (accuracy, calibration) or binary
    labels (AUROC). A PAL model scores a user it does not know by the population's mean mixture: the report
    counts them (``unknown_users``), since their accuracy is not theirs."""
    records = evaluable(records, source)
    check_objectives(model, records, source)
    if isinstance(records[0], Pairwise):
        report = evaluate_pairs(model, records, n_bins=n_bins)
    else:
        report = evaluate_binary(model, records, n_bins=n_bins)
    if getattr(model, "model_type", None) == "pal":
        unknown = sorted({str(r.user) for r in records if r.user is not None and str(r.user) not in model.user_ids})
        if unknown:
            report["unknown_users"] = unknown
    return report


def summary(report: dict[str, Any]) -> str:
    """One line for logs: accuracy (pairs) or AUROC (binary) with its count and per-group accuracies."""
    head = f"accuracy {report['accuracy']:.3f} on {report['n']} {'pairs' if report['kind'] == 'pairwise' else 'examples'}"
    if report["kind"] == "binary":
        head = f"AUROC {report['auroc']:.3f}, " + head
    groups = report.get("per_group") or {}
    return head + ("; per group " + ", ".join(f"{g} {a:.3f}" for g, a in groups.items()) if groups else "")


def unknown_users_warning(report: dict[str, Any]) -> str | None:
    """A warning naming the users a PAL model does not know (``unknown_users``): their accuracy is the
    population's mean mixture's on their pairs, not theirs."""
    users = report.get("unknown_users")
    if not users:
        return None
    return (f"{len(users)} user(s) unknown to this PAL model ({', '.join(users[:5])}{', ...' if len(users) > 5 else ''}) "
            "are scored by the population's mean mixture: their accuracy is the population's on their data; adapt "
            "them first (pluralign.reward.adapt_user)")


def chance_warning(report: dict[str, Any], z: float = 2.0) -> str | None:
    """A warning when the held-out score is within `z` standard errors of chance (accuracy 0.5 on pairs,
    AUROC 0.5 on binary labels, Hanley & McNeil's null standard error): the model may have learned
    nothing, e.g. a learning rate too small for the backbone."""
    if report["kind"] == "pairwise":
        value, se, name = report["accuracy"], math.sqrt(0.25 / max(report["n"], 1)), "accuracy"
    else:
        pos = round(report["positive_rate"] * report["n"])
        neg = report["n"] - pos
        if not pos or not neg:
            return None
        value, se, name = report["auroc"], math.sqrt((pos + neg + 1) / (12 * pos * neg)), "AUROC"
    if abs(value - 0.5) > z * se:
        return None
    return (f"held-out {name} {value:.3f} on {report['n']} examples is within noise of chance (0.5 ± {z * se:.3f}): "
            f"the reward model may not have learned; try a larger loop.learning_rate or more epochs")
