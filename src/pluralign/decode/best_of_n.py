"""Best-of-N and soft best-of-N, with the exact BoN distribution for enumerable outcomes.

- Exact BoN PMF, KL and win rate: Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment
  policy" (arXiv 2401.01879): π_N(y) = F(y)^N − F⁻(y)^N per reward level; the folklore
  KL = log N − (N−1)/N is only an upper bound (equal in the continuous limit).
- KL-regularised optimum φ_β ∝ p·exp(r/β): Yang et al. 2024 (arXiv 2404.01730).
- Soft BoN: Verdun et al. 2025 (arXiv 2505.03156): pick i ~ softmax(r_i/λ) among N samples.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

from pluralign.decode.api import Controls, DecodeResult, groups, register, score_candidates
from pluralign.decode.kv import Compute
from pluralign.decode.rewards import Counted, objective_names
from pluralign.decode.sampler import sample
from pluralign.decode.streams import occurrences, seeded_generator
from pluralign.errors import ConfigError

# ----------------------------------------------------------------------------------- exact formulas


def _levels(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each outcome: F(y) = P[r ≤ r(y)], F⁻(y) = P[r < r(y)], and P[r = r(y)] (O(K log K))."""
    p, r = np.asarray(p, float), np.asarray(r, float)
    levels, inverse = np.unique(r, return_inverse=True)
    mass = np.bincount(inverse, weights=p, minlength=len(levels))
    cum = np.cumsum(mass)
    F = cum[inverse]
    level = mass[inverse]
    return F, np.clip(F - level, 0.0, None), level


def bon_pmf(p: Any, r: Any, n: int) -> np.ndarray:
    """Exact distribution of best-of-n over enumerable outcomes with probabilities p and rewards r.
    Ties (equal rewards) share their level's mass F^n − F⁻^n in proportion to p (any tie-break that
    ignores the outcome's identity, e.g. first index among i.i.d. draws, gives this)."""
    p = np.asarray(p, float)
    F, Fm, level = _levels(p, r)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(level > 0, p / level, 0.0)
    return share * (F ** n - Fm ** n)


def kl(q: Any, p: Any) -> float:
    q, p = np.asarray(q, float), np.asarray(p, float)
    m = q > 0
    return float(np.sum(q[m] * (np.log(q[m]) - np.log(p[m]))))


def bon_kl_exact(p: Any, r: Any, n: int) -> float:
    """Exact KL(π_n ‖ p) for an enumerable outcome space."""
    return kl(bon_pmf(p, r, n), p)


def bon_kl_bound(n: int) -> float:
    """The UPPER BOUND log n − (n−1)/n on KL(π_n ‖ p) (Beirami et al. 2024); not the KL itself unless
    rewards have no atoms."""
    return math.log(n) - (n - 1) / n


def bon_win_rate_exact(p: Any, r: Any, n: int) -> float:
    """P(r(Y_n) > r(Y)) + ½ P(=), Y_n ~ π_n, Y ~ p independent; n/(n+1) for continuous rewards."""
    p, r = np.asarray(p, float), np.asarray(r, float)
    q = bon_pmf(p, r, n)
    _, Fm, level = _levels(p, r)
    return float(np.sum(q * (Fm + 0.5 * level)))


def tilted(p: Any, r: Any, beta: float) -> np.ndarray:
    """φ_β(y) = p(y) exp(r(y)/β) / Z_β, the KL-regularised RL optimum (computed stably)."""
    p, r = np.asarray(p, float), np.asarray(r, float)
    logw = np.log(np.where(p > 0, p, 1e-300)) + r / beta
    w = np.exp(logw - logw.max()) * (p > 0)
    return w / w.sum()


# ----------------------------------------------------------------------------------- selection rules


def select_best(util: torch.Tensor, *, ties: str = "first", generator: torch.Generator | None = None) -> int:
    """Index of the highest utility; ties -> the first index, or uniformly at random (`ties="random"`)."""
    best = util.max()
    top = torch.nonzero(util == best).flatten()
    if ties == "first" or len(top) == 1:
        return int(top[0])
    if ties != "random":
        raise ConfigError(f"ties must be 'first' or 'random', not {ties!r}")
    return int(top[torch.randint(len(top), (1,), generator=generator)])


def select_soft(util: torch.Tensor, lam: float, generator: torch.Generator | None = None) -> int:
    """Soft BoN: i ~ Categorical(softmax(util / λ)) (λ → 0: BoN; λ → ∞: uniform)."""
    probs = torch.softmax(util.double() / max(lam, 1e-12), dim=0)
    return int(torch.multinomial(probs.float(), 1, generator=generator))


# ----------------------------------------------------------------------------------- shared candidate pool


