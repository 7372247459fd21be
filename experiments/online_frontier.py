"""Online alignment on the sandbox toward the minority group's gold utility: GRPO, RLOO, PPO, online DPO and
RSFT each trace gold gain vs KL, against the best-of-N frontier and offline DPO/RPO on as many labels.

1. The sandbox base model (`pluralign.sandbox.base.build_base`) is the initial policy and the reference.
2. Each online method (`pluralign train grpo|rloo|ppo|online_dpo|rsft`) samples completions of sandbox
   training prompts and is rewarded with the minority group's gold utility (`RewardSpec(source="gold",
   group="minority")`). Its trace is the same run evaluated after each of `--points` step budgets (the
   run stops, is evaluated, and resumes exactly from its checkpoint).
3. Evaluation on fixed evaluation prompts (`pluralign.sandbox.gold.eval_prompts`), `--samples` samples
   each at temperature 1: gain = mean over prompts of (policy utility − base utility), 95% CI by
   bootstrap over prompts (`--boot` resamples); KL(π‖π_base) = Monte-Carlo mean of the sequence log-ratio
   on the policy's own samples (`pluralign.sandbox.gold.sequence_kl`).
4. Best-of-N of the base, choosing by the same gold utility: the expected utility of the best of n draws
   from each prompt's m base samples (exact order statistics of the empirical distribution), plotted at
   the usual KL bound log n − (n−1)/n (Beirami et al. 2024: an upper bound on the exact KL).
5. Offline DPO and RPO (`pluralign.train.recipes.preference`) trained on as many minority-user pairwise
   labels (Bradley–Terry draws on base samples, `experiments/dpo_sandbox.py`) as online DPO used pairs
   (one per prompt per step). The online methods see exact gold rewards, the offline ones noisy human-like
   labels: the comparison counts labels, not their quality.

    .venv/bin/python experiments/online_frontier.py --quick                  # 5 methods, 12 steps, 2 points each
    .venv/bin/python experiments/online_frontier.py --quick --methods rsft,grpo --points 4
    .venv/bin/python experiments/online_frontier.py                          # 40 steps, 128 evaluation prompts

Measured on a shared 2-core machine under a load average of ~14 (other jobs): --quick took 31 minutes of
wall time; a GRPO-only --quick run used 2.2 CPU-minutes in 9.6 wall-minutes, so the whole --quick run is
about 7 minutes on an unloaded 2-core machine. The full setting is untimed.

Last line: RESULT grpo_gain=… grpo_kl=… grpo_ci_low=… … dpo_gain=… rpo_gain=…
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

ONLINE: dict[str, dict] = {  # algorithm: its settings on this sandbox (a tiny base needs a large step)
    "grpo": {"loop": {"learning_rate": 2e-4}},
    "rloo": {"loop": {"learning_rate": 2e-4}, "beta": 0.02},
    "ppo": {"loop": {"learning_rate": 2e-4}, "beta": 0.02, "vf_coef": 0.1},
    "online_dpo": {"loop": {"learning_rate": 2e-4}, "preference_params": {"beta": 0.1}},
    "rsft": {"loop": {"learning_rate": 2e-4}},
}
OFFLINE = {"dpo": ("dpo", {"beta": 0.1}), "rpo": ("dpo:1,nll:0.2", {"beta": 0.1})}


def bootstrap_ci(diff: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n_boot, len(diff)))].mean(1)
    return float(diff.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def expected_best_of(u: np.ndarray, n: int) -> float:
    """E[max of n draws with replacement from each row's m values], averaged over rows (exact)."""
    m = u.shape[1]
    s = np.sort(u, 1)
    k = np.arange(1, m + 1)
    p = (k / m) ** n - ((k - 1) / m) ** n  # P(the max is the k-th smallest)
    return float((s * p).sum(1).mean())


def evaluate(model_dir, base, tok, prompts, weights, u_base, samples, n_boot, seed) -> dict:
    from dpo_sandbox import sample_utilities

    from pluralign.models.load import load_model
    from pluralign.sandbox.gold import sequence_kl

    policy = load_model(str(model_dir)).eval()
    u, s = sample_utilities(policy, tok, prompts, weights, samples, seed=seed)
    gain, low, high = bootstrap_ci(u - u_base, n_boot, seed)
    kl = sequence_kl(policy, base, s).mean(1)
    return {"gain": gain, "ci_low": low, "ci_high": high, "kl": float(kl.mean())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and evaluation prompts")
    p.add_argument("--methods", default=",".join(ONLINE))
    p.add_argument("--group", default="minority")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of each online run")
    p.add_argument("--points", type=int, default=2, help="evaluations along each run")
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--eval-prompts", type=int, default=None)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--bon-samples", type=int, default=16)
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/online_frontier")
    a = p.parse_args(argv)
    steps = a.steps or (12 if a.quick else 40)
    n_eval = a.eval_prompts or (48 if a.quick else 128)

    import torch
    from dpo_sandbox import group_feedback, sample_utilities

    from pluralign.config import from_dict
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.runs import atomic_write_json
    from pluralign.sandbox.base import build_base
    from pluralign.sandbox.gold import eval_prompts
    from pluralign.sandbox.users import population
    from pluralign.sandbox.world import World
    from pluralign.train.recipes.online import OnlineConfig, run
    from pluralign.train.recipes.preference import from_kwargs
    from pluralign.train.recipes.preference import run as run_offline

    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base_dir = build_base(seed=a.seed)
    tok, base = load_tokenizer(str(base_dir)), load_model(str(base_dir)).eval()
    weights = population("default").group(a.group).vector()
    prompts = eval_prompts(n_eval)
    u_base, _ = sample_utilities(base, tok, prompts, weights, a.samples, seed=a.seed + 1)
    from pluralign.decode.sampler import sample
    from pluralign.sandbox.gold import attributes_of
    from pluralign.sandbox.users import utility

    bon = sample(base, tok, prompts, n=a.bon_samples, max_new_tokens=48, seed=a.seed + 4)
    u_pool = utility(weights, attributes_of(prompts, bon.texts))  # [P, m]
    results: dict = {"settings": vars(a) | {"steps": steps, "eval_prompts": n_eval}, "base_utility": float(u_base.mean()),
                     "best_of_n": [{"n": n, "kl_bound": float(np.log(n) - (n - 1) / n),
                                    "gain": expected_best_of(u_pool, n) - float(u_base.mean())} for n in (1, 2, 4, 8, 16)]}
    train_prompts = World(a.seed + 7).prompts(steps * a.prompts_per_step)
    budgets = sorted({max(1, round(steps * (k + 1) / a.points)) for k in range(a.points)})
    for method in a.methods.split(","):
        t = time.perf_counter()
        shutil.rmtree(out / method, ignore_errors=True)
        trace = []
        for budget in budgets:
            settings = ONLINE[method]
            cfg = from_dict(OnlineConfig, {
                "algorithm": method, "model": str(base_dir), "output_dir": str(out / method), "data": ["<python>"],
                "group_size": a.group_size, "max_new_tokens": 48,
                "rewards": [{"source": "gold", "group": a.group}]} | {k: v for k, v in settings.items() if k != "loop"}
                | {"loop": {"batch_size": a.prompts_per_step, "max_steps": budget, "seed": a.seed, "progress": False,
                            "scheduler": "constant", "warmup_ratio": 0.0, "log_every": 5,
                            "save_every": steps + 1} | settings["loop"]})  # a resumable checkpoint at each budget
            trained = run(cfg, prompts=train_prompts)
            point = evaluate(trained.model_dir, base, tok, prompts, weights, u_base, a.samples, a.boot, a.seed + 2)
            trace.append(point | {"steps": budget})
            print(f"{method:<10} step {budget:3d}: gain {point['gain']:+.4f} [{point['ci_low']:+.4f}, {point['ci_high']:+.4f}] "
                  f"KL {point['kl']:.3f}", flush=True)
        results[method] = {"trace": trace, **trace[-1], "seconds": time.perf_counter() - t}
    labels = steps * a.prompts_per_step  # online DPO's pairs: one per prompt per step
    data = group_feedback(out / f"feedback_default_{a.group}_{labels}_seed{a.seed}.jsonl", "default", a.group, labels,
                          base_dir, a.seed)
    for name, (loss, params) in OFFLINE.items():
        shutil.rmtree(out / name, ignore_errors=True)
        trained = run_offline(from_kwargs(model=str(base_dir), data=[str(data)], loss=loss, loss_params=params,
                                          output_dir=str(out / name), loop=dict(learning_rate=2e-4, batch_size=8,
                                          max_steps=max(1, labels // 8), seed=a.seed, progress=False, log_every=20)))
        results[name] = evaluate(trained.model_dir, base, tok, prompts, weights, u_base, a.samples, a.boot, a.seed + 2)
        r = results[name]
        print(f"{name + ' (offline)':<10} {labels} labels: gain {r['gain']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
              f"KL {r['kl']:.3f}", flush=True)
    for b in results["best_of_n"]:
        print(f"best-of-{b['n']:<2} gain {b['gain']:+.4f} at KL ≤ {b['kl_bound']:.3f}")
    atomic_write_json(out / "results.json", results)
    online = a.methods.split(",")
    above = sum(results[m]["ci_low"] > 0 for m in online)
    dpo = results["dpo"]  # a method beats it if a point of its trace has more gain at no more KL
    beats = [m for m in online if any(pt["gain"] > dpo["gain"] and pt["kl"] <= dpo["kl"] for pt in results[m]["trace"])]
    print(f"total {time.perf_counter() - t0:.0f}s; {above}/{len(online)} online methods with CI above 0; "
          f"beating offline DPO at ≤ its KL: {', '.join(beats) or 'none'}; results in {out / 'results.json'}")
    fields = [f"{m}_{k}={results[m][k]:.4f}" for m in online + list(OFFLINE) for k in ("gain", "kl", "ci_low", "ci_high")]
    print("RESULT " + " ".join(fields) + f" online_ci_above_0={above} beat_dpo={len(beats)}")


if __name__ == "__main__":
    main()
