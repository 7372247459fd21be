"""Reward ensembles: the mean of several reward models (or of several heads on one backbone) and their
disagreement — the standard deviation across members — for every score.

Disagreement flags inputs where the reward is uncertain and reward hacking is likely (Coste et al. 2024,
"Reward Model Ensembles Help Mitigate Overoptimization"; Eisenstein et al. 2023, "Helping or Herding?").
Members trained with different seeds (or bootstrap resamples) make the disagreement meaningful.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pluralign.errors import ConfigError
from pluralign.reward.base import check_pairs
from pluralign.runs import atomic_write_json


@dataclass
class EnsembleScores:
    mean: torch.Tensor  # [N, n_objectives]
    std: torch.Tensor  # [N, n_objectives], population std across members (0 for one member)
    members: torch.Tensor  # [M, N, n_objectives]

    @property
    def disagreement(self) -> torch.Tensor:
        return self.std


def member_scores(model: Any, prompts: Sequence[Any], responses: Sequence[Any], user: Any = None) -> torch.Tensor:
    """[M, N, n] scores: one row per ensemble member. A BT model with n_heads > 1 contributes one member per head."""
    from pluralign.decode.sampler import eval_mode

    check_pairs(prompts, responses)
    if getattr(model, "model_type", None) == "bt" and getattr(model, "n_heads", 1) > 1:
        with torch.no_grad(), eval_mode(model):  # the caller's model comes back in the mode it was in
            heads = model.head_rewards(model.features(prompts, responses)).float().cpu()  # [N, M]
        return heads.T[:, :, None]
    s = torch.as_tensor(model.score(prompts, responses, user=user), dtype=torch.float)
    return (s[:, None] if s.dim() == 1 else s)[None]


def summarize(members: torch.Tensor) -> EnsembleScores:
    """Mean and (population) standard deviation over the member axis of [M, N, n] scores."""
    return EnsembleScores(members.mean(0), members.std(0, unbiased=False), members)


class Ensemble:
    """Several reward sources scored together; `score` is the mean, so an ensemble is itself a reward
    source. Members must agree on the number of objectives. A BT model with n heads counts as n members
    (`member_scores`): each head is one model of the ensemble, so a 3-head model weighs 3× a 1-head one."""

    model_type = "ensemble"

    def __init__(self, members: Sequence[Any]):
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        self.members = list(members)
        self.objectives = getattr(self.members[0], "objectives", None)
        # the mean of P(thumbs-up) models is a probability too: evaluation reads it as one, not as a logit
        self.output = "prob" if {getattr(m, "output", None) for m in self.members} == {"prob"} else "logit"

    def score_all(self, prompts: Sequence[Any], responses: Sequence[Any], user: Any = None) -> EnsembleScores:
        parts = [member_scores(m, prompts, responses, user) for m in self.members]
        widths = {p.shape[-1] for p in parts}
        if len(widths) != 1:
            raise ConfigError(f"ensemble members return different numbers of objectives: {sorted(widths)}")
        return summarize(torch.cat(parts))

    def score(self, prompts: Sequence[Any], responses: Sequence[Any], user: Any = None) -> torch.Tensor:
        return self.score_all(prompts, responses, user).mean

    def disagreement(self, prompts: Sequence[Any], responses: Sequence[Any], user: Any = None) -> torch.Tensor:
        return self.score_all(prompts, responses, user).std

    def save(self, out_dir: str | Path) -> Path:
        from pluralign.runs import write_dir

        for i, m in enumerate(self.members):
            if not hasattr(m, "save"):
                raise ConfigError(f"ensemble member {i} ({type(m).__name__}) cannot be saved")

        def write(out: Path) -> None:  # the members and the config, renamed into place together
            for i, m in enumerate(self.members):
                m.save(out / f"member_{i}")
            atomic_write_json(out / "config.json", {"format_version": 1, "type": "ensemble",
                                                    "members": [f"member_{i}" for i in range(len(self.members))]})

        return write_dir(out_dir, write)

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str | None = None) -> Ensemble:
        from pluralign.reward.base import load_reward_model

        model_dir = Path(model_dir)
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        return cls([load_reward_model(model_dir / name, device=device) for name in cfg["members"]])
