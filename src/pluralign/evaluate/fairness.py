"""Fairness of an aligned model across groups or users of a population.

Outcome metrics from negotiative alignment (Mushkani, Berard & Koseki 2025, arXiv 2503.12613): total
and worst-group utility, 20th-percentile satisfaction after min–max normalisation, and the Gini
coefficient of utilities (Gini 1912, mean-absolute-difference form).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from pluralign.errors import ConfigError


def _values(utilities: Mapping[str, float] | Sequence[float] | np.ndarray) -> np.ndarray:
    """The utilities as a 1-D float array, or a `ConfigError` naming them: none at all was numpy's
    "zero-size array to reduction operation minimum" after two RuntimeWarnings."""
    given = type(utilities).__name__
    if isinstance(utilities, Mapping):
        utilities = list(utilities.values())
    try:
        u = np.asarray(utilities, dtype=float)
    except (TypeError, ValueError):
        u = None
    if u is None or u.ndim != 1 or not len(u):
        empty = " with none" if u is not None and u.size == 0 else ""
        raise ConfigError(f"utilities: expected one number per group or user (a list or {{group: utility}}), got "
                          f"{given}{empty}", field="utilities")
    return u


def worst_group(utilities: Mapping[str, float] | Sequence[float]) -> float:
    """min_g U_g (Rawlsian welfare; the worst-off group's utility)."""
    return float(_values(utilities).min())


def normalized_satisfaction(utilities: Mapping[str, float] | Sequence[float]) -> np.ndarray:
    """Min–max normalised utilities in [0, 1] within one scenario; all equal ⇒ all 1 (everyone equally
    satisfied)."""
    u = _values(utilities)
    lo, hi = u.min(), u.max()
    return np.ones_like(u) if hi == lo else (u - lo) / (hi - lo)


def percentile_satisfaction(utilities: Mapping[str, float] | Sequence[float], q: float = 20) -> float:
    """The q-th percentile (numpy's linear interpolation — the paper does not say which) of min–max
    normalised satisfaction."""
    return float(np.percentile(normalized_satisfaction(utilities), q))


def gini_defined(utilities: Mapping[str, float] | Sequence[float]) -> bool:
    """Whether the Gini coefficient means anything: all utilities known and non-negative, mean positive.
    With a negative utility it can leave [0, 1] or reach 1 for unequal-but-not-extreme groups (the
    sandbox's gold utilities can be negative), so it is left undefined rather than shown wrong."""
    u = _values(utilities)
    return bool(len(u) and (u >= 0).all() and u.mean() > 0)


def gini(utilities: Mapping[str, float] | Sequence[float]) -> float:
    """Gini = Σᵢ Σⱼ |Uᵢ − Uⱼ| / (2n²·mean U): 0 when all equal, (n − 1)/n when one holds everything.
    Needs non-negative utilities with a positive mean (shift them first if they can be negative)."""
    u = _values(utilities)
    if not gini_defined(u):
        raise ValueError("Gini needs non-negative utilities with a positive mean; shift them to be non-negative first")
    return float(np.abs(u[:, None] - u[None, :]).sum() / (2 * len(u) ** 2 * u.mean()))


def fairness_summary(utilities: Mapping[str, float] | Sequence[float]) -> dict[str, float]:
    """Total, mean and worst-group utility, P20 satisfaction and Gini (NaN where `gini_defined` is false)."""
    u = _values(utilities)
    out = {"total": float(u.sum()), "mean": float(u.mean()), "worst_group": worst_group(u),
           "p20_satisfaction": percentile_satisfaction(u)}
    out["gini"] = gini(u) if gini_defined(u) else float("nan")
    return out
