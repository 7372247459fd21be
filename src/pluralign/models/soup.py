"""Rewarded soups (Ramé et al., NeurIPS 2023, "Rewarded soups: towards Pareto-optimal alignment by
interpolating weights fine-tuned on diverse rewards"; shared/specs/training.md §4.8).

One model per objective is fine-tuned from a shared initialisation θ_0; a request with weights λ on the
simplex is served by θ(λ) = Σ_i λ_i θ_i. When the members are LoRA fine-tunes saved merged, this is the
base plus the λ-weighted sum of their deltas, θ_0 + Σ λ_i (θ_i − θ_0), since Σ λ_i = 1. A soup directory
is the first member's model files plus ``conditioning.json`` naming every member's directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pluralign.conditioning import FILE, Condition, Scheme, register, save_state
from pluralign.errors import ConfigError


def interpolate(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ_i λ_i θ_i over floating-point tensors (others, e.g. integer buffers, come from the first member)."""
    if len(states) != len(weights):
        raise ConfigError(f"weights: {len(weights)} given for a soup of {len(states)} models")
    check_alike(states)
    out = {}
    for key in states[0]:
        first = states[0][key]
        if not torch.is_floating_point(first):
            out[key] = first
            continue
        acc = torch.zeros_like(first, dtype=torch.float32)
        for lam, s in zip(weights, states, strict=True):
            acc += float(lam) * s[key].float()
        out[key] = acc.to(first.dtype)
    return out


def check_alike(states: Sequence[Mapping[str, torch.Tensor]], names: Sequence[str] = ()) -> None:
    """A `ConfigError` naming the first member (by `names`, when given) whose parameters differ from member 0's
    in name or shape: members of different models failed on the first request, in torch's broadcasting."""
    first = states[0]
    for i, s in enumerate(states[1:], 1):
        who = f"soup member {i}" + (f" ({names[i]})" if len(names) > i else "")
        if list(s) != list(first):
            raise ConfigError(f"{who} has different parameters from member 0")
        if (key := next((k for k in first if s[k].shape != first[k].shape), None)) is not None:
            raise ConfigError(f"{who}: parameter {key} has shape {tuple(s[key].shape)}, member 0's "
                              f"{tuple(first[key].shape)}; a soup's members are fine-tunes of one model")


def merged(model: Any) -> Any:
    """`model` with its LoRA adapters merged into the weights (a plain model as it is). A soup mixes the
    members' merged weights: mixing the factors A and B apart gives (Σ λ_i B_i)(Σ λ_i A_i), which carries
    cross terms B_i A_j and is no member's delta at a one-hot λ, where Σ λ_i B_i A_i is the soup's."""
    from pluralign.models.load import is_peft_model

    return model.merge_and_unload() if is_peft_model(model) else model


def member_state(model_dir: str | Path) -> dict[str, torch.Tensor]:
    from pluralign.models.load import load_model

    return {k: v.detach().clone() for k, v in merged(load_model(str(model_dir))).state_dict().items()}


@register("soup")
class Soup(Scheme):
    """Per-request interpolation of the members' weights (``params["members"]``, one directory per
    objective, in objective order)."""

    reads = ("weights",)
    model_level = True

    def __init__(self, objectives: Sequence[str] = (), *, members: Sequence[str] = ()):
        super().__init__(objectives, members=[str(m) for m in members])
        if len(members) != len(self.objectives):
            raise ConfigError(f"a soup needs one member per objective: {len(members)} members for {self.objectives}")
        self._states: list[dict[str, torch.Tensor]] | None = None

    def load_members(self, states: Sequence[Mapping[str, torch.Tensor]] | None = None, base: Path | None = None) -> None:
        if states is None:
            states = [member_state(_resolve(m, base)) for m in self.params["members"]]
        check_alike(states, self.params["members"])  # when loaded, not on the first request
        self._states = [dict(s) for s in states]

    def attach(self, model: Any, model_dir: Path) -> Any:
        self.load_members(base=model_dir)
        return merged(model)  # members saved as LoRA adapters (merge_lora=false) are held merged, as the model

    @contextlib.contextmanager
    def steer(self, model: Any, condition: Condition) -> Iterator[Any]:
        if self._states is None:
            self.load_members()
        k = len(self.objectives)
        weights = condition.weights if condition.weights is not None else (1.0 / k,) * k
        saved = {n: t.detach().clone() for n, t in model.state_dict().items()}
        model.load_state_dict(interpolate(self._states, weights))
        try:
            yield model
        finally:
            model.load_state_dict(saved)


def _resolve(member: str, base: Path | None) -> Path:
    path = Path(member)
    if not path.is_absolute() and base is not None:
        path = (base / path).resolve()
    if not path.is_dir():
        raise ConfigError(f"soup member {member}: not a model directory")
    return path


def save_soup(member_dirs: Sequence[str | Path], objectives: Sequence[str], out_dir: str | Path) -> Path:
    """A soup directory: member 0's model and tokenizer files plus conditioning.json naming every member
    (paths relative to the soup directory when they share a parent). The files are copied, not loaded and
    saved again, and the directory is written under a temporary name and renamed into place."""
    from pluralign.runs import write_dir

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    members = [os.path.relpath(Path(m).resolve(), out.resolve()) for m in member_dirs]
    scheme = Soup(objectives, members=members)
    first = Path(member_dirs[0])
    if not first.is_dir():
        raise ConfigError(f"soup member {first}: not a model directory")

    def fill(tmp: Path) -> None:
        for f in first.iterdir():
            if f.is_file() and f.name != FILE:
                shutil.copy2(f, tmp / f.name)
        for name, text in save_state(scheme).items():
            (tmp / name).write_text(text, encoding="utf-8")

    return write_dir(out, fill)
