"""Rejection sampling from the KL-regularised optimum φ_β(y) ∝ p(y)·exp(r(y)/β).

Exact: propose y ~ p, accept with probability exp((r(y) − M)/β) for a bound M ≥ max_y r(y); accepted
draws are exactly φ_β-distributed (standard rejection sampling; the target of Yang et al. 2024,
arXiv 2404.01730). RSO (Liu et al. 2023, "Statistical Rejection Sampling Improves Preference
Optimization", arXiv 2309.06657): draw N candidates and use M = their maximum reward — approximate, and
it always accepts something.
"""

from __future__ import annotations

from typing import Any

import torch

from pluralign.decode.api import Controls, DecodeResult, register, score_candidates
from pluralign.decode.best_of_n import _need_reward, draw_candidates
from pluralign.decode.kv import Compute
from pluralign.decode.rewards import objective_names
from pluralign.decode.streams import occurrences, row_seed, seeded_generator
from pluralign.errors import ConfigError


def accept_mask(util: torch.Tensor, beta: float, bound: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Accept each proposal with probability exp((r − M)/β)."""
    if float(util.max()) > bound + 1e-9:
        raise ConfigError(f"rejection sampling bound M={bound} is below an observed reward {float(util.max()):.4g}")
    u = torch.rand(util.shape, generator=generator, dtype=torch.double)
    return u < torch.exp((util.double() - bound) / beta)


def rso_select(util: torch.Tensor, beta: float, generator: torch.Generator | None = None) -> int:
    """RSO: M = max of the candidates; first accepted candidate (the argmax is always accepted)."""
    acc = accept_mask(util, beta, float(util.max()), generator)
    return int(torch.nonzero(acc).flatten()[0])


@register("rejection", options=("reward_max", "max_rounds"), needs=("reward",))
def rejection(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any, controls: list[Controls],
              **_: Any) -> DecodeResult:
    """Exact rejection sampling when `controls.extra["reward_max"]` (M) is given: rounds of n proposals
    until one is accepted (at most `extra["max_rounds"]`, default 20; then the best seen, flagged in
    info["exhausted"]). Without M: the RSO approximation over n candidates."""
    counted = _need_reward(reward, "rejection")
    compute = Compute()
    texts, scores, utils, ids = ([None] * len(prompts) for _ in range(4))
    exhausted = []
    todo = list(range(len(prompts)))
    rounds = max(int(c.extra.get("max_rounds", 20)) for c in controls)
    # each request its own stream, of its seed and prompt (`streams.seeded_generator`): one stream for the call
    # made a prompt's acceptance depend on the prompts before it
    occ = occurrences([(c.seed, repr(x)) for c, x in zip(controls, prompts, strict=True)])
    gens = [seeded_generator(c.seed, x, k) for c, x, k in zip(controls, prompts, occ, strict=True)]
    best: dict[int, tuple[float, str, torch.Tensor, list[int]]] = {}
    for rnd in range(rounds):
        # each round its own draws (not seed + 7919·round: round 1 of seed 0 was round 0 of seed 7919)
        ctl = [controls[i] if controls[i].seed is None or rnd == 0
               else controls[i].replace(seed=row_seed(controls[i].seed, "rejection round", rnd)) for i in todo]
        cands, _, comp, cand_ids, _ = draw_candidates(model, tokenizer, [prompts[i] for i in todo], ctl)
        compute.add(comp)
        per, util = score_candidates(counted, [prompts[i] for i in todo], cands, ctl)
        still = []
        for j, i in enumerate(todo):
            M = controls[i].extra.get("reward_max")
            if M is None:
                k = rso_select(util[j], controls[i].beta, gens[i])
            else:
                acc = torch.nonzero(accept_mask(util[j], controls[i].beta, float(M), gens[i])).flatten()
                k = int(acc[0]) if len(acc) else None
                b = int(util[j].argmax())
                if i not in best or float(util[j][b]) > best[i][0]:
                    best[i] = (float(util[j][b]), cands[j][b], per[j][b], cand_ids[j][b])
            if k is None:
                still.append(i)
            else:
                texts[i], scores[i], utils[i], ids[i] = cands[j][k], per[j][k], util[j][k], cand_ids[j][k]
        todo = still
        if not todo:
            break
    for i in todo:
        exhausted.append(i)
        utils[i], texts[i], scores[i], ids[i] = torch.tensor(best[i][0]), best[i][1], best[i][2], best[i][3]
    return DecodeResult(texts=texts, scores=torch.stack(scores), objectives=objective_names(reward, scores[0].numel()),
                        utility=torch.stack([torch.as_tensor(u) for u in utils]), compute=compute,
                        reward_compute=counted.compute, info={"exhausted": exhausted, "token_ids": ids})
