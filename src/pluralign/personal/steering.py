"""PAS-style activation steering toward one user, training-free (Zhu et al. ICLR 2025, "Personality
Alignment of Large Language Models", Personality Activation Search).

PAS reads the activations of a model on answers that match a person and answers that do not, takes the
mass-mean difference as a direction, and adds a multiple of it at inference; the multiple is searched per
person. Here the person's answers are their preference pairs: the direction is the mean difference of the
hidden states (at one layer, averaged over the response tokens) between the user's chosen and rejected
responses, normalised; σ is the standard deviation of all those states projected on it; the offset added
to that layer's output is α·σ·u (PAS intervenes on selected heads' outputs; we steer the residual stream
at one layer, the simpler form of the same idea). α = 0 is the unchanged model.

α is searched on the user's pairs, PAS-style (its probes are fitted on 60% of a person's answers and judged
on the other 40%): the direction comes from a share of the pairs and α is judged on the rest, so a step
is not rewarded for fitting the very pairs the direction was read from. The criterion treats the steered
model as a DPO policy and the unsteered one as its reference: Δ(y) = log π_α(y|x) − log π_0(y|x) is the
steering's implicit reward of a response, and α is scored by mean log σ(Δ(chosen) − Δ(rejected)) on the
held-out pairs (log ½ at α = 0; higher when steering moves probability toward what the user chose rather
than what they rejected). Only the α whose cost stays within `max_kl` compete: the mean per-token
KL(steered ‖ unsteered) of the next-token distributions along the held-out responses (teacher-forced, so
no sampling). `Steering.search` keeps (criterion, KL) for every α.
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
    search: dict[float, tuple[float, float]] = field(default_factory=dict)  # α → (held-out implicit-reward agreement, token KL)

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
def pair_logps(model: Any, tokenizer: Any, records: Sequence[Any], *, max_length: int = 256,
               batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [n], rejected [n]): each response's summed log-probability under `model`."""
    chosen, rejected = [], []
    for batch in _batches(model, tokenizer, records, max_length, batch_size):
        sums = sequence_logps(model, batch)[0].float()
        b = len(sums) // 2
        chosen.append(sums[:b])
        rejected.append(sums[b:])
    return torch.cat(chosen), torch.cat(rejected)


def implicit_agreement(steered: tuple[torch.Tensor, torch.Tensor], plain: tuple[torch.Tensor, torch.Tensor]) -> float:
    """mean log σ(Δ(chosen) − Δ(rejected)), Δ = steered − unsteered summed log-probability."""
    margin = (steered[0] - plain[0]) - (steered[1] - plain[1])
    return float(torch.nn.functional.logsigmoid(margin).mean())


@torch.no_grad()
def token_kl(model: Any, tokenizer: Any, records: Sequence[Any], steering: Steering, *, max_length: int = 256,
             batch_size: int = 8) -> float:
    """Mean per-token KL(steered ‖ unsteered) of the next-token distributions at the response tokens of the
    records' chosen and rejected responses (teacher-forced)."""
    total, count = 0.0, 0.0
    for batch in _batches(model, tokenizer, records, max_length, batch_size):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        plain = torch.log_softmax(model(**inputs).logits[:, :-1].float(), -1)
        with steering.apply(model):
            steered = torch.log_softmax(model(**inputs).logits[:, :-1].float(), -1)
        kl = (steered.exp() * (steered - plain)).sum(-1)  # [N, T-1]: predicting token t+1
        mask = batch["completion_mask"][:, 1:].to(kl.dtype)
        total, count = total + float((kl * mask).sum()), count + float(mask.sum())
    return total / max(count, 1.0)


def fit(model: Any, tokenizer: Any, records: Sequence[Any], *, layer: int | str = 0,
        alphas: Sequence[float] = DEFAULT_ALPHAS, holdout: float = 0.4, max_kl: float | None = 0.02,
        seed: int = 0, max_length: int = 256) -> Steering:
    """PAS for one user (see the module doc): the direction from a (1 − `holdout`) share of the user's
    pairs, then the α of the grid with the best implicit-reward agreement on the other pairs among those
    whose mean per-token KL on them is at most `max_kl` (None: no budget). α = 0 always qualifies."""
    records = list(records)
    if len(records) < 2:
        raise ConfigError(f"PAS needs at least 2 of the user's preference pairs, got {len(records)}")
    if any(not hasattr(r, "chosen") for r in records):
        raise ConfigError("PAS needs pairwise records (prompt, chosen, rejected) of the user")
    if not 0.0 < holdout < 1.0:
        raise ConfigError(f"PAS holdout must be in (0, 1), got {holdout}")
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = min(max(1, round(holdout * len(records))), len(records) - 1)
    held, fitting = [records[i] for i in order[:n_held]], [records[i] for i in order[n_held:]]
    u, sigma = direction(*response_states(model, tokenizer, fitting, layer, max_length=max_length))
    steering = Steering(layer, u, sigma)
    scores, plain = {}, pair_logps(model, tokenizer, held, max_length=max_length)
    for alpha in alphas:
        steering.alpha = float(alpha)
        with steering.apply(model):
            agree = implicit_agreement(pair_logps(model, tokenizer, held, max_length=max_length), plain)
        kl = token_kl(model, tokenizer, held, steering, max_length=max_length) if alpha != 0 else 0.0
        scores[float(alpha)] = (agree, kl)
    steering.search = scores
    allowed = [a for a, (_, kl) in scores.items() if max_kl is None or kl <= max_kl or a == 0.0]
    steering.alpha = max(allowed, key=lambda a: scores[a][0]) if allowed else 0.0
    return steering


def save(model_dir: str | Path, steerings: Mapping[str, Steering]) -> None:
    """Store per-user steering vectors α·σ·u with a saved model (the `person_vectors` conditioning scheme),
    so that decoding with `user=…` (API, CLI, server) applies that user's steering. Users saved to the model
    before (one `save` per user) keep their steering; a user saved again gets the new one."""
    from pluralign.personal.conditioned import load_vectors, save_vectors
    from pluralign.personal.vectors import PersonVectors

    if not steerings:
        raise ConfigError("no steering to save")
    layers = {str(s.layer) for s in steerings.values()}
    if len(layers) != 1:
        raise ConfigError(f"steerings of one model must share a layer, got {sorted(layers)}")
    layer = next(iter(steerings.values())).layer
    rows = {u: s.vector().float() for u, s in steerings.items()}
    pas = {u: {"alpha": s.alpha, "sigma": s.sigma} for u, s in steerings.items()}
    saved = load_vectors(model_dir)
    if saved is not None:
        # The model holds one table at one layer: writing a new one would silently drop every vector in it.
        old, index = saved
        if "pas" not in index:
            raise ConfigError(f"{model_dir} holds trained person vectors (per {index['on']}: "
                              f"{', '.join(old.names[:5])}{', …' if len(old.names) > 5 else ''}); PAS steering "
                              "would replace them: save it to a copy of the model")
        if str(index["layer"]) != str(layer):
            raise ConfigError(f"{model_dir} holds PAS steering at layer {index['layer']}; these are at layer "
                              f"{layer} and a model steers at one layer: save them to a copy of the model")
        rows = {u: old.get(u).float() for u in old.names if u not in rows} | rows
        pas = {u: v for u, v in index["pas"].items() if u not in pas} | pas
    table = PersonVectors(list(rows), len(next(iter(rows.values()))))
    with torch.no_grad():
        table.raw.copy_(torch.stack(list(rows.values())))
    save_vectors(model_dir, table, {"on": "user", "layer": layer, "user_groups": {}, "pas": pas})
