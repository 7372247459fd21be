"""The reward-vs-KL frontier (Rafailov et al. 2023, DPO §6; Gao et al. 2023 for best-of-N).

Each run (a β, a checkpoint, a decoder setting) is a point (KL to the reference policy, gold reward).
Better runs lie up and to the left; the frontier is the set of runs that no other run beats on both
axes (lower or equal KL and higher or equal reward), and :func:`upper_hull` is its concave envelope, the
best reward reachable at each KL by mixing runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sequence_kl(policy_logps: Sequence[float], ref_logps: Sequence[float]) -> float:
    """Monte-Carlo KL(π‖π_ref) from samples y ~ π: mean of log π(y|x) − log π_ref(y|x) (token sums)."""
    lp, lr = np.asarray(policy_logps, float), np.asarray(ref_logps, float)
    return float(np.mean(lp - lr))


def bon_kl(n: int) -> float:
    """The usual best-of-N KL, log N − (N − 1)/N — an upper bound on the exact value (Beirami et al. 2024)."""
    if n < 1:
        raise ValueError("N must be >= 1")
    return float(np.log(n) - (n - 1) / n)


def frontier(kl: Sequence[float], reward: Sequence[float]) -> np.ndarray:
    """Indices of the upper-left frontier, sorted by KL: runs not beaten by another run with KL ≤ and
    reward ≥ (one strictly better). Runs with NaN coordinates are ignored."""
    x, y = np.asarray(kl, float), np.asarray(reward, float)
    ok = np.flatnonzero(~(np.isnan(x) | np.isnan(y)))
    order = ok[np.lexsort((-y[ok], x[ok]))]  # KL ascending, reward descending among equal KL
    keep, best = [], -np.inf
    for i in order:
        if y[i] > best:
            keep.append(i)
            best = y[i]
    return np.asarray(keep, dtype=int)


def upper_hull(kl: Sequence[float], reward: Sequence[float]) -> np.ndarray:
    """Indices of the concave upper-left envelope of the frontier (monotone chain, Andrew 1979), by KL."""
    x, y = np.asarray(kl, float), np.asarray(reward, float)
    hull: list[int] = []
    for i in frontier(x, y):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (x[b] - x[a]) * (y[i] - y[a]) - (y[b] - y[a]) * (x[i] - x[a])
            if cross >= 0:  # b lies on or below the segment a→i
                hull.pop()
            else:
                break
        hull.append(int(i))
    return np.asarray(hull, dtype=int)


def reward_at_kl(kl: Sequence[float], reward: Sequence[float], budget: float) -> float:
    """Best reward reachable within a KL budget on the concave envelope (linear between hull points);
    NaN if every run exceeds the budget."""
    x, y = np.asarray(kl, float), np.asarray(reward, float)
    h = upper_hull(x, y)
    if len(h) == 0 or budget < x[h[0]]:
        return float("nan")
    return float(np.interp(budget, x[h], y[h]))
