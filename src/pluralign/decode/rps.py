"""RPS — Robust Preference Selection (Mao, Shi, Gu, Wei; ICLR 2026; arXiv 2510.20498).

For a target preference direction v*, draw one response conditioned on each of k directions within
angle θ_max of v* (v* included), then select by the user's own direction: argmax_i v*ᵀ r(x, y_i).
With θ_max = 0 every neighbour is v* and this is best-of-k conditioned on v*.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch

from pluralign.decode.api import Controls, DecodeResult, register, score_candidates
from pluralign.decode.best_of_n import _need_reward, select_best
from pluralign.decode.kv import Compute
from pluralign.decode.prompts import dpa_system_message, with_system
from pluralign.decode.rewards import objective_names, weight_vector
from pluralign.decode.sampler import sample
from pluralign.decode.streams import repeat_seeds, seeded_generator


def neighbour_directions(v: torch.Tensor, k: int, theta_max: float, generator: torch.Generator | None = None
                         ) -> torch.Tensor:
    """k unit directions at angles δ_i evenly spaced in [−θ_max, θ_max] from v* (v* itself included),
    each rotated in the plane of v* and a random unit vector orthogonal to it (fixed in 2-D). [k, d]."""
    v = v.double() / v.double().norm()
    d = v.numel()
    deltas = torch.linspace(-theta_max, theta_max, k, dtype=torch.double) if k > 1 else torch.zeros(1, dtype=torch.double)
    if k > 1 and k % 2 == 0:
        deltas[k // 2] = 0.0  # make sure v* is among the neighbours
    out = []
    for delta in deltas.tolist():
        if d == 1 or delta == 0.0:
            out.append(v)
            continue
        u = torch.randn(d, generator=generator, dtype=torch.double) if d > 2 else torch.tensor([-v[1], v[0]])
        u = u - (u @ v) * v
        u = u / u.norm()
        out.append(math.cos(delta) * v + math.sin(delta) * u)
    return torch.stack(out).float()


@register("rps", options=("theta_max", "conditioner"), needs=("reward",))
def rps(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any, controls: list[Controls], **_: Any
        ) -> DecodeResult:
    """extra: theta_max (radians, default π/8); conditioner(prompt, direction, objectives) -> prompt
    (default: DPA system message). n = k neighbours."""
    counted = _need_reward(reward, "rps")
    names = getattr(reward, "objectives", None)
    compute = Compute()
    cands: list[list[str]] = []
    cand_ids: list[list[list[int]]] = []
    # one request at a time: a prompt repeated in the call draws from a seed of its own (`repeat_seeds`)
    seeds = repeat_seeds([c.seed for c in controls], [repr(x) for x in prompts])
    for p, c in enumerate(controls):
        c = c.replace(seed=seeds[p])
        m = len(names) if names else len(c.weights)
        names_p = objective_names(reward, m)
        v = weight_vector(c.weights, names_p)
        g = seeded_generator(c.seed, "rps directions")  # no seed: fresh directions, not seed 0's every time
        dirs = neighbour_directions(v, c.n, float(c.extra.get("theta_max", math.pi / 8)), g)
        cond = c.extra.get("conditioner") or (lambda x, d, obj, how=c.chat_template:
                                              with_system(x, dpa_system_message(d, obj), tokenizer, how))
        conditioned = [cond(prompts[p], d.tolist(), names_p) for d in dirs]
        # identical conditioned prompts share one prefill and are sampled together (n = multiplicity)
        counts = Counter(repr(x) for x in conditioned)
        row: list[str] = []
        row_ids: list[list[int]] = []
        for j, (key, mult) in enumerate(counts.items()):
            x = next(x for x in conditioned if repr(x) == key)
            # one seed per neighbour: with the request's own for all, neighbours the conditioning moves little
            # drew the same answer from the same random numbers, and the selection had nothing to choose from
            s = sample(model, tokenizer, [x], n=mult, max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                       top_k=c.top_k, top_p=c.top_p, stop=c.stop, seed=None if c.seed is None else c.seed + j,
                       chat_template=c.chat_template)
            compute.add(s.compute)
            row.extend(s.texts[0])
            row_ids.extend(s.token_ids[0])
        cands.append(row)
        cand_ids.append(row_ids)
    per, util = score_candidates(counted, prompts, cands, controls)
    chosen = [select_best(u) for u in util]
    scores = torch.stack([per[p][i] for p, i in enumerate(chosen)])
    return DecodeResult(texts=[cands[p][i] for p, i in enumerate(chosen)], scores=scores,
                        objectives=objective_names(reward, scores.shape[1]),
                        utility=torch.stack([util[p][i] for p, i in enumerate(chosen)]), candidates=cands,
                        candidate_scores=per, compute=compute, reward_compute=counted.compute,
                        info={"chosen": chosen, "token_ids": [cand_ids[p][i] for p, i in enumerate(chosen)]})
