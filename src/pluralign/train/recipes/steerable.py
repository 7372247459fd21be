"""`pluralign train dpa | soup | map`: the multi-objective methods that are more than one preference run,
as recipes with typed configs (the methods themselves are in `pluralign.train.steerable`).

- ``dpa``: DPA's rejection-sampling fine-tuning rounds (Wang et al., ACL 2024): prompts from ``data``,
  N samples per prompt under a sampled direction v, the best by vᵀr of ``reward`` kept, SFT with v
  stated in the prompt; the model decodes with ``direction=…`` / ``weights=…`` per request.
- ``soup``: rewarded soups (Ramé et al., NeurIPS 2023): one preference run per objective of
  ``objectives.names`` on that objective's pairs (rated records: the signed pairs with that objective's
  one-hot weight, so the members share one reference pass), every member with the same settings, then a
  soup directory whose weights are interpolated per request. With ``joint: true`` the members train
  together in one run instead (`pluralign.models.joint_soup`: each step mixes them by a drawn weight).
- ``map``: a MAP palette (Wang et al., ICLR 2025) at training time: λ* solving the palette's targets on
  rated samples of the base policy (``data``), pairs ordered by λ*ᵀr, then the configured preference loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pluralign.config import option
from pluralign.data.records import Rated
from pluralign.errors import ConfigError
from pluralign.train.loop import LoopConfig
from pluralign.train.recipes.common import ModelTrainingConfig, RecipeResult, check_spares_inputs
from pluralign.train.recipes.multiobjective import ObjectivesConfig
from pluralign.train.recipes.preference import PreferenceConfig, load_data
from pluralign.train.recipes.preference import run as run_preference


@dataclass
class DPAConfig(ModelTrainingConfig):
    """DPA's rounds; the model-training settings (LoRA, dtype, checkpointing, …) are each round's SFT's."""

    model: str = option("", help="Model to start from: a local model directory or a hub id.")
    max_length: int = option(512, help="Longest prompt+response in tokens in fine-tuning.")
    packing: bool = option(False, help="Padding-free batches in each round's SFT.")
    gradient_checkpointing: bool = option(False, help="Recompute activations in each round's SFT backward (less memory, about a third more compute).")
    data: list[str] = option(default_factory=list, help="File(s) whose records' prompts are sampled from (any record kind with a `prompt`; chat prompts as message lists).")
    objectives: list[str] = option(default_factory=list, help="Objectives the direction v weighs, in the order of the reward's scores.")
    reward: str = option("", help="Multi-objective reward scoring the objectives: gold (sandbox attributes), module:function (one column per objective: named by the function's `objectives` attribute, else taken in the order of `objectives`), or a reward-model directory; a reward with named objectives must include every name in `objectives`.")
    output_dir: str = option("runs/dpa", help="Run directory; round t trains into <output_dir>/round<t> and the last round's model is the result.")
    rounds: int = option(2, help="Rejection-sampling fine-tuning rounds (T).")
    n: int = option(4, help="Samples per prompt and round; the best by vᵀr is kept (N).")
    angles: list[float] = option(default_factory=lambda: [0.0, 90.0], help="Two objectives: the range of the direction's angle θ in degrees, v = (cos θ, sin θ); more objectives: |N(0, I)| normalised.")
    max_new_tokens: int = option(64, help="Longest sampled response in tokens.")
    max_prompts: int = option(0, help="Use at most this many prompts per round (0: all).")
    loop: LoopConfig = option(default_factory=LoopConfig, help="Training-loop settings of each round's SFT.")

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"'rounds' must be at least 1, got {self.rounds}")
        if self.n < 1:
            raise ConfigError(f"'n' must be at least 1, got {self.n}")
        if len(self.angles) != 2 or not all(np.isfinite(self.angles)) or self.angles[0] > self.angles[1]:
            raise ConfigError(f"'angles' must be [low, high] in degrees with low <= high, got {self.angles}")


