"""`pluralign demo`: the whole product on the built-in sandbox, in a few minutes on a laptop.

1. build (or reuse) the sandbox base model;
2. draw per-user pairwise feedback from a population with a conflicting minority;
3. align the base model toward one group with DPO (Rafailov et al. 2023) plus an NLL term on the chosen
   responses (RPO, Pang et al. 2024);
4. measure every group's gold utility and the KL to the base, before and after;
5. fit a shared Bradley–Terry reward model and a pluralistic PAL model (Chen et al. 2025) on the same
   feedback, and score each group's held-out pairs with both;
6. steer one unchanged model per request: the same prompts decoded under each group's weights;
7. write `runs/demo/` (config, feedback, metrics, samples, plots) and one HTML report.

Every number comes from the sandbox's gold attributes, so it is the truth, not a judge's opinion.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from pluralign import demo_report
from pluralign.config import dump_yaml, option
from pluralign.runs import (
    RunDir,
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
)


@dataclasses.dataclass
class DemoConfig:
    out: str = option("runs/demo", help="Run directory of the demo.")
    population: str = option("default", help="Sandbox population (see `pluralign.sandbox.population_names()`).")
    target_group: str = option("minority", help="The group the DPO model is aligned toward.")
    seed: int = option(0, help="Seed of the sandbox, the feedback and training.")
    n_pairs: int = option(1200, help="Per-user preference pairs drawn from the target group for DPO.")
    n_rm_pairs: int = option(1600, help="Per-user pairs from the whole population for the reward models.")
    loss: str = option("dpo:1,nll:0.2", help="Preference loss or mixture used to align toward the target group; the "
                       "default is DPO plus 0.2 x the chosen responses' NLL (RPO, Pang et al. 2024), which keeps the "
                       "tiny base model from drifting far (KL) for the same gain.")
    beta: float = option(0.1, help="DPO β.")
    learning_rate: float = option(1e-3, help="DPO learning rate.")
    epochs: int = option(2, help="DPO epochs over the target group's pairs.")
    n_eval_prompts: int = option(128, help="Evaluation prompts for the gold evaluation.")
    n_steer_prompts: int = option(24, help="Prompts decoded under each group's weights.")
    steer_n: int = option(16, help="Candidates per request for best-of-N steering.")
    rm_seeds: int = option(3, help="Seeds of each reward model (head initialisation and data order); their held-out "
                           "accuracies are reported as the mean over seeds with a 95% t-interval.")
    quick: bool = option(False, help="A tiny sandbox model and small data: for tests, not for conclusions.")


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    from pluralign.sandbox import SandboxConfig, build_base, population

    started = time.time()
    if cfg.quick:  # small enough for a test; the numbers mean little
        cfg = dataclasses.replace(cfg, n_pairs=min(cfg.n_pairs, 200), n_rm_pairs=min(cfg.n_rm_pairs, 300), epochs=1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    check_config(cfg)  # before _fresh: a mistyped option deleted the previous demo's results and left a lone config
    _fresh(Path(cfg.out))
    run = RunDir(cfg.out)
    atomic_write_text(run.config_path, dump_yaml(cfg))
    pop = population(cfg.population)

    _say("1/6 sandbox base model (built once, then cached)")
    base = build_base(seed=cfg.seed, config=SandboxConfig.tiny() if cfg.quick else None)

    _say(f"2/6 per-user feedback: {cfg.n_pairs} pairs from '{cfg.target_group}', {cfg.n_rm_pairs} from everyone")
    dpo_data = _feedback(run, "target_pairs", pop, cfg.n_pairs, base, cfg.seed, groups=[cfg.target_group])
    rm_train = _feedback(run, "rm_train", pop, cfg.n_rm_pairs, base, cfg.seed + 1)
    rm_test = _feedback(run, "rm_test", pop, max(200, cfg.n_rm_pairs // 4), base, cfg.seed + 2)

    _say(f"3/6 {demo_report.label(cfg.loss)} toward '{cfg.target_group}'")
    from pluralign.train import run_preference

    dpo = run_preference(
        model=str(base), data=[str(dpo_data)], loss=cfg.loss, loss_params={"beta": cfg.beta},
        max_length=128, output_dir=str(run.root / "dpo"),
        loop={"learning_rate": cfg.learning_rate, "batch_size": 16, "num_epochs": cfg.epochs, "seed": cfg.seed,
              "warmup_ratio": 0.1, "progress": False, "log_every": 5},
    )

    _say("4/6 gold evaluation before and after")
    from pluralign.sandbox import gold_eval

    n_prompts = 32 if cfg.quick else cfg.n_eval_prompts
    before = gold_eval(base, base=base, population=pop, n_prompts=n_prompts, seed=cfg.seed)
    after = gold_eval(dpo.model_dir, base=base, population=pop, n_prompts=n_prompts, seed=cfg.seed)
    samples = _write_samples(run, base, dpo.model_dir, cfg, pop)

    _say("5/6 reward models: shared Bradley–Terry vs pluralistic PAL")
    rms = {name: [_reward_model(run, name, model_type, base, rm_train, rm_test, cfg, cfg.seed + k)
                  for k in range(max(1, cfg.rm_seeds))]
           for name, model_type in (("bt", "bt"), ("pal", "pal"))}

    _say("6/6 per-request steering of one model toward each group")
    steering = _steer(base, pop, cfg)

    _say("+ many people at once: one policy trained on everyone's feedback, steered per request to each group")
    many = _many_people(run, base, rm_train, pop, cfg)

    results = demo_report.results(cfg, pop, before, after, rms, steering, run, samples)
    results["many_people"] = many
    atomic_write_json(run.root / "results.json", results)
    demo_report.write_plots(run, results)
    from pluralign.evaluate.report import write_report

    report = write_report(results, run.report / "index.html")
    print(demo_report.summary(cfg, pop, before, after, rms, steering))
    print(f"\nwrote {run.root}/ (config.yaml, feedback/, dpo/, results.json, samples.jsonl, plots/) and {report}")
    print(f"demo finished in {time.time() - started:.0f} s")
    return results


_T0 = time.time()
# The least value of each integer option (rm_seeds is read as max(1, rm_seeds)); seeds key numpy's streams,
# which take non-negative integers only.
_MINIMUMS = {"seed": 0, "n_pairs": 1, "n_rm_pairs": 1, "epochs": 1, "n_eval_prompts": 1, "n_steer_prompts": 1,
             "steer_n": 1}


def check_config(cfg: DemoConfig) -> None:
    """The options a user can get wrong, checked before the run directory is touched."""
    from pluralign.errors import ConfigError
    from pluralign.sandbox import population

    pop = population(cfg.population)
    if cfg.target_group not in pop.group_names:
        raise ConfigError(f"target_group '{cfg.target_group}' is not a group of '{cfg.population}': {pop.group_names}",
                          field="target_group")
    for name, least in _MINIMUMS.items():
        if getattr(cfg, name) < least:
            raise ConfigError(f"{name} must be >= {least}, got {getattr(cfg, name)}", field=name)
    # The DPO run's loss, beta and learning rate, else refused by the recipe once the base was built and the
    # feedback drawn (minutes), the previous demo gone.
    from pluralign import losses
    from pluralign.losses.registry import check_hyperparams
    from pluralign.train.loop_config import LoopConfig

    check_hyperparams(losses.get(cfg.loss).info, {"beta": cfg.beta})
    LoopConfig(learning_rate=cfg.learning_rate)


def _fresh(out: Path) -> None:
    """Each demo starts over in its own directory (a previous demo's checkpoints would otherwise be
    resumed); a directory that is not a demo's is left alone."""
    if out.exists() and any(out.iterdir()):
        if not (out / "config.yaml").exists() or "target_group" not in (out / "config.yaml").read_text():
            from pluralign.errors import ConfigError

            raise ConfigError(f"{out} exists and is not a demo run directory; choose another out=")
        shutil.rmtree(out)


