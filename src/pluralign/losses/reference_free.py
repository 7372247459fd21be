"""Pairwise losses without a reference model: SimPO, ORPO and the chosen-answer NLL (SFT / RPO term).

Inputs are sequence log-prob sums [B] and completion lengths [B]; these losses work on per-token averages
avg-logπ(y) = logπ(y)/|y|. Logged rewards are β·avg-logπ, as TRL's CPO/ORPO trainers log them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pluralign.losses._shared import check_range, per_token, reward_metrics, sigmoid_loss
from pluralign.losses.registry import register

Output = tuple[Tensor, dict[str, Tensor]]


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − eˣ) for x < 0, switching formulas at −log 2 to avoid cancellation (Mächler 2012)."""
    return torch.where(x < -math.log(2.0), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


@register("simpo", kind="pairwise")
def simpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, chosen_lengths: Tensor,
          rejected_lengths: Tensor, *, beta: float = 2.0, gamma_beta_ratio: float = 0.5,
          label_smoothing: float = 0.0) -> Output:  # fmt: skip
    """SimPO (Meng et al. 2024): reference-free, length-normalised, with target reward margin γ = β·gamma_beta_ratio:
    −logσ(β·(avg-logπ(y_w) − avg-logπ(y_l)) − γ), label-smoothed like cDPO.

    Defaults are the SimPO paper's (β = 2, γ/β = 0.5). Matches TRL CPOTrainer loss_type="simpo" with
    simpo_gamma = β·gamma_beta_ratio and cpo_alpha = 0.
    """
    check_range("label_smoothing", label_smoothing, 0.0, 0.5, loss="simpo")
    avg_w = per_token(policy_chosen_logps, chosen_lengths, what="simpo")
    avg_l = per_token(policy_rejected_logps, rejected_lengths, what="simpo")
    loss = sigmoid_loss(beta * (avg_w - avg_l - gamma_beta_ratio), label_smoothing)
    return loss, reward_metrics(beta * avg_w, beta * avg_l)


@register("orpo", kind="pairwise")
def orpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, chosen_lengths: Tensor,
         rejected_lengths: Tensor, *, beta: float = 0.1) -> Output:  # fmt: skip
    """ORPO (Hong et al. 2024): NLL of the chosen answer plus λ·(−logσ(log odds(y_w) − log odds(y_l))), with
    odds(y) = P/(1−P) of the per-token average probability P = exp(avg-logπ(y)); λ = beta.

    The odds-ratio term matches TRL ORPOTrainer.odds_ratio_loss. The NLL here is the chosen completion's
    mean token NLL per example; TRL averages tokens over the batch and includes prompt tokens.
    Computed in at least float32 (TRL does the same), since log1mexp near 0 loses precision in half precision.
    """
    dtype = torch.promote_types(policy_chosen_logps.dtype, torch.float32)
    avg_w = per_token(policy_chosen_logps.to(dtype), chosen_lengths, what="orpo")
    avg_l = per_token(policy_rejected_logps.to(dtype), rejected_lengths, what="orpo")
    log_odds = (avg_w - avg_l) - (log1mexp(avg_w) - log1mexp(avg_l))
    log_ratio = F.logsigmoid(log_odds)
    loss = -avg_w - beta * log_ratio
    metrics = reward_metrics(beta * avg_w, beta * avg_l)
    metrics |= {
        "nll": -avg_w.detach(),
        "log_odds_ratio": log_ratio.detach(),
        "log_odds_chosen": log_odds.detach(),
    }
    return loss, metrics


@register("nll", kind="pairwise")
def nll(policy_chosen_logps: Tensor, chosen_lengths: Tensor) -> Output:
    """Mean token negative log-likelihood of the chosen answer: SFT on chosen; added to DPO it makes RPO
    (Pang et al. 2024, "Iterative Reasoning Preference Optimization"), e.g. mixture "dpo:1,nll:1".
    Matches TRL DPO loss_type="sft" when chosen lengths are equal (TRL averages tokens over the whole batch).
    """
    loss = -per_token(policy_chosen_logps, chosen_lengths, what="nll")
    return loss, {"nll": loss.detach()}
