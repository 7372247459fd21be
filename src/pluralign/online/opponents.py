"""MNPO rounds (Wu et al. 2026, "Multiplayer Nash Preference Optimization"): the policies at the start of
past rounds are the opponents of the current one.

Each round samples from the current policy, scores, pairs best vs worst (online DPO's code path) and trains
with the `mnpo` pairwise loss, whose opponent term is the weighted margin of the past policies. At the start
of round r (every `round_steps` optimizer steps) the policy as it stands, the end of round r − 1, joins the
history, newest first; the oldest beyond `keep` (MNPO's max_history_t) leave. Round 1 has no history, and the
loss puts the reference in the opponents' place: it is online DPO with the `mnpo` loss.
"""

from __future__ import annotations

from typing import Any

import torch

from pluralign.decode.sampler import eval_mode
from pluralign.errors import ConfigError
from pluralign.models.logprobs import token_logps
from pluralign.train.reference import Snapshot


class Opponents:
    def __init__(self, policy: Any, *, round_steps: int = 1, keep: int = 2):
        if keep < 1 or round_steps < 1:
            raise ConfigError(f"mnpo_rounds: mnpo_history and round_steps must be >= 1, got {keep}, {round_steps}")
        self.policy, self.round_steps, self.keep = policy, round_steps, keep
        self.models: list[Snapshot] = []  # past policies, newest first (under LoRA their adapters alone)

    def refresh(self, step: int) -> None:
        """Called before each rollout: at a round boundary the current policy joins the history."""
        if step > 0 and step % self.round_steps == 0:
            self.models.insert(0, Snapshot(self.policy))
            del self.models[self.keep:]

    def sequence_logps(self, batch: dict) -> torch.Tensor:
        """[N, number of opponents]: each past policy's summed log-prob of each row's completion."""
        cols = []
        for past in self.models:
            with past.model() as m, torch.no_grad(), eval_mode(m):
                cols.append(token_logps(m, batch["input_ids"], batch["attention_mask"], batch["completion_mask"]).sum(1))
        return torch.stack(cols, -1)

    # Checkpointed with the run, so a resumed run (between or within rounds) has the same opponents.
    def state_dict(self) -> dict:
        return {"models": [past.state_dict() for past in self.models]}

    def load_state_dict(self, state: dict) -> None:
        self.models = []
        for weights in state["models"]:
            past = Snapshot(self.policy)
            past.load_state_dict(weights)
            self.models.append(past)
