"""Pairwise direct-alignment losses with a reference model (DPO and its family).

Inputs are sequence log-prob sums over completion tokens, shape [B]. With ρ_w = logπ_θ(y_w) − logπ_ref(y_w),
ρ_l likewise and h = ρ_w − ρ_l, every function returns (per-example loss [B], metrics) where the metrics are the
detached per-example implicit rewards β·ρ_w, β·ρ_l, their margin and 1[β·ρ_w > β·ρ_l] (as TRL logs them).
Formulas and hand-checked values: shared/specs/training.md §1, §6.4, §8.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.losses._shared import check_range, per_token, reward_metrics, sigmoid_loss
from pluralign.losses.registry import alias, register

Output = tuple[Tensor, dict[str, Tensor]]


def _rho(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor]:
    """Policy-to-reference log-ratios ρ_w, ρ_l."""
    return pc - rc, pr - rr


def _alpha_divergence_score(rho: Tensor, alpha: float) -> Tensor:
    """f'(t) = (t^(α−1) − 1)/(α−1) at t = π/π_ref; α → 1 is reverse KL."""
    if abs(alpha - 1.0) < 1e-6:
        return rho
    # The exponent is clamped so exp stays finite in the compute dtype (half precision saturates near e^11).
    clamp_max = 11.0 if rho.dtype == torch.float16 else 80.0
    t = ((alpha - 1.0) * rho).to(torch.promote_types(rho.dtype, torch.float32)).clamp(max=clamp_max)
    return (torch.exp(t) - 1.0).to(rho.dtype) / (alpha - 1.0)


# Score s(ρ) = f'(π/π_ref) of f-DPO (Wang et al. 2024, "Beyond Reverse KL"); constants cancel in s(ρ_w) − s(ρ_l).
F_DIVERGENCES: dict[str, Callable[[Tensor, float], Tensor]] = {
    "reverse_kl": lambda rho, alpha: rho,
    "forward_kl": lambda rho, alpha: 1.0 - torch.exp(-rho),
    "js_divergence": lambda rho, alpha: math.log(2.0) + F.logsigmoid(rho),
    "alpha_divergence": _alpha_divergence_score,
}


@register("dpo", kind="pairwise")
def dpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, *, beta: float = 0.1, f_divergence: str = "reverse_kl",
        f_alpha_divergence_coef: float = 1.0) -> Output:  # fmt: skip
    """DPO (Rafailov et al. 2023): −logσ(β·h); matches TRL loss_type="sigmoid".

    `f_divergence` swaps the reverse-KL regulariser for another f-divergence (Wang et al. 2024, f-DPO):
    h = s(ρ_w) − s(ρ_l) with s = f' of "forward_kl", "js_divergence" or "alpha_divergence"
    (coefficient `f_alpha_divergence_coef`), matching TRL's f_divergence_type. Rewards stay β·ρ.
    """
    if f_divergence not in F_DIVERGENCES:
        raise ConfigError(
            f"loss 'dpo': unknown f_divergence {f_divergence!r}; valid: {', '.join(F_DIVERGENCES)}"
        )
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    score = F_DIVERGENCES[f_divergence]
    h = score(rho_w, f_alpha_divergence_coef) - score(rho_l, f_alpha_divergence_coef)
    return sigmoid_loss(beta * h), reward_metrics(beta * rho_w, beta * rho_l)


