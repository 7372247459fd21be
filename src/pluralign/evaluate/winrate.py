"""Win rates against a baseline in AlpacaEval's conventions, with bootstrap confidence intervals, and the
AlpacaEval 2 length-controlled (LC) win rate.

Encoding (``alpaca_eval/metrics/winrate.py``, Dubois et al. 2023): each preference p ∈ [1, 2] with
1 = the baseline (output_1) wins, 2 = the model (output_2) wins, 1.5 = draw, legacy 0 = draw; values in
between come from weighted judges. NaN marks a missing verdict and is dropped (counted in ``n_invalid``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from pluralign.errors import ConfigError
from pluralign.judges.base import normalize_preferences


def _valid(preferences: Sequence[float] | np.ndarray) -> tuple[np.ndarray, int]:
    p = normalize_preferences(preferences)
    keep = ~np.isnan(p)
    return p[keep], int((~keep).sum())


def _sem(x: np.ndarray) -> float:
    """Standard error of the mean with ddof = 1 (scipy.stats.sem / pandas .sem)."""
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def win_rate(preferences: Sequence[float] | np.ndarray) -> dict[str, float]:
    """AlpacaEval's ``get_winrate``: win_rate = 100·mean(p − 1), standard_error = 100·sem(p − 1),
    discrete_win_rate = 100·(wins + draws/2)/n, with wins p > 1.5, baseline wins p < 1.5, draws p = 1.5."""
    p, n_invalid = _valid(preferences)
    n = len(p)
    wins, base, draws = int((p > 1.5).sum()), int((p < 1.5).sum()), int((p == 1.5).sum())
    return {
        "win_rate": 100.0 * float(np.mean(p - 1)) if n else float("nan"),
        "standard_error": 100.0 * _sem(p - 1),
        "discrete_win_rate": 100.0 * (wins + draws / 2) / n if n else float("nan"),
        "n_wins": wins, "n_wins_base": base, "n_draws": draws, "n_total": n, "n_invalid": n_invalid,
    }


def bootstrap_ci(preferences: Sequence[float] | np.ndarray, *, n_boot: int = 1000, confidence: float = 0.95,
                 seed: int = 0, statistic: Callable[[np.ndarray], float] | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993) of the win rate (or `statistic` of the
    valid preferences), resampling examples with replacement."""
    # checked here, as the eval config checks `bootstrap`: n_boot=0 was an IndexError from the quantiles,
    # confidence=95 (a percentage) numpy's "Quantiles must be in the range [0, 1]"
    if isinstance(n_boot, bool) or not isinstance(n_boot, numbers.Integral) or n_boot < 1:
        raise ConfigError(f"n_boot must be an integer >= 1 (resamples), got {n_boot!r}", field="n_boot")
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0 < confidence < 1:
        raise ConfigError(f"confidence must be a fraction in (0, 1), e.g. 0.95, got {confidence!r}", field="confidence")
    p, _ = _valid(preferences)
    if len(p) == 0:
        return float("nan"), float("nan")
    stat = statistic or (lambda x: 100.0 * float(np.mean(x - 1)))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(p), size=(n_boot, len(p)))
    values = np.array([stat(p[i]) for i in idx])
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


# ---- length-controlled win rate -------------------------------------------------------------------

def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _l1_objective(X: np.ndarray, y: np.ndarray, w: np.ndarray, C: float, beta: np.ndarray) -> float:
    z = X @ beta
    # soft-label cross-entropy of σ(z), written with logaddexp for stability
    ce = y * np.logaddexp(0, -z) + (1 - y) * np.logaddexp(0, z)
    return float(np.abs(beta).sum() + C * np.sum(w * ce))


def fit_l1_logistic(X: np.ndarray, y: np.ndarray, w: np.ndarray, C: float, *, max_iter: int = 100,
                    tol: float = 1e-9, beta0: np.ndarray | None = None) -> np.ndarray:
    """Minimise ‖β‖₁ + C·Σ wᵢ·CE(yᵢ, σ(xᵢ·β)) with soft labels yᵢ ∈ [0, 1] and no intercept — liblinear's
    L1 objective as used by AlpacaEval's LogisticRegressionCV — by proximal Newton steps with coordinate
    descent on the quadratic model and a backtracking line search (newGLMNET, Yuan et al. 2012, the
    liblinear solver). Soft labels with weights equal AlpacaEval's duplication of each row as 1 and 0."""
    m = X.shape[1]
    beta = np.zeros(m) if beta0 is None else np.asarray(beta0, float).copy()
    for _ in range(max_iter):
        p = _sigmoid(X @ beta)
        grad = C * X.T @ (w * (p - y))
        hess = C * X.T @ (X * (w * p * (1 - p))[:, None]) + 1e-12 * np.eye(m)
        d = np.zeros(m)
        for _inner in range(50):
            d_old = d.copy()
            for j in range(m):
                hjj = max(hess[j, j], 1e-12)
                u = beta[j] + d[j] - (grad[j] + hess[j] @ d) / hjj
                d[j] = np.sign(u) * max(abs(u) - 1.0 / hjj, 0.0) - beta[j]
            if np.max(np.abs(d - d_old)) < tol:
                break
        f0 = _l1_objective(X, y, w, C, beta)
        decrease = grad @ d + np.abs(beta + d).sum() - np.abs(beta).sum()
        t = 1.0
        while t > 1e-10 and _l1_objective(X, y, w, C, beta + t * d) > f0 + 0.01 * t * decrease:
            t *= 0.5
        beta = beta + t * d
        if np.max(np.abs(t * d)) < tol:
            break
    return beta


