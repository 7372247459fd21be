"""Listwise losses (LiPO, Liu et al. NAACL 2025, "LiPO: Listwise Preference Optimization through Learning-to-Rank").

Inputs are [B, K]: sequence log-probs of K responses per prompt under the policy and the reference, their labels
ψ (`scores`, higher = better) and an optional `mask` for lists shorter than K. Each response's score is
s = β·(logπ_θ − logπ_ref). Pairwise sums run over ordered pairs (i, j) with ψ_i > ψ_j (ties contribute 0);
the per-example loss is the sum over a list's pairs, so the batch mean is a mean over lists.
Metrics: per-list "accuracy" = fraction of those pairs the scores order correctly, and "margin" = mean s_i − s_j.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pluralign.losses.registry import register

Output = tuple[Tensor, dict[str, Tensor]]


def _prepare(policy_logps: Tensor, ref_logps: Tensor, scores: Tensor, mask: Tensor | None, beta: float):
    """Model scores s [B, K], labels ψ, validity mask, and the ordered-pair mask [B, K, K] of ψ_i > ψ_j."""
    valid = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()
    s = beta * (policy_logps - ref_logps)
    psi = scores.to(s.dtype)
    pairs = (psi.unsqueeze(2) > psi.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)
    return s, psi, valid, pairs


def _pair_logistic_terms(s: Tensor) -> Tensor:
    """log(1 + exp(−(s_i − s_j))) for every ordered pair, [B, K, K]."""
    return -F.logsigmoid(s.unsqueeze(2) - s.unsqueeze(1))


def _pair_metrics(s: Tensor, pairs: Tensor) -> dict[str, Tensor]:
    diff = (s.unsqueeze(2) - s.unsqueeze(1)).detach()
    n = pairs.sum(dim=(1, 2)).clamp(min=1).to(s.dtype)
    return {
        "accuracy": ((diff > 0) & pairs).sum(dim=(1, 2)).to(s.dtype) / n,
        "margin": (diff * pairs).sum(dim=(1, 2)) / n,
    }


def dcg_lambda_weights(s: Tensor, psi: Tensor, valid: Tensor) -> Tensor:
    """LambdaLoss DCG weights Δ_ij = |G_i − G_j|·|1/D(τ_i) − 1/D(τ_j)| [B, K, K] (no gradient), with gains
    G = 2^ψ − 1, discounts D(τ) = log2(1 + τ) and τ the 1-based rank of each item under the current scores s
    (the dynamic permutation); padded items rank last.
    """
    with torch.no_grad():
        ranked = s.detach().masked_fill(~valid, -math.inf)
        order = ranked.argsort(dim=1, descending=True)
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(1, s.shape[1] + 1, device=s.device).expand_as(order)
        )
        inv_discount = 1.0 / torch.log2(1.0 + rank.to(s.dtype))
        gain = torch.exp2(psi) - 1.0
        return (gain.unsqueeze(2) - gain.unsqueeze(1)).abs() * (
            inv_discount.unsqueeze(2) - inv_discount.unsqueeze(1)
        ).abs()


@register("lipo_lambda", kind="listwise")
def lipo_lambda(policy_logps: Tensor, ref_logps: Tensor, scores: Tensor, mask: Tensor | None = None, *,
                beta: float = 0.05) -> Output:  # fmt: skip
    """LiPO-λ (Liu et al. 2025, Eq. 8): Σ_{ψ_i>ψ_j} Δ_ij·log(1 + e^{−(s_i − s_j)}) with DCG lambda weights Δ
    (`dcg_lambda_weights`) from the current ranking. Labels ψ are meant to lie in [0, 1] (`win_rate_labels`).
    For K = 2, ψ = (1, 0) it is (1 − 1/log2 3)·DPO. Default β = 0.05 (paper).
    """
    s, psi, valid, pairs = _prepare(policy_logps, ref_logps, scores, mask, beta)
    weights = dcg_lambda_weights(s, psi, valid)
    loss = (weights * _pair_logistic_terms(s) * pairs).sum(dim=(1, 2))
    return loss, _pair_metrics(s, pairs)


@register("pair_logistic", kind="listwise")
def pair_logistic(policy_logps: Tensor, ref_logps: Tensor, scores: Tensor, mask: Tensor | None = None, *,
                  beta: float = 0.05) -> Output:  # fmt: skip
    """Pair-logistic ranking loss (LiPO §3, "DPO_BT" over all pairs): Σ_{ψ_i>ψ_j} log(1 + e^{−(s_i − s_j)}).
    For K = 2 it is DPO.
    """
    s, _, _, pairs = _prepare(policy_logps, ref_logps, scores, mask, beta)
    return (_pair_logistic_terms(s) * pairs).sum(dim=(1, 2)), _pair_metrics(s, pairs)


@register("list_mle", kind="listwise")
def list_mle(policy_logps: Tensor, ref_logps: Tensor, scores: Tensor, mask: Tensor | None = None, *,
             beta: float = 0.05) -> Output:  # fmt: skip
    """ListMLE (Xia et al. 2008; LiPO's DPO_PL, as in PRO): Plackett–Luce negative log-likelihood of the
    label order, −Σ_k [s_(k) − log Σ_{m≥k} e^{s_(m)}] over valid items sorted by ψ (ties in input order).
    """
    s, psi, valid, pairs = _prepare(policy_logps, ref_logps, scores, mask, beta)
    # Padded items go last so they never enter a suffix of valid items.
    order = psi.masked_fill(~valid, -math.inf).argsort(dim=1, descending=True, stable=True)
    s_sorted, valid_sorted = s.gather(1, order), valid.gather(1, order)
    # A finite fill (not −inf) keeps logcumsumexp's backward free of NaN on all-padding suffixes.
    masked = s_sorted.masked_fill(~valid_sorted, torch.finfo(s.dtype).min)
    suffix_lse = torch.logcumsumexp(masked.flip(1), dim=1).flip(1)
    terms = torch.where(valid_sorted, suffix_lse - s_sorted, torch.zeros_like(s_sorted))
    return terms.sum(dim=1), _pair_metrics(s, pairs)


@register("softmax_list", kind="listwise")
def softmax_list(policy_logps: Tensor, ref_logps: Tensor, scores: Tensor, mask: Tensor | None = None, *,
                 beta: float = 0.05) -> Output:  # fmt: skip
    """Softmax cross-entropy (ListNet, Cao et al. 2007; LiPO Eq. 9): −Σ_k ψ_k/Σψ · log softmax(s)_k over valid
    items. Labels must be non-negative; a list whose labels sum to 0 contributes 0.
    """
    s, psi, valid, pairs = _prepare(policy_logps, ref_logps, scores, mask, beta)
    log_p = s.masked_fill(~valid, torch.finfo(s.dtype).min).log_softmax(dim=1)
    target = psi * valid
    target = target / target.sum(dim=1, keepdim=True).clamp(min=torch.finfo(s.dtype).tiny)
    loss = -(target * torch.where(valid, log_p, torch.zeros_like(log_p))).sum(dim=1)
    return loss, _pair_metrics(s, pairs)


def win_rate_labels(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """LiPO labels from raw scores: ψ_k = fraction of the other valid items that item k beats (ties count ½),
    in [0, 1] — the paper's ψ_k = mean_i Ψ_ki with Ψ_ki = 1[k better than i].
    """
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    valid = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.bool()
    both = valid.unsqueeze(2) & valid.unsqueeze(1)
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)
    wins = ((diff > 0).to(scores.dtype) + 0.5 * (diff == 0).to(scores.dtype)) * both
    wins = wins - 0.5 * torch.diag_embed(valid.to(scores.dtype))  # an item does not play itself
    others = (valid.sum(dim=1, keepdim=True) - 1).clamp(min=1).to(scores.dtype)
    return torch.where(valid, wins.sum(dim=2) / others, torch.zeros_like(scores))
