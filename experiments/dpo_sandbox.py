"""DPO, IPO, SimPO, KTO and RPO on one sandbox group's feedback: the group's gold-utility gain and the KL it cost.

1. The sandbox base model (`pluralign.sandbox.base.build_base`) answers sandbox prompts; users of ONE group
   of a population label pairs of its samples (`pluralign.sandbox.feedback.generate("user_pairwise", ...)`,
   each pair labelled by one user of the group with that user's Bradley-Terry model).
2. Each method is trained from the base with pluralign's generic preference recipe
   (`pluralign.train.recipes.preference.run`), the loss chosen by name: DPO (Rafailov et al. 2023), IPO
   (Azar et al. 2024), SimPO (Meng et al. 2024), KTO (Ethayarajh et al. 2024; the recipe splits each
   pair into a desirable and an undesirable example) and RPO (DPO + 0.2·NLL of the chosen response, Pang et
   al. 2024).
3. Gold evaluation on fixed evaluation prompts (`pluralign.sandbox.gold.eval_prompts`): the group's
   utility of samples from the trained model and from the base (temperature 1, `n_samples` each). The gain
   is the mean over prompts of the per-prompt difference; its 95% CI is paired over prompts
   (mean ± 1.96·se, prompts being the independent draws). KL(π‖π_base) is the Monte-Carlo estimate of
   `pluralign.sandbox.gold.sequence_kl` on the trained model's own samples.

    .venv/bin/python experiments/dpo_sandbox.py             # ~ a few minutes on 2 cores
    .venv/bin/python experiments/dpo_sandbox.py --methods dpo --pairs 512

Outputs under runs/dpo_sandbox/ (git-ignored): the feedback file, one run directory per method and
results.json. The last line is `RESULT dpo_gain=… dpo_kl=… dpo_ci_low=… dpo_ci_high=… ipo_gain=… …`.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from pluralign.cli import learning_rate, positive_int, seed_int

# Chosen on this sandbox: its tiny base model needs a much larger step (lr 2e-4) than an LLM would.
# name: (loss, its hyper-parameters).
METHODS: dict[str, tuple[str, dict]] = {
    "dpo": ("dpo", {"beta": 0.1}),
    "ipo": ("ipo", {"beta": 0.5}),  # τ; TRL's length-normalised form: target per-token margin 1/(2τ) = 1
    "simpo": ("simpo", {"beta": 2.0, "gamma_beta_ratio": 0.5}),
    "kto": ("kto", {"beta": 0.1}),
    "rpo": ("dpo:1,nll:0.2", {"beta": 0.1}),  # DPO + NLL of the chosen responses (Pang et al. 2024), as in the demo
}


def group_feedback(path: Path, population_name: str, group: str, n_pairs: int, base_dir: Path, seed: int) -> Path:
    """Write `n_pairs` user-pairwise records of `group`'s users on base-model samples, to `path` with the base
    model's directory name (`base-<config hash>`) added; kept and reused when that file exists, its name holding
    every setting. Without the base in it, a base rebuilt for a changed world or gold reused pairs of the old
    one's samples, labelled by the old gold attributes."""
    from pluralign.data.io import write_records

    path = path.with_name(f"{path.stem}_{Path(base_dir).name}{path.suffix}")
    if path.exists():
        return path
    from pluralign.sandbox.feedback import generate
    from pluralign.sandbox.users import population

    pop = population(population_name)
    share = dict(zip(pop.group_names, pop.shares, strict=True))[group]
    records: list = []
    batch = 0
    while len(records) < n_pairs:  # annotators are drawn from the whole population: keep the group's
        drawn = generate("user_pairwise", pop, int(1.2 * (n_pairs - len(records)) / share) + 8, base_dir,
                         seed=seed * 1000 + batch)
        records += [r for r in drawn if r.group == group and r.chosen != r.rejected]
        batch += 1
    return write_records(path, records[:n_pairs])


def sample_utilities(model, tok, prompts: list[str], weights: np.ndarray, n_samples: int, seed: int):
    """(per-prompt mean group utility [P], the samples) of `model` at temperature 1."""
    from pluralign.decode.sampler import sample
    from pluralign.sandbox.gold import attributes_of
    from pluralign.sandbox.users import utility

    samples = sample(model, tok, prompts, n=n_samples, max_new_tokens=48, temperature=1.0, seed=seed)
    return utility(weights, attributes_of(prompts, samples.texts)).mean(1), samples