def _soft_log_loss(X: np.ndarray, y: np.ndarray, w: np.ndarray, beta: np.ndarray) -> float:
    q = np.clip(_sigmoid(X @ beta), 1e-12, 1 - 1e-12)
    return float(np.sum(w * -(y * np.log(q) + (1 - y) * np.log(1 - q))) / np.sum(w))


def fit_l1_logistic_cv(X: np.ndarray, y: np.ndarray, w: np.ndarray, *, Cs: Sequence[float] | None = None,
                       n_folds: int = 5) -> tuple[np.ndarray, float]:
    """Choose C by `n_folds`-fold cross-validated soft log-loss (folds over rows, i.e. GroupKFold with the
    original rows as groups), then refit on everything. Cs default to sklearn's logspace(−4, 4, 10)."""
    Cs = sorted(np.logspace(-4, 4, 10) if Cs is None else Cs)
    folds = np.arange(len(y)) % n_folds
    warm: dict[int, np.ndarray] = {}  # along the path of growing C, each fold starts from its last fit
    scores = []
    for C in Cs:
        losses = []
        for k in range(n_folds):
            train, test = folds != k, folds == k
            if test.sum() == 0 or train.sum() == 0:
                continue
            warm[k] = fit_l1_logistic(X[train], y[train], w[train], C, beta0=warm.get(k))
            losses.append(_soft_log_loss(X[test], y[test], w[test], warm[k]))
        scores.append(np.mean(losses))
    best = Cs[int(np.argmin(scores))]
    return fit_l1_logistic(X, y, w, best), float(best)


def _lc_features(delta_len: np.ndarray, difficulty: np.ndarray, not_gamed: np.ndarray, scale: float) -> np.ndarray:
    length = np.tanh(delta_len / scale) if scale > 0 else np.zeros_like(delta_len)
    return np.column_stack([length, difficulty, not_gamed])


def length_controlled_win_rate(preferences: Sequence[float], len_baseline: Sequence[float],
                               len_model: Sequence[float], *, difficulty: Sequence[float] | None = None,
                               gamed: dict[str, Sequence[float]] | None = None, gamed_weight: float = 0.2,
                               Cs: Sequence[float] | None = None, n_folds: int = 5,
                               same_model: bool = False, n_boot: int = 100, seed: int = 0) -> dict[str, Any]:
    """AlpacaEval 2's LC win rate (Dubois et al. 2024, ``metrics/glm_winrate.py``, length_controlled_v1).

    Fits P(model ≻ baseline) = σ(φ·tanh(Δlen/std(Δlen)) + ψ·γₓ + θ) with Δlen = len_baseline − len_model
    (chars), γₓ the instruction difficulty (optional; zero when unknown) and θ the model term, by
    L1-penalised soft-label logistic regression without intercept, C chosen by 5-fold CV. Optional
    `gamed` rows (keys ``preferences``, ``delta_len``, ``difficulty``: the baseline against its own
    verbose/concise variants, model term 0) enter with weight ``gamed_weight/2`` to regularise toward
    the baseline. The LC win rate is the mean prediction with the length term set to 0.

    Its standard error is the spread of the whole fit (C's cross-validation included) over `n_boot`
    resamples of the prompts. AlpacaEval's is the standard error of the per-prompt predictions, which is
    0 whenever no difficulty term is given (every prompt gets σ(θ)), and it leaves out the uncertainty of θ.
    """
    raw_p = normalize_preferences(preferences)
    keep = ~np.isnan(raw_p)
    p = raw_p[keep]
    if len(p) == 0:
        raise ValueError("no valid preferences")
    if not len(raw_p) == len(len_baseline) == len(len_model):
        raise ValueError(f"{len(raw_p)} preferences but {len(len_baseline)} baseline and {len(len_model)} model lengths")
    dlen = (np.asarray(len_baseline, float) - np.asarray(len_model, float))[keep]
    gam = np.zeros(len(p)) if difficulty is None else np.asarray(difficulty, float)[keep]
    raw = win_rate(p)["win_rate"]
    if same_model:
        return {"lc_win_rate": 50.0, "lc_standard_error": 0.0, "win_rate": raw, "weights": {}, "C": None,
                "is_extreme_change": False}

    def fit(rows: np.ndarray) -> tuple[float, np.ndarray, float]:
        return _lc_fit(p[rows], dlen[rows], gam[rows], gamed, gamed_weight, Cs, n_folds)

    lc, beta, C = fit(np.arange(len(p)))
    rng = np.random.default_rng(seed)
    boots = [fit(rng.integers(0, len(p), len(p)))[0] for _ in range(n_boot)]
    return {"lc_win_rate": lc, "lc_standard_error": float(np.std(boots, ddof=1)) if n_boot > 1 else float("nan"),
            "win_rate": raw, "weights": {"length": float(beta[0]), "difficulty": float(beta[1]), "model": float(beta[2])},
            "C": C, "is_extreme_change": is_extreme_change(raw, lc)}


