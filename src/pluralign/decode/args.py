"""ARGS — Alignment as Reward-Guided Search (Khanov, Burapacheep, Li; ICLR 2024).

At each step the k most likely next tokens of the policy are scored by
    score(z) = logit(z) + w · (weightsᵀ r([x, y_<t, z]))
and the argmax (greedy) or a draw from softmax(score / temperature), limited to its top-k / top-p
(`tokenwise.nucleus`), is appended. Raw logits and
log-probs differ by a per-row constant, so both choices are unchanged by using either.

Efficiency: with a transformer reward model (`reward_model=CachedReward` or any *ForSequenceClassification
sharing the tokenizer), the shared prefix stays in the reward model's KV cache and the k candidates go
through it as one batch of single-token steps; the cache row of the chosen candidate becomes the new
prefix. Text reward sources (gold attributes, Python functions) score the decoded prefix + candidate.
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
from pluralign.decode.kv import Compute, encode_prompts
from pluralign.decode.rewards import CachedReward, Counted, score_groups
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


class ArgsGuide:
    """Chooses among the top-k tokens by logit + w · weighted reward of each candidate prefix."""

    def __init__(self, controls: list[Controls], prompt_ids: list[list[int]], streams: Any, *, tokenizer: Any,
                 prompts: list[Any], reward: Any = None, cached: CachedReward | None = None):
        self.controls, self.streams, self.tokenizer = controls, streams, tokenizer
        self.prompts, self.reward, self.cached = prompts, reward, cached
        self.k = max(int(c.extra.get("k", c.top_k or 10)) for c in controls)
        self.prefix: list[list[int]] = [[] for _ in controls]  # generated tokens per prompt
        self.rows = list(range(len(controls)))
        if cached is not None:  # the prompt as asked, as the reward model renders it (the policy may not)
            asked = reward.source.originals(prompts) if hasattr(getattr(reward, "source", None), "originals") else prompts
            cached.start(cached.render(asked) if cached.render is not None else prompt_ids)
        self._weights = None

    def _candidate_rewards(self, cand: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """[b, k, m] rewards of each row's prefix extended by each candidate."""
        if self.cached is not None:
            return self.cached.candidates(cand)
        b, k = cand.shape
        texts, prompts, users = [], [], []
        for j, r in enumerate(rows):
            for z in cand[j].tolist():
                texts.append(self.tokenizer.decode(self.prefix[r] + [z], skip_special_tokens=True))
                prompts.append(self.prompts[r])
                users.append(self.controls[r].user)
        return score_groups(self.reward, prompts, texts, users).view(b, k, -1)

    def choose(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        self.rows = rows
        top, cand = top_k_candidates(logits, self.k)
        w = torch.tensor([float(self.controls[r].w) for r in rows], device=logits.device)
        if bool((w == 0).all()):
            score = top  # w = 0: plain (greedy/sampled) decoding over the top-k, no reward calls
            choice = None
        else:
            rew = self._candidate_rewards(cand, rows).to(logits.device)
            if self._weights is None:
                self._weights = weights_matrix(self.reward or self.cached, self.controls, rew.shape[-1])
            util = (rew * self._weights[rows].to(logits.device)[:, None, :]).sum(-1)
            score = top + w[:, None] * util
            choice = True
        greedy, temp = row_settings(self.controls, rows, logits.device)
        c = self.controls[rows[0]]  # top_k / top_p are shared by the batch (`batch_shared`)
        score = nucleus(score, temp, c.top_k, c.top_p)
        idx = pick(score, greedy, temp, self.streams, rows)
        self.last_logq = choice_logq(score, idx, greedy, temp)
        if self.cached is not None:
            if choice is None:  # keep the reward-model cache in step even when it was not consulted
                self.cached.candidates(cand.gather(1, idx[:, None]))
                self.cached.commit(torch.zeros_like(idx))
            else:
                self.cached.commit(idx)
        tokens = cand.gather(1, idx[:, None]).squeeze(1)
        for j, r in enumerate(rows):
            self.prefix[r].append(int(tokens[j]))
        return tokens

    def keep(self, index: list[int]) -> None:
        if self.cached is not None:
            self.cached.keep_rows(index)

    def advance(self, tokens: torch.Tensor) -> None:
        pass  # the reward-model cache already holds the chosen branch (see choose)


def cacheable(reward_model: Any) -> bool:
    """A pluralign reward model whose score is a head on the last token's hidden state of a causal LM
    (so prefixes can be scored incrementally)."""
    enc = getattr(reward_model, "encoder", None)
    return (enc is not None and hasattr(reward_model, "rewards") and getattr(enc, "kind", None) == "causal"
            and getattr(enc, "pooling", None) == "last" and not getattr(reward_model, "needs_prompt", False))


def as_cached(reward_model: Any, tokenizer: Any) -> CachedReward | None:
    """A transformer reward model as a `CachedReward`: a pluralign causal reward model (its head on the last
    hidden state; prefixes are scored without the EOS its `score` appends) or a HF sequence classifier."""
    if reward_model is None or isinstance(reward_model, CachedReward):
        return reward_model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if cacheable(reward_model):
        enc = reward_model.encoder
        backbone = enc.backbone
        # float32 features, as TextEncoder gives its heads (a bf16 backbone's hidden states are bf16)
        return CachedReward(getattr(backbone, "base_model", backbone), lambda h: reward_model.rewards(h.float()), pad_id=pad,
                            render=lambda prompts: encode_prompts(enc.tokenizer, prompts, enc.chat_template))
    if hasattr(reward_model, "encoder"):
        raise ConfigError("args: this reward model cannot be scored incrementally (needs a causal encoder with "
                          "last-token pooling); pass it as reward= instead")
    return CachedReward.from_sequence_classifier(reward_model, pad_id=pad)


@register("args", options=("k", *TOKENWISE_OPTIONS), batch_shared=("k", "top_k", "top_p", *TOKENWISE_SHARED),
          needs=("reward|reward_model",))  # w = 0 runs without, but is plain sampling
def args_decode(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any = None, controls: list[Controls],
                reward_model: Any = None, **_: Any) -> DecodeResult:
    """ARGS with per-request w (controls.w), objective weights, k (extra["k"], default 10) and mode
    (extra["mode"] "greedy" | "sample"; default: greedy when temperature <= 0). `reward_model`: a
    transformer RM sharing the tokenizer (scored with its KV cache); else `reward` scores text."""
    cached = as_cached(reward_model, tokenizer)
    if cached is None and reward is None and any(c.w != 0 for c in controls):
        raise ConfigError("args needs a reward (--reward) or a reward_model when w != 0")
    counted = Counted(reward) if reward is not None else None
    compute = Compute()
    texts, gen, compute = run_tokenwise(
        model, tokenizer, prompts, controls,
        lambda ids, comp, g: ArgsGuide(controls, ids, g, tokenizer=tokenizer, prompts=prompts, reward=counted,
                                       cached=cached),
        compute=compute)
    rc = counted.compute if counted is not None else Compute()
    if cached is not None:
        rc.add(cached.compute)
    out = finish(texts, prompts, counted.source if counted else None, controls, compute=compute, reward_compute=rc)
    out.info.update(tokenwise_info(gen))
    return out
