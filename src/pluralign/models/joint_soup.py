"""Rewarded soups trained in one run: one set of weights per objective, mixed by a weight vector drawn at
every step (parameter-space conditioning: CLP, Wang et al., EMNLP Findings 2024, "Conditional Language
Policy: A General Framework for Steerable Multi-Objective Finetuning"; Pareto manifold learning,
Dimitriadis et al., ICML 2023).

A rewarded soup (`pluralign.models.soup`) trains one expert per objective alone and interpolates their
weights per request, θ(λ) = Σ_k λ_k θ_k. Between the experts the soup stays near the chord of their
fronts, while a model trained at λ itself can reach far above it. Here the members are trained together
for what they are used for: at each optimizer step a weight vector λ is drawn (a vertex of the simplex
with probability ``vertex_prob``, else Dirichlet(``alpha``)), the model runs with θ(λ) and the loss is the
λ-weighted sum of the per-objective losses (the ``weighted`` combiner), so every member learns from every
step in proportion to its weight. One run at the cost of one model; the result is a plain soup directory,
steered per request by `weights` like any soup.

Every trainable tensor is held K times (``torch.nn.utils.parametrize``: member 0 is the original
parameter, members 1..K−1 a stacked extra parameter) — except LoRA's A matrices, which the members share:
with A shared, member k's update is B_k A and the mix Σ λ_k B_k A is linear in λ, so interpolating the
members' merged weights at inference gives exactly the model trained at λ. (Mixing A and B separately
would give (Σ λ B_k)(Σ λ A_k), which no weight soup reproduces.)

Draws depend only on (``seed``, optimizer step), so every process and a resumed run draw the same λ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from pluralign.conditioning import Scheme, register
from pluralign.errors import ConfigError

SHARED = ("lora_A", "lora_embedding_A")  # LoRA factors the members share (see the module docstring)


class _Members(nn.Module):
    """A parametrization: member 0 is the parametrized tensor itself, members 1..K−1 are ``extra``
    [K−1, *shape]; the tensor the model sees is Σ_k λ_k θ_k with λ = ``scheme.mix``."""

    def __init__(self, original: torch.Tensor, k: int, scheme: JointSoup):
        super().__init__()
        self.extra = nn.Parameter(original.detach().clone().unsqueeze(0).repeat(k - 1, *[1] * original.dim()))
        self._scheme = [scheme]  # in a list: not a submodule, and not copied with the model's modules

    def forward(self, first: torch.Tensor) -> torch.Tensor:
        w = self._scheme[0].mix.to(device=first.device, dtype=first.dtype)
        return w[0] * first + torch.einsum("k,k...->...", w[1:], self.extra)

    def member(self, first: torch.Tensor, k: int) -> torch.Tensor:
        return first if k == 0 else self.extra[k - 1]


def draw_weights(k: int, step: int, *, seed: int, alpha: float, vertex_prob: float) -> torch.Tensor:
    """The mixing weights of optimizer step `step`: a uniformly chosen vertex with probability
    `vertex_prob`, else a Dirichlet(alpha) draw; a function of (seed, step) only."""
    rng = np.random.default_rng([int(seed), int(step)])
    if rng.random() < vertex_prob:
        return torch.eye(k, dtype=torch.float32)[int(rng.integers(k))]
    return torch.as_tensor(rng.dirichlet([alpha] * k), dtype=torch.float32)


@register("joint_soup")
class JointSoup(Scheme):
    """Training-time scheme of the preference recipe (``objectives.conditioning: joint_soup``); the saved
    model is a `soup` directory. Parameters: ``alpha`` (Dirichlet concentration, 1 = uniform on the
    simplex), ``vertex_prob`` (share of steps at a single objective), ``seed``."""

    reads = ("weights",)
    model_level = True

    def __init__(self, objectives: Sequence[str] = (), *, alpha: float = 1.0, vertex_prob: float = 0.25, seed: int = 0):
        super().__init__(objectives, alpha=float(alpha), vertex_prob=float(vertex_prob), seed=int(seed))
        if len(self.objectives) < 2:
            raise ConfigError(f"objectives.conditioning=joint_soup: a soup needs at least two objectives, got {self.objectives}")
        if not alpha > 0 or not 0.0 <= vertex_prob <= 1.0:
            raise ConfigError("objectives.conditioning_params: joint_soup needs alpha > 0 and 0 <= vertex_prob <= 1, "
                              f"got alpha={alpha}, vertex_prob={vertex_prob}")
        k = len(self.objectives)
        self.uniform = torch.full((k,), 1.0 / k)
        self.mix = self.uniform
        self._mixed: list[tuple[nn.Module, str]] = []
        self._members: list[list[torch.Tensor]] = []  # per mixed tensor (as `_mixed`), its K members

    # --- training
    def install(self, model: Any) -> None:
        targets = [(module, name) for path, module in model.named_modules()
                   for name, p in module.named_parameters(recurse=False)
                   if p.requires_grad and not any(s in f"{path}.{name}" for s in SHARED)]
        if not targets:
            raise ConfigError("objectives.conditioning=joint_soup: the model has no trainable weights to hold per objective")
        # A tensor tied between modules (input embeddings and LM head) gets one set of members, shared by
        # every module that holds it: members of its own per module would train the tie apart, and the
        # saved (tied) model would keep only one module's members.
        shared: dict[int, _Members] = {}
        for module, name in targets:
            tensor = getattr(module, name)
            if id(tensor) not in shared:  # made once: each makes K−1 copies of the tensor
                shared[id(tensor)] = _Members(tensor, len(self.objectives), self)
            parametrize.register_parametrization(module, name, shared[id(tensor)])
        self._mixed = targets

    def before_step(self, step: int) -> None:
        p = self.params
        self.mix = draw_weights(len(self.objectives), step, seed=p["seed"], alpha=p["alpha"], vertex_prob=p["vertex_prob"])

    def wrap_step(self, step: Callable, *, training: bool) -> Callable:
        """The step with the model at θ(λ) and the batch's per-objective losses weighted by λ (the step's
        draw in training, uniform weights in evaluation)."""

        def mixed_step(model, batch):
            w = self.mix if training else self.uniform
            with self.mixing(w):
                return step(model, batch | {"weights": w.expand(batch["signs"].shape[0], -1)})

        return mixed_step

    @contextlib.contextmanager
    def mixing(self, weights: torch.Tensor) -> Iterator[None]:
        saved, self.mix = self.mix, weights
        try:
            yield
        finally:
            self.mix = saved

    def detach(self, model: Any) -> None:
        """Keep each member's tensors and leave member 0 in the model, without parametrizations."""
        self._members = []
        for module, name in self._mixed:
            members: _Members = module.parametrizations[name][0]
            first = module.parametrizations[name].original
            self._members.append([members.member(first, k).detach().clone() for k in range(len(self.objectives))])
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)

    def save_members(self, model: Any, out: Path, save_member: Callable[[Any, Path], Any]) -> list[Path]:
        """Write each member (the model holding member k's tensors) with `save_member(model, dir)` under
        ``out/members/<objective>`` and return those directories (`models.soup.save_soup` makes the soup of
        them); the model ends as member 0. Under several processes every one calls it: `save_member` may
        gather sharded weights."""
        dirs = []
        for k, objective in enumerate(self.objectives):
            self._load_member(k)
            dirs.append(out / "members" / objective)
            save_member(model, dirs[-1])
        self._load_member(0)
        return dirs

    @torch.no_grad()
    def _load_member(self, k: int) -> None:
        for (module, name), members in zip(self._mixed, self._members, strict=True):
            getattr(module, name).copy_(members[k])