def _lc_fit(p: np.ndarray, dlen: np.ndarray, gam: np.ndarray, gamed: dict[str, Sequence[float]] | None,
            gamed_weight: float, Cs: Sequence[float] | None, n_folds: int) -> tuple[float, np.ndarray, float]:
    """(LC win rate, coefficients, chosen C) of one fit of `length_controlled_win_rate`'s GLM."""
    scale = float(np.std(dlen, ddof=1)) if len(dlen) > 1 else 0.0
    X = _lc_features(dlen, gam, np.ones(len(p)), scale)
    y, w = p - 1.0, np.ones(len(p))
    if gamed:
        gp = np.asarray(gamed["preferences"], float)
        gX = _lc_features(np.asarray(gamed["delta_len"], float),
                          np.asarray(gamed.get("difficulty", np.zeros(len(gp))), float), np.zeros(len(gp)), scale)
        X, y = np.vstack([X, gX]), np.concatenate([y, gp - 1.0])
        w = np.concatenate([w, np.full(len(gp), gamed_weight / 2)])
    beta, C = fit_l1_logistic_cv(X, y, w, Cs=Cs, n_folds=n_folds)
    return 100.0 * float(np.mean(_sigmoid(gam * beta[1] + beta[2]))), beta, C


def is_extreme_change(raw: float, lc: float) -> bool:
    """AlpacaEval's ``get_is_extreme_changes``: LC fell by more than max(10, raw/4) points or rose by more
    than max(10, (100 − raw)/4) points — a sign the GLM fit went wrong."""
    return bool(lc < raw - max(10.0, raw / 4) or lc > raw + max(10.0, (100 - raw) / 4))


def lc_between(weights_a: dict[str, float], weights_b: dict[str, float],
               difficulty: Sequence[float] | None = None) -> float:
    """Cross-model LC win rate of a over b from their fits against a common baseline, without refitting
    (AlpacaEval ``predict_winrate``): 100·mean σ(Δθ + Δψ·γₓ). Antisymmetric: WR(a,b) + WR(b,a) = 100."""
    gam = np.zeros(1) if difficulty is None else np.asarray(difficulty, float)
    z = (weights_a["model"] - weights_b["model"]) + (weights_a["difficulty"] - weights_b["difficulty"]) * gam
    return 100.0 * float(np.mean(_sigmoid(z)))


def compare(judge: Any, prompts: Sequence[Any], baseline: Sequence[Any], model: Sequence[Any], *,
            n_boot: int = 1000, seed: int = 0, length_controlled: bool = True) -> dict[str, Any]:
    """Judge `model` against `baseline` outputs and summarise: win rate, bootstrap CI, LC win rate."""
    bootstrap_ci([], n_boot=n_boot)  # a bad n_boot is refused before the judge is paid (an LLM judge's calls)
    prefs = np.asarray(judge.pairwise(prompts, baseline, model), float)
    out: dict[str, Any] = win_rate(prefs)
    out["ci"] = list(bootstrap_ci(prefs, n_boot=n_boot, seed=seed))
    if length_controlled and out["n_total"] >= 2 * 5:
        lens = lambda xs: [len(x) if isinstance(x, str) else sum(len(m.get("content", "")) for m in x) for x in xs]
        lc = length_controlled_win_rate(prefs, lens(baseline), lens(model), seed=seed)  # its bootstrap too
        out.update(lc_win_rate=lc["lc_win_rate"], lc_standard_error=lc["lc_standard_error"],
                   lc_is_extreme_change=lc["is_extreme_change"])  # AlpacaEval's sign of a failed fit
    out["preferences"] = prefs.tolist()
    return out
