"""An eval config's model entries (`pluralign.evaluate.runner`): each checked when the config is read, so
that a mistake stops the run before any model generates, named by the config file, entry and key, and
loaded the same way when its turn comes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pluralign.errors import ConfigError


def require(cond: bool, where: str, msg: str) -> None:
    """A ConfigError "`where`: `msg`" unless `cond`."""
    if not cond:
        raise ConfigError(f"{where}: {msg}")


@contextlib.contextmanager
def at_key(where: str) -> Iterator[None]:
    """A ConfigError (or a TypeError from a bad keyword) inside names `where`, the config file and key."""
    try:
        yield
    except (TypeError, ConfigError) as e:
        raise ConfigError(f"{where}: {e}") from None


def check_model_path(spec: Any, where: str) -> None:
    """A missing model directory fails here, before any model generates, naming the config and key. A
    .gguf file is only checked to exist: resolving it converts it (done once, at generation)."""
    from pluralign.models.load import resolve

    require(isinstance(spec, str), where, f"must be a model directory, .gguf file, hub id or 'sandbox', got {spec!r}")
    if spec != "sandbox" and not (spec.lower().endswith(".gguf") and Path(spec).is_file()):
        resolve(spec, where)


def check_device(device: Any, where: str) -> str | None:
    """The config's `device` (None: the CPU), checked before any model loads: a list, a number or a boolean
    reached torch.device as a TypeError traceback, and a bad name failed without naming the config key."""
    from pluralign.errors import PluralignError
    from pluralign.models.load import resolve_device

    if device is None:
        return None
    require(isinstance(device, str) and device != "", where, f"must be a device name (cpu, cuda, cuda:1, auto), got {device!r}")
    try:
        resolve_device(device)
    except PluralignError as e:  # a bad name, or CUDA asked for where there is none
        raise ConfigError(f"{where}: {e}") from None
    return device


def model_path(spec: str) -> str:
    if spec == "sandbox":
        from pluralign.sandbox.base import build_base

        return str(build_base())
    return spec


def check_decoder(entry: dict, where: str) -> None:
    """A misspelt decoder, or one without what it steers by (`decode.api.missing_inputs`: best-of-N with no
    reward), stopped the run only when its entry's turn came, after the entries before it had generated,
    and without naming the file or entry (the latter told to give `--reward`, a flag eval has not)."""
    name = entry.get("decoder")
    if name is None:
        return
    from pluralign.decode.api import get, missing_inputs

    with at_key(f"{where}.decoder"):
        get(name)
    missing = missing_inputs(name, ["reward"] if entry.get("reward") is not None else [])
    beyond = [need for need in missing if "reward" not in need.split("|")]  # eval passes a reward only
    require(not beyond, f"{where}.decoder", f"{name!r} needs {' and '.join(beyond)}, which `pluralign eval` "
             "cannot give it (use `pluralign decode` or the Python API)")
    require(not missing, where, f"decoder {name!r} needs a reward: give the entry a 'reward' (gold, a reward-"
             "model directory or module:function)")


def entry_controls(entry: dict, gen: dict, where: str) -> Any:
    """An entry's decoding controls: the config's generation settings, then the entry's own `controls`
    (errors name `where`.controls, or `where` itself for the generation settings alone)."""
    from pluralign.decode.api import Controls

    given = entry.get("controls", {})
    where = f"{where}.controls" if entry else where
    require(isinstance(given, dict), where, f"must be a mapping of controls, got {given!r}")
    with at_key(where):
        return Controls(**{**gen, **given})


def reward_of(entry: dict, where: str) -> Any:
    """The entry's reward source, loaded (None without one)."""
    from pluralign.decode.rewards import as_reward, load_reward

    reward = entry.get("reward")
    if isinstance(reward, str):
        return load_reward(reward, f"{where}.reward")
    with at_key(f"{where}.reward"):  # `reward: 3` failed at its entry's turn, naming neither config nor key
        return as_reward(reward)


def check_reward_weights(reward: Any, controls: Any, where: str) -> None:
    """The entry's weights against its reward's objectives (`decode.rewards.weights_problem`, as decode and
    serve check them): a misspelt objective stopped the run once the entry's candidates had been drawn,
    naming neither the config nor the entry."""
    from pluralign.decode.rewards import weights_problem

    why = weights_problem(reward, controls.weights) if reward is not None else None
    require(not why, f"{where}.controls.weights", why)
