"""Small numeric pieces shared by the loss modules (one place for each formula)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from pluralign.errors import ConfigError


def sigmoid_loss(logits: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """−(1−ε)·logσ(z) − ε·logσ(−z): Bradley–Terry negative log-likelihood with label noise ε.

    ε = 0 gives −logσ(z); the ε-term is what cDPO / SimPO / AOT call label smoothing.
    """
    loss = -F.logsigmoid(logits)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-logits)
    return loss


def per_token(logps: Tensor, lengths: Tensor | None, *, what: str) -> Tensor:
    """Sequence log-prob divided by its completion length (clamped to ≥ 1, so empty completions stay finite)."""
    if lengths is None:
        raise ConfigError(f"{what} needs chosen_lengths and rejected_lengths (completion token counts)")
    return logps / lengths.to(logps.dtype).clamp(min=1)


def reward_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """Per-example [B] detached implicit-reward metrics, named as TRL logs them."""
    chosen, rejected = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": (chosen > rejected).to(chosen.dtype),
    }


def check_range(name: str, value: float, low: float, high: float, *, loss: str) -> None:
    """Reject a hyper-parameter outside the half-open interval [low, high) with a message naming the loss."""
    if not low <= value < high:
        raise ConfigError(f"loss '{loss}': {name} must lie in [{low}, {high}), got {value}")
