"""`pluralign train NAME --config FILE [key=value ...]`.

NAME is `sft`, an online recipe (`grpo`, `gspo`, `rloo`, `reinforce_pp`, `ppo`, `online_dpo`, `mnpo_rounds`, `rsft`:
generate from the policy, score, learn), a reward-model recipe (`rm`, `morm`, `pal`, `binary-rm`), a multi-objective recipe (`dpa`: directional
rejection-sampling rounds, `soup`: one member per objective, interpolated per request, `map`: a MAP
palette turned into DPO pairs), `preference` (the loss taken
from the config), or any registered preference loss (`dpo`, `ipo`, `kto`, `bco`, `lipo_lambda`,
`orpo`, `simpo`, …; `lipo` is short for `lipo_lambda`). A mixture is given with `loss=dpo:1,nll:0.2`.
`--help-config` lists every config field with its default and help.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
from pathlib import Path
from typing import Any

from pluralign.errors import ConfigError, PluralignError

# Reward-model recipes live in recipes/reward.py; each name fixes the config's model_type.
REWARD_MODEL_TYPES = {"rm": "bt", "morm": "multi", "pal": "pal", "binary-rm": "binary"}
ALIASES = {"lipo": "lipo_lambda", "online-dpo": "online_dpo", "reinforce++": "reinforce_pp", "raft": "rsft"}
ONLINE = ("grpo", "gspo", "rloo", "reinforce_pp", "ppo", "online_dpo", "mnpo_rounds", "rsft")
STEERABLE = {"dpa": ("DPAConfig", "run_dpa"), "soup": ("SoupConfig", "run_soup"), "map": ("MAPConfig", "run_map")}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train a model: sft, a preference loss (dpo, kto, …) or a reward model (rm, pal, …)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", help="sft | grpo | gspo | rloo | reinforce_pp | ppo | online_dpo | mnpo_rounds | rsft | rm | morm | pal | "
                   "binary-rm | dpa | soup | map | preference | a loss name (dpo, ipo, kto, …)")
    _options(p)
    # argparse cannot take positionals after options (`NAME --config F a=1`), so everything after NAME
    # is collected here and parsed again, intermixed, by `_options`.
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="key=value",
                   help="config overrides, dotted for nesting (loop.learning_rate=1e-6)")
    p.set_defaults(func=_train)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config; key=value arguments override it")
    parser.add_argument("--help-config", action="store_true", help="print every config field with its help and exit")


def recipe(name: str) -> tuple[type, Any, dict]:
    """(config class, run function, defaults implied by the name) of the recipe NAME."""
    name = ALIASES.get(name, name)
    if name == "sft":
        from pluralign.train.recipes import sft

        return sft.SFTConfig, sft.run, {}
    if name in ONLINE:
        from pluralign.train.recipes import online

        return online.OnlineConfig, online.run, {"algorithm": name}
    if name in STEERABLE:
        from pluralign.train.recipes import steerable

        config_cls, run_fn = STEERABLE[name]
        return getattr(steerable, config_cls), getattr(steerable, run_fn), {}
    if name in REWARD_MODEL_TYPES:
        try:
            reward = importlib.import_module("pluralign.train.recipes.reward")
        except ModuleNotFoundError as e:
            if e.name != "pluralign.train.recipes.reward":
                raise
            raise PluralignError(f"the reward-model recipes ('{name}') are not available: "
                                 "pluralign.train.recipes.reward is missing from this installation") from None
        return reward.RewardConfig, reward.run, {"model_type": REWARD_MODEL_TYPES[name]}
    from pluralign import losses
    from pluralign.train.recipes import preference

    if name == "preference":
        return preference.PreferenceConfig, preference.run, {}
    if "," not in name and ":" not in name and name not in {*losses.names(), *losses.aliases()}:
        recipes = ["sft", *ONLINE, *REWARD_MODEL_TYPES, *STEERABLE, "preference"]
        close = difflib.get_close_matches(name, recipes + list(losses.names()) + list(ALIASES), n=2)
        hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"unknown method {name!r}{hint}; recipes: {', '.join(recipes)}; or a preference loss "
                          "by name (`pluralign losses` lists them)")
    info = losses.describe(name)
    if info.kind not in preference.KINDS:
        raise ConfigError(f"'{name}' is a {info.kind} loss; train reward models with: pluralign train rm")
    return preference.PreferenceConfig, preference.run, {"loss": name}


def build_config(name: str, path: str | None, overrides: list[str]) -> Any:
    from pluralign.config import from_dict, merge, parse_overrides, read_yaml

    cls, _, implied = recipe(name)
    from_file = read_yaml(path) if path else {}
    given = parse_overrides(overrides, keep_text=True)
    for key, value in implied.items():
        # The command names the method; a config file naming another one is a mistake, not a default.
        if key in from_file and key not in given and from_file[key] != value:
            raise ConfigError(f"{path} sets {key}: {from_file[key]!r} but the command is `pluralign train {name}`; "
                              f"remove it from the file or override it with {key}=...")
    return from_dict(cls, merge(merge(implied, from_file), given))


def _train(args: argparse.Namespace) -> int:
    from pluralign.config import format_help, from_dict

    inner = argparse.ArgumentParser(prog=f"pluralign train {args.name}", add_help=False)
    _options(inner)
    # After NAME, -h/--help reaches this parser, not the outer one: it asks for this recipe's fields.
    inner.add_argument("-h", "--help", dest="help_config", action="store_true", help=argparse.SUPPRESS)
    inner.add_argument("overrides", nargs="*")
    rest = inner.parse_intermixed_args(args.rest)
    config_path = rest.config or args.config
    cls, run, implied = recipe(args.name)
    if args.help_config or rest.help_config:
        # The defaults this command runs with (`train pal` implies model_type=pal, and with it PAL's step limit).
        print(f"{cls.__name__} fields (set in --config FILE or as key=value):\n{format_help(cls, from_dict(cls, implied))}")
        return 0
    if not config_path and not rest.overrides:
        raise ConfigError(f"give a config: pluralign train {args.name} --config FILE [key=value ...] "
                          f"(see --help-config)")
    config = build_config(args.name, config_path, rest.overrides)
    result = run(config)
    where = getattr(result, "model_dir", None)
    if where is not None and _main_process():  # under `accelerate launch`, once for the run
        held = [name for name in ("config.yaml", "metrics.jsonl", "checkpoints/")
                if (Path(result.run_dir) / name.rstrip("/")).exists()]  # checkpoints only with loop.save_every
        print(f"model saved to {where} (run directory {result.run_dir}: {', '.join(held)})")
    return 0


def _main_process() -> bool:
    from pluralign.train.parallel import process_state

    return process_state().is_main_process
