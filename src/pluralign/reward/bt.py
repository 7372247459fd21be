"""Bradley–Terry reward model: a scalar head on the last non-pad token of any causal LM or encoder.

P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)); loss −log σ(r_w − r_l − m) with an optional per-pair margin m
(Llama-2 style) and optional reward centering η·mean((r_w + r_l)²) (Eisenstein et al. 2023), as in TRL's
RewardTrainer (training spec §5.1). With `n_heads > 1` the head holds an ensemble of independently
initialised scalar heads on one backbone; `score` returns their mean and `pluralign.reward.ensemble`
their disagreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pluralign.models.heads import RewardHead
from pluralign.reward.base import RewardModel, TextEncoder, register
from pluralign.seeding import seeded


@register
class BTRewardModel(RewardModel):
    """Scalar (or head-ensemble) Bradley–Terry reward model."""

    model_type = "bt"

    def __init__(self, encoder: TextEncoder | None, objectives: Sequence[str] = ("reward",), feature_dim: int | None = None,
                 *, n_heads: int = 1, head_hidden: int = 0, seed: int = 0):
        super().__init__(encoder, objectives, feature_dim)
        self.n_heads, self.head_hidden, self.seed = n_heads, head_hidden, seed
        with seeded(seed):
            self.head = RewardHead(self.feature_dim, n_heads, hidden=head_hidden)

    def extra_config(self) -> dict:
        return {"n_heads": self.n_heads, "head_hidden": self.head_hidden, "seed": self.seed}

    def head_rewards(self, features: torch.Tensor) -> torch.Tensor:
        """Every head's reward [N, n_heads]."""
        return self.head(features)

    def rewards(self, features: torch.Tensor, prompt_features: torch.Tensor | None = None, user: Any = None) -> torch.Tensor:
        return self.head_rewards(features).mean(-1, keepdim=True)


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Accuracy 1[r_w > r_l] (strict: ties count as wrong) and mean margin r_w − r_l."""
    diff = (chosen - rejected).detach().float()
    return {"accuracy": (diff > 0).float().mean(), "margin": diff.mean()}


def bt_pair_step(model: BTRewardModel, batch: dict, *, use_margins: bool = False, center_coef: float = 0.0):
    """Training step for the project loop on a pairwise batch (rows 0..B-1 chosen, B..2B-1 rejected).

    Each head gets its own BT loss; the per-example loss is their mean."""
    from pluralign.losses import get

    bt = get("bt")
    feats, _ = model.batch_features(batch)
    r = model.head_rewards(feats)
    b = r.shape[0] // 2
    margin = batch.get("margin") if use_margins else None
    losses = []
    for h in range(r.shape[1]):
        loss, _ = bt(r[:b, h], r[b:, h], margin=margin, center_coef=center_coef)
        losses.append(loss)
    mean_r = r.mean(-1)
    return torch.stack(losses).mean(0), pair_metrics(mean_r[:b], mean_r[b:])
