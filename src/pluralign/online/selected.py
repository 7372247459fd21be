"""Methods that train samples selected by their rewards with an offline recipe's step (see
`pluralign.online.methods` for the interface):

- `Pairs`: online / iterative DPO (Xiong et al. 2023; Dong et al. 2024): best vs worst of each prompt's
  samples, trained with the offline preference recipe's step (any pairwise loss);
- `BestOfN`: rejection-sampling fine-tuning (RAFT, Dong et al. 2023): the best sample per prompt (or the
  top fraction of the step's samples) trained with the SFT step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pluralign.online.methods import per_prompt
from pluralign.online.rollout import Rollout, training_rows

_PENDING = "pending"  # a scored micro-batch's samples and rewards, until `BestOfN.finish` selects over the step

def kept_means(metrics: dict, weight: Tensor) -> dict:
    """Per-pair metrics as (mean over the kept pairs, their number): the loop's mean over the step's kept pairs
    (it weighted each micro-batch's mean by its prompts, and counted the weight-0 pair of one that kept none)."""
    kept = weight.sum()

    def mean(v: Any) -> Any:
        if isinstance(v, Tensor) and v.dim() == 1 and len(v) == len(weight):
            return (v.detach().float() * weight).sum() / kept.clamp(min=1), kept
        return (v, kept) if isinstance(v, Tensor | float | int) else v

    return {k: mean(v) for k, v in metrics.items()}



class Pairs:
    """Online DPO: pair each prompt's highest- and lowest-reward samples (ties dropped), score both
    under the round's reference, and train with the preference recipe's step. A dropped pair (a flat
    group) is neither scored nor trained: only the kept pairs are forwarded (one at least, weighted 0 when
    none is kept, so every step runs a forward and a backward)."""

    def __init__(self, *, tokenizer: Any, loss: str, loss_params: dict, reference: Any, history: Any = None):
        from pluralign import losses
        from pluralign.train.recipes.preference import KINDS, make_step

        self.tokenizer, self.reference = tokenizer, reference
        self.history = history  # MNPO rounds: the past policies (`pluralign.online.opponents.Opponents`)
        info = losses.describe(loss)
        if info.kind != "pairwise":
            from pluralign.errors import ConfigError

            raise ConfigError(f"online DPO trains a pairwise loss; '{loss}' is {info.kind}")
        self.pair_step = make_step(KINDS["pairwise"], losses.get(loss), loss_params, None, None, update_shift=False)
        self.needs_reference = info.needs_reference

    def build(self, model: Any, rollout: Rollout, rewards: Tensor) -> tuple[dict, float]:
        g = rollout.group_size
        r = rewards.view(-1, g)
        best, worst = r.argmax(1), r.argmin(1)
        keep = (r.max(1).values > r.min(1).values).float()
        live = keep.nonzero().flatten() if bool(keep.any()) else torch.tensor([0])
        rows = live * g
        chosen, rejected = (rows + best[live]).tolist(), (rows + worst[live]).tolist()
        order = chosen + rejected
        batch = training_rows(self.tokenizer, [rollout.prompt_ids[i] for i in order],
                              [rollout.completion_ids[i] for i in order])
        if self.needs_reference:
            device = next(model.parameters()).device
            with torch.no_grad():
                ref = self.reference.token_logps({k: v.to(device) for k, v in batch.items()}).sum(1).cpu()
            batch |= {"ref_chosen": ref[:len(chosen)], "ref_rejected": ref[len(chosen):]}
        metrics = {"kept_fraction": keep.mean(), "reward_margin": (r.max(1).values - r.min(1).values).mean()}
        if self.history is not None:
            metrics["opponents"] = torch.tensor(float(len(self.history.models)))
            if self.history.models:
                device = next(model.parameters()).device
                past = self.history.sequence_logps({k: v.to(device) for k, v in batch.items()}).cpu()
                batch |= {"history_chosen_logps": past[:len(chosen)], "history_rejected_logps": past[len(chosen):]}
        batch |= {"keep": keep, "pair_index": live, "metrics": metrics}
        return batch, float(keep.sum())

    def step(self, model: Any, batch: dict) -> tuple[Tensor, dict]:
        values, metrics = self.pair_step(model, {k: v for k, v in batch.items() if k not in ("keep", "pair_index", "metrics", "scale")})
        keep, live = batch["keep"], batch["pair_index"]
        weight = keep[live].to(values.device, values.dtype)
        per_prompt = torch.zeros(len(keep), dtype=values.dtype, device=values.device).index_add(
            0, live.to(values.device), values * weight)
        return per_prompt * batch["scale"], kept_means(metrics, weight) | batch["metrics"]


class BestOfN:
    """RAFT / rejection-sampling fine-tuning: "local" keeps each prompt's best sample, "top" the top
    `fraction` of the step's samples (every micro-batch and process: RAFT ranks the iteration's whole batch,
    so the kept set does not depend on how the step is split); the kept ones (only they) are trained with
    the SFT step. Like `PolicyGradient`, `score` takes a micro-batch and `finish` selects over the step."""

    needs_reference = False

    def __init__(self, *, tokenizer: Any, select: str = "local", fraction: float = 0.25):
        from pluralign.errors import ConfigError

        if select not in ("local", "top") or not 0 < fraction <= 1:
            raise ConfigError(f"rsft: select must be 'local' or 'top' and 0 < top_fraction <= 1 (got {select!r}, {fraction})")
        self.tokenizer, self.select, self.fraction = tokenizer, select, fraction

    def build(self, model: Any, rollout: Rollout, rewards: Tensor) -> tuple[dict, float]:
        """The training batch of a rollout held in one micro-batch: `score`, then `finish` on it alone."""
        batch, _ = self.score(model, rollout, rewards)
        return batch, self.finish([batch])[0]

    def score(self, model: Any, rollout: Rollout, rewards: Tensor) -> tuple[dict, float]:
        """A micro-batch's samples and rewards, kept for `finish`; its denominator is `finish`'s to say."""
        return {_PENDING: (rollout, rewards.float())}, 0.0

    def finish(self, batches: list[dict], gather: Callable[[Tensor], tuple[Tensor, int]] = lambda x: (x, 0)) -> list[float]:
        """Select over the step's rewards (`gather`: every process's, in rank order, and where this one's begin)
        and fill each micro-batch with its kept samples; returns each one's denominator (its kept samples)."""
        parts = [b.pop(_PENDING) for b in batches]
        rewards, start = gather(torch.cat([r for _, r in parts]))
        kept = self.selected(rewards, parts[0][0].group_size)
        denominators = []
        for batch, (rollout, r) in zip(batches, parts, strict=True):
            mine = kept[start:start + len(r)]
            start += len(r)
            rows = mine.nonzero().flatten().tolist()
            batch |= self._rows(rollout, rows, len(r) // rollout.group_size)
            # a (mean, count) pair, so that the logged mean is the step's over its kept samples
            kept_reward = (r[rows].mean() if rows else torch.tensor(0.0), torch.tensor(float(len(rows))))
            batch["metrics"] = batch.get("metrics", {}) | {"kept_reward": kept_reward}
            denominators.append(float(len(rows)))
        return denominators

    def selected(self, rewards: Tensor, g: int) -> Tensor:
        """[N] bool: each group's best sample (the first of equals), or the top k of all, ties to the earlier."""
        kept = torch.zeros(len(rewards), dtype=torch.bool)
        if self.select == "local":
            kept[torch.arange(len(rewards) // g) * g + rewards.view(-1, g).argmax(1)] = True
        else:
            k = max(1, round(self.fraction * len(rewards)))
            kept[torch.sort(rewards, descending=True, stable=True).indices[:k]] = True
        return kept

    def _rows(self, rollout: Rollout, rows: list[int], n_prompts: int) -> dict:
        """The kept samples' training rows; with none kept, the first sample at weight 0, so that the micro-batch
        still runs a forward and a backward (DDP's reduction)."""
        picked = rows or [0]
        batch = training_rows(self.tokenizer, [rollout.prompt_ids[i] for i in picked],
                              [rollout.completion_ids[i] for i in picked])
        return batch | {"row_prompt": torch.tensor(picked) // rollout.group_size, "n_prompts": n_prompts,
                        "row_weight": torch.ones(len(rows)) if rows else torch.zeros(1)}

    def step(self, model: Any, batch: dict) -> tuple[Tensor, dict]:
        from pluralign.train.recipes import sft

        values, metrics = sft.step(model, batch)
        weight = batch["row_weight"].to(values.dtype)
        # The kept samples' mean NLL as a (mean, count) pair: the loop's mean per micro-batch weighted by its
        # prompts was not the step's (micro-batches keep different numbers), and counted a weight-0 sample
        kept = weight.sum()
        nll = ((values.detach() * weight).sum() / kept.clamp(min=1), kept)
        return (per_prompt(values * weight, batch["row_prompt"], batch["n_prompts"], batch["scale"]),
                dict(metrics) | {"nll": nll} | batch["metrics"])
