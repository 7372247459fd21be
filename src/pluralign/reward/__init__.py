"""Preference (reward) models: Bradley–Terry, multi-objective (MORE), pluralistic per-user (PAL),
binary-feedback (P[thumbs-up]), ensembles and implicit (DPO) reward models — all with
`score(prompts, responses, user=None) -> Tensor[N, n_objectives]` and directory save/load."""

from pluralign.reward.base import MODEL_TYPES, RewardModel, TextEncoder, load_reward_model
from pluralign.reward.binary import BinaryRewardModel, auroc
from pluralign.reward.bt import BTRewardModel
from pluralign.reward.ensemble import Ensemble
from pluralign.reward.implicit import ImplicitRewardModel
from pluralign.reward.multi import MultiObjectiveRewardModel, min_norm_element
from pluralign.reward.pal import PALRewardModel, adapt_user

load = load_reward_model

__all__ = [
    "MODEL_TYPES", "RewardModel", "TextEncoder", "load_reward_model", "load", "BTRewardModel", "MultiObjectiveRewardModel",
    "PALRewardModel", "BinaryRewardModel", "Ensemble", "ImplicitRewardModel", "adapt_user", "auroc", "min_norm_element",
]
