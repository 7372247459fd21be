"""PAS-style activation steering toward one user, training-free (Zhu et al. ICLR 2025, "Personality
Alignment of Large Language Models", Personality Activation Search).

PAS reads the activations of a model on answers that match a person and answers that do not, takes the
mass-mean difference as a direction, and adds a multiple of it at inference; the multiple is searched per
person. Here the person's answers are their preference pairs: the direction is the mean difference of the
hidden states (at one layer, averaged over the response tokens) between the user's chosen and rejected
responses, normalised; σ is the standard deviation of all those states projected on it; the offset added
to that layer's output is α·σ·u (PAS intervenes on selected heads' outputs; we steer the residual stream
at one layer, the simpler form of the same idea). α = 0 is the unchanged model.

α is searched on the user's pairs: the grid value under which the steered model's own preference agrees
best with the user's, measured as mean log σ(ℓ̄(chosen) − ℓ̄(rejected)) with ℓ̄ the per-token mean
log-probability of a response under the steered model (PAS searches α to best reproduce the person's
answers). Too small a step changes nothing; too large a one pushes the model off its distribution, where
it tells the responses apart no better than chance. The KL this costs is measured by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pluralign.data.collate import PairwiseCollator
from pluralign.errors import ConfigError
from pluralign.models.logprobs import sequence_logps
from pluralign.personal.vectors import offset, site

DEFAULT_ALPHAS = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)


@dataclass
class Steering:
    """A steering offset α·σ·u at one layer; `vector()` is what is added to the layer's output."""

    layer: int | str
    direction: torch.Tensor  # unit norm [d]
    sigma: float
    alpha: float = 0.0
    search: dict[float, float] = field(default_factory=dict)  # α → criterion on the user's pairs

    def vector(self) -> torch.Tensor:
        return self.alpha * self.sigma * self.direction

    def apply(self, model: Any):
        """Context manager: `model` steered while it is open."""
        return offset(site(model, self.layer), self.vector())


def _batches(model: Any, tokenizer: Any, records: Sequence[Any], max_length: int, batch_size: int):
    collator = PairwiseCollator(tokenizer, max_length=max_length)
    device = next(model.parameters()).device
    for i in range(0, len(records), batch_size):
        batch = collator(list(records[i:i + batch_size]))
        yield {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def response_states(model: Any, tokenizer: Any, records: Sequence[Any], layer: int | str, *,
                    max_length: int = 256, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [n, d], rejected [n, d]): the output of `layer` averaged over each response's tokens."""
    module, captured = site(model, layer), []

    def hook(_m, _i, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    chosen, rejected = [], []
    handle = module.register_forward_hook(hook)
    try:
        for batch in _batches(model, tokenizer, records, max_length, batch_size):
            captured.clear()
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            mask = batch["completion_mask"].to(captured[0].dtype)[..., None]
            means = (captured[0] * mask).sum(1) / mask.sum(1).clamp(min=1)
            b = len(means) // 2
            chosen.append(means[:b].float())
            rejected.append(means[b:].float())
    finally:
        handle.remove()
    return torch.cat(chosen), torch.cat(rejected)


def direction(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(u, σ): the unit mass-mean difference mean(chosen) − mean(rejected) and the standard deviation of
    every state's projection on it."""
    diff = chosen.mean(0) - rejected.mean(0)
    norm = diff.norm()
    if not torch.isfinite(norm) or norm <= 0:
        raise ConfigError("PAS: the user's chosen and rejected responses have the same mean state; no direction")
    u = diff / norm
    sigma = float((torch.cat([chosen, rejected]) @ u).std())
    return u, sigma


@torch.no_grad()
def agreement(model: Any, tokenizer: Any, records: Sequence[Any], *, max_length: int = 256,
              batch_size: int = 32) -> float:
    """mean log σ(ℓ̄(chosen) − ℓ̄(rejected)) over the records, ℓ̄ the per-token mean log-probability."""
    total = []
    for batch in _batches(model, tokenizer, records, max_length, batch_size):
        sums, lengths = sequence_logps(model, batch)
        mean = sums / lengths.clamp(min=1)
        b = len(mean) // 2
        total.append(torch.nn.functional.logsigmoid(mean[:b] - mean[b:]))
    return float(torch.cat(total).mean())


def fit(model: Any, tokenizer: Any, records: Sequence[Any], *, layer: int | str = 0,
        alphas: Sequence[float] = DEFAULT_ALPHAS, max_length: int = 256) -> Steering:
    """PAS for one user: direction from the user's pairs, then α searched on them (see the module doc)."""
    records = list(records)
    if len(records) < 2:
        raise ConfigError(f"PAS needs at least 2 of the user's preference pairs, got {len(records)}")
    if any(not hasattr(r, "chosen") for r in records):
        raise ConfigError("PAS needs pairwise records (prompt, chosen, rejected) of the user")
    u, sigma = direction(*response_states(model, tokenizer, records, layer, max_length=max_length))
    steering = Steering(layer, u, sigma)
    for alpha in alphas:
        steering.alpha = float(alpha)
        with steering.apply(model):
            steering.search[float(alpha)] = agreement(model, tokenizer, records, max_length=max_length)
    steering.alpha = max(steering.search, key=steering.search.get)
    return steering


def save(model_dir: str | Path, steerings: Mapping[str, Steering]) -> None:
    """Store per-user steering vectors α·σ·u with a saved model (the `person_vectors` conditioning scheme),
    so that decoding with `user=…` (API, CLI, server) applies that user's steering."""
    from pluralign.personal.conditioned import save_vectors
    from pluralign.personal.vectors import PersonVectors

    if not steerings:
        raise ConfigError("no steering to save")
    layers = {str(s.layer) for s in steerings.values()}
    if len(layers) != 1:
        raise ConfigError(f"steerings of one model must share a layer, got {sorted(layers)}")
    table = PersonVectors(list(steerings), len(next(iter(steerings.values())).direction))
    with torch.no_grad():
        table.raw.copy_(torch.stack([s.vector().float() for s in steerings.values()]))
    save_vectors(model_dir, table, {"on": "user", "layer": next(iter(steerings.values())).layer, "user_groups": {},
                                    "pas": {u: {"alpha": s.alpha, "sigma": s.sigma} for u, s in steerings.items()}})
