"""InfAlign calibrate-and-transform (Balashankar et al., ICML 2025, arXiv 2412.19792).

Calibrate: C_r(x, y) = P_{y'~π_ref}[r(x,y') < r(x,y)] + ½ P[=], estimated from m reference samples per
prompt; under π_ref it is uniform on [0, 1] for a continuous r and invariant to increasing transforms
of r. Transform for the inference procedure: best-of-N Φ(u) = e^{t·u}, worst-of-N Φ(u) = −e^{−t·u},
plain win rate Φ(u) = u. At decoding time calibration makes objectives on different scales comparable:
each objective is calibrated against the reference pool before the request's weights combine them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pluralign.decode.api import Controls, DecodeResult, register, score_candidates
from pluralign.decode.best_of_n import _need_reward, draw_candidates
from pluralign.decode.rewards import objective_names
from pluralign.decode.streams import row_seed
from pluralign.errors import ConfigError


def calibrate(ref: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Mid-rank empirical CDF of each value of r [n, ...] among reference values ref [m, ...]."""
    less = (ref[None] < r[:, None]).double().mean(1)
    eq = (ref[None] == r[:, None]).double().mean(1)
    return (less + 0.5 * eq).float()


TRANSFORMS = {
    "bon": lambda u, t: torch.exp(t * u),
    "won": lambda u, t: -torch.exp(-t * u),
    "winrate": lambda u, t: u,
}


def transform(u: torch.Tensor, kind: str = "bon", t: float = 1.0) -> torch.Tensor:
    if kind not in TRANSFORMS:
        raise ConfigError(f"unknown InfAlign transform {kind!r}; known: {sorted(TRANSFORMS)}")
    return TRANSFORMS[kind](u, t)


def bon_vs_bon_win_rate(calibrated: Any, n: int) -> float:
    """WR_N = 1 − N ∫₀¹ G(u)^N u^{N−1} du, G the empirical CDF of calibrated rewards of the policy:
    the probability that BoN_N of the policy beats BoN_N of π_ref (½ when the policy is π_ref)."""
    c = np.sort(np.asarray(calibrated, float).ravel())
    grid = np.linspace(0.0, 1.0, 4001)
    G = np.searchsorted(c, grid, side="right") / len(c)
    f = G ** n * grid ** (n - 1)
    return float(1.0 - n * np.sum((f[1:] + f[:-1]) / 2 * np.diff(grid)))


@register("infalign", options=("m", "transform", "t"), needs=("reward",))
def infalign(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any, controls: list[Controls],
             **_: Any) -> DecodeResult:
    """Best-of-n on the request-weighted sum of per-objective calibrated, transformed rewards.
    extra: m (reference samples per prompt, default 2n), transform ("bon"), t (1.0)."""
    counted = _need_reward(reward, "infalign")
    cands, _, compute, ids, _ = draw_candidates(model, tokenizer, prompts, controls)
    # the reference samples' own streams (no seed: fresh ones, not seed 104729's for every request)
    refs_ctl = [c.replace(seed=None if c.seed is None else row_seed(c.seed, "infalign references")) for c in controls]
    refs, _, comp, _, _ = draw_candidates(model, tokenizer, prompts, refs_ctl, n_of=lambda c: int(c.extra.get("m", 2 * c.n)))
    compute.add(comp)
    per, _ = score_candidates(counted, prompts, cands, controls)
    ref_per, _ = score_candidates(counted, prompts, refs, controls)
    names = objective_names(reward, per[0].shape[1])
    from pluralign.decode.api import weights_matrix

    w = weights_matrix(reward, controls, per[0].shape[1])
    chosen, cal_utils = [], []
    for p, c in enumerate(controls):
        u = transform(calibrate(ref_per[p], per[p]), c.extra.get("transform", "bon"), float(c.extra.get("t", 1.0)))
        util = u @ w[p]
        cal_utils.append(util)
        chosen.append(int(util.argmax()))
    scores = torch.stack([per[p][i] for p, i in enumerate(chosen)])
    return DecodeResult(texts=[cands[p][i] for p, i in enumerate(chosen)], scores=scores, objectives=names,
                        utility=(scores * w).sum(-1), candidates=cands, candidate_scores=per, compute=compute,
                        reward_compute=counted.compute, info={"chosen": chosen, "calibrated_utility": cal_utils,
                              "token_ids": [ids[p][i] for p, i in enumerate(chosen)]})