@register("cdpo", kind="pairwise")
def cdpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.1) -> Output:  # fmt: skip
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): labels flipped with prob. ε.

    −(1−ε)·logσ(βh) − ε·logσ(−βh); its minimiser is finite, βh* = log((1−ε)/ε). Matches old TRL
    loss_type="sigmoid" with label_smoothing and TRL CPOTrainer's "sigmoid" (which has no reference).
    """
    check_range("label_smoothing", label_smoothing, 0.0, 0.5, loss="cdpo")
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return sigmoid_loss(beta * (rho_w - rho_l), label_smoothing), reward_metrics(beta * rho_w, beta * rho_l)


@register("robust", kind="pairwise")
def robust(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
           ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.1) -> Output:  # fmt: skip
    """Robust DPO (Chowdhury et al. 2024): an unbiased DPO estimate under label-flip rate ε.

    [(1−ε)·(−logσ(βh)) − ε·(−logσ(−βh))] / (1−2ε), so E_flip[loss] = clean DPO loss. Matches TRL loss_type="robust".
    """
    check_range("label_smoothing", label_smoothing, 0.0, 0.5, loss="robust")
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * (rho_w - rho_l)
    eps = label_smoothing
    loss = ((1 - eps) * sigmoid_loss(z) - eps * sigmoid_loss(-z)) / (1 - 2 * eps)
    return loss, reward_metrics(beta * rho_w, beta * rho_l)


@register("ipo", kind="pairwise")
def ipo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, chosen_lengths: Tensor | None = None, rejected_lengths: Tensor | None = None,
        *, beta: float = 0.1, length_normalized: bool = True) -> Output:  # fmt: skip
    """IPO (Azar et al. 2024, ΨPO with identity Ψ): (h̃ − 1/(2τ))² with τ = beta.

    length_normalized=True uses per-token log-ratios h̃ = ρ_w/|y_w| − ρ_l/|y_l| (matches TRL loss_type="ipo",
    the form the IPO authors confirmed); False is the paper's sequence form h̃ = h. Not saturating: overshooting
    the target margin 1/(2τ) is penalised.
    """
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if length_normalized:
        h = per_token(rho_w, chosen_lengths, what="ipo") - per_token(rho_l, rejected_lengths, what="ipo")
    else:
        h = rho_w - rho_l
    return (h - 1.0 / (2.0 * beta)) ** 2, reward_metrics(beta * rho_w, beta * rho_l)


@register("hinge", kind="pairwise")
def hinge(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
          ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Output:  # fmt: skip
    """Hinge / SLiC (Zhao et al. 2023, SLiC-HF; RSO's normalised form): max(0, 1 − β·h). Matches TRL loss_type="hinge"."""
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return torch.relu(1.0 - beta * (rho_w - rho_l)), reward_metrics(beta * rho_w, beta * rho_l)


@register("exo_pair", kind="pairwise")
def exo_pair(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 1e-3) -> Output:  # fmt: skip
    """EXO-pref (Ji et al. 2024, Eq. 16): KL(q_θ ‖ p_ε) between the model's pair distribution q_θ = softmax(β·ρ)
    over {chosen, rejected} and the smoothed label distribution p_ε = (1−ε, ε). Matches TRL loss_type="exo_pair".
    """
    if not 0.0 < label_smoothing < 1.0:
        raise ConfigError(
            f"loss 'exo_pair': label_smoothing must lie in (0, 1) (paper: 1e-3), got {label_smoothing}"
        )
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * (rho_w - rho_l)
    loss = torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-label_smoothing)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(label_smoothing)
    )
    return loss, reward_metrics(beta * rho_w, beta * rho_l)


