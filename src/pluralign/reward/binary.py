"""Binary-feedback reward model: P(thumbs-up | x, y) = σ(f(x, y)), trained with binary cross-entropy.

This is the P[Love] model of RLUF (Han et al. 2025, "Reinforcement Learning from User Feedback",
arXiv 2505.14946; training spec §5.4). Positive reactions are rare, so the class imbalance is handled by
weighting positives (pos_weight = n_neg / n_pos, 'balanced') or by down-sampling negatives; both shift
the predicted base rate, which `prior_correction` undoes on the logit scale (log odds of the true rate
minus log odds of the training rate). Evaluated by AUROC (Mann–Whitney statistic, ties count ½).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from pluralign.errors import ConfigError
from pluralign.models.heads import RewardHead
from pluralign.reward.base import RewardModel, TextEncoder, register
from pluralign.seeding import seeded


@register
class BinaryRewardModel(RewardModel):
    """`score` returns P(thumbs-up) [N, 1] (output='prob', the RLUF reward) or the logit (output='logit')."""

    model_type = "binary"

    def __init__(self, encoder: TextEncoder | None, objectives: Sequence[str] = ("p_positive",), feature_dim: int | None = None,
                 *, head_hidden: int = 0, output: str = "prob", logit_offset: float = 0.0, seed: int = 0):
        super().__init__(encoder, objectives, feature_dim)
        if output not in ("prob", "logit"):
            raise ConfigError(f"binary RM output must be 'prob' or 'logit', got {output!r}")
        self.head_hidden, self.output, self.logit_offset, self.seed = head_hidden, output, float(logit_offset), seed
        with seeded(seed):
            self.head = RewardHead(self.feature_dim, 1, hidden=head_hidden)

    def extra_config(self) -> dict:
        return {"head_hidden": self.head_hidden, "output": self.output, "logit_offset": self.logit_offset, "seed": self.seed}

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Raw training logits [N] (without the prior correction)."""
        return self.head(features)[:, 0]

    def rewards(self, features: torch.Tensor, prompt_features: torch.Tensor | None = None, user: Any = None) -> torch.Tensor:
        z = self.logits(features) + self.logit_offset
        return (torch.sigmoid(z) if self.output == "prob" else z)[:, None]


def balanced_pos_weight(labels: Sequence[bool]) -> float:
    """n_negative / n_positive: BCE then weighs both classes equally in total."""
    pos = sum(bool(y) for y in labels)
    if pos == 0 or pos == len(labels):
        raise ConfigError(f"binary data needs both labels; got {pos} positive of {len(labels)}")
    return (len(labels) - pos) / pos


def downsample_negatives(records: Sequence[Any], ratio: float = 1.0, seed: int = 0) -> list[Any]:
    """Keep every positive and at most `ratio` × n_positive negatives (chosen at random, order kept)."""
    pos = [i for i, r in enumerate(records) if r.label]
    neg = [i for i, r in enumerate(records) if not r.label]
    keep_neg = sorted(random.Random(seed).sample(neg, min(len(neg), int(math.ceil(ratio * len(pos))))))
    keep = sorted(pos + keep_neg)
    return [records[i] for i in keep]


def prior_correction(train_rate: float, true_rate: float) -> float:
    """Logit offset that maps probabilities learned at base rate `train_rate` back to `true_rate`."""
    def logit(p: float) -> float:
        return math.log(p / (1 - p))
    return logit(true_rate) - logit(train_rate)


def auroc(scores, labels) -> float:
    """Area under the ROC curve = P(score of a random positive > that of a random negative), ties ½."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels).flatten().bool()
    pos, neg = s[y], s[~y]
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    # average ranks handle ties exactly (Mann–Whitney U)
    order = torch.cat([pos, neg])
    ranks = _average_ranks(order)
    u = ranks[: pos.numel()].sum() - pos.numel() * (pos.numel() + 1) / 2
    return float(u / (pos.numel() * neg.numel()))


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    sorted_x, idx = torch.sort(x, stable=True)
    ranks = torch.empty_like(x)
    i, n = 0, x.numel()
    while i < n:
        j = i
        while j + 1 < n and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[idx[i:j + 1]] = (i + j) / 2 + 1  # 1-based average rank of the tie block
        i = j + 1
    return ranks


def binary_step(model: BinaryRewardModel, batch: dict, *, pos_weight: float | None = None):
    """Training step for the project loop on a batch of (features or token ids) + `labels` [B]."""
    from pluralign.losses import get

    feats, _ = model.batch_features(batch)
    logits = model.logits(feats)
    labels = batch["labels"].float()
    loss, _ = get("bce")(logits, labels, pos_weight=pos_weight)
    pred = (logits.detach() > 0).float()
    return loss, {"accuracy": (pred == labels).float().mean(), "p_mean": torch.sigmoid(logits.detach()).mean()}
