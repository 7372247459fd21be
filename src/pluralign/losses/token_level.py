"""Token-level helpers that shape pairwise inputs: WPO weights and LD-DPO log-prob mixing.

Both take a pairwise batch in the collators' layout: N = 2B rows, rows 0..B−1 chosen, B..2B−1 rejected, with
per-token values [N, T] that are 0 off the completion and a completion mask [N, T] (any padding side).
"""

from __future__ import annotations

import torch
from torch import Tensor


def log_sum_sq_probs(logits: Tensor) -> Tensor:
    """log Σ_v p_v² per position from logits [..., V]: the log-probability that two samples agree, WPO's
    normaliser. = logsumexp(2·logits) − 2·logsumexp(logits), computed in float32 or better.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return torch.logsumexp(2.0 * logits, dim=-1) - 2.0 * torch.logsumexp(logits, dim=-1)


@torch.no_grad()
def wpo_weights(
    per_token_logps: Tensor, per_token_log_sum_sq_probs: Tensor, completion_mask: Tensor
) -> Tensor:
    """WPO pair weights (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization", Eq. 2).

    Each response is weighted by its length-normalised probability under the current policy, aligned by the
    per-token self-agreement log Σ_v p_v²: w(y) = exp(mean_t [log p(y_t) − log Σ_v p_v²]); a pair's weight is
    w(y_w)·w(y_l) [B], without gradient. Multiply the per-example loss by it (pass as `weights=`). Matches TRL
    use_weighting=True.
    """
    mask = completion_mask.to(per_token_logps.dtype)
    aligned = (per_token_logps - per_token_log_sum_sq_probs) * mask
    weights = torch.exp(aligned.sum(dim=1) / mask.sum(dim=1).clamp(min=1))
    chosen, rejected = weights.chunk(2, dim=0)
    return chosen * rejected


def ld_mixed_logps(per_token_logps: Tensor, completion_mask: Tensor, ld_alpha: float) -> Tensor:
    """LD-DPO sequence log-probs (Liu et al. 2024, "Length Desensitization in DPO"): within each pair, tokens up
    to the shorter completion's length count fully and the longer one's excess tokens count ld_alpha:
    logp = Σ_{t ≤ ℓ} logp_t + α·Σ_{t > ℓ} logp_t, ℓ = min(|y_w|, |y_l|). Returns [N] in the input row order.
    Matches TRL ld_alpha. α = 1 gives the plain sum.
    """
    position = completion_mask.long().cumsum(dim=1)  # 1-based index within the completion, 0 before it
    chosen_len, rejected_len = completion_mask.long().sum(dim=1).chunk(2, dim=0)
    shared = torch.minimum(chosen_len, rejected_len).repeat(2).unsqueeze(1)
    in_completion = completion_mask.bool()
    head = (per_token_logps * (in_completion & (position <= shared))).sum(dim=1)
    tail = (per_token_logps * (in_completion & (position > shared))).sum(dim=1)
    return head + ld_alpha * tail
