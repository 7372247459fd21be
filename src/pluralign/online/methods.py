"""How a scored rollout becomes a training batch and a loss, one class per family:

- `PolicyGradient`: advantages (a registered estimator) and a registered policy loss, with the KL to the
  reference in the reward or in the loss, and a value head for PPO;
- `Pairs` and `BestOfN` (`pluralign.online.selected`): online DPO and rejection-sampling fine-tuning,
  samples selected by reward and trained with an offline recipe's step.

`build(rollout, rewards)` returns (batch, denominator): the step's objective is Σ(per-prompt numerators)
divided by the denominator summed over the whole optimizer step (every micro-batch and process), which
the engine turns into a per-batch `scale`, so the loop's mean over prompts is exactly that objective.
A method whose batch depends on the step's whole rollout also has `score`, the micro-batch's part of
`build`, and `finish`: `PolicyGradient`'s advantages (statistics over the batch), `BestOfN`'s selection (whose
`finish` returns the micro-batches' denominators, unknown until the step's samples are ranked).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pluralign.data.tokenize import pad_token_id
from pluralign.decode.sampler import eval_mode
from pluralign.models.logprobs import final_hidden_states, gathered_logps, predicted_mask, token_logps
from pluralign.online import advantages as estimators
from pluralign.online import grouped
from pluralign.online import policy_losses as pl
from pluralign.online.rewards import varied_groups
from pluralign.online.rollout import Rollout, training_rows


class PolicyWithValue(torch.nn.Module):
    """The policy and a value head V(s_t) on its final hidden states (PPO's critic sharing the trunk)."""

    def __init__(self, policy: torch.nn.Module, hidden_size: int):
        super().__init__()
        from pluralign.models.heads import ValueHead

        self.policy = policy
        self.value_head = ValueHead(hidden_size)


def policy_outputs(model: Any, batch: dict) -> tuple[Tensor, Tensor | None]:
    """Per-token log-probs [N, T] (at the position of each completion token) and, for a
    `PolicyWithValue`, the values V(s_t) read from the hidden state that predicts token t. With
    `batch["live"]` only those rows are computed; the others' log-probs are 0 (they carry no gradient)."""
    if not isinstance(model, PolicyWithValue):
        if "group_input_ids" in batch:  # each prompt once for its group (online/grouped.py)
            return grouped.token_logps_grouped(model, batch), None
        ids, attn, cmask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        if "live" not in batch:
            return token_logps(model, ids, attn, cmask), None
        rows = batch["live"].nonzero().flatten()
        width = int(attn[rows].sum(1).max())  # right-padded: the live rows' own width
        live = token_logps(model, ids[rows, :width], attn[rows, :width], cmask[rows, :width])
        out = torch.zeros(cmask.shape, dtype=live.dtype, device=live.device)
        out[rows, :width] = live
        return out, None
    ids, attn = batch["input_ids"], batch["attention_mask"]
    position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)
    hidden = final_hidden_states(model.policy, ids, attn, position_ids)
    predicted = predicted_mask(ids, attn, batch["completion_mask"], position_ids)[:, 1:]
    values = gathered_logps(model.policy, hidden[:, :-1][predicted], ids[:, 1:][predicted])
    logps = torch.zeros(predicted.shape, dtype=values.dtype, device=values.device).masked_scatter(predicted, values)
    v = model.value_head(hidden[:, :-1].to(model.value_head.out.weight.dtype)).float()
    return torch.nn.functional.pad(logps, (1, 0)), torch.nn.functional.pad(v, (1, 0))


_SCORED = "scored"  # a scored micro-batch's estimator inputs, until `PolicyGradient.finish` turns them into advantages


@dataclass
class _Scored:
    rewards: Tensor  # [N]
    mask: Tensor  # [N, T] completion tokens
    kl_penalty: Tensor | None  # [N, T] in the token rewards
    values: Tensor | None  # [N, T] the value head's at the rollout
    prompts: list[list[int]]  # each group's prompt ids
    completions: list[list[int]]
    group_size: int
    pair_cost: float | None  # grouped rows (`grouped.pair_cost`), or None: one padded row per completion
    value_head: bool


