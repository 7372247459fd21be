"""Multi-objective pieces: MODPO's loss, RACO's conflict-averse weights, PAMA's closed-form weights.

Formulas and sanity vectors: shared/specs/training.md §4.3 (RACO), §4.4 (PAMA), §4.7 (MODPO), §8.
How per-objective losses become one update is a registered *combiner* (`pluralign.losses.combine`);
these are the numerical parts they use.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.losses._shared import reward_metrics, sigmoid_loss
from pluralign.losses.registry import register


@register("modpo", kind="pairwise", extra_inputs=("chosen_margin_rewards", "rejected_margin_rewards"))
def modpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
          ref_rejected_logps: Tensor, chosen_margin_rewards: Tensor, rejected_margin_rewards: Tensor, *,
          beta: float = 0.1, w0: float = 0.5) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """MODPO (Zhou et al., ACL Findings 2024, "Beyond One-Preference-Fits-All Alignment: Multi-Objective
    Direct Preference Optimization"), as ZHZisZZ/modpo's `modpo_loss`: DPO on the pairs of one objective
    (weight `w0`) with the other objectives' weighted rewards Σ_{k≥1} w_k r_k(x, y) as a margin:
    R(x, y) = (β·(logπ_θ(y|x) − logπ_ref(y|x)) − Σ w_k r_k(x, y)) / w0, loss −logσ(R(y_w) − R(y_l)).
    With w0 = 1 and no margin it is DPO; equal margins give DPO with β / w0."""
    if not 0 < w0 <= 1:
        raise ConfigError(f"loss 'modpo': w0 (the trained objective's weight) must be in (0, 1], got {w0}")
    rho_w = policy_chosen_logps - ref_chosen_logps
    rho_l = policy_rejected_logps - ref_rejected_logps
    margin = chosen_margin_rewards - rejected_margin_rewards
    logits = (beta * (rho_w - rho_l) - margin) / w0
    return sigmoid_loss(logits), reward_metrics(beta * rho_w / w0, beta * rho_l / w0)


# ---------------------------------------------------------------- RACO (Chen et al., ICML 2026)


def raco_objective(p: np.ndarray, H: np.ndarray, b: np.ndarray, s: float) -> float:
    """Φ(p) = bᵀp + s·sqrt(pᵀHp), which the CAGrad step minimises over the simplex."""
    return float(b @ p + s * math.sqrt(max(float(p @ H @ p), 0.0)))


def raco_lambda_two(H: np.ndarray, b: np.ndarray, s: float) -> float:
    """m = 2: λ of p = (λ, 1 − λ) minimising Φ, in closed form (the spec's quadratic in λ; RACO code
    `_raco_solve_lambda_k2`): candidates {0, 1} and the real roots in [0, 1]."""
    delta = b[0] - b[1]
    q2, q1, q0 = H[0, 0] + H[1, 1] - 2 * H[0, 1], 2 * (H[0, 1] - H[1, 1]), H[1, 1]
    a2 = delta**2 * q2 - s**2 * q2**2
    a1 = delta**2 * q1 - s**2 * q1 * q2
    a0 = delta**2 * q0 - s**2 * q1**2 / 4
    candidates = [0.0, 1.0]
    if abs(a2) > 1e-300:
        disc = a1**2 - 4 * a2 * a0
        if disc >= 0:
            candidates += [(-a1 + sq) / (2 * a2) for sq in (math.sqrt(disc), -math.sqrt(disc))]
    elif abs(a1) > 1e-300:
        candidates.append(-a0 / a1)
    candidates = [lam for lam in candidates if 0.0 <= lam <= 1.0]
    return min(candidates, key=lambda lam: raco_objective(np.array([lam, 1 - lam]), H, b, s))


def raco_simplex_min(H: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    """p* ∈ argmin_{p ∈ Δ_m} Φ(p), exactly: the vertices, every face's interior stationary points (KKT:
    with A = 1ᵀH⁻¹1, B = 1ᵀH⁻¹b, C = bᵀH⁻¹b, Aν² − 2Bν + C − s² = 0 and p = H⁻¹(ν1 − b)/(Aν − B),
    pseudo-inverse when H is singular); for m = 2 faces the closed form. float64."""
    m = len(b)
    best, best_value = None, math.inf

    def consider(p: np.ndarray) -> None:
        nonlocal best, best_value
        value = raco_objective(p, H, b, s)
        if value < best_value - 1e-15:
            best, best_value = p, value

    for i in range(m):
        consider(np.eye(m)[i])
    for size in range(2, m + 1):
        for face in itertools.combinations(range(m), size):
            idx = list(face)
            Hf, bf = H[np.ix_(idx, idx)], b[idx]
            if size == 2:
                lam = raco_lambda_two(Hf, bf, s)
                local = [np.array([lam, 1 - lam])]
            else:
                local = _kkt_points(Hf, bf, s)
            for q in local:
                p = np.zeros(m)
                p[idx] = q
                consider(p)
    return best


def _kkt_points(H: np.ndarray, b: np.ndarray, s: float) -> list[np.ndarray]:
    inv = np.linalg.pinv(H)
    one = np.ones(len(b))
    A, B, C = one @ inv @ one, one @ inv @ b, b @ inv @ b
    out = []
    if abs(A) < 1e-300:
        return out
    disc = B**2 - A * (C - s**2)
    if disc < 0:
        return out
    for nu in ((B + math.sqrt(disc)) / A, (B - math.sqrt(disc)) / A):
        denom = A * nu - B
        if abs(denom) < 1e-300:
            continue
        p = inv @ (nu * one - b) / denom
        if np.all(p > 0) and abs(p.sum() - 1) < 1e-8:
            out.append(p)
    return out


def raco_coefficients(H: Tensor | np.ndarray, w: Tensor | np.ndarray, *, c: float = 0.4,
                      clip: bool = True) -> np.ndarray:  # fmt: skip
    """The update Σ_i a_i g_i of RACO's CAGrad-Clip step (Chen et al., ICML 2026, "Reward-free Alignment
    for Conflicting Objectives", Algorithm 1) from the Gram matrix H_ij = ⟨g_i, g_j⟩ of the per-objective
    gradients and the user weights w: g_0 = Σ w_i g_i, s = c·‖g_0‖, b = Hw, p* = argmin_Δ Φ, p̃ = min(p*, w)
    (clip; vanilla CAGrad without), a = w + s·p̃/‖G̃_p‖ (a = w when ‖G̃_p‖ = 0). c = 0 gives a = w."""
    H = np.asarray(H, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    g0 = math.sqrt(max(float(w @ H @ w), 0.0))
    s = c * g0
    if s == 0:
        return w.copy()
    p = raco_simplex_min(H, H @ w, s)
    if clip:
        p = np.minimum(p, w)
    norm = math.sqrt(max(float(p @ H @ p), 0.0))
    return w + (s / norm) * p if norm > 0 else w.copy()


# ---------------------------------------------------------------- PAMA (He & Maghsudi, ECML-PKDD 2025)


def pama_scalar(advantages: Tensor) -> Tensor:
    """s* = Σ_i c_i A^(i) at the min-norm convex combination (Theorem 1): the projection of 0 onto
    [min_i A^(i), max_i A^(i)], per row of `advantages` [..., m]."""
    return torch.clamp(torch.zeros_like(advantages[..., 0]), advantages.min(-1).values, advantages.max(-1).values)


def pama_weights(advantages: Tensor, mask: Tensor | None = None) -> Tensor:
    """The convex weights c [..., m] behind `pama_scalar` (on the masked objectives): one-hot on the
    smallest advantage when all are positive, on the largest when all are negative, else the two
    extremes mixed so that Σ c_i A^(i) = 0."""
    big = torch.finfo(advantages.dtype).max
    mask = torch.ones_like(advantages, dtype=torch.bool) if mask is None else mask.bool()
    lo_vals = advantages.masked_fill(~mask, big)
    hi_vals = advantages.masked_fill(~mask, -big)
    lo, hi = lo_vals.min(-1), hi_vals.max(-1)
    c = torch.zeros_like(advantages)
    spread = (hi.values - lo.values)
    straddle = (lo.values < 0) & (hi.values > 0)
    w_hi = torch.where(straddle, -lo.values / spread.clamp(min=1e-30), torch.zeros_like(spread))
    w_lo = torch.where(straddle, hi.values / spread.clamp(min=1e-30), torch.zeros_like(spread))
    w_lo = torch.where(~straddle & (lo.values >= 0), torch.ones_like(w_lo), w_lo)  # all ≥ 0: the smallest
    w_hi = torch.where(~straddle & (hi.values <= 0) & (lo.values < 0), torch.ones_like(w_hi), w_hi)  # all < 0
    c.scatter_add_(-1, lo.indices[..., None], w_lo[..., None])
    c.scatter_add_(-1, hi.indices[..., None], w_hi[..., None])
    return c * mask