def _say(msg: str) -> None:
    print(f"[demo {time.time() - _T0:5.0f}s] {msg}", flush=True)


def _feedback(run: RunDir, name: str, pop, n: int, base: Path, seed: int, groups=None) -> Path:
    from pluralign.sandbox.feedback import generate_file

    return generate_file(run.root / "feedback" / f"{name}.jsonl", "user_pairwise", pop, n, model_dir=base, seed=seed,
                         groups=groups)


def _reward_model(run: RunDir, name: str, model_type: str, base: Path, train: Path, test: Path, cfg: DemoConfig,
                  seed: int) -> dict:
    """Train on frozen, mean-pooled base-model features (seconds on a CPU) and evaluate per group on held-out
    pairs."""
    from pluralign.config import from_dict
    from pluralign.data.io import read_records
    from pluralign.reward.base import load_reward_model
    from pluralign.reward.evaluation import evaluate_records
    from pluralign.train.recipes.reward import RewardConfig
    from pluralign.train.recipes.reward import run as train_reward

    config = from_dict(RewardConfig, {
        "model_type": model_type, "model": str(base), "data": str(train), "freeze_backbone": True,
        "pooling": "mean", "head_hidden": 128, "output_dir": str(run.root / f"rm_{name}_seed{seed}"), "seed": seed,
        "loop": {"learning_rate": 3e-3, "batch_size": 32, "num_epochs": 20, "progress": False, "seed": seed},
    })
    model = load_reward_model(train_reward(config).model_dir)
    records = read_records(test)
    report = evaluate_records(model, records)
    report["group_counts"] = {g: sum(1 for r in records if r.group == g) for g in {r.group for r in records}}
    return report