def paired_ci(diff: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-prompt differences and its normal 95% CI (se over prompts)."""
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    return float(diff.mean()), float(diff.mean() - 1.96 * se), float(diff.mean() + 1.96 * se)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--population", default="default")
    p.add_argument("--group", default="minority", help="the group whose users label the pairs")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of: {', '.join(METHODS)}")
    p.add_argument("--pairs", type=positive_int, default=512, help="labelled pairs of the group")
    p.add_argument("--steps", type=positive_int, default=64)
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--lr", type=learning_rate, default=2e-4)
    p.add_argument("--eval-prompts", type=positive_int, default=200)
    p.add_argument("--samples", type=positive_int, default=4, help="samples per evaluation prompt")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", default="runs/dpo_sandbox")
    a = p.parse_args(argv)
    # Checked before anything runs: each method's run directory under --out is removed before it trains, so
    # a name that is not a method ('' from a stray comma, '..') must never reach that point.
    unknown = [m for m in a.methods.split(",") if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown method(s) {', '.join(map(repr, unknown))}; valid: {', '.join(METHODS)}")
    from pluralign.errors import ConfigError
    from pluralign.sandbox.users import population

    try:
        population(a.population).group(a.group)
    except ConfigError as e:
        p.error(str(e))
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)

    import torch

    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.runs import atomic_write_json
    from pluralign.sandbox.base import build_base
    from pluralign.sandbox.gold import eval_prompts, sequence_kl
    from pluralign.sandbox.users import population
    from pluralign.train.recipes.preference import from_kwargs, run

    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base_dir = build_base(seed=a.seed)
    weights = population(a.population).group(a.group).vector()
    data = group_feedback(out / f"feedback_{a.population}_{a.group}_{a.pairs}_seed{a.seed}.jsonl", a.population,
                          a.group, a.pairs, base_dir, a.seed)
    print(f"base {base_dir}; {a.pairs} pairs from group '{a.group}' of '{a.population}' "
          f"({time.perf_counter() - t0:.0f}s)", flush=True)

    tok = load_tokenizer(str(base_dir))
    base = load_model(str(base_dir)).eval()
    prompts = eval_prompts(a.eval_prompts)
    u_base, _ = sample_utilities(base, tok, prompts, weights, a.samples, seed=a.seed + 1)

    results: dict = {"settings": vars(a) | {"loss_params": METHODS, "base": str(base_dir)},
                     "base_utility": float(u_base.mean())}
    for method in a.methods.split(","):
        t = time.perf_counter()
        shutil.rmtree(out / method, ignore_errors=True)  # a fresh run: the loop would resume an old one
        loss, params = METHODS[method]
        config = from_kwargs(model=str(base_dir), data=[str(data)], loss=loss, loss_params=params,
                             output_dir=str(out / method), ref_cache_dir=str(out / "ref_cache"),
                             loop=dict(learning_rate=a.lr, batch_size=a.batch_size, max_steps=a.steps,
                                       seed=a.seed, progress=False, log_every=20))
        trained = run(config)
        policy = load_model(str(trained.model_dir)).eval()
        u_policy, samples = sample_utilities(policy, tok, prompts, weights, a.samples, seed=a.seed + 2)
        gain, low, high = paired_ci(u_policy - u_base)
        kl = sequence_kl(policy, base, samples).mean(1)
        results[method] = {"gain": gain, "ci_low": low, "ci_high": high, "utility": float(u_policy.mean()),
                           "kl": float(kl.mean()), "kl_se": float(kl.std(ddof=1) / np.sqrt(len(kl))),
                           "train_loss": trained.train.metrics.get("loss"), "seconds": time.perf_counter() - t}
        r = results[method]
        print(f"{method:<6} gain {gain:+.4f} [{low:+.4f}, {high:+.4f}]  KL {r['kl']:.3f}±{r['kl_se']:.3f}  "
              f"utility {r['utility']:.4f} (base {results['base_utility']:.4f})  {r['seconds']:.0f}s", flush=True)
    atomic_write_json(out / "results.json", results)
    fields = []
    for method in a.methods.split(","):
        r = results[method]
        fields += [f"{method}_gain={r['gain']:.4f}", f"{method}_kl={r['kl']:.4f}",
                   f"{method}_ci_low={r['ci_low']:.4f}", f"{method}_ci_high={r['ci_high']:.4f}"]
    print(f"total {time.perf_counter() - t0:.0f}s; results in {out / 'results.json'}")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
