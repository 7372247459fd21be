"""Implicit reward models: a DPO-trained policy scored as r(x, y) = β·(log π(y|x) − log π_ref(y|x))
(Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model"),
and the reference-free forms RewardBench uses when no reference is given (Lambert et al. 2024,
`rewardbench/dpo.py`): 'sum' = log π(y|x), 'avg' = log π(y|x) / |y| (RewardBench's 'norm').
Same `score(prompts, responses, user=None) -> [N, 1]` interface as the trained reward models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pluralign.errors import ConfigError
from pluralign.runs import atomic_write_json

FORMS = ("ratio", "sum", "avg")


def implicit_reward(policy_logps: torch.Tensor, ref_logps: torch.Tensor | None, n_tokens: torch.Tensor, *,
                    beta: float = 0.1, form: str = "ratio") -> torch.Tensor:
    """The implicit reward from sequence log-prob sums [N] and completion lengths [N]."""
    if form == "ratio":
        if ref_logps is None:
            raise ConfigError("form='ratio' needs the reference model's log-probs; use 'sum' or 'avg' without one")
        return beta * (policy_logps - ref_logps)
    if form == "sum":
        return policy_logps
    if form == "avg":
        return policy_logps / n_tokens.clamp_min(1)
    raise ConfigError(f"implicit reward form must be one of {FORMS}, got {form!r}")


class ImplicitRewardModel:
    """A policy (and optionally its reference) as a reward source."""

    model_type = "implicit"

    def __init__(self, policy: Any, tokenizer: Any, reference: Any = None, *, beta: float = 0.1, form: str = "ratio",
                 max_length: int = 512, batch_size: int = 16, paths: dict | None = None, chat_template: str = "auto"):
        if form not in FORMS:
            raise ConfigError(f"implicit reward form must be one of {FORMS}, got {form!r}")
        if form == "ratio" and reference is None:
            raise ConfigError("form='ratio' needs a reference model; use form='sum' or 'avg' for reference-free scoring")
        self.policy, self.tokenizer, self.reference = policy, tokenizer, reference
        self.beta, self.form, self.max_length, self.batch_size = beta, form, max_length, batch_size
        self.paths = paths or {}
        self.chat_template = chat_template  # how prompts are rendered (pluralign.data.prompts), as in training
        self.objectives = ["implicit_reward"]

    def _batch(self, prompts: Sequence[Any], responses: Sequence[Any]) -> dict[str, torch.Tensor]:
        from pluralign.data.collate import pad_rows
        from pluralign.data.tokenize import pad_token_id
        from pluralign.reward.base import encode_scored_pair, warn_if_cut

        enc = [encode_scored_pair(self.tokenizer, p, r, self.max_length, self.chat_template)
               for p, r in zip(prompts, responses, strict=True)]
        warn_if_cut(enc, self.max_length)
        return pad_rows(enc, pad_token_id(self.tokenizer))

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[Any], user: Any = None) -> torch.Tensor:
        from pluralign.decode.sampler import eval_mode
        from pluralign.models.logprobs import sequence_logps
        from pluralign.reward.base import check_pairs

        check_pairs(prompts, responses)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            batch = self._batch(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])
            device = next(self.policy.parameters()).device
            batch = {k: v.to(device) for k, v in batch.items()}
            # no dropout in the scores of a policy still in training; its modes come back as they were
            with eval_mode(self.policy, *([self.reference] if self.form == "ratio" else [])):
                pol, n = sequence_logps(self.policy, batch)
                ref = sequence_logps(self.reference, batch)[0] if self.form == "ratio" else None
            out.append(implicit_reward(pol.float(), None if ref is None else ref.float(), n, beta=self.beta, form=self.form))
        return (torch.cat(out) if out else torch.zeros(0)).cpu()[:, None]

    def save(self, out_dir: str | Path) -> Path:
        """Writes config.json referencing the policy/reference directories (models are not copied)."""
        if "policy" not in self.paths:
            raise ConfigError("an implicit reward model can be saved only when built with from_paths()")
        out = Path(out_dir)
        atomic_write_json(out / "config.json", {"format_version": 1, "type": "implicit", "beta": self.beta,
                                                "form": self.form, "max_length": self.max_length,
                                                "chat_template": self.chat_template, **self.paths})
        return out

    @classmethod
    def from_paths(cls, policy: str | Path, reference: str | Path | None = None, *, beta: float = 0.1,
                   form: str = "ratio", max_length: int = 512, device: str | None = None,
                   chat_template: str = "auto") -> ImplicitRewardModel:
        from pluralign.models.load import load_model, load_tokenizer

        pol = load_model(str(policy), device=device).eval()
        ref = load_model(str(reference), device=device).eval() if reference is not None else None
        from pluralign.reward.base import stored_source

        paths = {"policy": stored_source(str(policy))} | \
            ({"reference": stored_source(str(reference))} if reference is not None else {})
        return cls(pol, load_tokenizer(str(policy)), ref, beta=beta, form=form, max_length=max_length, paths=paths,
                   chat_template=chat_template)

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str | None = None) -> ImplicitRewardModel:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        return cls.from_paths(cfg["policy"], cfg.get("reference"), beta=cfg["beta"], form=cfg["form"],
                              max_length=cfg["max_length"], device=device,
                              chat_template=cfg.get("chat_template", "auto"))