@register("nca_pair", kind="pairwise")
def nca_pair(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Output:  # fmt: skip
    """NCA (Chen et al. 2024, "Noise Contrastive Alignment"), pairwise form on absolute rewards r = β·ρ:
    −logσ(r_w) − ½·logσ(−r_w) − ½·logσ(−r_l). Matches TRL loss_type="nca_pair".
    """
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    r_w, r_l = beta * rho_w, beta * rho_l
    return sigmoid_loss(r_w) + 0.5 * sigmoid_loss(-r_w) + 0.5 * sigmoid_loss(-r_l), reward_metrics(r_w, r_l)


@register("bco_pair", kind="pairwise", extra_inputs=("reward_shift",))
def bco_pair(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, reward_shift: float | Tensor = 0.0, *, beta: float = 0.1) -> Output:  # fmt: skip
    """BCO (Jung et al. 2024) on pairs: chosen classified desirable, rejected undesirable, around the shift δ:
    −logσ(β·ρ_w − δ) − logσ(−(β·ρ_l − δ)). δ is the running mean of rewards (`unpaired.RunningMean`), kept
    by the recipe. With δ = 0 it matches TRL loss_type="bco_pair" (which has no shift).
    """
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    r_w, r_l = beta * rho_w, beta * rho_l
    return sigmoid_loss(r_w - reward_shift) + sigmoid_loss(reward_shift - r_l), reward_metrics(r_w, r_l)


@register("sppo_hard", kind="pairwise")
def sppo_hard(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
              ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Output:  # fmt: skip
    """SPPO (Wu et al. 2024, Eq. 4.7) with hard win probabilities 1/0: (ρ_w − 1/(2β))² + (ρ_l + 1/(2β))².
    Matches TRL loss_type="sppo_hard".
    """
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    target = 0.5 / beta
    return (rho_w - target) ** 2 + (rho_l + target) ** 2, reward_metrics(beta * rho_w, beta * rho_l)


@register("aot", kind="pairwise", weighted=False)
def aot(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
        ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Output:  # fmt: skip
    """AOT (Melnyk et al. 2024, "Distributional Preference Alignment via Optimal Transport"), paired form:
    DPO on the sorted policy log-ratio margins minus the sorted reference margins — first-order stochastic
    dominance across the batch. Entry k of the loss is the k-th quantile, not example k. Matches TRL loss_type="aot".
    """
    policy_sorted, _ = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0)
    ref_sorted, _ = torch.sort(ref_chosen_logps - ref_rejected_logps, dim=0)
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    loss = sigmoid_loss(beta * (policy_sorted - ref_sorted), label_smoothing)
    return loss, reward_metrics(beta * rho_w, beta * rho_l)


@register("aot_unpaired", kind="pairwise", weighted=False)
def aot_unpaired(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                 ref_rejected_logps: Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Output:  # fmt: skip
    """AOT (Melnyk et al. 2024), unpaired form: DPO on sorted chosen log-ratios minus sorted rejected log-ratios.
    Matches TRL loss_type="aot_unpaired".
    """
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_sorted, _ = torch.sort(rho_w, dim=0)
    rejected_sorted, _ = torch.sort(rho_l, dim=0)
    loss = sigmoid_loss(beta * (chosen_sorted - rejected_sorted), label_smoothing)
    return loss, reward_metrics(beta * rho_w, beta * rho_l)


@register("apo_zero", kind="pairwise")
def apo_zero(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Output:  # fmt: skip
    """APO-zero (D'Oosterlinck et al. 2024, Eq. 7), for chosen answers better than the model's own:
    (1 − σ(β·ρ_w)) + σ(β·ρ_l). Matches TRL loss_type="apo_zero".
    """
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    r_w, r_l = beta * rho_w, beta * rho_l
    return torch.sigmoid(-r_w) + torch.sigmoid(r_l), reward_metrics(r_w, r_l)


@register("apo_down", kind="pairwise")
def apo_down(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1) -> Output:  # fmt: skip
    """APO-down (D'Oosterlinck et al. 2024, Eq. 8), for chosen answers worse than the model's own:
    σ(β·ρ_w) + (1 − σ(β·h)). Matches TRL loss_type="apo_down".
    """
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    r_w, r_l = beta * rho_w, beta * rho_l
    return torch.sigmoid(r_w) + torch.sigmoid(r_l - r_w), reward_metrics(r_w, r_l)


@register("discopop", kind="pairwise")
def discopop(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, *, beta: float = 0.1, tau: float = 0.05) -> Output:  # fmt: skip
    """DiscoPOP / log-ratio modulated loss (Chris Lu et al. 2024, Eq. 5): with z = β·h and m = σ(z/τ),
    (1−m)·(−logσ(z)) + m·e^{−z}. Matches TRL loss_type="discopop" (discopop_tau = tau).
    """
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * (rho_w - rho_l)
    # m·e^{−z} computed as exp(logσ(z/τ) − z): equal, but finite where e^{−z} alone overflows and m → 0.
    loss = (1 - torch.sigmoid(z / tau)) * sigmoid_loss(z) + torch.exp(F.logsigmoid(z / tau) - z)
    return loss, reward_metrics(beta * rho_w, beta * rho_l)


@register("sigmoid_norm", kind="pairwise")
def sigmoid_norm(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
                 ref_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *,
                 beta: float = 1.0) -> Output:  # fmt: skip
    """LN-DPO (Ahrabian et al. 2024, "A Hitchhiker's Guide to Human Alignment with *PO"): DPO on per-token
    log-ratios, −logσ(β·(ρ_w/|y_w| − ρ_l/|y_l|)). Matches TRL loss_type="sigmoid_norm". β is per token, so it
    wants a larger value than DPO's (default 1.0).
    """
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    what = "sigmoid_norm"
    h = per_token(rho_w, chosen_lengths, what=what) - per_token(rho_l, rejected_lengths, what=what)
    return sigmoid_loss(beta * h), reward_metrics(beta * rho_w, beta * rho_l)


alias("ln_dpo", "sigmoid_norm", doc="LN-DPO (Ahrabian et al. 2024): the name of sigmoid_norm in its paper.")
alias("wpo", "dpo", recipe={"wpo": True},
      doc="WPO (Zhou et al. 2024): DPO with each pair weighted by the policy's probability of its responses.")
alias("ld_dpo", "dpo", recipe={"ld_alpha": 0.5},
      doc="LD-DPO (Liu et al. 2024): DPO on log-probs that down-weight tokens past the shorter response.")
alias("lipo", "lipo_lambda", doc="LiPO-lambda (Liu et al. 2025), short name.")


@register("rdpo", kind="pairwise")
def rdpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor, *, beta: float = 0.1,
         alpha: float = 0.01) -> Output:  # fmt: skip
    """R-DPO (Park et al. 2024, "Disentangling Length from Quality in DPO"): −logσ(β·h + α·(|y_w| − |y_l|)).

    The length term comes from a reward r − α|y|: a longer chosen answer already earns margin, which removes
    the incentive to win by length. α = 0 or equal lengths give DPO.
    """
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    length_gap = (chosen_lengths - rejected_lengths).to(rho_w.dtype)
    return sigmoid_loss(beta * (rho_w - rho_l) + alpha * length_gap), reward_metrics(
        beta * rho_w, beta * rho_l
    )


@register("mnpo", kind="pairwise", extra_inputs=("history_chosen_logps", "history_rejected_logps"))
def mnpo(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
         ref_rejected_logps: Tensor, history_chosen_logps: Tensor | None = None,
         history_rejected_logps: Tensor | None = None, *, eta: float = 0.0075, ratio: float = 0.3333,
         history_weights: tuple[float, ...] | None = None, beta: float = 10.0) -> Output:  # fmt: skip
    """MNPO (Wu et al. 2026, "Multiplayer Nash Preference Optimization"): squared loss against a mixture of the
    reference and past policies (opponents), with target margin 1/(2η):

      ([logπ_θ(y_w) − logπ_θ(y_l)] − ratio·Δ_ref − (1 − ratio)·Σ_j λ_j·Δ_j − 1/(2η))²

    Δ_j = logπ_j(y_w) − logπ_j(y_l) of opponent j, λ = history_weights normalised (uniform when None; the
    official trainer's effective default). History inputs are [B, t]. Without them the reference stands in for
    the opponents (so policy = reference gives 1/(4η²)); the official trainer instead drops the opponent term
    then. ratio = 1 is sequence-level IPO with τ = η. beta only scales the logged rewards.
    """
    margin = policy_chosen_logps - policy_rejected_logps
    ref_margin = ref_chosen_logps - ref_rejected_logps
    if history_chosen_logps is None or history_rejected_logps is None:
        opponent_margin = ref_margin
    else:
        history_margin = history_chosen_logps - history_rejected_logps
        weights = torch.ones(history_margin.shape[-1], dtype=margin.dtype, device=margin.device)
        if history_weights is not None:
            if len(history_weights) != history_margin.shape[-1] or sum(history_weights) <= 0:
                raise ConfigError(
                    f"loss 'mnpo': history_weights {tuple(history_weights)} must be {history_margin.shape[-1]} "
                    "numbers with a positive sum"
                )
            weights = torch.as_tensor(history_weights, dtype=margin.dtype, device=margin.device)
        opponent_margin = history_margin @ (weights / weights.sum())
    loss = (margin - ratio * ref_margin - (1.0 - ratio) * opponent_margin - 1.0 / (2.0 * eta)) ** 2
    rho_w, rho_l = _rho(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return loss, reward_metrics(beta * rho_w, beta * rho_l)
