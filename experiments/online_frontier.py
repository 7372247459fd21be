"""Online alignment on the sandbox toward the minority group's gold utility: GRPO, RLOO, PPO, online DPO and
RSFT each trace gold gain vs KL, against the best-of-N frontier and offline DPO/RPO on as many labels.

1. The sandbox base model (`pluralign.sandbox.base.build_base`) is the initial policy and the reference.
2. Each online method (`pluralign train grpo|rloo|ppo|online_dpo|rsft`) samples completions of sandbox
   training prompts and is rewarded with the minority group's gold utility (`RewardSpec(source="gold",
   group="minority")`). Its trace is the same run evaluated after each of `--points` step budgets (the
   run stops, is evaluated, and resumes exactly from its checkpoint), starting from the base itself
   (gain 0 at KL 0).
3. Evaluation on fixed evaluation prompts (`pluralign.sandbox.gold.eval_prompts`), `--samples` samples
   each at temperature 1 with one seed for every model: gain = mean over prompts of (policy utility − base
   utility), 95% CI by
   bootstrap over prompts (`--boot` resamples); KL(π‖π_base) = Monte-Carlo mean of the sequence log-ratio
   log π(y) − log π_base(y) on the policy's own samples (π's log-probs recorded by the sampler, the base's
   by `pluralign.sandbox.gold.sample_logps`).
4. Best-of-N of the base, choosing by the same gold utility: the expected utility of the best of n draws
   from each prompt's m base samples (exact order statistics of the empirical distribution), plotted at
   the usual KL bound log n − (n−1)/n (Beirami et al. 2024: an upper bound on the exact KL).
5. Offline DPO and RPO (`pluralign.train.recipes.preference`) trained on as many minority-user pairwise
   labels (Bradley–Terry draws on base samples, `experiments/dpo_sandbox.py`) as online DPO used pairs
   (one per prompt per step), with `dpo_sandbox.py`'s setting (lr 2e-4, batch 16, two epochs, linear decay
   after 10% warmup); its trace is one such run per number of epochs (1, 2). The online methods see exact gold rewards, the offline ones noisy human-like labels:
   the comparison counts labels, not their quality.
6. "Beats offline DPO at equal or lower KL": the online method's gain at DPO's KL, read off its trace by
   linear interpolation between the evaluated points on either side of that KL (never extrapolated past
   its last point), exceeds DPO's gain. The difference comes with a paired bootstrap CI over prompts
   (the interpolated per-prompt utilities minus DPO's).

    .venv/bin/python experiments/online_frontier.py          # 5 methods, 24 steps of 8 prompts x 8 samples, 4 points each
    .venv/bin/python experiments/online_frontier.py --quick  # 8 steps of 8 x 4, 2 points, 64 x 4 evaluation samples
    .venv/bin/python experiments/online_frontier.py --methods rsft,grpo --steps 24

Measured (default run, shared 2-core machine): 975 CPU-seconds, 1681 s wall at a load average of ~9; the
run prints both at the end. README ("Online alignment") has the figures.

Last line: RESULT grpo_gain=… grpo_kl=… grpo_ci_low=… … grpo_gain_at_dpo_kl=… … dpo_gain=… rpo_gain=… beat_dpo=…
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

ONLINE: dict[str, dict] = {  # algorithm: its settings on this sandbox (a tiny base needs a large step)
    "grpo": {"loop": {"learning_rate": 1e-4}},
    "rloo": {"loop": {"learning_rate": 1e-4}, "beta": 0.02},
    "ppo": {"loop": {"learning_rate": 1e-4}, "beta": 0.02, "vf_coef": 0.1},
    "online_dpo": {"loop": {"learning_rate": 1e-4}, "preference_params": {"beta": 0.1}},
    "rsft": {"loop": {"learning_rate": 1e-4}},
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
    from pluralign.sandbox.gold import sample_logps

    policy = load_model(str(model_dir)).eval()
    u, s = sample_utilities(policy, tok, prompts, weights, samples, seed=seed)
    gain, low, high = bootstrap_ci(u - u_base, n_boot, seed)
    kl = (s.sum_logps.double().numpy() - sample_logps(base, s)).mean(1)  # the sampler recorded π's log-probs
    return {"gain": gain, "ci_low": low, "ci_high": high, "kl": float(kl.mean()), "u": u}


def at_kl(trace: list[dict], kl: float) -> np.ndarray | None:
    """Per-prompt utilities of a trace (points with "kl" and per-prompt "u", the base first at KL 0) read
    at `kl` by linear interpolation between the points on either side, sorted by KL; None past its end."""
    pts = sorted(trace, key=lambda pt: pt["kl"])
    for a, b in zip(pts, pts[1:], strict=False):
        if a["kl"] <= kl <= b["kl"]:
            w = 0.0 if b["kl"] == a["kl"] else (kl - a["kl"]) / (b["kl"] - a["kl"])
            return (1 - w) * a["u"] + w * b["u"]
    return None


def train_traced(name: str, budgets: list[int], make_run, evaluate_dir) -> list[dict]:
    """Run `make_run(budget)` for each budget in turn (each resumes the previous one's checkpoint) and
    evaluate the trained model after each."""
    trace = []
    for budget in budgets:
        point = evaluate_dir(make_run(budget).model_dir) | {"steps": budget}
        trace.append(point)
        print(f"{name:<12} step {budget:3d}: gain {point['gain']:+.4f} [{point['ci_low']:+.4f}, {point['ci_high']:+.4f}] "
              f"KL {point['kl']:.3f}", flush=True)
    return trace


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps, points and evaluation prompts")
    p.add_argument("--methods", default=",".join(ONLINE))
    p.add_argument("--group", default="minority")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of each online run")
    p.add_argument("--points", type=int, default=None, help="evaluations along each online run")
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--group-size", type=int, default=None, help="samples per prompt (default 8; --quick: 4)")
    p.add_argument("--eval-prompts", type=int, default=None)
    p.add_argument("--samples", type=int, default=None, help="samples per evaluation prompt (default 8; --quick: 4)")
    p.add_argument("--bon-samples", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="learning rate of every online method (default: ONLINE's)")
    p.add_argument("--offline", default=",".join(OFFLINE), help="offline baselines (dpo is the one compared against)")
    p.add_argument("--dpo-epochs", type=int, default=2, help="offline DPO/RPO epochs over their labels (dpo_sandbox.py: 2)")
    p.add_argument("--boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/online_frontier")
    a = p.parse_args(argv)
    steps = a.steps or (8 if a.quick else 24)
    points = a.points or (2 if a.quick else 4)
    n_eval = a.eval_prompts or (64 if a.quick else 256)
    a.group_size = a.group_size or (4 if a.quick else 8)
    a.samples = a.samples or (4 if a.quick else 8)

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
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base_dir = build_base(seed=a.seed)
    tok, base = load_tokenizer(str(base_dir)), load_model(str(base_dir)).eval()
    weights = population("default").group(a.group).vector()
    prompts = eval_prompts(n_eval)
    # Every model is evaluated with the same sampling seed (common random numbers): a policy close to the base
    # draws samples close to the base's, so the per-prompt differences are far less noisy than independent draws.
    u_base, _ = sample_utilities(base, tok, prompts, weights, a.samples, seed=a.seed + 2)
    from pluralign.decode.sampler import sample
    from pluralign.sandbox.gold import attributes_of
    from pluralign.sandbox.users import utility

    bon = sample(base, tok, prompts, n=a.bon_samples, max_new_tokens=48, seed=a.seed + 4)
    u_pool = utility(weights, attributes_of(prompts, bon.texts))  # [P, m]
    results: dict = {"settings": vars(a) | {"steps": steps, "points": points, "eval_prompts": n_eval},
                     "base_utility": float(u_base.mean()),
                     "best_of_n": [{"n": n, "kl_bound": float(np.log(n) - (n - 1) / n),
                                    "gain": expected_best_of(u_pool, n) - float(u_base.mean())} for n in (1, 2, 4, 8, 16)]}
    origin = {"gain": 0.0, "ci_low": 0.0, "ci_high": 0.0, "kl": 0.0, "u": u_base, "steps": 0}

    def evaluate_dir(model_dir):
        return evaluate(model_dir, base, tok, prompts, weights, u_base, a.samples, a.boot, a.seed + 2)

    train_prompts = World(a.seed + 7).prompts(steps * a.prompts_per_step)
    budgets = sorted({max(1, round(steps * (k + 1) / points)) for k in range(points)})
    online = a.methods.split(",")
    for method in online:
        t, c = time.perf_counter(), time.process_time()
        shutil.rmtree(out / method, ignore_errors=True)
        settings = ONLINE[method]

        def online_run(budget, method=method, settings=settings):
            cfg = from_dict(OnlineConfig, {
                "algorithm": method, "model": str(base_dir), "output_dir": str(out / method), "data": ["<python>"],
                "group_size": a.group_size, "max_new_tokens": 48,
                "rewards": [{"source": "gold", "group": a.group}]} | {k: v for k, v in settings.items() if k != "loop"}
                | {"loop": {"batch_size": a.prompts_per_step, "max_steps": budget, "seed": a.seed, "progress": False,
                            "scheduler": "constant", "warmup_ratio": 0.0, "log_every": 5,
                            "save_every": steps + 1} | settings["loop"] | ({"learning_rate": a.lr} if a.lr else {})})  # a resumable checkpoint at each budget
            return run(cfg, prompts=train_prompts)

        trace = [origin] + train_traced(method, budgets, online_run, evaluate_dir)
        results[method] = {"trace": trace, **trace[-1], "seconds": time.perf_counter() - t,
                           "cpu_seconds": time.process_time() - c}
    labels = steps * a.prompts_per_step  # online DPO's pairs: one per prompt per step
    if a.offline:
        data = group_feedback(out / f"feedback_default_{a.group}_{labels}_seed{a.seed}.jsonl", "default", a.group,
                              labels, base_dir, a.seed)
    per_epoch = max(1, labels // 16)
    for name, (loss, params) in [(n, OFFLINE[n]) for n in filter(None, a.offline.split(","))]:
        t, c = time.perf_counter(), time.process_time()

        def offline_run(budget, name=name, loss=loss, params=params):  # a fresh run per budget: its own schedule
            shutil.rmtree(out / f"{name}_{budget}", ignore_errors=True)
            return run_offline(from_kwargs(model=str(base_dir), data=[str(data)], loss=loss, loss_params=params,
                                           output_dir=str(out / f"{name}_{budget}"), ref_cache_dir=str(out / "ref_cache"),
                                           loop=dict(learning_rate=2e-4, batch_size=16, max_steps=budget, seed=a.seed,
                                                     progress=False, log_every=20)))

        trace = [origin] + train_traced(f"{name} (offline)", [per_epoch * (e + 1) for e in range(a.dpo_epochs)],
                                        offline_run, evaluate_dir)
        results[name] = {"trace": trace, **trace[-1], "labels": labels, "seconds": time.perf_counter() - t,
                         "cpu_seconds": time.process_time() - c}
    for b in results["best_of_n"]:
        print(f"best-of-{b['n']:<2} gain {b['gain']:+.4f} at KL ≤ {b['kl_bound']:.3f}")
    dpo = results.get("dpo", {"kl": float("nan")})
    for m in online if "dpo" in results else []:  # the method's gain at DPO's KL, read off its trace, against DPO's own
        u = at_kl(results[m]["trace"], dpo["kl"])
        if u is None:
            results[m]["vs_dpo"] = None
            print(f"{m:<12} trace ends below DPO's KL {dpo['kl']:.3f}: not compared")
            continue
        diff, low, high = bootstrap_ci(u - dpo["u"], a.boot, a.seed + 3)
        results[m]["vs_dpo"] = {"gain_at_dpo_kl": float((u - u_base).mean()), "diff": diff, "ci_low": low, "ci_high": high}
        print(f"{m:<12} at DPO's KL {dpo['kl']:.3f}: gain {float((u - u_base).mean()):+.4f} vs DPO's {dpo['gain']:+.4f} "
              f"(difference {diff:+.4f} [{low:+.4f}, {high:+.4f}])")
    wall, cpu, load = time.perf_counter() - t0, time.process_time() - cpu0, os.getloadavg()
    results |= {"seconds": wall, "cpu_seconds": cpu, "load_average": load}
    atomic_write_json(out / "results.json", jsonable(results))
    above = sum(results[m]["ci_low"] > 0 for m in online)
    beats = [m for m in online if results[m].get("vs_dpo") is not None and results[m]["vs_dpo"]["diff"] > 0]
    print(f"total {wall:.0f}s wall, {cpu:.0f} CPU-s (load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}); "
          f"{above}/{len(online)} online methods with CI above 0; beating offline DPO at its KL: "
          f"{', '.join(beats) or 'none'}; results in {out / 'results.json'}")
    fields = [f"{m}_{k}={results[m][k]:.4f}" for m in online + [n for n in OFFLINE if n in results]
              for k in ("gain", "kl", "ci_low", "ci_high")]
    fields += [f"{m}_gain_at_dpo_kl={results[m]['vs_dpo']['gain_at_dpo_kl']:.4f}" for m in online if results[m].get("vs_dpo")]
    print("RESULT " + " ".join(fields) + f" online_ci_above_0={above} beat_dpo={len(beats)} seconds={wall:.0f} "
          f"cpu_seconds={cpu:.0f}")


def jsonable(x):
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items() if k != "u"}  # per-prompt utilities stay out of the JSON
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


if __name__ == "__main__":
    main()