class Drawn(NamedTuple):
    """Candidates per prompt: texts [P][n_p], their generated token ids [P][n_p][...], the policy's
    log-prob of each (a tensor [n_p] per prompt), the compute spent, and the log-prob of each under the
    distribution it was drawn from (after temperature, top-k, top-p; 0 for greedy decoding)."""

    texts: list[list[str]]
    logps: list[torch.Tensor]
    compute: Compute
    token_ids: list[list[list[int]]]
    proposal_logps: list[torch.Tensor]


def draw_candidates(model: Any, tokenizer: Any, prompts: list[Any], controls: list[Controls], *,
                    n_of=lambda c: c.n) -> Drawn:
    """Sample candidates for each prompt, batching requests that share sampling settings (seeds apart: each
    request draws from streams of its own seed, `sample`)."""
    drawn = Drawn([[] for _ in prompts], [torch.zeros(0)] * len(prompts), Compute(), [[] for _ in prompts],
                  [torch.zeros(0)] * len(prompts))
    keyed = [c.replace(n=n_of(c)) for c in controls]
    for idx, c in groups(keyed, "n", "max_new_tokens", "temperature", "top_k", "top_p", "stop"):
        s = sample(model, tokenizer, [prompts[i] for i in idx], n=c.n, max_new_tokens=c.max_new_tokens,
                   temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, stop=c.stop,
                   seed=[controls[i].seed for i in idx],
                   chat_template=[controls[i].chat_template for i in idx])
        drawn.compute.add(s.compute)
        for j, i in enumerate(idx):
            drawn.texts[i], drawn.logps[i], drawn.token_ids[i] = s.texts[j], s.sum_logps[j], s.token_ids[j]
            drawn.proposal_logps[i] = s.proposal_logps[j]
    return drawn


def _need_reward(reward: Any, method: str) -> Any:
    if reward is None:
        raise ConfigError(f"decoding method {method!r} needs a reward (--reward)")
    return Counted(reward)


def select_decoder(method: str, choose) -> Any:
    """A sequence-level decoder: draw candidates, score them, pick one per prompt with `choose(util, c, g)`."""

    def run(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any, controls: list[Controls],
            **_: Any) -> DecodeResult:
        counted = _need_reward(reward, method)
        cands, logps, compute, ids, _ = draw_candidates(model, tokenizer, prompts, controls)
        per, util = score_candidates(counted, prompts, cands, controls)
        # each request its own stream, of its seed and prompt (`streams.seeded_generator`): one stream for the
        # call made a choice depend on the prompts before it
        occ = occurrences([(c.seed, repr(x)) for c, x in zip(controls, prompts, strict=True)])
        chosen = [choose(util[p], c, seeded_generator(c.seed, prompts[p], occ[p])) for p, c in enumerate(controls)]
        return DecodeResult(
            texts=[cands[p][i] for p, i in enumerate(chosen)],
            scores=torch.stack([per[p][i] for p, i in enumerate(chosen)]),
            objectives=objective_names(reward, per[0].shape[1]),
            utility=torch.stack([util[p][i] for p, i in enumerate(chosen)]),
            candidates=cands, candidate_scores=per, compute=compute, reward_compute=counted.compute,
            info={"chosen": chosen, "candidate_utility": util, "candidate_logps": logps,
                  "token_ids": [ids[p][i] for p, i in enumerate(chosen)]})

    run.__doc__ = f"{method}: draw N candidates per prompt, score them, select one."
    return run


@register("sample")
def plain_sample(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any, controls: list[Controls],
                 **_: Any) -> DecodeResult:
    """The policy's own samples (one per request; scored when a reward is given): how a conditioned or
    trained model is used without any decoding-time search. Each row carries `logp`, the sample's log-prob
    under the (conditioned) policy's own distribution, before temperature or top-p; `info["token_ids"]` holds the sampled ids and
    `info["decoder_logps"]` their log-prob under the distribution they were drawn from (temperature, top-k
    and top-p applied; 0 for greedy decoding), so the KL of what was decoded to a reference can be estimated
    without re-tokenizing the text."""
    from pluralign.decode.api import finish

    drawn = draw_candidates(model, tokenizer, prompts, controls, n_of=lambda c: 1)
    return finish([row[0] for row in drawn.texts], prompts, reward, controls, compute=drawn.compute,
                  info={"logp": [float(lp[0]) for lp in drawn.logps], "token_ids": [ids[0] for ids in drawn.token_ids],
                        "decoder_logps": [float(lp[0]) for lp in drawn.proposal_logps]},
                  row_info=("logp",))


register("bon", options=("ties",), needs=("reward",))(select_decoder("bon", lambda u, c, g: select_best(u, ties=c.extra.get("ties", "first"), generator=g)))
register("soft_bon", needs=("reward",))(select_decoder("soft_bon", lambda u, c, g: select_soft(u, c.beta, g)))
