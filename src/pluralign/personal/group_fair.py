"""Group-fair objectives: how per-example preference losses of several groups combine into one.

Each combiner takes the per-example losses ℓ_i [B] of a batch and the group index g_i [B] of each example
(−1: no group, left out of group terms) and returns per-example values whose mean is the objective, so
the training loop (which averages what a step returns) needs no change.

- `average`: mean_i ℓ_i — what plain training does; large groups dominate.
- `worst_group`: max_g L_g with L_g = mean_{i∈g} ℓ_i — the worst-off group's loss, i.e. maximise the worst
  group's implicit-reward fit (for DPO, ℓ = −log σ(β·margin)). With `temperature` τ > 0 the max is
  softened to τ·log mean_g exp(L_g/τ), which equals L when every group's loss is L and tends to the max as
  τ → 0 (Group DRO in its smooth form, Sagawa et al. 2020).
- `nash`: −(1/G) Σ_g log s_g with s_g = mean_{i∈g} exp(−ℓ_i) — maximise the Nash bargaining product
  Π_g s_g over groups (disagreement point 0), the welfare of negotiative alignment (Mushkani, Berard &
  Koseki 2025). For DPO, exp(−ℓ_i) = σ(β·margin_i) is the probability the policy's implicit reward
  ranks the group's chosen response first, so s_g is the group's satisfaction. A group's examples get
  gradient weight ∝ 1/s_g: the least satisfied group counts most, yet no group is ignored.

Groups with no example in a batch do not take part in that batch's objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.registry import Registry

Combiner = Callable[..., Tensor]
_OBJECTIVES = Registry("group objective")
register = _OBJECTIVES.register
names = _OBJECTIVES.names
get = _OBJECTIVES.get


def group_means(values: Tensor, groups: Tensor) -> Tensor:
    """Mean of `values` within each group present in `groups` (−1 excluded), in increasing group index."""
    present = torch.unique(groups[groups >= 0])
    if len(present) == 0:
        raise ConfigError("a group objective needs examples with a group; this batch has none")
    onehot = (groups[None, :] == present[:, None]).to(values.dtype)  # [G, B]
    return (onehot @ values) / onehot.sum(1)


def _spread(objective: Tensor, batch: int) -> Tensor:
    """Per-example values whose mean is `objective` (and whose gradient is the objective's)."""
    return objective.expand(batch)


@register("average")
def average(losses: Tensor, groups: Tensor) -> Tensor:
    """The plain mean over examples (the default objective)."""
    return losses


@register("worst_group")
def worst_group(losses: Tensor, groups: Tensor, *, temperature: float = 0.0) -> Tensor:
    """The worst group's mean loss (τ = 0) or its soft maximum τ·log mean_g exp(L_g/τ)."""
    means = group_means(losses, groups)
    if temperature <= 0:
        return _spread(means.max(), len(losses))
    soft = temperature * (torch.logsumexp(means / temperature, 0) - math.log(len(means)))
    return _spread(soft, len(losses))


@register("nash")
def nash(losses: Tensor, groups: Tensor) -> Tensor:
    """−mean_g log mean_{i∈g} exp(−ℓ_i): the negative log Nash product of the groups' satisfactions."""
    present = torch.unique(groups[groups >= 0])
    if len(present) == 0:
        raise ConfigError("a group objective needs examples with a group; this batch has none")
    terms = []
    for g in present:
        member = losses[groups == g]
        # log mean exp(−ℓ) computed stably
        terms.append(torch.logsumexp(-member, 0) - math.log(len(member)))
    return _spread(-torch.stack(terms).mean(), len(losses))
