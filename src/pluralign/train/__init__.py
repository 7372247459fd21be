"""Training: the one loop (`loop.train`), checkpoints (`state`), cached reference log-probs
(`reference`) and recipes that wire data → model → loss → loop.

    from pluralign.train import run_preference
    result = run_preference(model="runs/sft/model", data=["pairs.jsonl"], loss="dpo",
                            loss_params={"beta": 0.1}, loop={"learning_rate": 5e-7, "batch_size": 8})
    result.model_dir  # a HF-format model directory

    from pluralign.train import run_online  # generate → score → learn (GRPO, RLOO, PPO, online DPO, RSFT, …)
    result = run_online(algorithm="grpo", model="runs/sft/model", prompts=["Hi!"], rewards=[my_reward_fn])

Recipes are imported on use, so `import pluralign.train` stays light.
"""

from __future__ import annotations

from typing import Any


def run_preference(config: Any = None, **kwargs: Any):
    """Run the preference recipe from a `PreferenceConfig`, a YAML path, or keyword arguments."""
    from pluralign.config import load
    from pluralign.train.recipes import preference

    if config is None:
        config = preference.from_kwargs(**kwargs)
    elif not isinstance(config, preference.PreferenceConfig):
        config = load(preference.PreferenceConfig, config)
    return preference.run(config)


def run_sft(config: Any = None, **kwargs: Any):
    """Run supervised fine-tuning from an `SFTConfig`, a YAML path, or keyword arguments."""
    from pluralign.config import from_dict, load
    from pluralign.train.recipes import sft

    if config is None:
        config = from_dict(sft.SFTConfig, kwargs)
    elif not isinstance(config, sft.SFTConfig):
        config = load(sft.SFTConfig, config)
    return sft.run(config)


def run_online(config: Any = None, *, prompts: Any = None, rewards: Any = None, **kwargs: Any):
    """Run an online recipe (grpo, gspo, rloo, reinforce_pp, ppo, online_dpo, rsft) from an `OnlineConfig`,
    a YAML path, or keyword arguments. `prompts`: texts or chat messages instead of `data` files;
    `rewards`: Python reward callables / objects, one per entry of the config's `rewards` (default: one)."""
    from pluralign.config import from_dict, load
    from pluralign.train.recipes import online

    if config is None:
        if rewards is not None and "rewards" not in kwargs:
            kwargs["rewards"] = [{"source": f"python:{getattr(r, '__name__', type(r).__name__)}"} for r in rewards]
        config = from_dict(online.OnlineConfig, kwargs)
    elif not isinstance(config, online.OnlineConfig):
        config = load(online.OnlineConfig, config)
    return online.run(config, prompts=prompts, reward_objects=list(rewards) if rewards is not None else None)


__all__ = ["run_online", "run_preference", "run_sft"]
