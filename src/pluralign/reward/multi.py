"""Multi-objective reward model: a vector head, one output per objective.

Trained by regression on rated data (one rating per objective, missing ratings masked) or by per-objective
Bradley–Terry losses on pairwise data labelled with an objective. Scores are combined by user weights,
r_w = Σ_i w_i r_i, or by a preference direction (a unit vector, as in DPA: Wang et al. ACL 2024).

Task weighting follows MORE (Zeng et al., "On Diversified Preferences of LLM Alignment"; training spec
§5.2): each step, the gradient of every task's loss w.r.t. the final linear layer (on detached trunk
features) is taken, and the task weights λ are the min-norm point of their convex hull — MGDA solved by
Frank–Wolfe (Sener & Koltun 2018, `MinNormSolver.find_min_norm_element_FW`). The loss is
K_present · Σ_t λ_t · Σ_{i∈t} ℓ_i / n, i.e. MORE's `more_ranking_loss`. With one task λ = [1].

What λ means here differs from MORE's setting. MORE trains one scalar head on several data sets, so the tasks'
gradients at that head overlap and the min-norm point trades their conflicts off. This model has one output
row per objective: objective t's loss moves only row t, the gradients are orthogonal, and the min-norm point
is λ_t ∝ 1/‖g_t‖², the weights under which every objective's loss falls at the same rate along the combined
step (the objective with the smaller gradient gets more weight). Taking the gradients at the shared trunk
would not restore MORE's trade-off for pairs either: each pair belongs to one objective, so per-example
representation gradients are disjoint as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from pluralign.conditioning import vector_of
from pluralign.models.heads import RewardHead
from pluralign.reward.base import RewardModel, TextEncoder, register
from pluralign.seeding import seeded


@register
class MultiObjectiveRewardModel(RewardModel):
    """`score(..., user=None)` → [N, n_objectives]; `user` = weights (mapping by objective or sequence)
    or a direction → the combined reward [N, 1]."""

    model_type = "multi"

    def __init__(self, encoder: TextEncoder | None, objectives: Sequence[str] = ("reward",), feature_dim: int | None = None,
                 *, head_hidden: int = 0, seed: int = 0):
        super().__init__(encoder, objectives, feature_dim)
        self.head_hidden, self.seed = head_hidden, seed
        with seeded(seed):
            self.head = RewardHead(self.feature_dim, len(self.objectives), hidden=head_hidden)

    def extra_config(self) -> dict:
        return {"head_hidden": self.head_hidden, "seed": self.seed}

    def weights(self, user: Any) -> torch.Tensor:
        """Objective weights [m] from a mapping {objective: weight} (missing = 0), a sequence or text
        ('a=0.7,b=0.3'); any sign (a direction). A name, wrong length or NaN is a `ConfigError` naming
        `user` (a lone name reached torch as a TypeError, and NaN weights scored NaN)."""
        if isinstance(user, torch.Tensor):
            user = user.flatten().tolist()
        return torch.as_tensor(vector_of(user, self.objectives, "user"), dtype=torch.float)

    def rewards(self, features: torch.Tensor, prompt_features: torch.Tensor | None = None, user: Any = None) -> torch.Tensor:
        r = self.head(features)
        if user is None:
            return r
        return (r @ self.weights(user).to(r))[:, None]


def direction(angle_degrees: float) -> list[float]:
    """Unit preference direction (cos θ, sin θ) for two objectives (DPA's v = (cos θ, sin θ))."""
    t = math.radians(angle_degrees)
    return [math.cos(t), math.sin(t)]


# ---------------------------------------------------------------- min-norm (MGDA) task weights

def _min_norm_2(v11: float, v12: float, v22: float) -> tuple[float, float]:
    """argmin_γ∈[0,1] ‖γ a + (1 − γ) b‖² given a·a, a·b, b·b; returns (γ, the minimal squared norm)."""
    denom = v11 + v22 - 2 * v12
    gamma = 1.0 if denom <= 1e-12 else min(1.0, max(0.0, (v22 - v12) / denom))
    return gamma, gamma * gamma * v11 + 2 * gamma * (1 - gamma) * v12 + (1 - gamma) ** 2 * v22


def min_norm_element(grads: torch.Tensor, *, max_iter: int = 250, tol: float = 1e-7) -> torch.Tensor:
    """λ ∈ simplex minimising ‖Σ_t λ_t g_t‖ for gradients [K, P] (Frank–Wolfe, started from the best pair)."""
    g = grads.detach().double().flatten(1)
    k = g.shape[0]
    if k == 1:
        return torch.ones(1, dtype=torch.float32)
    m = g @ g.T
    lam = torch.zeros(k, dtype=torch.float64)
    best = math.inf
    for i in range(k):
        for j in range(i + 1, k):
            gamma, cost = _min_norm_2(float(m[i, i]), float(m[i, j]), float(m[j, j]))
            if cost < best:
                best, lam = cost, torch.zeros(k, dtype=torch.float64)
                lam[i], lam[j] = gamma, 1 - gamma
    for _ in range(max_iter):
        t = int(torch.argmin(m @ lam))
        gamma, _ = _min_norm_2(float(lam @ m @ lam), float(lam @ m[:, t]), float(m[t, t]))
        new = gamma * lam
        new[t] += 1 - gamma
        if float((new - lam).abs().sum()) < tol:
            lam = new
            break
        lam = new
    return lam.float()


def task_weights(head: RewardHead, features: torch.Tensor, task_loss_fn, n_tasks: int) -> torch.Tensor:
    """MORE's λ: per-task gradients of `task_loss_fn(rewards) -> [n_tasks]` w.r.t. the final linear weight,
    computed on detached trunk features (no gradient reaches the model), then the min-norm element. These
    gradients are λ's own: they are taken under the loop's no-grad evaluation too, so held-out losses are
    weighted as training weighs them."""
    z = head.features(features).detach()
    with torch.enable_grad():
        w = head.out.weight.detach().clone().requires_grad_(True)
        r = F.linear(z, w, head.out.bias.detach() if head.out.bias is not None else None)
        losses = task_loss_fn(r)
        present = [t for t in range(n_tasks) if torch.isfinite(losses[t])]
        grads = torch.stack([torch.autograd.grad(losses[t], w, retain_graph=True)[0].flatten() for t in present])
    lam = torch.zeros(n_tasks)
    lam[present] = min_norm_element(grads)
    return lam


def _task_means(per_example: torch.Tensor, tasks: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """Mean loss of each task [n_tasks] (NaN for tasks absent from the batch)."""
    out = []
    for t in range(n_tasks):
        sel = tasks == t
        out.append(per_example[sel].mean() if sel.any() else per_example.new_tensor(float("nan")))
    return torch.stack(out)


def _weighted(per_example: torch.Tensor, tasks: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return per_example * lam.to(per_example)[tasks] * len(torch.unique(tasks))


def multi_pair_step(model: MultiObjectiveRewardModel, batch: dict, *, weighting: str = "mgda"):
    """Pairwise batch with `tasks` [B] (objective index of each pair): per-pair BT loss on that objective's
    output; tasks weighted by MGDA λ ('mgda') or uniformly ('mean')."""
    feats, _ = model.batch_features(batch)
    tasks = batch["tasks"].long()
    b, n_tasks = tasks.shape[0], len(model.objectives)
    rows = torch.arange(b, device=feats.device)

    def per_pair(r: torch.Tensor) -> torch.Tensor:
        return -F.logsigmoid(r[:b][rows, tasks] - r[b:][rows, tasks])

    losses = per_pair(model.head(feats))
    present = torch.bincount(tasks, minlength=n_tasks) > 0
    if weighting == "mgda":
        lam = task_weights(model.head, feats, lambda r: _task_means(per_pair(r), tasks, n_tasks), n_tasks)
    else:
        lam = present.float() / present.float().sum()
    diff = (-losses.detach()).exp()  # σ(Δ) > ½ ⇔ Δ > 0
    metrics = {"accuracy": (diff > 0.5).float().mean()} | {f"lambda_{o}": lam[i] for i, o in enumerate(model.objectives)}
    return _weighted(losses, tasks, lam), metrics


def multi_regression_step(model: MultiObjectiveRewardModel, batch: dict, *, weighting: str = "mean"):
    """Rated batch: `targets` [B, m] and `target_mask` [B, m]; squared error per objective, tasks weighted
    by MGDA λ or uniformly. Per-example loss = Σ_t λ_t · mask·err² · B / n_t (its batch mean is Σ_t λ_t ℓ_t)."""
    feats, _ = model.batch_features(batch)
    y, mask = batch["targets"].float(), batch["target_mask"].float()
    m = y.shape[1]

    def task_losses(r: torch.Tensor) -> torch.Tensor:
        n_t = mask.sum(0)
        per = ((r - y) ** 2 * mask).sum(0) / n_t.clamp_min(1)
        return torch.where(n_t > 0, per, torch.full_like(per, float("nan")))

    r = model.head(feats)
    if weighting == "mgda":
        lam = task_weights(model.head, feats, task_losses, m)
    else:
        lam = (mask.sum(0) > 0).float() / (mask.sum(0) > 0).float().sum().clamp_min(1)
    n_t = mask.sum(0).clamp_min(1)
    k_present = float((mask.sum(0) > 0).sum())
    per_example = ((r - y) ** 2 * mask * lam.to(r) * y.shape[0] / n_t).sum(1) * k_present
    metrics = {f"mse_{o}": tl for o, tl in zip(model.objectives, task_losses(r.detach()).nan_to_num(0.0), strict=True)}
    return per_example, metrics
