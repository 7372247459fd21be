"""`pluralign sandbox build | feedback | eval`: the sandbox world from the command line."""

from __future__ import annotations

import argparse
import sys

from pluralign.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    sandbox = subparsers.add_parser("sandbox", help="the ground-truth sandbox: base model, simulated feedback, gold evaluation")
    sub = sandbox.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND")
    sandbox.set_defaults(func=lambda args: _usage(sandbox))

    build = sub.add_parser("build", help="build (or reuse from the cache) the sandbox base model")
    build.add_argument("--out", help="also copy the model into this directory")
    build.add_argument("--seed", type=int, default=0, help="seed of the world and of training (default 0)")
    build.add_argument("--tiny", action="store_true", help="the tiny test preset (seconds, weak model)")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(func=_build)

    from pluralign.sandbox.feedback import FEEDBACK_KINDS
    from pluralign.sandbox.users import population_names

    fb = sub.add_parser("feedback", help="simulated feedback from a population of users")
    fb.add_argument("--kind", required=True, choices=FEEDBACK_KINDS)
    fb.add_argument("--population", default="default", choices=population_names())
    fb.add_argument("--n", type=int, default=100, help="number of records")
    fb.add_argument("--out", required=True, help="output file (.jsonl, .json, .csv or .parquet)")
    fb.add_argument("--model", help="model directory to sample responses from (default: the world's grammar)")
    fb.add_argument("--seed", type=int, default=0)
    fb.add_argument("--k", type=int, help="--kind ranked: responses per prompt (default 4)")
    fb.add_argument("--temperature", type=float, help="override every group's Bradley-Terry temperature")
    fb.add_argument("--groups", help="comma-separated groups to draw annotators from (default: all, by share)")
    fb.add_argument("--judges-per-item", type=int, default=1,
                    help="different annotators who judge each prompt and its responses (several: their disagreement shows)")
    fb.add_argument("--rated-per-prompt", type=int,
                    help="--kind rated: responses to one prompt each annotator rates (default 1; several: data convert "
                    "can pair them, as it compares one person's ratings of one prompt)")
    fb.set_defaults(func=_feedback)

    ev = sub.add_parser("eval", help="gold attributes, utilities, KL to the base and win rates of a model")
    ev.add_argument("--model", required=True, help="model directory")
    ev.add_argument("--population", default="default", choices=population_names())
    ev.add_argument("--base", help="base model directory: adds KL(model || base) and win rates against it")
    ev.add_argument("--n-prompts", type=int, default=128)
    ev.add_argument("--samples", type=int, default=2, help="samples per prompt")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--user", help="also report the win rate of this user (an id like g1-u3)")
    ev.add_argument("--out", help="write the full result (per-user utilities included) as JSON here")
    ev.set_defaults(func=_eval)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _build(args: argparse.Namespace) -> int:
    from pluralign.runs import check_writable
    from pluralign.sandbox.base import SandboxConfig, build_base, read_manifest

    if args.seed < 0:  # numpy's streams take non-negative seeds: -1 was a ValueError traceback mid-build
        raise ConfigError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.out:
        check_writable(args.out, "--out", directory=True)
    config = SandboxConfig.tiny() if args.tiny else SandboxConfig()
    path = build_base(args.out, seed=args.seed, config=config, force=args.force, verbose=True)
    manifest = read_manifest(path)
    print(f"base model: {path}")
    print(f"weights sha256: {manifest['weights_sha256']}")
    return 0


def _feedback(args: argparse.Namespace) -> int:
    from pluralign.data.io import check_records_path
    from pluralign.sandbox.feedback import generate_file

    check_records_path(args.out, "--out")  # an unknown extension or an unwritable place: found once every record was made
    # Each shapes one kind's records; given with another kind it would be ignored without a word.
    one_kind = {"k": ("--k", "ranked"), "rated_per_prompt": ("--rated-per-prompt", "rated")}
    for name, (flag, kind) in one_kind.items():
        if getattr(args, name) is not None and args.kind != kind:
            raise ConfigError(f"{flag} shapes --kind {kind} feedback only, not {args.kind}")
    if args.temperature is not None and args.kind == "rated":  # ratings are gold attributes plus noise: no BT choice
        raise ConfigError("--temperature sets the Bradley-Terry temperature of choices; --kind rated draws no choice "
                          "(its ratings are the gold attributes plus noise), so it would be ignored")
    _check_model_dir(args.model)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else None
    given = {name: getattr(args, name) for name in one_kind if getattr(args, name) is not None}
    path = generate_file(args.out, args.kind, args.population, args.n, args.model, args.seed,
                         temperature=args.temperature, groups=groups, judges_per_item=args.judges_per_item, **given)
    print(f"wrote {args.n} {args.kind} records from population '{args.population}' to {path}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pluralign.runs import atomic_write_json, check_writable
    from pluralign.sandbox.gold import format_table, gold_eval

    for d in (args.model, args.base):
        _check_model_dir(d)
    if args.out:  # else found only once every prompt was sampled and scored
        check_writable(args.out, "--out")
    result = gold_eval(args.model, base=args.base, population=args.population, n_prompts=args.n_prompts,
                       n_samples=args.samples, seed=args.seed, user=args.user)
    print(format_table(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _check_model_dir(path: str | None) -> None:
    from pathlib import Path

    # A LoRA adapter saved with merge_lora=false has adapter_config.json in place of config.json; it loads too.
    if path is not None and not any((Path(path) / f).exists() for f in ("config.json", "adapter_config.json")):
        raise ConfigError(f"not a model directory (no config.json or adapter_config.json): {path}")