def per_prompt(contributions: Tensor, row_prompt: Tensor, n_prompts: int, scale: Tensor) -> Tensor:
    out = torch.zeros(n_prompts, dtype=contributions.dtype, device=contributions.device)
    return out.index_add(0, row_prompt, contributions) * scale


class PolicyGradient:
    def __init__(self, *, tokenizer: Any, estimator: str, estimator_params: dict, loss: str, loss_params: dict,
                 aggregation: str, max_len: int, beta: float, kl_estimator: str, kl_in: str, kl_bias_correction: bool,
                 reference: Any, vf_coef: float = 0.1, value_clip: float | None = 0.2, mask_truncated: bool = False,
                 dynamic_sampling: bool = False, reuse: bool = False,
                 shared_prompt: bool = True):
        self.tokenizer, self.reference = tokenizer, reference
        self.estimator, self.estimator_params = estimators.get(estimator), dict(estimator_params)
        self.loss, self.loss_params = pl.get(loss), dict(loss_params)
        pl.sequence_contributions(torch.zeros(1, 1), torch.ones(1, 1), aggregation, max_len)  # checks the name
        self.aggregation, self.max_len = aggregation, max_len
        self.beta, self.kl_estimator, self.kl_in, self.kl_bias_correction = beta, kl_estimator, kl_in, kl_bias_correction
        self.vf_coef, self.value_clip = vf_coef, value_clip
        self.mask_truncated, self.dynamic_sampling = mask_truncated, dynamic_sampling
        # Several updates per rollout (PPO epochs / minibatches): the sampling policy's log-probs are kept
        # with the batch, so the ratios of later updates are taken against them (specs/online.md §1.1).
        self.reuse = reuse
        self.shared_prompt = shared_prompt

    @property
    def needs_reference(self) -> bool:
        return self.beta > 0

    def build(self, model: Any, rollout: Rollout, rewards: Tensor) -> tuple[dict, float]:
        """The training batch of a rollout held in one micro-batch: `score`, then `finish` on it alone."""
        batch, denominator = self.score(model, rollout, rewards)
        self.finish([batch])
        return batch, denominator

    def score(self, model: Any, rollout: Rollout, rewards: Tensor) -> tuple[dict, float]:
        """A micro-batch's rows, the sampling policy's (and value head's) and the reference's log-probs, and its
        part of the step's denominator; its advantages wait for `finish`, which sees the step's whole rollout."""
        g = rollout.group_size
        batch = training_rows(self.tokenizer, rollout.prompt_ids, rollout.completion_ids)
        mask = batch["completion_mask"].float()
        prompts = rollout.prompt_ids[::g]
        # Several updates per rollout train minibatches of padded rows (`minibatch`), so the sampling policy's
        # log-probs are taken on those rows too: another layout rounds apart (~0.02 a token in bf16).
        cost = None  # grouped rows' pair cost: the layout is redone in `finish` for the live completions only
        if (self.shared_prompt and g > 1 and not self.reuse and not isinstance(model, PolicyWithValue)
                and all(prompts) and grouped.works(model)):
            cost = grouped.pair_cost(model)
            k = grouped.rows_per_prompt(prompts, rollout.completion_ids, g, cost)
            batch |= grouped.grouped_rows(prompts, rollout.completion_ids, g, pad_token_id(self.tokenizer), k)
        device = next(model.parameters()).device
        old = old_values = ref = None
        if self.needs_reference or self.reuse or isinstance(model, PolicyWithValue):  # else none is needed
            with torch.no_grad(), eval_mode(model):
                on_device = {k: v.to(device) for k, v in batch.items()}
                old, old_values = policy_outputs(model, on_device)
                old, old_values = old.cpu(), old_values.cpu() if old_values is not None else None
                if self.needs_reference:
                    ref = self.reference.token_logps(on_device).cpu()
        kl_penalty = None  # in the reward: β times the configured estimator per token (k1 by the presets)
        if ref is not None and self.kl_in == "reward":
            kl_penalty = self.beta * pl.kl_estimate(old, ref, self.kl_estimator) * mask
        keep = torch.ones(len(rewards))
        if self.dynamic_sampling:
            keep = keep * varied_groups(rewards, g).float().repeat_interleave(g)
        if self.mask_truncated:
            keep = keep * (~rollout.truncated).float()
        loss_mask = mask * keep[:, None]
        batch |= {"loss_mask": loss_mask, "row_prompt": torch.arange(len(rewards)) // g, "n_prompts": len(rewards) // g,
                  _SCORED: _Scored(rewards.float(), mask, kl_penalty, old_values, prompts, rollout.completion_ids, g,
                                   cost, value_head=isinstance(model, PolicyWithValue))}
        if self.reuse:
            batch["old_logps"] = old
        if ref is not None:
            batch["ref_logps"] = ref
        if old_values is not None:
            batch["old_values"] = old_values
        sampled = torch.cat(rollout.sampler_logps) if rollout.sampler_logps else None
        metrics = {"kept_fraction": keep.mean()}
        if sampled is not None and len(sampled):
            # Monte-Carlo per-token entropy of the policy (sampled at another temperature: E_q[-log p])
            metrics["entropy"] = (-sampled.mean(), torch.tensor(float(len(sampled))))  # a token mean: (mean, tokens)
        if ref is not None:
            metrics["kl"] = ((old - ref) * mask).sum(1).mean()
        batch["metrics"] = metrics
        return batch, float(_denominator(loss_mask, self.aggregation, self.max_len))

    def finish(self, batches: list[dict], gather: Callable[[Tensor], tuple[Tensor, int]] = lambda x: (x, 0)) -> None:
        """Advantages (and value targets) of the step's whole rollout, `score`d in micro-batches: the estimator
        runs once on all their rows — of every process, with `gather` (x of each process concatenated in
        rank order, and where this one's rows begin) — so statistics over the batch (REINFORCE++'s and GAE's
        whitening, GRPO's batch std) are those of the rollout, as the papers define them, not of each
        micro-batch (grad_accum=2 x b then equals grad_accum=1 x 2b). Group statistics are unchanged."""
        parts = [b.pop(_SCORED) for b in batches]

        def joined(tensors: list[Tensor | None]) -> Tensor | None:
            if tensors[0] is None:
                return None
            width = max(t.shape[1] for t in tensors)
            return gather(torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in tensors]))[0]

        rewards, start = gather(torch.cat([p.rewards for p in parts]))
        adv, returns = self.estimator(rewards, joined([p.mask for p in parts]), group_size=parts[0].group_size,
                                      kl_penalty=joined([p.kl_penalty for p in parts]),
                                      values=joined([p.values for p in parts]), **self.estimator_params)
        for batch, part in zip(batches, parts, strict=True):
            mine, width = slice(start, start + len(part.rewards)), part.mask.shape[1]
            self._with_advantages(batch, part, adv[mine, :width], None if returns is None else returns[mine, :width])
            start += len(part.rewards)

    def _with_advantages(self, batch: dict, part: _Scored, adv: Tensor, returns: Tensor | None) -> None:
        live = None if part.value_head else self._live_rows(adv, batch["loss_mask"])
        if live is not None:
            batch["live"] = live
            if part.pair_cost is not None:  # the live completions only, and only prompts that have one
                g = part.group_size
                kept = [c if on else [] for c, on in zip(part.completions, live.tolist(), strict=True)]
                k = grouped.rows_per_prompt(part.prompts, kept, g, part.pair_cost)
                batch |= grouped.grouped_rows(part.prompts, kept, g, pad_token_id(self.tokenizer), k)
        batch["advantages"] = adv.float()
        if returns is not None:
            batch["returns"] = returns
        batch["metrics"] |= {"trained_fraction": live.float().mean() if live is not None else torch.tensor(1.0)}

    def _live_rows(self, adv: Tensor, loss_mask: Tensor) -> Tensor | None:
        """The rows worth a training forward, when some are not: a completion whose advantage is 0 on every
        token of its loss mask (a flat group under GRPO, e.g. all-wrong or all-right answers to a
        verifiable reward; a group or completion masked out) adds exactly 0 to the loss and its gradient,
        when the loss has no other term (no KL in the loss, no value head) and the update is the rollout's
        only one (the ratio's log-probs are then detached copies). The step's denominator still counts its
        tokens, so the update is the same. None: every row is live, or skipping does not apply. One row
        stays live when none is, so every step still runs a forward and a backward (and DDP's reduction)."""
        if self.reuse or (self.beta > 0 and self.kl_in == "loss"):
            return None
        a = adv if adv.dim() == 2 else adv[:, None].expand_as(loss_mask)
        live = ((a != 0) & (loss_mask > 0)).any(1)
        if bool(live.all()):
            return None
        live[0] = live[0] or not bool(live.any())
        return live

    def minibatch(self, batch: dict, rows: Tensor) -> tuple[dict, float]:
        """The batch of rows `rows` (its per-row tensors indexed, scalars and metrics shared) and its part of
        the step's denominator. Tensors laid out otherwise (e.g. one row per prompt) are left out: the
        minibatch is trained from its per-row tensors."""
        n = len(batch["input_ids"])
        sub = {k: (v[rows] if v.dim() > 0 else v) if isinstance(v, Tensor) else v for k, v in batch.items()
               if not k.startswith("group_") and (not isinstance(v, Tensor) or v.dim() == 0 or len(v) == n)}
        return sub, float(_denominator(sub["loss_mask"], self.aggregation, self.max_len))

    def step(self, model: Any, batch: dict) -> tuple[Tensor, dict]:
        logps, values = policy_outputs(model, batch)
        mask = batch["loss_mask"]
        # One update per rollout: on-policy, ratio 1 in value (specs/online.md §1.1); else the sampling
        # policy's log-probs, fixed for all the rollout's PPO epochs.
        old = batch["old_logps"] if "old_logps" in batch else logps.detach()
        per_token, metrics = self.loss(logps, old, batch["advantages"], mask, **self.loss_params)
        metrics = dict(metrics)
        if "old_logps" in batch:  # how far this update's policy is from the sampling one (k3 estimate)
            d = pl.kl_estimate(old, logps.detach(), "k3") * mask
            metrics["approx_kl"] = (d.sum() / mask.sum().clamp(min=1), mask.sum())
        if self.kl_in == "loss" and self.beta > 0:
            kl = pl.kl_loss_term(logps, old, batch["ref_logps"], self.kl_estimator, self.kl_bias_correction)
            per_token = per_token + self.beta * kl * mask
        if values is not None:
            vloss, vclipped = pl.value_loss(values, batch["old_values"], batch["returns"], mask, self.value_clip)
            per_token = per_token + self.vf_coef * vloss
            metrics |= {"value_loss": ((vloss.sum() / mask.sum().clamp(min=1)).detach(), mask.sum()),
                        "value_clip_fraction": (vclipped.sum() / mask.sum().clamp(min=1), mask.sum())}
        c, _ = pl.sequence_contributions(per_token, mask, self.aggregation, self.max_len)
        return per_prompt(c, batch["row_prompt"], batch["n_prompts"], batch["scale"]), metrics | batch["metrics"]


def _denominator(loss_mask: Tensor, aggregation: str, max_len: int) -> Tensor:
    """The local part of the step's denominator: tokens, or sequences with a token (× max_len)."""
    if aggregation == "token_mean":
        return loss_mask.sum()
    n_seq = (loss_mask.sum(1) > 0).sum().float()
    return n_seq * max_len if aggregation == "seq_mean_token_sum_norm" else n_seq
