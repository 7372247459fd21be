"""Transfer Q* (Chakraborty et al., NeurIPS 2024, arXiv 2405.20495).

The token-level Q*(s, z) for the target reward r is estimated from a rollout of a baseline aligned model
ρ_BL (e.g. a DPO model) from [s, z]:
  direct   (ρ_BL aligned to r):     Q̂(z) = r([s, z, τ])
  indirect (ρ_BL aligned to r_BL):  Q̂(z) = exp((r − r_BL)/β_BL) · r   (importance weight, normaliser dropped)
and the next token maximises (greedy) or samples logit_sft(z) + α·Q̂(z) over the top-k of π_sft.
Rollouts are greedy, `extra["rollout"]` tokens long (the authors' code: 20 direct, 5 indirect).
"""

from __future__ import annotations

from typing import Any

import torch

from pluralign.decode.api import (
    TOKENWISE_OPTIONS,
    TOKENWISE_SHARED,
    Controls,
    DecodeResult,
    finish,
    register,
    weights_matrix,
)
from pluralign.decode.kv import Compute
from pluralign.decode.rewards import Counted, as_reward, score_groups
from pluralign.decode.sampler import sample
from pluralign.decode.tokenwise import (
    choice_logq,
    nucleus,
    pick,
    row_settings,
    run_tokenwise,
    tokenwise_info,
    top_k_candidates,
)
from pluralign.errors import ConfigError


def indirect_q(r: torch.Tensor, r_bl: torch.Tensor, beta_bl: float | torch.Tensor) -> torch.Tensor:
    """Q̂ = exp((r − r_BL)/β_BL) · r; equals r when r_BL = r."""
    return torch.exp((r - r_bl) / beta_bl) * r


class TQGuide:
    def __init__(self, controls: list[Controls], prompt_ids: list[list[int]], streams: Any, *, baseline: Any,
                 tokenizer: Any, prompts: list[Any], reward: Any, baseline_reward: Any, compute: Compute):
        self.controls, self.streams, self.baseline, self.tokenizer = controls, streams, baseline, tokenizer
        self.prompts, self.reward, self.baseline_reward, self.compute = prompts, reward, baseline_reward, compute
        self.prompt_ids = prompt_ids
        self.prefix: list[list[int]] = [[] for _ in controls]
        self.k = max(int(c.extra.get("k", c.top_k or 10)) for c in controls)
        self.eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        self.q_log: list[torch.Tensor] = []

    def q_values(self, cand: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """Q̂ [b, k] from one greedy rollout of the baseline per candidate."""
        b, k = cand.shape
        starts = [self.prompt_ids[r] + self.prefix[r] + [z] for r, row in zip(rows, cand.tolist(), strict=True) for z in row]
        L = max(int(self.controls[r].extra.get("rollout", 20)) for r in rows)
        roll = sample(self.baseline, self.tokenizer, starts, n=1, max_new_tokens=L, temperature=0)
        self.compute.add(roll.compute)
        texts, flat_p, users, flat_rows = [], [], [], []
        for idx, r in enumerate(r for r in rows for _ in range(k)):
            z = int(cand.view(-1)[idx])
            cont = [] if z in self.eos else roll.token_ids[idx][0]
            texts.append(self.tokenizer.decode(self.prefix[r] + [z] + cont, skip_special_tokens=True))
            flat_p.append(self.prompts[r])
            users.append(self.controls[r].user)
            flat_rows.append(r)
        r_all = score_groups(self.reward, flat_p, texts, users)
        w = weights_matrix(self.reward.source, self.controls, r_all.shape[1])[flat_rows]
        r = (r_all * w).sum(-1)
        if self.baseline_reward is None:
            return r.view(b, k)
        r_bl_all = score_groups(self.baseline_reward, flat_p, texts, users)
        w_bl = weights_matrix(self.baseline_reward, self.controls, r_bl_all.shape[1])[flat_rows]
        beta = torch.tensor([float(self.controls[x].extra.get("beta_bl", 2.0)) for x in flat_rows])
        return indirect_q(r, (r_bl_all * w_bl).sum(-1), beta).view(b, k)

    def choose(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        top, cand = top_k_candidates(logits, self.k)
        alpha = torch.tensor([float(self.controls[r].w) for r in rows], device=logits.device)
        if bool((alpha == 0).all()):
            score = top
        else:
            q = self.q_values(cand, rows).to(logits.device)
            if not bool(torch.isfinite(q).all()):
                raise ConfigError("TQ*: non-finite Q estimates (check beta_bl and the reward scales)")
            score = top + alpha[:, None] * q
        greedy, temp = row_settings(self.controls, rows, logits.device)
        c = self.controls[rows[0]]  # top_k / top_p are shared by the batch (`batch_shared`)
        score = nucleus(score, temp, c.top_k, c.top_p)
        idx = pick(score, greedy, temp, self.streams, rows)
        self.last_logq = choice_logq(score, idx, greedy, temp)
        tok = cand.gather(1, idx[:, None]).squeeze(1)
        for j, r in enumerate(rows):
            self.prefix[r].append(int(tok[j]))
        return tok

    def keep(self, index: list[int]) -> None:
        pass

    def advance(self, tokens: torch.Tensor) -> None:
        pass


@register("tq_star", options=("k", "rollout", "beta_bl", *TOKENWISE_OPTIONS),
          batch_shared=("k", "top_k", "top_p", "rollout", *TOKENWISE_SHARED), needs=("reward",))
def tq_star(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any, controls: list[Controls],
            baseline: Any = None, baseline_reward: Any = None, **_: Any) -> DecodeResult:
    """TQ* with α = controls.w, k = extra["k"] (10), rollout = extra["rollout"] (20). `baseline` is ρ_BL
    (default: the policy itself); `baseline_reward` given -> indirect transfer with β_BL = extra["beta_bl"]
    (default 2.0, i.e. the authors' exp(0.5 Δr))."""
    if reward is None:
        raise ConfigError("tq_star needs a reward")
    counted = Counted(reward)
    compute = Compute()
    texts, gen, compute = run_tokenwise(
        model, tokenizer, prompts, controls,
        lambda ids, comp, g: TQGuide(controls, ids, g, baseline=baseline if baseline is not None else model,
                                     tokenizer=tokenizer, prompts=prompts, reward=counted,
                                     baseline_reward=as_reward(baseline_reward), compute=comp),
        compute=compute)
    out = finish(texts, prompts, reward, controls, compute=compute, reward_compute=counted.compute)
    out.info.update(tokenwise_info(gen))
    return out

