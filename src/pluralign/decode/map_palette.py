"""MAP: Multi-human-value Alignment Palette (Wang et al., ICLR 2025, arXiv 2410.19198).

Targets c_i for the expected value of each objective under π_λ ∝ p·exp(λᵀr) are met by the λ ≥ 0 that
minimises the dual g(λ) = log E_p[exp(λᵀr)] − λᵀc; ∇g = E_λ[r] − c, so projected gradient steps on g
(dual ascent) find λ*. For one Gaussian value r ~ N(μ, σ²): λ* = max(0, (c − μ)/σ²). E_p is estimated
from reward samples of the base policy. Decoding then uses the λ-weighted reward (BoN by default).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pluralign.decode.api import Controls, DecodeResult, register, score_candidates
from pluralign.decode.best_of_n import _need_reward, draw_candidates, select_best, select_soft
from pluralign.decode.rewards import objective_names, weight_vector
from pluralign.decode.streams import occurrences, seeded_generator
from pluralign.errors import ConfigError


@dataclass
class PaletteSolution:
    lam: torch.Tensor          # λ* [m]
    achieved: torch.Tensor     # E_λ[r] [m] under the sample estimate
    feasible: bool             # targets met (within tol) with bounded λ
    iterations: int


def tilted_mean(rewards: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    w = torch.softmax(rewards.double() @ lam.double(), dim=0)
    return (w[:, None] * rewards.double()).sum(0)


def solve_palette(rewards: torch.Tensor, targets: Any, *, lr: float = 0.5, steps: int = 5000, tol: float = 1e-4,
                  lam_max: float = 1e4) -> PaletteSolution:
    """λ* ≥ 0 with E_λ[r] ≥ c (complementary slackness) from base-policy reward samples [S, m].
    Step size is scaled by the inverse variance of each objective (a diagonal Newton step on g)."""
    r = torch.as_tensor(rewards, dtype=torch.double)
    c = torch.as_tensor(targets, dtype=torch.double).reshape(-1)
    if r.dim() != 2 or r.shape[1] != c.numel():
        raise ConfigError(f"MAP: {c.numel()} targets for rewards of shape {tuple(r.shape)}")
    lam = torch.zeros(c.numel(), dtype=torch.double)
    it = 0
    while it < steps:
        it += 1
        mean = tilted_mean(r, lam)
        w = torch.softmax(r @ lam, dim=0)
        var = (w[:, None] * (r - mean) ** 2).sum(0).clamp(min=1e-8)
        new = (lam - lr * (mean - c) / var).clamp(min=0.0, max=lam_max)
        if torch.max(torch.abs(new - lam)) < 1e-10:
            lam = new
            break
        lam = new
    achieved = tilted_mean(r, lam)
    feasible = bool(torch.all(achieved >= c - tol)) and bool(torch.all(lam < lam_max))
    return PaletteSolution(lam=lam.float(), achieved=achieved.float(), feasible=feasible, iterations=it)


def _targets(given: Any, names: list[str]) -> torch.Tensor:
    """MAP's targets as one value per objective: a list in objective order or a mapping by name."""
    if isinstance(given, str) or not isinstance(given, Mapping | Sequence | torch.Tensor):
        raise ConfigError(f"map: controls.extra['targets'] must be one number per objective {names} (a list, or "
                          f"name: value), got {given!r}", field="targets")
    try:
        targets = weight_vector(given, names)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"map: controls.extra['targets'] must be numbers, got {given!r} ({e})", field="targets") from None
    if not torch.isfinite(targets).all():
        raise ConfigError(f"map: controls.extra['targets'] must be finite, got {given!r}", field="targets")
    return targets


@register("map", options=("targets", "select"), needs=("reward",))
def map_decode(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any, controls: list[Controls],
               **_: Any) -> DecodeResult:
    """Solve λ for extra["targets"] (one value level per objective) from the candidates' rewards, then
    select by λᵀr: BoN (default) or soft BoN at temperature 1 (extra["select"] = "soft", the sample
    analogue of p·exp(λᵀr)). Feasibility and λ are in info."""
    counted = _need_reward(reward, "map")
    cands, _, compute, ids, _ = draw_candidates(model, tokenizer, prompts, controls)
    per, _ = score_candidates(counted, prompts, cands, controls)
    pool = torch.cat(per)
    texts, chosen, sols = [], [], []
    occ = occurrences([(c.seed, repr(x)) for c, x in zip(controls, prompts, strict=True)])
    for p, c in enumerate(controls):
        if "targets" not in c.extra:
            raise ConfigError("map: controls.extra['targets'] (one target value per objective) is required")
        sol = solve_palette(pool, _targets(c.extra["targets"], objective_names(reward, pool.shape[1])))
        util = per[p] @ sol.lam
        soft = c.extra.get("select") == "soft"  # its own stream, as BoN's (`streams.seeded_generator`)
        i = select_soft(util, 1.0, seeded_generator(c.seed, prompts[p], occ[p])) if soft else select_best(util)
        texts.append(cands[p][i])
        chosen.append(i)
        sols.append(sol)
    scores = torch.stack([per[p][i] for p, i in enumerate(chosen)])
    return DecodeResult(texts=texts, scores=scores, objectives=objective_names(reward, scores.shape[1]),
                        utility=torch.stack([scores[p] @ s.lam for p, s in enumerate(sols)]), candidates=cands,
                        candidate_scores=per, compute=compute, reward_compute=counted.compute,
                        info={"lambda": [s.lam.tolist() for s in sols], "feasible": [s.feasible for s in sols],
                              "achieved": [s.achieved.tolist() for s in sols],
                              "token_ids": [ids[p][i] for p, i in enumerate(chosen)]},
                        row_info=("lambda", "feasible", "achieved"))
