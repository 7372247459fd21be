"""Preference-optimization and reward-model losses, registered by name.

    from pluralign import losses
    loss, metrics = losses.get("dpo")(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)
    losses.describe("simpo")             # kind, inputs, hyper-parameters with defaults, citation
    rpo = losses.mixture("dpo:1,nll:1")  # weighted sums of losses of one kind

Every loss returns (per-example loss [B], metrics); see `registry` for the calling conventions.
"""

from pluralign.losses import listwise, multiobjective, pairwise, reference_free, reward, unpaired  # noqa: F401  (registers)
from pluralign.losses.listwise import dcg_lambda_weights, win_rate_labels
from pluralign.losses.registry import (
    KINDS,
    Alias,
    Loss,
    LossInfo,
    alias,
    aliases,
    describe,
    get,
    mixture,
    names,
    register,
)
from pluralign.losses.token_level import ld_mixed_logps, log_sum_sq_probs, wpo_weights
from pluralign.losses.unpaired import RunningMean, kto_kl_baseline, udm_weights

__all__ = [
    "KINDS", "Alias", "Loss", "LossInfo", "alias", "aliases", "RunningMean", "dcg_lambda_weights", "describe", "get", "kto_kl_baseline",
    "ld_mixed_logps", "log_sum_sq_probs", "mixture", "names", "register", "udm_weights", "win_rate_labels",
    "wpo_weights",
]  # fmt: skip
