"""Pareto fronts and hypervolume for multi-objective alignment (all objectives are maximised).

p dominates q iff p ≥ q in every objective and p ≠ q; the front is the non-dominated subset. The
hypervolume HV(P; r) is the Lebesgue measure of ∪_{p∈P} [r, p] (Zitzler & Thiele 1998). It is computed
exactly: by a sweep in 2-D, and by slicing along the last objective in m-D ("hypervolume by slicing
objectives", While et al. 2006), which is exact and fast enough for the tens of points an alignment
sweep produces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _points(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    P = np.asarray(points, dtype=float)
    if P.ndim != 2:
        raise ValueError(f"points must be a 2-D array [n, m], got shape {P.shape}")
    return P


def dominates(p: Sequence[float], q: Sequence[float]) -> bool:
    """True iff p ≥ q elementwise and p ≠ q (maximisation)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    return bool(np.all(p >= q) and np.any(p > q))


def pareto_mask(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated points (duplicates of a front point are all kept)."""
    P = _points(points)
    geq = (P[:, None, :] >= P[None, :, :]).all(-1)
    gt = (P[:, None, :] > P[None, :, :]).any(-1)
    dominated_by = geq & gt  # [i, j]: i dominates j
    return ~dominated_by.any(axis=0)


def pareto_front(points: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points, sorted by the first objective (ascending)."""
    P = _points(points)
    idx = np.flatnonzero(pareto_mask(P))
    return idx[np.argsort(P[idx, 0], kind="stable")]


def _hv2d(P: np.ndarray, ref: np.ndarray) -> float:
    """Sweep: sort by f₁ descending; each point adds (f₁ − r₁)·(f₂ − best f₂ so far)."""
    order = np.argsort(-P[:, 0], kind="stable")
    hv, f2_prev = 0.0, ref[1]
    for i in order:
        if P[i, 1] > f2_prev:
            hv += (P[i, 0] - ref[0]) * (P[i, 1] - f2_prev)
            f2_prev = P[i, 1]
    return float(hv)


def _hv(P: np.ndarray, ref: np.ndarray) -> float:
    m = P.shape[1]
    if len(P) == 0:
        return 0.0
    if m == 1:
        return float(P[:, 0].max() - ref[0])
    if m == 2:
        return _hv2d(P, ref)
    P = P[np.argsort(-P[:, -1], kind="stable")]
    hv = 0.0
    for i in range(len(P)):
        lower = P[i + 1, -1] if i + 1 < len(P) else ref[-1]
        depth = P[i, -1] - lower
        if depth > 0:
            sub = P[: i + 1, :-1]
            hv += depth * _hv(sub[pareto_mask(sub)], ref[:-1])
    return float(hv)


def hypervolume(points: Sequence[Sequence[float]] | np.ndarray, ref: Sequence[float]) -> float:
    """Exact hypervolume dominated by `points` above the reference point `ref` (maximisation). Points that
    do not strictly exceed `ref` in every objective add nothing."""
    P, r = _points(points), np.asarray(ref, dtype=float)
    if P.shape[1] != r.shape[0]:
        raise ValueError(f"points have {P.shape[1]} objectives but ref has {r.shape[0]}")
    P = P[(P > r).all(axis=1)]
    if len(P) == 0:
        return 0.0
    return _hv(P[pareto_mask(P)], r)


def default_reference(points: Sequence[Sequence[float]] | np.ndarray, margin: float = 0.1) -> np.ndarray:
    """A reference point below every point: per-objective minimum minus `margin`·range (or `margin`)."""
    P = _points(points)
    lo, hi = P.min(axis=0), P.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return lo - margin * span