def run_dpa(config: Any = None, **kwargs: Any) -> RecipeResult:
    """DPA from a `DPAConfig`, a mapping of its fields or a YAML path, overridden by keyword arguments
    (`pluralign.train.config_of`: a mapping used to fail with an AttributeError)."""
    from pluralign.data.io import read_records
    from pluralign.train import config_of
    from pluralign.train.steerable import dpa

    config = config_of(DPAConfig, config, kwargs)

    _need(config.model, "model", "a local model directory or a hub id")
    _need(config.data, "data", "one or more files of prompts")
    _need(config.reward, "reward", "gold, module:function or a reward-model directory")
    if len(config.objectives) < 2:
        raise ConfigError(f"'objectives': DPA trades off at least two objectives, got {config.objectives}")
    prompts = [r.prompt for path in config.data for r in read_records(path)]
    prompts = list({_key(p): p for p in prompts}.values())[: config.max_prompts or None]
    if not prompts:
        raise ConfigError(f"'data' {config.data}: no prompts")
    settings = dataclasses.asdict(config)
    last = dpa(config.model, prompts, config.objectives, objective_reward(config.reward, config.objectives),
               config.output_dir, rounds=config.rounds, n=config.n, loop=dataclasses.asdict(config.loop),
               seed=config.loop.seed, max_new_tokens=config.max_new_tokens, angles=tuple(config.angles),
               max_length=config.max_length,
               sft={f.name: settings[f.name] for f in dataclasses.fields(ModelTrainingConfig)
                    if f.name not in ("model", "max_length")})
    return RecipeResult(model_dir=Path(last), run_dir=Path(last).parent, train=None)


def objective_reward(spec: str, objectives: list[str]) -> Any:
    """The reward source `spec` restricted to `objectives`, in that order."""
    from pluralign.decode.rewards import FunctionReward, load_reward

    reward = load_reward(spec, "reward")
    names = list(getattr(reward, "objectives", None) or [])
    if not names:  # a module:function reward has no names: its columns are the objectives, in order
        return reward
    missing = [n for n in objectives if n not in names]
    if missing:
        raise ConfigError(f"'reward' {spec}: scores no objective(s) {missing}; it has {names or 'unnamed scores'}")
    cols = [names.index(n) for n in objectives]
    return FunctionReward(lambda p, y: reward.score(p, y)[:, cols], objectives)


@dataclass
class SoupConfig(PreferenceConfig):
    """The preference recipe's settings, applied to every member; ``objectives.names`` lists the soup's
    objectives (one member each)."""

    joint: bool = option(False, help="Train the members together in one run (rated records become signed pairs): each step mixes them by weights drawn on the simplex and trains the mix on the losses those weights scalarise (objectives.conditioning=joint_soup; CLP, Wang et al. 2024). loop.max_steps is then the whole run's.")


def _preference(config: PreferenceConfig, **changes: Any) -> PreferenceConfig:
    """The preference recipe's part of a derived config (a `SoupConfig`), with `changes`."""
    return PreferenceConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(PreferenceConfig)} | changes)


def run_soup(config: Any = None, **kwargs: Any) -> RecipeResult:
    """A rewarded (or joint) soup from a `SoupConfig`, a mapping of its fields or a YAML path, overridden by
    keyword arguments (`pluralign.train.config_of`)."""
    from pluralign.data.io import read_records, write_records
    from pluralign.models.soup import save_soup
    from pluralign.runs import RunDir
    from pluralign.train import config_of
    from pluralign.train.loop import announce_config
    from pluralign.train.recipes.preference import KINDS

    config = config_of(SoupConfig, config, kwargs)
    names = config.objectives.names
    if len(names) < 2:
        raise ConfigError(f"'objectives.names': a soup needs at least two objectives, got {names}")
    _need(config.data, "data", "rated records, or pairs carrying an `objective`")
    if config.objectives.conditioning != "none":  # the members' other objectives settings are theirs
        raise ConfigError(f"objectives.conditioning={config.objectives.conditioning}: a soup is steered by interpolating "
                          "its members (joint=true trains them together); leave objectives.conditioning unset",
                          field="objectives.conditioning")
    check_spares_inputs(config)  # the soup is saved to <output_dir>/model once every member has trained
    out = Path(config.output_dir)
    if config.joint:
        joint = dataclasses.replace(config.objectives, rated_pairs="signed", conditioning="joint_soup")
        return run_preference(_preference(config, objectives=joint))
    per_objective = ObjectivesConfig(names=list(names), rated_pairs="per_objective")
    pairs = load_data(config.data, KINDS["pairwise"], config.skip_invalid, per_objective)
    eval_pairs = load_data(config.eval_data, KINDS["pairwise"], config.skip_invalid, per_objective) if config.eval_data else []
    rated = all(isinstance(r, Rated) for path in config.data for r in read_records(path, skip_invalid=config.skip_invalid))
    # The members share one reference cache. On rated data every member trains on the same signed pairs
    # (one pair per two responses, a sign per objective) with its objective's one-hot weight, so the
    # reference pass over them is paid once for the whole soup, not once per member.
    shared = {"ref_cache_dir": config.ref_cache_dir or str(out / "ref_cache")}
    members = []
    for name in names:
        mine = [p for p in pairs if p.objective == name]
        if not mine:
            raise ConfigError(f"'objectives.names': objective {name!r} has no pairs in {config.data}")
        if rated:
            one_hot = {n: float(n == name) for n in names}
            # the user's other objectives settings (drop_ties, combine_params, ...) are every member's too
            mine_only = dataclasses.replace(config.objectives, rated_pairs="signed", weights=one_hot)
            # eval_data as given: its rated records become the same signed pairs, judged by this member's weights
            member = dataclasses.replace(config, output_dir=str(out / "members" / name), **shared, objectives=mine_only)
        else:
            data = write_records(out / "members" / f"{name}.jsonl", mine)
            theirs = [p for p in eval_pairs if p.objective == name]  # each member is evaluated on its objective
            evals = [str(write_records(out / "members" / f"{name}.eval.jsonl", theirs))] if theirs else []
            member = dataclasses.replace(config, data=[str(data)], eval_data=evals, output_dir=str(out / "members" / name),
                                         objectives=ObjectivesConfig(), **shared)
        members.append(run_preference(_preference(member)))
    soup = save_soup([m.model_dir for m in members], names, out / "model")
    # The soup's own run directory records how the soup was made (each member's is under members/).
    announce_config(config, RunDir(out), echo=False)
    return RecipeResult(model_dir=soup, run_dir=out, train=members[-1].train)


