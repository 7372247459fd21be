"""Training: the one loop (`loop.train`), checkpoints (`state`), cached reference log-probs
(`reference`) and recipes that wire data → model → loss → loop.

    from pluralign.train import run_preference
    result = run_preference(model="runs/sft/model", data=["pairs.jsonl"], loss="dpo",
                            loss_params={"beta": 0.1}, loop={"learning_rate": 5e-7, "batch_size": 8})
    result.model_dir  # a HF-format model directory

    from pluralign.train import run_reward  # a reward model (Bradley–Terry, multi-objective, PAL, …)
    rm = run_reward(model="runs/sft/model", data=["pairs.jsonl"], model_type="bt", output_dir="runs/rm")

    from pluralign.train import run_online  # generate → score → learn (GRPO, RLOO, PPO, online DPO, RSFT, …)
    result = run_online(algorithm="grpo", model="runs/sft/model", prompts=["Hi!"], rewards=[my_reward_fn])

Every `run_*` takes its recipe's config as a config object, a mapping of its fields or a YAML path, and
keyword arguments, which override the config's fields (`run_preference("dpo.yaml", output_dir="runs/b")`).
Recipes are imported on use, so `import pluralign.train` stays light.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pluralign.errors import ConfigError

if TYPE_CHECKING:  # recipes are imported on use, so `import pluralign.train` stays light
    from pluralign.train.recipes.common import RecipeResult


def _plain(value: Any) -> Any:
    """A config object given as a field's value (`loop=LoopConfig(...)`) as the mapping YAML would hold."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def config_of(cls: type, config: Any, kwargs: dict[str, Any]) -> Any:
    """A `cls` from what a Python caller gives a `run_*` function: a `cls`, a mapping of its fields, a YAML
    path or nothing, each overridden by `kwargs`. Anything else is a `ConfigError` naming `config`
    (a mapping used to reach `Path()` and fail there with a bare TypeError)."""
    from pluralign.config import from_dict, merge, read_yaml

    if isinstance(config, cls) and not kwargs:
        return config
    if config is None or isinstance(config, cls):
        data = dataclasses.asdict(config) if config is not None else {}
    elif isinstance(config, Mapping):
        data = {k: _plain(v) for k, v in config.items()}
    elif isinstance(config, str | os.PathLike):
        data = read_yaml(config)
    else:
        raise ConfigError(f"config: expected a {cls.__name__}, a mapping of its fields or a YAML path, "
                          f"got {type(config).__name__}", field="config")
    return from_dict(cls, merge(data, {k: _plain(v) for k, v in kwargs.items()}))


def run_preference(config: Any = None, **kwargs: Any) -> RecipeResult:
    """Run the preference recipe from a `PreferenceConfig`, a mapping, a YAML path and/or keyword arguments;
    returns a `RecipeResult` (the trained model's `model_dir`, `run_dir`, the loop's `train` result)."""
    from pluralign.train.recipes import preference

    return preference.run(config_of(preference.PreferenceConfig, config, kwargs))


def run_sft(config: Any = None, **kwargs: Any) -> RecipeResult:
    """Run supervised fine-tuning from an `SFTConfig`, a mapping, a YAML path and/or keyword arguments;
    returns a `RecipeResult` (the trained model's `model_dir`, `run_dir`, the loop's `train` result)."""
    from pluralign.train.recipes import sft

    return sft.run(config_of(sft.SFTConfig, config, kwargs))


def run_reward(config: Any = None, **kwargs: Any) -> RecipeResult:
    """Train a reward model (model_type bt, multi, pal, …: `RewardConfig`) from a config object, a mapping,
    a YAML path and/or keyword arguments; returns a `RecipeResult` whose `model_dir` loads with
    `pluralign.reward.load_reward_model`."""
    from pluralign.train.recipes import reward

    return reward.run(config, **kwargs)


def run_online(config: Any = None, *, prompts: Any = None, rewards: Any = None, **kwargs: Any) -> RecipeResult:
    """Run an online recipe (grpo, gspo, rloo, reinforce_pp, ppo, online_dpo, rsft) from an `OnlineConfig`,
    a mapping, a YAML path and/or keyword arguments. `prompts`: a list of texts or chat messages instead of
    `data` files; `rewards`: a list of Python reward callables / objects, one per entry of the config's
    `rewards` (default: one). Returns a `RecipeResult` (the trained policy's `model_dir`, `run_dir`, `train`)."""
    from pluralign.decode.api import check_prompts
    from pluralign.train.recipes import online

    if prompts is not None:
        check_prompts(prompts)  # a lone text would otherwise train on its characters, one prompt each
    if rewards is not None and (callable(rewards) or hasattr(rewards, "score") or isinstance(rewards, str)
                                or not hasattr(rewards, "__iter__")):
        raise ConfigError(f"rewards: expected a list of reward callables / objects, got {type(rewards).__name__}; "
                          "wrap a single reward in a list", field="rewards")
    rewards = list(rewards) if rewards is not None else None
    if config is None and rewards is not None and "rewards" not in kwargs:
        kwargs["rewards"] = [{"source": f"python:{getattr(r, '__name__', type(r).__name__)}"} for r in rewards]
    return online.run(config_of(online.OnlineConfig, config, kwargs), prompts=list(prompts) if prompts is not None else None,
                      reward_objects=rewards)


__all__ = ["config_of", "run_online", "run_preference", "run_reward", "run_sft"]
