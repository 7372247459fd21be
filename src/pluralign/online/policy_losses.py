"""Policy-gradient losses, their aggregation over tokens, KL estimators and the value loss.

A registered policy loss has the signature

    fn(logps, old_logps, advantages, mask, **params) -> (per_token_loss [B, T], metrics)

with `logps` the trainable per-token log-probs, `old_logps` those of the policy that sampled the batch
(no grad), `advantages` [B, T]; `aggregate` turns the per-token values into one number. A metric that is a
mean over the batch's tokens or sequences is given as (mean, count), so that the loop's mean is the step's
whatever its split into micro-batches (`pluralign.train.parallel.Weighted`). Any KL-in-loss
term is added per token before aggregation. Formulas and vectors: specs/online.md §1, §3, §5.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.registry import Registry

LOSSES = Registry("policy loss")
register, get, names = LOSSES.register, LOSSES.get, LOSSES.names
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm")
LOG_RATIO_CLAMP = 20.0  # as verl and OpenRLHF: exp of a larger log-ratio overflows in low precision


def _clip_objective(ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float,
                    dual_clip: float | None, delta: float | None) -> tuple[Tensor, Tensor]:
    """PPO's pessimistic objective −min(u·A, clip(u)·A) (Schulman et al. 2017) with decoupled bounds
    (DAPO's clip-higher), TRL's two-sided `delta` cap and dual clip for A < 0 (Ye et al. 2019).
    Returns (loss, clipped indicator)."""
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = torch.maximum(-unclipped * advantages, -clipped * advantages)
    is_clipped = (-clipped * advantages > -unclipped * advantages).float()
    if dual_clip is not None:
        if dual_clip <= 1:
            raise ConfigError(f"dual_clip must be > 1, got {dual_clip}")
        loss = torch.where(advantages < 0, torch.minimum(loss, -dual_clip * advantages), loss)
    return loss, is_clipped


@register("clip")
def clipped_surrogate(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, eps_low: float = 0.2,
                      eps_high: float = 0.2, dual_clip: float | None = None, delta: float | None = None):
    """Token-level importance ratio u = exp(ℓ − ℓ_old) in the clipped surrogate (PPO / GRPO / DAPO)."""
    ratio = torch.exp(torch.clamp(logps - old_logps, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    loss, clipped = _clip_objective(ratio, advantages, eps_low, eps_high, dual_clip, delta)
    m = mask.float()
    # (fraction, tokens): the loop's mean over the step's tokens, however the step is split
    return loss * m, {"clip_fraction": ((clipped * m).sum() / m.sum().clamp(min=1), m.sum())}


def sequence_log_ratio(logps: Tensor, old_logps: Tensor, mask: Tensor, normalize: bool = True) -> Tensor:
    """Σ_t m·(ℓ − ℓ_old), divided by |y| when `normalize` (GSPO's geometric mean of token ratios)."""
    m = mask.float()
    total = ((logps - old_logps) * m).sum(1)
    return total / m.sum(1).clamp(min=1) if normalize else total


@register("gspo")
def gspo(logps: Tensor, old_logps: Tensor, advantages: Tensor, mask: Tensor, *, eps_low: float = 3e-4,
         eps_high: float = 4e-4, length_normalize: bool = True, dual_clip: float | None = None):
    """GSPO (Zheng et al. 2025): one ratio per sequence, s = exp(mean_t(ℓ − ℓ_old)), clipped. With
    `length_normalize=False` the ratio is exp of the summed log-ratio (TRL's RLOO). The sequence loss is
    put on each of its tokens, so sequence-mean aggregation gives the mean over sequences."""
    m = mask.float()
    log_s = torch.clamp(sequence_log_ratio(logps, old_logps, m, length_normalize), max=10.0)
    a = (advantages * m).sum(1) / m.sum(1).clamp(min=1)  # the sequence's (constant) advantage
    loss, clipped = _clip_objective(torch.exp(log_s), a, eps_low, eps_high, dual_clip, None)
    trained = (m.sum(1) > 0).float()  # sequences in the loss: a masked-out one (dropped group) is not unclipped
    # (fraction, sequences): the loop's mean over the step's trained sequences
    return loss[:, None] * m, {"clip_fraction": ((clipped * trained).sum() / trained.sum().clamp(min=1), trained.sum())}


def kl_estimate(logps: Tensor, ref_logps: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimators of KL(π‖π_ref) from samples of π (Schulman 2020), d = ℓ − ℓ_ref:
    k1 = d, k2 = d²/2, k3 = e^{−d} − 1 + d ≥ 0 (d clamped to ±20 as verl does)."""
    d = logps - ref_logps
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    if kind == "k3":
        d = torch.clamp(d, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        return torch.exp(-d) - 1 + d
    raise ConfigError(f"kl estimator must be k1, k2 or k3, got {kind!r}")


def kl_loss_term(logps: Tensor, old_logps: Tensor, ref_logps: Tensor, kind: str = "k3",
                 bias_correction: bool = False) -> Tensor:
    """The per-token KL added to the loss (grad through `logps`). With `bias_correction` the estimate is
    weighted by the token ratio u (DeepSeek-V3.2), which makes the k3 gradient that of KL(π‖π_ref)."""
    k = kl_estimate(logps, ref_logps, kind)
    if bias_correction:
        k = k * torch.exp(torch.clamp(logps - old_logps, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    return k


def sequence_contributions(per_token: Tensor, mask: Tensor, mode: str, max_len: int) -> tuple[Tensor, Tensor]:
    """(per-sequence numerators c [B], denominator) with aggregate = Σ c / denominator. Splitting lets a
    caller use the denominator of the whole optimizer step (all micro-batches and processes)."""
    m = mask.float()
    total = (per_token * m).sum(1)
    n_seq = torch.tensor(float(per_token.shape[0]), device=per_token.device)
    if mode == "token_mean":
        return total, m.sum()
    if mode == "seq_mean_token_mean":
        return total / m.sum(1).clamp(min=1), n_seq
    if mode == "seq_mean_token_sum":
        return total, n_seq
    if mode == "seq_mean_token_sum_norm":  # Dr. GRPO: a constant normaliser B·L_max
        return total, n_seq * max_len
    raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {mode!r}")


def aggregate(per_token: Tensor, mask: Tensor, mode: str = "token_mean", max_len: int | None = None) -> Tensor:
    """One scalar from per-token losses (specs/online.md §1.2): token_mean (DAPO), seq_mean_token_mean
    (GRPO), seq_mean_token_sum, seq_mean_token_sum_norm (Dr. GRPO, divides by B·max_len)."""
    c, denom = sequence_contributions(per_token, mask, mode, max_len if max_len is not None else per_token.shape[1])
    return c.sum() / denom.clamp(min=1e-12)


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = 0.2) -> tuple[Tensor, Tensor]:
    """Per-token ½·max((V − R)², (clip(V, V_old ± ε_v) − R)²) (PPO value clipping) and the clipped
    indicator; `clip=None` gives the plain squared error."""
    err = (values - returns) ** 2
    if clip is None:
        return 0.5 * err * mask, torch.zeros_like(err)
    clipped_v = old_values + torch.clamp(values - old_values, -clip, clip)
    err_c = (clipped_v - returns) ** 2
    return 0.5 * torch.maximum(err, err_c) * mask, (err_c > err).float() * mask
