"""Unpaired (binary-feedback) losses: each example is one response labelled desirable (True) or not.

Inputs are sequence log-prob sums [B] and labels [B]. Per-example losses keep the input order, so the batch
mean equals TRL's mean over concat(desirable losses, undesirable losses). Metrics: per-example implicit
rewards β·ρ ("rewards"), each label's reward mean as (mean, count) (present when the batch has that label),
and the loss's baseline, 0-d ("kl_baseline" for KTO, z0: TRL logs it as "kl", which a report would take for
the run's KL to its reference; "reward_shift" for BCO). Spec: shared/specs/training.md §2.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pluralign.losses._shared import sigmoid_loss
from pluralign.losses.registry import register

Output = tuple[Tensor, dict[str, Tensor]]


def _label_metrics(rewards: Tensor, labels: Tensor) -> dict[str, Tensor | tuple[Tensor, int]]:
    """Per-example rewards, and each label's mean reward with its count of examples (`parallel.Weighted`):
    weighted by the batch's size instead, micro-batches and evaluation batches of uneven label mixes averaged
    into a number that was not that label's mean. No margin: a difference of per-batch means does not combine
    into the difference of the means (it is rewards/chosen − rewards/rejected of the logged row)."""
    rewards = rewards.detach()
    metrics: dict[str, Tensor | tuple[Tensor, int]] = {"rewards": rewards}
    for name, mask in (("rewards/chosen", labels), ("rewards/rejected", ~labels)):
        if mask.any():
            metrics[name] = (rewards[mask].mean(), int(mask.sum()))
    return metrics


def kto_kl_baseline(kl_policy_logps: Tensor, kl_ref_logps: Tensor) -> Tensor:
    """KTO's reference point z0 = max(0, mean(logπ_θ(y'|x) − logπ_ref(y'|x))) over mismatched pairs (x, y'),
    detached. Under data parallelism pass the gathered [world·B] tensors so every rank uses the same z0.
    """
    return (kl_policy_logps - kl_ref_logps).mean().detach().clamp(min=0)


@register("kto", kind="unpaired")
def kto(policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, kl_policy_logps: Tensor, kl_ref_logps: Tensor,
        *, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Output:  # fmt: skip
    """KTO (Ethayarajh et al. 2024, Eq. 7): prospect-theoretic value around the reference point z0
    (`kto_kl_baseline` of the mismatched-pair "KL" completions): desirable λ_D·(1 − σ(β(ρ − z0))),
    undesirable λ_U·(1 − σ(β(z0 − ρ))). Matches TRL KTOTrainer loss_type="kto".

    Keep λ_D·n_D / (λ_U·n_U) in [1, 4/3] (TRL's advice for imbalanced data).
    """
    labels = labels.bool()
    z0 = kto_kl_baseline(kl_policy_logps, kl_ref_logps)
    rho = policy_logps - ref_logps
    value = torch.where(labels, rho - z0, z0 - rho)
    loss = torch.sigmoid(-beta * value) * torch.where(labels, desirable_weight, undesirable_weight)
    return loss, _label_metrics(beta * rho, labels) | {"kl_baseline": z0}


@register("apo_zero_unpaired", kind="unpaired")
def apo_zero_unpaired(policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, *, beta: float = 0.1,
                      desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Output:  # fmt: skip
    """APO-zero (D'Oosterlinck et al. 2024), unpaired: desirable 1 − σ(β·ρ), undesirable σ(β·ρ) — KTO with
    z0 = 0. Matches TRL KTOTrainer loss_type="apo_zero_unpaired".
    """
    labels = labels.bool()
    rho = policy_logps - ref_logps
    loss = torch.sigmoid(torch.where(labels, -beta * rho, beta * rho))
    loss = loss * torch.where(labels, desirable_weight, undesirable_weight)
    return loss, _label_metrics(beta * rho, labels)


@register("bco", kind="unpaired")
def bco(policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, reward_shift: float | Tensor = 0.0, *,
        beta: float = 0.1) -> Output:  # fmt: skip
    """BCO (Jung et al. 2024, "Binary Classifier Optimization"): a logistic classifier on the implicit reward
    r = β·ρ shifted by δ (the running mean of rewards, `RunningMean`): desirable −logσ(r − δ), undesirable
    −logσ(−(r − δ)). Underlying-distribution matching multiplies undesirable examples by density-ratio weights
    (`udm_weights`, passed as `weights=`; the preference recipe's `udm=true` fits the prompt classifier, see
    `pluralign.train.udm`). Follows TRL's former BCOTrainer.bco_loss (not in TRL 1.16).
    """
    labels = labels.bool()
    rewards = beta * (policy_logps - ref_logps)
    shifted = rewards - reward_shift
    loss = sigmoid_loss(torch.where(labels, shifted, -shifted))
    shift = torch.as_tensor(reward_shift, dtype=rewards.dtype, device=rewards.device)
    return loss, _label_metrics(rewards, labels) | {"reward_shift": shift.detach()}


class RunningMean:
    """Count-weighted running mean of every value seen (BCO's reward shift δ, TRL's RunningMoments mean).

    Per training step: `update` with the detached rewards of the batch (all ranks' rewards under data
    parallelism), then pass `mean` as `reward_shift`. Not updated during evaluation. `state_dict` /
    `load_state_dict` make it part of a checkpoint.
    """

    def __init__(self) -> None:
        self.mean, self.count = 0.0, 0

    def update(self, values: Tensor) -> float:
        values = values.detach().double().flatten()
        n = values.numel()
        if n:
            self.mean += (values.mean().item() - self.mean) * n / (self.count + n)
            self.count += n
        return self.mean

    def state_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.mean, self.count = float(state["mean"]), int(state["count"])


def udm_weights(
    prob_desirable: Tensor, labels: Tensor, *, min_ratio: float = 0.5, max_ratio: float = 10.0
) -> Tensor:
    """BCO underlying-distribution-matching weights (Jung et al. 2024, §3.3): for an undesirable example the
    density ratio p/(1 − p) of a prompt classifier's P(desirable | x), clamped to [min_ratio, max_ratio];
    desirable examples weigh 1. The classifier (TRL: balanced logistic regression on prompt embeddings) is the
    recipe's; this is the ratio it feeds.
    """
    ratio = (prob_desirable / (1 - prob_desirable + 1e-8)).clamp(min=min_ratio, max=max_ratio)
    return torch.where(labels.bool(), torch.ones_like(ratio), ratio)
