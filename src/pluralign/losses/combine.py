"""Combiners: how per-objective losses become the one loss the training loop back-propagates.

A multi-objective step evaluates a registered pairwise loss once per objective, giving ``losses`` [B, K]
with a ``mask`` [B, K] of the (example, objective) cells that carry a preference (see
`pluralign.data.collate`: ``signs``). A combiner turns them into per-example losses [B] whose batch mean
is the surrogate to minimise, so the one loop (`pluralign.train.loop`) runs every method unchanged:

- ``weighted``: Σ_k w_k L_k with L_k the mean loss over objective k's examples, the weights renormalised
  over the objectives present in the batch (the optimizer step's, across micro-batches and processes, when
  the context has its counts): linear scalarisation, and with uniform weights MAH-DPO's
  uniform objective average (Zhou et al. 2025, multi-action-head DPO). Weights may be given per example
  ([B, K]: pairs stating their own ``meta.weights``, a weight-conditioned model's training data): then
  each example's loss is scalarised by its own weights.
- ``raco``: RACO's conflict-averse update (Chen et al., ICML 2026): the per-objective gradients g_k are
  taken with autograd (one backward each on the shared forward), and the returned surrogate has gradient
  Σ a_k g_k with a = `raco_coefficients(H, w)`, the CAGrad-Clip direction, without a further backward
  through the model: K backward passes per micro-batch in all (linear scalarisation: 1). With gradient
  accumulation each micro-batch gets its own coefficients. ``gram=logps`` takes the Gram matrix at the
  per-pair log-probs instead (MGDA-UB's bound, Sener & Koltun 2018): one backward, a linear step's cost.
  As in RACO's reference code, each objective's loss is its sum over the batch's pairs divided by the
  batch size (``normalize=batch``): an objective on which many pairs tie has a shorter gradient, which the
  solver sees. ``weighted`` divides by the objective's own pairs unless given ``normalize=batch`` (the
  RACO paper's linear baseline).
- ``pama``: PAMA's closed-form min-norm combination (He & Maghsudi, ECML-PKDD 2025, Theorem 1) for
  preference pairs: every objective k moves example b along the same direction ∇logπ(y_w|x), with
  "advantage" A_bk = −∂ℓ_bk/∂logπ_θ(y_w|x) (for DPO β·s_bk·σ(−β·s_bk·h)); the weighted advantages
  K·w_k·A_bk are combined with the convex weights of `pama_weights`, so conflicting objectives cancel
  and agreeing ones move by the least of them; objectives with weight 0 are left out. [RECON: PAMA is
  stated for PPO advantages; this is its per-sample form for pairwise losses, with user weights scaling
  the advantages.]

Register more (e.g. group-fair: weights from the per-group losses) with ``@register("name")``; a
combiner is ``fn(losses, mask, weights, context, **params) -> (per-example [B], metrics)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.losses.multiobjective import pama_weights, raco_coefficients
from pluralign.registry import Registry


@dataclass
class Context:
    """What gradient-based combiners may need: the trainable parameters and the policy's chosen log-probs
    (the anchor every objective's loss depends on). ``counts`` [K] and ``total``: each objective's examples
    and all examples of the whole optimizer step (every micro-batch, every process), when known, so that
    the weighted combiner averages over the step, not over one micro-batch (`pluralign.train.recipes.
    multiobjective.StepCounts`)."""

    params: Sequence[torch.nn.Parameter] = field(default_factory=list)
    anchor: Tensor | None = None
    counts: Tensor | None = None
    total: int | None = None


Combiner = Callable[..., tuple[Tensor, dict[str, Tensor]]]
_COMBINERS = Registry("combiner")
register = _COMBINERS.register
names = _COMBINERS.names
get = _COMBINERS.get


def objective_means(losses: Tensor, mask: Tensor, normalize: str = "objective") -> tuple[Tensor, Tensor]:
    """(L_k [K], present [K] bool). L_k is the mean loss over the examples of objective k (0 where none),
    or with ``normalize="batch"`` the sum over them divided by the batch size: RACO's per-objective loss
    (Chen et al. 2026), in which a pair tied on k counts in the batch but moves nothing (the paper's
    constant log 2 for it is left out of the value; the gradient is the same)."""
    m = mask.to(losses.dtype)
    counts = m.sum(0)
    denominator = counts.clamp(min=1) if normalize == "objective" else torch.full_like(counts, losses.shape[0])
    return (losses * m).sum(0) / denominator, counts > 0


def spread(coefficients: Tensor, losses: Tensor, mask: Tensor, counts: Tensor | None = None,
           total: int | None = None, normalize: str = "objective") -> Tensor:
    """Per-example losses [B] whose batch mean is Σ_k a_k L_k (a detached, L_k as `objective_means`); with
    coefficients [B, K], one row per example, the batch mean is Σ_k (mean over objective k's examples of
    a_bk ℓ_bk). With the step's ``counts`` [K] and ``total`` (see `Context`), the means are over the whole
    step's examples."""
    m = mask.to(losses.dtype)
    if counts is None:
        counts, total = m.sum(0), losses.shape[0]
    if normalize == "batch":
        counts = torch.full_like(counts.to(losses), float(total))
    return (losses * m * (coefficients.detach() / counts.to(losses).clamp(min=1))).sum(1) * total


def _present_weights(weights: Tensor, present: Tensor) -> Tensor:
    # A batch holding none of the weighted objectives trains nothing: an objective the user gives weight 0
    # (a soup expert's others) never moves the model.
    # Weights [K], or [B, K] (one row per example: pairs that state their own weights), renormalised per row.
    w = weights * present
    total = w.sum(-1, keepdim=True)
    return torch.where(total > 0, w / total.clamp(min=1e-30), torch.zeros_like(w))


@register("weighted")
def weighted(losses: Tensor, mask: Tensor, weights: Tensor, context: Context, *,
             normalize: str = "objective") -> tuple[Tensor, dict]:  # fmt: skip
    present = context.counts.to(losses.device) > 0 if context.counts is not None else objective_means(losses, mask)[1]
    return spread(_present_weights(weights, present), losses, mask, context.counts, context.total, normalize), {}


@register("raco")
def raco(losses: Tensor, mask: Tensor, weights: Tensor, context: Context, *, c: float = 0.4,
         clip: bool = True, gram: str = "params", normalize: str = "batch") -> tuple[Tensor, dict]:  # fmt: skip
    means, present = objective_means(losses, mask, normalize)
    w = _present_weights(weights, present)
    idx = present.nonzero().flatten().tolist()
    params = [p for p in context.params if p.requires_grad]
    if len(idx) < 2 or not params or not torch.is_grad_enabled():  # evaluation: the weighted loss
        return spread(w, losses, mask, normalize=normalize), {}
    if gram == "logps":
        return _raco_on_logps(losses, mask, means, w, idx, context, c, clip, normalize)
    # One backward per objective on the shared forward; the graph is kept only until the last of them.
    per_param, grads = [], []
    for j, k in enumerate(idx):
        g = torch.autograd.grad(means[k], params, retain_graph=j < len(idx) - 1, allow_unused=True)
        g = [x if x is not None else torch.zeros_like(p) for x, p in zip(g, params, strict=True)]
        per_param.append(g)
        grads.append(torch.cat([x.flatten().double() for x in g]))
    a, coefficients, logs = _raco_direction(torch.stack(grads), w, idx, c, clip)
    # The update Σ a_k g_k is already known: the surrogate ⟨θ, Σ a_k g_k⟩ (detached direction) has exactly
    # that gradient and a backward through it touches only the parameters, not the model again (K
    # backward passes per micro-batch, not K + 1). Its value is that of Σ a_k L_k, for the logs.
    direction = sum((p * sum(float(ak) * gk[i] for ak, gk in zip(a, per_param, strict=True)).detach()).sum()
                    for i, p in enumerate(params))
    values = spread(coefficients, losses.detach(), mask, normalize=normalize) + (direction - direction.detach())
    return values, logs


def _raco_direction(G: Tensor, w: Tensor, idx: list[int], c: float, clip: bool) -> tuple[np.ndarray, Tensor, dict]:
    """CAGrad-Clip coefficients from the present objectives' gradients G [K', D] (rows in `idx` order): the
    coefficients a, the same spread over all objectives, and metrics for the logs: the first two gradients'
    cosine, each present objective's coefficient a_k and gradient norm ‖g_k‖ (raco/a<k>, raco/gnorm<k>), and
    the update's length over the linear one's, ‖Σ a_k g_k‖ / ‖Σ w_k g_k‖ (raco/update_ratio)."""
    G = G.double()
    H = (G @ G.T).cpu().numpy()
    wk = w[idx].detach().double().cpu().numpy()
    a = raco_coefficients(H, wk, c=c, clip=clip)
    coefficients = torch.zeros_like(w)
    coefficients[idx] = torch.as_tensor(a, dtype=w.dtype, device=w.device)
    logs = {"raco/grad_cosine": float(H[0, 1] / max((H[0, 0] * H[1, 1]) ** 0.5, 1e-30)),
            "raco/update_ratio": float(np.sqrt(max(a @ H @ a, 0.0) / max(wk @ H @ wk, 1e-300)))}
    for j, k in enumerate(idx):
        logs[f"raco/a{k}"], logs[f"raco/gnorm{k}"] = float(a[j]), float(np.sqrt(max(H[j, j], 0.0)))
    return a, coefficients, {name: torch.tensor(v) for name, v in logs.items()}


def _raco_on_logps(losses: Tensor, mask: Tensor, means: Tensor, w: Tensor, idx: list[int], context: Context,
                   c: float, clip: bool, normalize: str) -> tuple[Tensor, dict]:  # fmt: skip
    """RACO with the Gram matrix of the per-objective gradients taken at the policy's per-pair log-probs
    (the representation every objective shares) instead of at the parameters: MGDA-UB's bound (Sener &
    Koltun, NeurIPS 2018, §3.3) applied to CAGrad-Clip. These gradients are the losses' own derivatives
    (no backward through the model), so a step costs one backward, as linear scalarisation's does."""
    if context.anchor is None or not context.anchor.requires_grad:
        raise ConfigError("combiner 'raco' with gram=logps needs the policy's chosen log-probs (a pairwise loss)")
    grads = []
    for k in idx:
        (g,) = torch.autograd.grad(means[k], context.anchor, retain_graph=True, allow_unused=True)
        grads.append(torch.zeros_like(context.anchor) if g is None else g.detach())
    _, coefficients, logs = _raco_direction(torch.stack(grads), w, idx, c, clip)
    return spread(coefficients, losses, mask, normalize=normalize), logs


@register("pama")
def pama(losses: Tensor, mask: Tensor, weights: Tensor, context: Context) -> tuple[Tensor, dict]:
    if context.anchor is None:
        raise ConfigError("combiner 'pama' needs the policy's chosen log-probs (a pairwise loss)")
    if not torch.is_grad_enabled() or not context.anchor.requires_grad:  # evaluation: the weighted loss
        return weighted(losses, mask, weights, context)
    k_count = losses.shape[1]
    cols = []
    for k in range(k_count):
        (g,) = torch.autograd.grad(losses[:, k].sum(), context.anchor, retain_graph=True, allow_unused=True)
        cols.append(torch.zeros_like(context.anchor) if g is None else -g)
    advantages = torch.stack(cols, 1).detach() * weights * k_count
    mask = mask & (weights > 0)  # an objective the user gives no weight has no say (its 0 would veto all)
    c = pama_weights(advantages, mask)
    per_example = (c * weights * k_count * losses * mask).sum(1)
    conflict = ((advantages.masked_fill(~mask.bool(), 0) > 0).any(1) & (advantages.masked_fill(~mask.bool(), 0) < 0).any(1))
    return per_example, {"pama/conflict_share": conflict.float().mean()}


# Hyper-parameters that take one of a few words, whichever combiner has them.
_CHOICES = {"gram": ("params", "logps"), "normalize": ("objective", "batch")}


def check(name: str, params: dict[str, Any] | None = None) -> None:
    """A `ConfigError` for an unknown combiner, a hyper-parameter it does not have, or a value it does not
    take: the recipes call this before loading anything, so a typo costs no model load or reference pass."""
    _COMBINERS.check_params(name, params)
    for key, allowed in _CHOICES.items():
        if key in (params or {}) and params[key] not in allowed:
            raise ConfigError(f"combiner {name!r}: {key} must be one of {list(allowed)}, got {params[key]!r}")


def combine(name: str, losses: Tensor, mask: Tensor, weights: Tensor, context: Context,
            params: dict[str, Any] | None = None) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
    """Run combiner `name` (`check`ed: a bad name or hyper-parameter is a `ConfigError`)."""
    check(name, params)
    return get(name)(losses, mask.bool(), weights.to(losses.dtype), context, **(params or {}))
