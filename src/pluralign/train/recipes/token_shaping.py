"""Pairwise inputs shaped per token before the loss: WPO pair weights and LD-DPO log-prob mixing.

- WPO (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization"): each pair's loss is
  multiplied by w(y_w)·w(y_l) (`pluralign.losses.wpo_weights`), the current policy's length-normalised,
  self-agreement-aligned probability of both responses, without gradient. It is computed in training steps
  (from one extra no-grad forward with full logits), told by the policy's training mode: reference passes
  and evaluation steps, which run in eval mode, are unweighted; a group objective's first pass over a
  split step (`pluralign.personal.step_groups`), which runs without gradient, is weighted as training is.
- LD-DPO (Liu et al. 2024, "Length Desensitization in Direct Preference Optimization"): the policy's and the
  reference's sequence log-probs count a longer response's tokens past the shorter one's length with weight
  ``ld_alpha`` (`pluralign.losses.ld_mixed_logps`); the loss is then the configured pairwise loss (DPO).

Both read per-token values of padded rows, so the recipe trains on padded batches when either is on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from pluralign.errors import ConfigError
from pluralign.losses import ld_mixed_logps, log_sum_sq_probs, wpo_weights
from pluralign.models.logprobs import predicted_mask, token_logps


def with_alias_options(config: Any) -> Any:
    """A loss alias's recipe options (e.g. ``wpo=True`` for "wpo") where the preference config leaves them
    at their default; WPO and LD-DPO read per-token values of padded rows, so they turn packing off."""
    from pluralign import losses
    from pluralign.train.parallel import process_state

    alias = losses.aliases().get(config.loss)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    implied = {k: v for k, v in (alias.recipe if alias else {}).items() if getattr(config, k) == defaults[k]}
    config = dataclasses.replace(config, **implied)
    if (config.wpo or config.ld_alpha is not None) and config.packing:
        process_state().print("wpo / ld_alpha read per-token values of padded rows: packing turned off")
        config = dataclasses.replace(config, packing=False)
    return config


def check_shaping(config: Any, loss: str, kind: str) -> None:
    """A ConfigError for WPO / LD-DPO settings that cannot shape loss `loss` of `kind`, found before any work."""
    if (config.wpo or config.ld_alpha is not None) and kind != "pairwise":
        raise ConfigError(f"wpo and ld_alpha shape pairwise losses; loss '{loss}' is {kind}")
    if config.ld_alpha is not None and not 0 <= config.ld_alpha <= 1:  # NaN fails too
        # LD-DPO's α is in [0, 1] (1: the plain sum); outside it the longer response's excess tokens weigh more than
        # its shared ones, or count against it, and a NaN failed only at step 1 as a "non-finite loss"
        raise ConfigError(f"ld_alpha must be in [0, 1] (1: plain sums), got {config.ld_alpha}", field="ld_alpha")


def shaped(kind: Any, *, wpo: bool, ld_alpha: float | None) -> Any:
    """`kind` (the recipe's pairwise `Kind`) with WPO weights and/or LD-DPO mixing; unchanged when both are off."""
    if not wpo and ld_alpha is None:
        return kind
    base_logps, base_inputs = kind.logps, kind.inputs

    def logps(model, batch, info):
        out = base_logps(model, batch, info) if ld_alpha is None else ld_logps(model, batch, ld_alpha)
        if wpo and model.training:  # training steps, also a group objective's first pass (without gradient)
            out["wpo_weights"] = pair_weights(model, batch)
        return out

    def inputs(p, r, batch):
        return base_inputs(p, r, batch) | ({"weights": p["wpo_weights"]} if "wpo_weights" in p else {})

    return dataclasses.replace(kind, logps=logps, inputs=inputs)


def ld_logps(model: Any, batch: dict, ld_alpha: float) -> dict[str, torch.Tensor]:
    """LD-DPO sequence log-probs of a padded pairwise batch (chosen rows first), with completion lengths."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    per_token = token_logps(model, ids, mask, batch["completion_mask"])
    scored = predicted_mask(ids, mask, batch["completion_mask"])
    mixed, lengths = ld_mixed_logps(per_token, scored, ld_alpha), scored.long().sum(-1)
    b = mixed.shape[0] // 2
    return {"chosen": mixed[:b], "rejected": mixed[b:], "chosen_lengths": lengths[:b], "rejected_lengths": lengths[b:]}


@torch.no_grad()
def pair_weights(model: Any, batch: dict) -> torch.Tensor:
    """WPO weights [B] of a padded pairwise batch under the current policy."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    scored = predicted_mask(ids, mask, batch["completion_mask"])[:, 1:]
    return wpo_weights(logp * scored, log_sum_sq_probs(logits) * scored, scored)
