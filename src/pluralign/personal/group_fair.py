"""Group-fair objectives: how per-example preference losses of several groups combine into one.

Each combiner takes the per-example losses ℓ_i [B] of a batch and the group index g_i [B] of each example
(−1: no group, left out of group terms) and returns per-example values whose mean is the objective, so
the training loop (which averages what a step returns) needs no change.

- `average`: mean_i ℓ_i — what plain training does; large groups dominate.
- `worst_group`: max_g L_g with L_g = mean_{i∈g} ℓ_i — the worst-off group's loss, i.e. maximise the worst
  group's implicit-reward fit (for DPO, ℓ = −log σ(β·margin)). `temperature` τ = 0 (the default) is this
  hard max; τ < 0 is refused. With τ > 0 the max is
  softened to τ·log mean_g exp(L_g/τ), which equals L when every group's loss is L and tends to the max as
  τ → 0 (Group DRO in its smooth form, Sagawa et al. 2020).
- `nash`: −(1/G) Σ_g log s_g with s_g = mean_{i∈g} exp(−ℓ_i) — maximise the Nash bargaining product
  Π_g s_g over groups (disagreement point 0), the welfare of negotiative alignment (Mushkani, Berard &
  Koseki 2025). For DPO, exp(−ℓ_i) = σ(β·margin_i) is the probability the policy's implicit reward
  ranks the group's chosen response first, so s_g is the group's satisfaction. A group's examples get
  gradient weight ∝ 1/s_g: the least satisfied group counts most, yet no group is ignored.

- `group_dro`: online group DRO (Sagawa et al. ICLR 2020, "Distributionally Robust Neural Networks",
  Algorithm 1): a weight q_g per group kept across steps, q_g ← q_g·exp(η·L_g) by each training step's
  batch and renormalised, and the objective Σ_g q_g L_g. The weights integrate every batch's evidence, so a small
  group seen a few times per batch is not judged by one noisy batch mean as the hard max does. With
  `adjustment` C > 0 the weights follow L_g + C/√n_g, n_g the group's training examples (the paper's
  generalization adjustment): a small group's training loss understates its loss on new data, since a
  policy memorises a few hundred pairs as easily as a thousand. Stateful: built once per run (`make`),
  checkpointed with the run (`state_dict`). As in the paper's code, a group with no example in a batch
  keeps its weight and counts with loss 0 there: the batch's objective is Σ_{g present} q_g L_g (so it is
  smaller when a group is absent), and the absent group's weight shrinks only relative to the others.

- `balanced`: Σ_g w_g L_g with w_g ∝ n_g^p, n_g the group's training examples (fixed, not learned from
  the loss): p = 1 weighs groups by size, as the average does; p = 0 gives every group one vote whatever
  its size (group-balanced reweighting, Idrissi et al. 2022, "Simple data balancing achieves competitive
  worst-group-accuracy"); p = ½ is square-root reweighting (Mahajan et al. 2018), in between. Loss-based
  weights (worst_group, nash, group_dro) follow whichever group the *loss* says is worse off; when a
  group's labels are cleaner (lower loss) yet it gains less from training, they move the wrong way, and
  only the groups' sizes are left as a signal that does not depend on the loss.

In `worst_group`, `nash` and `balanced`, groups with no example in a batch do not take part in that batch's
objective (`group_dro` differs, see above).

In training, "the batch" is the optimizer step's whole batch, every micro-batch of every process
(`over_step`, fed by `pluralign.personal.step_groups`), so grad_accum and processes do not change the
objective; in evaluation it is each evaluation batch.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.registry import Registry
from pluralign.train.parallel import all_processes_sum

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
    if temperature < 0:
        raise ConfigError(f"worst_group: group_objective_params.temperature must be >= 0 (0: the hard max), got {temperature}")
    means = group_means(losses, groups)
    if temperature == 0:
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


@register("balanced")
def balanced(losses: Tensor, groups: Tensor, *, power: float = 0.0, sizes: Sequence[int] | None = None) -> Tensor:
    """Σ_g w_g L_g over the groups present, w_g ∝ n_g^power (`sizes` n_g: each group's training examples,
    indexed by group; without them the batch's counts)."""
    if not math.isfinite(power):
        raise ConfigError(f"balanced power must be finite, got {power}")
    present = torch.unique(groups[groups >= 0])
    means = group_means(losses, groups)
    if sizes is None:
        n = (groups[None, :] == present[:, None]).sum(1).to(means.dtype)
    else:
        n = torch.tensor([float(sizes[int(g)]) for g in present], dtype=means.dtype, device=means.device)
    w = n.pow(power)
    return _spread((w / w.sum() * means).sum(), len(losses))


@register("group_dro")
class GroupDRO:
    """Online group DRO: exponentiated-gradient weights over the `n_groups` groups (see the module doc).
    `step_size` is η, `adjustment` C (needs `sizes`, the groups' training examples); the weights start
    uniform and move only in training batches."""

    def __init__(self, n_groups: int, *, step_size: float = 0.01, adjustment: float = 0.0,
                 sizes: Sequence[int] | None = None):
        if n_groups < 1:
            raise ConfigError("group_dro needs at least one group")
        for name, v in (("step_size", step_size), ("adjustment", adjustment)):
            if not math.isfinite(v) or v < 0:
                raise ConfigError(f"group_dro {name} must be finite and >= 0, got {v}")
        self.step_size = float(step_size)
        self.bonus = torch.zeros(n_groups, dtype=torch.float64)
        if adjustment > 0:
            if sizes is None or len(sizes) != n_groups or min(sizes) < 1:
                raise ConfigError(f"group_dro adjustment needs the size of each of the {n_groups} groups")
            self.bonus = adjustment / torch.tensor(list(sizes), dtype=torch.float64).sqrt()
        self.q = torch.full((n_groups,), 1.0 / n_groups, dtype=torch.float64)

    def __call__(self, losses: Tensor, groups: Tensor, *, update: bool = True) -> Tensor:
        onehot = (groups[None, :] == torch.arange(len(self.q), device=groups.device)[:, None]).to(losses.dtype)
        counts = onehot.sum(1)
        if not bool((counts > 0).any()):
            raise ConfigError("a group objective needs examples with a group; this batch has none")
        means = (onehot @ losses) / counts.clamp(min=1)  # absent groups: 0, as in the paper's algorithm
        if update:
            seen = all_processes_sum(torch.stack([onehot @ losses.detach(), counts]).double())
            mean_all = seen[0] / seen[1].clamp(min=1) + self.bonus.to(seen.device) * (seen[1] > 0)
            self.q = self.q * torch.exp(self.step_size * mean_all.cpu())
            self.q = self.q / self.q.sum()
        return _spread((self.q.to(means) * means).sum(), len(losses))

    def state_dict(self) -> dict[str, list[float]]:
        return {"q": self.q.tolist()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.q = torch.tensor(state["q"], dtype=torch.float64)


def over_step(combine: Combiner, losses: Tensor, groups: Tensor, step_losses: Tensor, step_groups: Tensor,
              start: int) -> Tensor:
    """One micro-batch's values of the objective over its whole optimizer step. `step_losses` / `step_groups`
    hold every example of the step (every micro-batch of every process, detached, from a no-grad pass before
    it), this micro-batch's from `start`; its own entries are replaced by `losses` (with gradient). The
    values' mean is the step's objective, and their gradient this micro-batch's share of its gradient, scaled
    by the step's size over the micro-batch's: the loop, which averages over micro-batches and processes,
    then applies the gradient of the objective of the whole step. A non-linear objective (a max, a log of
    group means) computed per micro-batch would change with how the step is split."""
    n = len(losses)
    if not torch.equal(step_groups[start:start + n].cpu(), groups.cpu()):
        raise RuntimeError("the step's group losses were gathered for other examples than this micro-batch's")
    full = torch.cat([step_losses[:start].to(losses), losses, step_losses[start + n:].to(losses)])
    value = combine(full, step_groups.to(groups.device), update=False).mean()
    scale = len(full) / n
    return _spread(value.detach() + scale * (value - value.detach()), n)


def make(name: str, n_groups: int, params: dict, sizes: Sequence[int] | None = None) -> tuple[Combiner, bool]:
    """(combine(losses, groups, update=…), stateful): a registered objective ready for one run (`sizes`:
    each group's training examples); stateful objectives (classes such as `GroupDRO`) are built here
    once, functions get their parameters bound."""
    part = get(name)
    if isinstance(part, type):
        try:
            obj = part(n_groups, **params, sizes=sizes)
        except TypeError as e:
            raise ConfigError(f"group_objective '{name}': bad group_objective_params {params} ({e})") from None
        return obj, True

    if "sizes" in params:
        raise ConfigError(f"group_objective '{name}': 'sizes' come from the training records, not the params")
    try:
        inspect.signature(part).bind(None, None, **params)
    except TypeError as e:
        raise ConfigError(f"group_objective '{name}': bad group_objective_params {params} ({e})") from None
    # A function reads its parameters only when first called, in the first training step: check them now,
    # before the run writes anything. Every function objective's parameters are real numbers.
    bad = {k: v for k, v in params.items() if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v)}
    if bad:
        raise ConfigError(f"group_objective '{name}': group_objective_params must be finite numbers, got {bad}")
    if "sizes" in inspect.signature(part).parameters and sizes is not None:
        params = params | {"sizes": list(sizes)}

    def combine(losses: Tensor, groups: Tensor, *, update: bool = True) -> Tensor:
        return part(losses, groups, **params)

    combine(torch.ones(n_groups), torch.arange(n_groups))  # one group per example: the objective's own checks
    return combine, False
