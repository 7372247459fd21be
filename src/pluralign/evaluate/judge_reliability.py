"""How far a judge can be trusted: accuracy in both orders, position and length bias, flips across
repeats, and agreement with gold or human labels.

Conventions: `labels` are the human (or gold) preferences in AlpacaEval's encoding (1 = a, 2 = b); a
judge's verdicts are given in the ORIGINAL order: `p_original` with a shown first, `p_swapped` with b
shown first but already un-swapped (``3 − p``, see :func:`pluralign.judges.unswap`). A verdict is
correct when it names the labelled response (draws and NaN count as wrong).

Definitions follow Wei et al. 2024 ("Systematic Evaluation of LLM-as-a-Judge in LLM Alignment Tasks",
arXiv 2408.13006; metric names confirmed, formulas reconstructed), Shi et al. 2024 ("Judging the
Judges", arXiv 2406.07791) and AlpacaEval's ``analyze.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pluralign.judges.base import combine_orders


def _arr(x: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=float)


def correct(labels: Sequence[float], verdicts: Sequence[float]) -> np.ndarray:
    """1 where the verdict names the labelled winner (both on the same side of 1.5), else 0."""
    y, v = _arr(labels), _arr(verdicts)
    return (((v > 1.5) & (y > 1.5)) | ((v < 1.5) & (y < 1.5))).astype(float)


def _decided(labels: Sequence[float], *series: Sequence[float]) -> list[np.ndarray]:
    """`labels` and each of `series` at the pairs whose label names a winner. A label of 1.5 (a draw) or NaN
    names no better response to be shown first, be longer or be picked: such pairs were scored as if b were
    the better one, so a judge agreeing with every label, ties included, showed a position and length bias."""
    y = _arr(labels)
    keep = (y < 1.5) | (y > 1.5)
    return [y[keep], *(_arr(x)[keep] for x in series)]


def accuracy_both(labels: Sequence[float], p_original: Sequence[float], p_swapped: Sequence[float]) -> float:
    """Acc_both (Wei et al.): fraction of pairs judged correctly in BOTH presentation orders (pairs whose
    label names a winner; NaN when none does)."""
    y, po, ps = _decided(labels, p_original, p_swapped)
    return float(np.mean(correct(y, po) * correct(y, ps))) if len(y) else float("nan")


def accuracy_random(labels: Sequence[float], p_original: Sequence[float], p_swapped: Sequence[float]) -> float:
    """Acc_random (Wei et al.): expected accuracy under a random order, ½(Acc_O + Acc_S) ≥ Acc_both (pairs
    whose label names a winner; NaN when none does)."""
    y, po, ps = _decided(labels, p_original, p_swapped)
    return float(0.5 * (np.mean(correct(y, po)) + np.mean(correct(y, ps)))) if len(y) else float("nan")


def _judgements(labels, p_original, p_swapped):
    """All 2n judgements of the pairs whose label names a winner, with whether that response was shown first."""
    y, po, ps = _decided(labels, p_original, p_swapped)
    ok = np.concatenate([correct(y, po), correct(y, ps)])
    better_first = np.concatenate([y < 1.5, y > 1.5])  # original order shows a first; swapped shows b first
    return ok, better_first


def position_bias(labels: Sequence[float], p_original: Sequence[float], p_swapped: Sequence[float]) -> float:
    """PB (Wei et al.): Acc(better response shown first) − Acc(shown second) over both orders; in [−1, 1],
    positive = the judge favours the first position."""
    ok, first = _judgements(labels, p_original, p_swapped)
    if first.all() or not first.any():
        return float("nan")
    return float(ok[first].mean() - ok[~first].mean())


def length_bias(labels: Sequence[float], p_original: Sequence[float], p_swapped: Sequence[float],
                len_a: Sequence[float], len_b: Sequence[float]) -> float:
    """LB (Wei et al.): Acc(better response is the longer) − Acc(it is the shorter), over both orders;
    pairs of equal length, or whose label names no winner, are left out. Positive = the judge favours
    longer responses."""
    y, po, ps, la, lb = _decided(labels, p_original, p_swapped, len_a, len_b)
    better_len = np.where(y < 1.5, la, lb)
    other_len = np.where(y < 1.5, lb, la)
    ok = np.stack([correct(y, po), correct(y, ps)])
    longer, shorter = better_len > other_len, better_len < other_len
    if not longer.any() or not shorter.any():
        return float("nan")
    return float(ok[:, longer].mean() - ok[:, shorter].mean())


def prob_prefer_longer(verdicts: Sequence[float], len_a: Sequence[float], len_b: Sequence[float],
                       min_diff: float = 30) -> float:
    """AlpacaEval ``analyze.py``: among pairs whose lengths differ by more than `min_diff` characters and
    that have a decisive verdict, the fraction where the preferred output is the longer one."""
    v, la, lb = _arr(verdicts), _arr(len_a), _arr(len_b)
    keep = (np.abs(la - lb) > min_diff) & ~np.isnan(v) & (v != 1.5)
    if not keep.any():
        return float("nan")
    prefers_b = v[keep] > 1.5
    return float(np.mean(prefers_b == (lb[keep] > la[keep])))


def position_consistency(p_original: Sequence[float], p_swapped: Sequence[float]) -> float:
    """Shi et al.: fraction of pairs with the same winner (or a draw) in both orders; flip rate = 1 − this.
    Only pairs with a verdict in both orders count (NaN when none has): an unreadable reply is no verdict,
    and counting it as a flip made a judge too small to follow the template look position-inconsistent."""
    po, ps = _arr(p_original), _arr(p_swapped)
    both = ~np.isnan(po) & ~np.isnan(ps)
    if not both.any():
        return float("nan")
    return float(np.mean(np.sign(po[both] - 1.5) == np.sign(ps[both] - 1.5)))


def preference_fairness(p_original: Sequence[float], p_swapped: Sequence[float]) -> float:
    """Shi et al.: (#first-position wins − #second-position wins) / #inconsistent pairs, a signed skew in
    [−1, 1]. On an inconsistent pair the judge picked the first-shown response in one order or the other."""
    po, ps = _arr(p_original), _arr(p_swapped)
    # p_swapped is un-swapped: p_swapped > 1.5 means b won when b was shown first, i.e. the first position.
    first = ((po < 1.5) & (ps > 1.5)).sum()
    second = ((po > 1.5) & (ps < 1.5)).sum()
    inconsistent = first + second
    return float((first - second) / inconsistent) if inconsistent else 0.0


def _repeat_sides(repeats: Sequence[Sequence[float]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item, how many of its K repeated verdicts [n, K] name a, a draw and b ([n, 3]), and how many were
    read. An unreadable repeat (NaN) is no verdict: compared as one, it agreed with nothing, not even itself."""
    r = np.sign(_arr(repeats) - 1.5)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError("need at least 2 repeats per item")
    counts = np.stack([(r == side).sum(1) for side in (-1.0, 0.0, 1.0)], axis=1)
    return counts, counts.sum(1)


def pairwise_disagreement(repeats: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Mean over items of the fraction of pairs of repeated verdicts [n, K] that disagree, over the verdicts
    read (items with fewer than two are left out; NaN when none has two)."""
    counts, read = _repeat_sides(repeats)
    keep = read >= 2
    if not keep.any():
        return float("nan")
    agree = (counts[keep] * (counts[keep] - 1)).sum(1)
    return float(np.mean(1 - agree / (read[keep] * (read[keep] - 1))))


def flip_noise(repeats: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Flip probability q of a symmetric channel, from K repeated identical queries (Wei et al. use K = 5).
    Two independent noisy copies of one verdict disagree with probability d = 2q(1 − q), so
    q = (1 − √(1 − 2d))/2 [reconstructed estimator; d ≥ ½ gives q = ½; NaN when no item has two verdicts]."""
    d = pairwise_disagreement(repeats)
    return float((1 - np.sqrt(max(0.0, 1 - 2 * d))) / 2) if np.isfinite(d) else float("nan")


def repetition_stability(repeats: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Shi et al.: fraction of items whose K repeated verdicts in one order all agree, over the verdicts read
    (items with fewer than two are left out; NaN when none has two)."""
    counts, read = _repeat_sides(repeats)
    keep = read >= 2
    return float(np.mean(counts[keep].max(1) == read[keep])) if keep.any() else float("nan")


def denoise_accuracy(observed: float, q: float) -> float:
    """Undo a symmetric flip channel: a_obs = (1 − q)·a + q·(1 − a) ⇒ a = (a_obs − q)/(1 − 2q), q < ½."""
    if not 0 <= q < 0.5:
        raise ValueError(f"flip noise q must be in [0, 0.5), got {q}")
    return float((observed - q) / (1 - 2 * q))


def cohen_kappa(a: Sequence, b: Sequence) -> float:
    """Cohen's κ (Cohen 1960) between two labelings: (p_o − p_e)/(1 − p_e); 1 when p_e = 1 and they agree."""
    a, b = np.asarray(a), np.asarray(b)
    cats = np.unique(np.concatenate([a, b]))
    p_o = float(np.mean(a == b))
    p_e = float(sum(np.mean(a == c) * np.mean(b == c) for c in cats))
    if p_e == 1:
        return 1.0 if p_o == 1 else 0.0
    return (p_o - p_e) / (1 - p_e)


def agreement(labels: Sequence[float], verdicts: Sequence[float]) -> dict[str, float]:
    """Accuracy and Cohen's κ of judge verdicts against gold or human labels (NaN verdicts dropped;
    verdicts and labels are binned to a / draw / b)."""
    y, v = _arr(labels), _arr(verdicts)
    keep = ~np.isnan(v) & ~np.isnan(y)
    yb, vb = np.sign(y[keep] - 1.5), np.sign(v[keep] - 1.5)
    return {"accuracy": float(np.mean(yb == vb)) if keep.any() else float("nan"),
            "kappa": cohen_kappa(yb, vb) if keep.any() else float("nan"), "n": int(keep.sum())}


def reliability_report(labels: Sequence[float], p_original: Sequence[float], p_swapped: Sequence[float], *,
                       len_a: Sequence[float] | None = None, len_b: Sequence[float] | None = None,
                       repeats: Sequence[Sequence[float]] | None = None) -> dict[str, float]:
    """All reliability metrics in one dict (the report's judge-reliability table reads these keys).
    With `repeats` (K verdicts per item in one order), flip noise q is estimated and the accuracies are
    also given de-noised.

    Counts: ``n`` is the pairs agreement_accuracy and kappa rest on (a label, and a verdict read in either
    order); ``n_decided`` those the accuracies and biases rest on (a label naming a winner; an unreadable
    verdict counts as wrong there); ``n_unreadable`` the pairs with no verdict in either order."""
    out = {
        "acc_both": accuracy_both(labels, p_original, p_swapped),
        "acc_random": accuracy_random(labels, p_original, p_swapped),
        "position_bias": position_bias(labels, p_original, p_swapped),
        "position_consistency": position_consistency(p_original, p_swapped),
        "preference_fairness": preference_fairness(p_original, p_swapped),
    }
    out["flip_rate_orders"] = 1 - out["position_consistency"]
    # one order's verdict stands alone where the other is missing, in either order (as the LLM judge
    # combines them): an unreadable swapped reply dropped a pair whose original verdict was read
    both = combine_orders(p_original, p_swapped)
    ag = agreement(labels, both)
    # n was every pair given: beside an agreement over the pairs read, it hid how many were not
    out.update(agreement_accuracy=ag["accuracy"], kappa=ag["kappa"], n=ag["n"],
               n_decided=len(_decided(labels)[0]), n_unreadable=int(np.isnan(both).sum()))
    if len_a is not None and len_b is not None:
        out["length_bias"] = length_bias(labels, p_original, p_swapped, len_a, len_b)
        out["prob_prefer_longer"] = prob_prefer_longer(both, len_a, len_b)
    if repeats is not None:
        q = flip_noise(repeats)
        out.update(flip_noise=q, repetition_stability=repetition_stability(repeats))
        if q < 0.5:
            out["acc_random_denoised"] = denoise_accuracy(out["acc_random"], q)
    return out


def assess_judge(judge, prompts: Sequence, a: Sequence, b: Sequence, labels: Sequence[float], **kw) -> dict[str, float]:
    """Judge every labelled pair in both orders and report :func:`reliability_report` (lengths in
    characters). Uses the judge's own ``pairwise_both`` when it has one (the LLM judge), else
    ``pairwise(a, b)`` and the un-swapped ``pairwise(b, a)``."""
    if hasattr(judge, "pairwise_both"):
        p_o, p_s = judge.pairwise_both(prompts, a, b)
    else:
        p_o, p_s = judge.pairwise(prompts, a, b), 3.0 - _arr(judge.pairwise(prompts, b, a))
    length = lambda xs: [len(x) if isinstance(x, str) else sum(len(m.get("content", "")) for m in x) for x in xs]
    return reliability_report(labels, p_o, p_s, len_a=length(a), len_b=length(b), **kw)
