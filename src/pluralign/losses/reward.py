"""Reward-model losses: Bradley–Terry on preference pairs and binary cross-entropy on binary feedback.

Inputs are the reward head's scalar outputs. Per-example losses [B]; metrics per example.
Spec: shared/specs/training.md §5.1, §5.4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pluralign.losses._shared import sigmoid_loss
from pluralign.losses.registry import register

Output = tuple[Tensor, dict[str, Tensor]]


@register("bt", kind="reward", extra_inputs=("margin",))
def bt(chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | None = None, *,
       center_coef: float = 0.0) -> Output:  # fmt: skip
    """Bradley–Terry reward-model loss (InstructGPT, Ouyang et al. 2022): −logσ(r_w − r_l − m) with an optional
    per-pair margin m (Llama 2, Touvron et al. 2023), plus center_coef·(r_w + r_l)² to keep rewards centred
    (Eisenstein et al. 2023). Matches TRL RewardTrainer.compute_loss (center_rewards_coefficient).
    """
    diff = chosen_rewards - rejected_rewards
    loss = sigmoid_loss(diff if margin is None else diff - margin)
    if center_coef:
        loss = loss + center_coef * (chosen_rewards + rejected_rewards) ** 2
    diff = diff.detach()
    return loss, {"accuracy": (diff > 0).to(diff.dtype), "margin": diff}


@register("bce", kind="reward")
def bce(logits: Tensor, labels: Tensor, *, pos_weight: float | None = None) -> Output:
    """Binary cross-entropy for a binary-feedback reward model P(positive | x, y) = σ(f) (e.g. RLUF's P[Love],
    Han et al. 2025): −[w₊·b·logσ(f) + (1 − b)·logσ(−f)]. pos_weight w₊ (e.g. n_neg/n_pos) offsets class
    imbalance, as in torch's BCEWithLogitsLoss.
    """
    targets = labels.to(logits.dtype)
    weight = (
        None if pos_weight is None else torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    )
    loss = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight, reduction="none")
    probs = torch.sigmoid(logits.detach())
    return loss, {"accuracy": ((probs > 0.5) == labels.bool()).to(logits.dtype), "probability": probs}
