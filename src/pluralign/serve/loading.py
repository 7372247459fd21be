"""What a server decodes with, loaded once before it answers: the policy (with any conditioning scheme it was
saved with), the named reward sources, the extra models of fusion decoders, on the serving device."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pluralign.serve.config import ServeConfig


@dataclass
class Loaded:
    """What the worker decodes with: policy, tokenizer, named reward sources (first: default), extra
    models for fusion decoders, and the id clients use."""

    model: Any
    tokenizer: Any
    name: str
    rewards: dict[str, Any] = field(default_factory=dict)
    models: list[Any] = field(default_factory=list)


def named_reward(spec: str) -> tuple[str, str]:
    """'NAME=SOURCE' -> (NAME, SOURCE); a bare source is named 'gold', module:function, or its directory."""
    name, eq, source = spec.partition("=")
    if eq and name.isidentifier() and not Path(spec).exists():
        return name, source
    return (spec if spec == "gold" or ":" in spec and not Path(spec).exists() else Path(spec).resolve().name), spec


def load(cfg: ServeConfig) -> Loaded:
    """Load what `cfg` names. Policies load through `decode.steer.load_policy`, so a model saved with a
    conditioning scheme comes with it attached, as in `pluralign decode`."""
    from pluralign.decode.cli import check_same_vocab
    from pluralign.decode.rewards import load_reward
    from pluralign.decode.steer import load_policy

    device = serving_device(cfg.device)

    def policy(path: str) -> tuple[Any, Any]:
        model, tok = load_policy(path)  # a directory, a .gguf file or a hub id
        return (model.to(device) if device is not None else model), tok

    model, tokenizer = policy(cfg.model)
    rewards = {name: load_reward(src) for name, src in map(named_reward, cfg.rewards)}
    models = []
    for path in cfg.models:  # as in `pluralign decode`: fusion adds log-probs token id by token id
        extra, extra_tokenizer = policy(path)
        check_same_vocab(tokenizer, extra_tokenizer, cfg.model, path)
        models.append(extra)
    return Loaded(model=model, tokenizer=tokenizer, name=cfg.served_name or model_name(cfg.model),
                  rewards=rewards, models=models)


def model_name(model: str) -> str:
    """The id clients use by default: the model directory's name, a GGUF file's name without .gguf, or the
    hub id as given."""
    path = Path(model)
    if not path.exists():
        return model
    path = path.resolve()
    return path.stem if path.suffix.lower() == ".gguf" else path.name


def serving_device(device: str) -> Any:
    """The torch device the models are served on: `device` checked as every command's is (`resolve_device`:
    an error naming a bad device or a GPU that is not there, where `model.to` gave torch's traceback after
    the weights had loaded); by default CUDA when available, else None (the CPU, where models load)."""
    import torch

    from pluralign.models.load import resolve_device

    if device:
        return resolve_device(device)
    return torch.device("cuda") if torch.cuda.is_available() else None