@dataclass
class MAPConfig(PreferenceConfig):
    """The preference recipe's settings; ``data`` holds rated samples of the base policy (records with
    ``ratings`` for every objective of ``palette``)."""

    palette: dict[str, float] = option(default_factory=dict, help="Target expected reward c_i per objective (MAP's value palette); the policy is trained toward p_0·exp(λ*ᵀr) with λ* meeting them.")
    palette_quantiles: dict[str, float] = option(default_factory=dict, help="Targets as quantiles in [0, 1] of each objective's ratings in `data` (e.g. {conciseness: 0.7}); used for objectives absent from `palette`.")


def run_map(config: Any = None, **kwargs: Any) -> RecipeResult:
    """MAP from a `MAPConfig`, a mapping of its fields or a YAML path, overridden by keyword arguments
    (`pluralign.train.config_of`)."""
    from pluralign.data.io import read_records, write_records
    from pluralign.runs import atomic_write_json
    from pluralign.train import config_of
    from pluralign.train.steerable import palette_pairs

    config = config_of(MAPConfig, config, kwargs)

    names = list(dict.fromkeys([*config.palette, *config.palette_quantiles]))
    if not names:
        raise ConfigError("set 'palette' (target per objective) or 'palette_quantiles'")
    _need(config.data, "data", "rated samples of the base policy")
    rated = []
    for path in config.data:
        records = read_records(path, skip_invalid=config.skip_invalid)
        _check_rated(records, names, str(path))
        rated += records
    x = np.array([[r.ratings[n] for n in names] for r in rated], dtype=float)
    targets = []
    for j, n in enumerate(names):
        if n in config.palette:
            targets.append(float(config.palette[n]))
            continue
        q = config.palette_quantiles[n]
        if not 0 <= q <= 1:
            raise ConfigError(f"'palette_quantiles.{n}' must be in [0, 1], got {q}")
        targets.append(float(np.quantile(x[:, j], q)))
    pairs, lam = palette_pairs(rated, names, targets)
    out = Path(config.output_dir)
    atomic_write_json(out / "palette.json", {"objectives": names, "targets": targets, "lambda": lam.tolist()})
    if not pairs:
        raise ConfigError(f"the base samples already meet the palette {dict(zip(names, targets, strict=True))} "
                          "(λ* = 0): there is nothing to prefer")
    data = write_records(out / "map_pairs.jsonl", pairs)
    base = {f.name: getattr(config, f.name) for f in dataclasses.fields(PreferenceConfig)}
    return run_preference(PreferenceConfig(**(base | {"data": [str(data)], "objectives": ObjectivesConfig()})))


def _check_rated(records: list, names: list[str], source: str) -> None:
    """MAP's data: rated records rating every palette objective. A file holds one kind of record, and its
    rated records rate one set of objectives (the data layer checks both), so a failure is the whole
    file's: named with its field, not one record at a time."""
    from pluralign.data.convert import rating_weights
    from pluralign.errors import DataError, PluralignError, Problem

    if not all(isinstance(r, Rated) for r in records):
        raise DataError([Problem(source, None, None, f"MAP needs rated records (`ratings`), got "
                                 f"{type(next(r for r in records if not isinstance(r, Rated))).__name__} records")])
    try:
        rating_weights(records, weights=dict.fromkeys(names, 1.0))  # its error names the missing objectives
    except PluralignError as e:
        raise DataError([Problem(source, None, "ratings", str(e))]) from None


def _need(value: Any, field: str, what: str) -> None:
    if not value:
        raise ConfigError(f"set '{field}' ({what})")


def _key(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else repr(prompt)