def _steer(base: Path, pop, cfg: DemoConfig) -> dict[str, dict[str, float]]:
    """Decode the same prompts once per group with that group's weights (best-of-N on gold attributes) and
    score every output under every group's utility: the diagonal should win its column."""
    import numpy as np

    from pluralign.decode.steer import load_policy, steer
    from pluralign.sandbox import eval_prompts, score_batch, utility

    model, tokenizer = load_policy(base)
    prompts = eval_prompts(8 if cfg.quick else cfg.n_steer_prompts, seed=777)
    table: dict[str, dict[str, float]] = {}
    for g in pop.groups:
        rows = steer((model, tokenizer), prompts, [g.weights] * len(prompts), reward="gold", method="bon",
                     n=cfg.steer_n, seed=cfg.seed)
        x = score_batch(prompts, [r["response"] for r in rows])
        table[g.name] = {h.name: float(np.mean(utility(h.vector(), x))) for h in pop.groups}
    return table


def _many_people(run: RunDir, base: Path, data: Path, pop, cfg: DemoConfig) -> dict:
    """Train one group-conditioned policy (a learned vector per group, `pluralign.personal`) on the whole
    population's feedback, decode the same prompts with `group=` set per request, and score every output
    under every group's utility (mean ± 1.96·se over prompts): steered to its own group, each group should
    do at least as well as when steered to the other."""
    import numpy as np

    from pluralign.decode.api import Controls, decode
    from pluralign.decode.steer import load_policy
    from pluralign.sandbox import eval_prompts, score_batch, utility
    from pluralign.train import run_preference

    trained = run_preference(
        model=str(base), data=[str(data)], loss=cfg.loss, loss_params={"beta": cfg.beta}, max_length=128,
        output_dir=str(run.root / "per_group"), personal={"condition_on": "group"},
        loop={"learning_rate": cfg.learning_rate, "batch_size": 16, "num_epochs": 1, "seed": cfg.seed,
              "progress": False, "log_every": 20})
    model, tokenizer = load_policy(trained.model_dir)
    prompts = eval_prompts(16 if cfg.quick else 64, seed=778)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for g in [None, *pop.group_names]:
        controls = Controls(n=1, max_new_tokens=48, seed=cfg.seed, group=g)
        texts = decode("sample", model, tokenizer, prompts, controls=controls).texts
        x = score_batch(prompts, texts)
        u = {h.name: utility(h.vector(), x) for h in pop.groups}
        table[g or "population"] = {h: {"mean": float(v.mean()), "ci": 1.96 * float(v.std(ddof=1) / np.sqrt(len(v)))}
                                    for h, v in u.items()}
    lines = ["steered to    " + "".join(f"{h:>24}" for h in pop.group_names)]
    for g, row in table.items():
        lines.append(f"{g:<14}" + "".join(f"{row[h]['mean']:>15.3f} ± {row[h]['ci']:.3f}" for h in pop.group_names))
    print("gold utility of each group (columns) when one policy is steered per request (rows):\n  "
          + "\n  ".join(lines), flush=True)
    return table


def _write_samples(run: RunDir, base: Path, aligned: Path, cfg: DemoConfig, pop) -> dict[str, list[dict]]:
    """samples.jsonl (16 prompts, base and aligned, gold attributes) and, for the report, the first 4 per
    model with their target-group utility as the score."""
    from pluralign.decode.sampler import sample
    from pluralign.decode.steer import load_policy
    from pluralign.sandbox import eval_prompts, score, utility

    prompts = eval_prompts(16, seed=99)
    rows, shown = [], {}
    target = pop.group(cfg.target_group).vector()
    for name, path in (("base", base), ("dpo", aligned)):
        model, tokenizer = load_policy(path)
        texts = sample(model, tokenizer, prompts, n=1, max_new_tokens=48, seed=cfg.seed).texts
        mine = [{"model": name, "prompt": p, "response": t[0], "gold": score(p, t[0])} for p, t in zip(prompts, texts, strict=True)]
        rows += mine
        shown[name] = [{"prompt": r["prompt"], "response": r["response"],
                        "score": float(utility(target, [list(r["gold"].values())])[0])} for r in mine[:4]]
    atomic_write_jsonl(run.root / "samples.jsonl", rows)
    return shown


def register(subparsers: Any) -> None:
    from pluralign.config import format_help

    p = subparsers.add_parser("demo", help="Run the whole pipeline on the built-in sandbox (a few minutes on a CPU).",
                              description="Run the whole pipeline on the built-in sandbox.\n\nOptions:\n" + format_help(DemoConfig),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="Override any option, e.g. target_group=majority quick=true")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from pluralign.config import load

    run_demo(load(DemoConfig, None, args.overrides))
    return 0
