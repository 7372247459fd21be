"""DeAL — decoding-time alignment as heuristic search (Huang et al. 2024, arXiv 2402.06147).

Segment search: every iteration each kept beam proposes `init_beams` continuations of `lookahead` tokens
from the policy; candidates are ranked by f = log p(prefix) + λ·h, where the heuristic h combines
programmatic constraint rewards (required keywords, length bounds) with any learned reward under the
request's weights; the top `beams` are kept (finished ones stay in the frontier) until all are finished.
Defaults follow IBM/AISteer360's DeAL control: lookahead 10, init_beams 5, beams 3, max_iterations 10.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from pluralign.decode.api import Controls, DecodeResult, finish, register, weights_matrix
from pluralign.decode.kv import Compute, encode_prompts
from pluralign.decode.rewards import Counted, score_groups
from pluralign.decode.sampler import decoded_text, sample
from pluralign.decode.streams import repeat_seeds
from pluralign.errors import ConfigError


def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def keyword_reward(keywords: list[str]):
    """h = |required keywords present| / |keywords| (CommonGen-style coverage)."""
    keys = [k.lower() for k in keywords]
    return lambda prompts, responses: torch.tensor(
        [sum(k in set(_words(r)) for k in keys) / max(len(keys), 1) for r in responses])


def length_reward(min_words: int | None = None, max_words: int | None = None):
    """h = −(words outside [min_words, max_words]); 0 when the length is within bounds."""
    def fn(prompts, responses):
        out = []
        for r in responses:
            n = len(_words(r))
            out.append(-float(max(0, (min_words or 0) - n) + max(0, n - max_words if max_words is not None else 0)))
        return torch.tensor(out)

    return fn


def constraint_score(constraints: dict | None, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """Sum of the programmatic rewards named in `constraints` ([N]; zeros without constraints)."""
    total = torch.zeros(len(responses))
    if not constraints:
        return total
    unknown = set(constraints) - {"keywords", "min_words", "max_words"}
    if unknown:
        raise ConfigError(f"unknown constraints {sorted(unknown)}; known: keywords, min_words, max_words")
    if constraints.get("keywords"):
        total += keyword_reward(list(constraints["keywords"]))(prompts, responses)
    if constraints.get("min_words") is not None or constraints.get("max_words") is not None:
        total += length_reward(constraints.get("min_words"), constraints.get("max_words"))(prompts, responses)
    return total


def heuristic(texts: list[str], prompt: Any, c: Controls, reward: Any) -> torch.Tensor:
    """h = constraint rewards + extra["reward_weight"] (default 1) · weightsᵀ learned reward."""
    h = constraint_score(c.constraints, [prompt] * len(texts), texts)
    if reward is not None:
        r = score_groups(reward, [prompt] * len(texts), texts, [c.user] * len(texts))
        w = weights_matrix(getattr(reward, "source", reward), [c], r.shape[1])[0]
        h = h + float(c.extra.get("reward_weight", 1.0)) * (r @ w)
    return h


@register("deal", options=("reward_weight", "lookahead", "init_beams", "beams", "max_iterations"))
def deal(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any = None, controls: list[Controls],
         **_: Any) -> DecodeResult:
    """DeAL search per prompt; λ = controls.w; extra: lookahead, init_beams, beams, max_iterations."""
    counted = Counted(reward) if reward is not None else None
    compute = Compute()
    # one search per prompt: a prompt repeated in the call searches from a seed of its own (`repeat_seeds`)
    seeds = repeat_seeds([c.seed for c in controls], [repr(x) for x in prompts])
    found = [_search_one(model, tokenizer, prompts[p], c.replace(seed=s), counted, compute)
             for p, (c, s) in enumerate(zip(controls, seeds, strict=True))]
    return finish([text for text, _ in found], prompts, reward, controls, compute=compute,
                  reward_compute=counted.compute if counted else None, info={"token_ids": [ids for _, ids in found]})


def _search_one(model, tokenizer, prompt, c: Controls, reward, compute: Compute) -> tuple[str, list[int]]:
    look, width = int(c.extra.get("lookahead", 10)), int(c.extra.get("init_beams", 5))
    keep_k, iters = int(c.extra.get("beams", 3)), int(c.extra.get("max_iterations", 10))
    if keep_k > width:
        raise ConfigError(f"deal: beams ({keep_k}) must be <= init_beams ({width})")
    base = encode_prompts(tokenizer, [prompt], c.chat_template)[0]
    beams = [([], 0.0, False)]  # (generated ids, log p, finished)
    best = beams
    for it in range(iters):
        open_beams = [b for b in beams if not b[2]]
        if not open_beams:
            break
        # open beams are all it·look tokens long (a shorter one ended): the last segment stops at the limit
        s = sample(model, tokenizer, [base + b[0] for b in open_beams], n=width,
                   max_new_tokens=min(look, c.max_new_tokens - len(open_beams[0][0])), temperature=c.temperature,
                   top_k=c.top_k, top_p=c.top_p, stop=c.stop, seed=None if c.seed is None else c.seed + it)
        compute.add(s.compute)
        cands = [b for b in beams if b[2]]
        for j, b in enumerate(open_beams):
            for i in range(width):
                ids = b[0] + s.token_ids[j][i]
                done = s.finish[j][i] in ("eos", "stop") or len(ids) >= c.max_new_tokens
                cands.append((ids, b[1] + float(s.sum_logps[j, i]), done))
        decoded = [decoded_text(tokenizer, ids, c.stop) for ids, _, _ in cands]
        h = heuristic(decoded, prompt, c, reward)
        f = torch.tensor([lp for _, lp, _ in cands]) + float(c.w) * h
        order = torch.argsort(f, descending=True, stable=True)[:keep_k].tolist()
        beams = [cands[i] for i in order]
        best = beams
    return decoded_text(tokenizer, best[0][0], c.stop), best[0][0]
