"""Many people at once: a shared DPO policy vs per-user conditioning, group-fair objectives, a new user in
ten labels and PAS steering, on the sandbox's default population (70% majority, 30% conflicting minority).

1. Per-user pairwise feedback of the whole population on base-model samples (`sandbox.feedback.generate`);
   one minority user is held out of training entirely (the "new user").
2. Policies, all trained from the base with the preference recipe (RPO: DPO + 0.2·NLL, as the demo):
   - shared: one policy for everyone (the average objective);
   - user-conditioned: a learned vector per user added to the token embeddings, trained with the policy
     (`personal.condition_on=user`); each user's requests are decoded under their own vector;
   - group-conditioned: the same with one vector per group (`personal.condition_on=group`);
   - control tokens: 4 learned tokens per group before the request's words, only their embeddings
     trained, the base policy frozen (`objectives.conditioning=control_tokens`, MEET-style);
   - worst_group / nash / group_dro: the shared policy with a group-fair objective
     (`personal.group_objective`); group_dro with step 0.5 and the generalization adjustment C = 5;
   - balanced_p0.375: the groups' mean losses weighted by their training sizes to the power 0.375
     (`group_objective=balanced`, w_g ∝ n_g^p: the minority ~41% of the objective instead of its 27%
     share), a weighting that does not follow the loss; the power was tuned on seed 1 (below), other
     powers run with `--powers`.
3. New user: the group-conditioned policy frozen, only the held-out user's vector (a softmax mixture of
   the group vectors) learned from 10 of their
   pairs (`personal.new_users_only`); compared with the population model (the same policy, no vector) on
   the user's held-out pairs: implicit-reward accuracy (relative to the base) and the user's gold utility.
4. PAS (training-free): a steering direction from 60% of 42 of the new user's pairs at decoder layer 0
   of the shared policy, α chosen on the other 40% (the steering's implicit reward, within a per-token KL
   budget of 0.02); the user's gold utility and KL(steered ‖ shared) by sampling, at the chosen α and at
   α = 2, 4, 8.

Why the loss-based group objectives do not help here (measured on the shared policy of a seed-0 run,
600 training pairs and 800 fresh pairs): the minority's implicit-reward accuracy and DPO loss are *better*
than the majority's (held-out accuracy 0.658 vs 0.602, loss 0.632 vs 0.654), although its gold gain is the
smaller one: its labels are cleaner (larger preference weights at the same BT temperature), so by any
loss the majority is the worse-served group, and worst_group / plain group DRO (C = 0) move toward it.
Group DRO's generalization adjustment C/√n_g (Sagawa et al. 2020) counts the minority's smaller sample as
a larger expected loss on new data; C = 5 was chosen on seed 0 from {0, 4, 5, 6, 8} (96 prompts x 2
samples), so its seed-0 row is not held out. `balanced` weighs the groups by size alone (w_g ∝ n_g^p).

Tuning the power on seed 1 (2026-12-05, `--seed 1 --powers 0.125,0.25,0.375,0.5 --only ...`, 256 prompts
x 8 samples; 97 CPU-s), worst-group standardized gain vs shared: p = 0.125 +0.045 [−0.036, +0.126],
0.25 +0.102 [+0.027, +0.187], 0.375 +0.154 [+0.071, +0.237], 0.5 +0.136 [+0.054, +0.208]; p = 0.375 was
fixed as the default row. Earlier seed-0 runs at 96 prompts x 4 samples (seed 0 then used to choose
rows, so not held out): p = 0 −0.045 [−0.233, +0.138] (overshoots: majority −7.7%, minority +8.0%),
p = 0.5 +0.079 [−0.096, +0.195]. Those CIs were ±0.15-0.2 wide; with 256 prompts x 8 samples (the paired
bootstrap over prompts, both policies sampled with the same seed) they are about ±0.07.

Seed 0 (held out for the power), defaults (2048 pairs, 2 epochs, 256 prompts x 8 samples), 2026-12-05,
vs the shared policy:
- per-user vectors: minority +0.214 [+0.182, +0.246] (+8.0%), majority +4.3% [CI +0.047, +0.105];
  per-group vectors: minority +11.7%, majority +7.5% (both CIs above 0);
- learned control tokens per group (base policy frozen): minority +6.7% [CI +0.149, +0.212], majority
  −11.1% (the majority's tokens do not reach what DPO on the whole policy reaches);
- group-fair objectives, worst-group standardized gain: balanced_p0.375 +0.148 [+0.067, +0.208]
  (majority −6.1%, minority +4.2%), the one with a CI above 0; group_dro +0.077 [−0.004, +0.152], nash
  +0.012 [−0.065, +0.089], worst_group −0.081 [−0.139, −0.022] (nash and group_dro move utility from the
  majority, −10.1% / −8.2%, to the minority, +8.3% / +6.3%);
- a new user from 10 pairs (a mixture of the group vectors): held-out implicit-reward accuracy 0.672 vs
  0.625 for the population model (0.641 shared), gold utility +0.348 [+0.316, +0.383];
- PAS: the held-out search chose α = 0.5: +0.022 [−0.009, +0.053] at KL(steered ‖ shared) 0.006, a CI
  that contains 0; α = 4 +0.053 [+0.019, +0.088] at KL 0.81 (α = 2 +0.024 at KL 0.11, α = 8 +0.014 at
  KL 7.6). (On 2026-12-04 the same search chose α = 1, +0.107 [+0.043, +0.173] at KL 0.057.)
Seed 2 (held out too; `--seed 2 --powers 0,0.375,0.5 --only balanced_p0,balanced_p0.375,balanced_p0.5`,
2026-12-05, 83 CPU-s), worst-group standardized gain vs shared: p = 0.375 +0.247 [+0.162, +0.293]
(majority −7.0%, minority +5.8%), p = 0 +0.123 [+0.039, +0.211], p = 0.5 +0.193 [+0.138, +0.248].
Seed 2, PAS (`--seed 2 --only group_conditioned`, 2026-12-05): the search chose α = 2, +0.082 [+0.039,
+0.119] at KL 0.207; α = 4 +0.154 [+0.116, +0.190] at KL 0.78, α = 8 +0.072 [+0.032, +0.112] at KL 5.8.
So at α = 4 (KL about 0.8) PAS raised the held-out user's gold utility with a CI above 0 on both seeds.
With 512 pairs and one epoch the per-user vectors and PAS showed no significant gain.

    .venv/bin/python experiments/personal_training.py --quick   # 256 pairs, 1 epoch: numbers mean little
    .venv/bin/python experiments/personal_training.py           # the reported run

Timing on the 2-core machine, one torch thread (`--threads 1`, the default: the models are tiny), 2026-12-05:
the default run (8 trainings) 180 CPU-s, 264 s wall at load average 3.7 (147 CPU-s with 96 prompts x 4
samples); --quick 20 CPU-s, 27 s wall at load 3.1. The script runs on one core, so its CPU-seconds are
the idle wall time. (An earlier default run took 2625 s wall under load 6-9 with torch's default threads.)
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from pluralign.cli import learning_rate, positive_int, seed_int

BOOT = 1000
# online group DRO (Sagawa et al. 2020): weights over groups, η per step, generalization adjustment C/√n_g
DRO = {"step_size": 0.5, "adjustment": 5.0}
# power of the balanced objective's size weights w_g ∝ n_g^p in the default run, chosen on seed 1 (docstring)
TUNED_POWER = 0.375
FAIR_ROWS = ("worst_group", "nash", "group_dro")


def boot_ci(values: np.ndarray, stat=np.mean, seed: int = 0) -> tuple[float, float, float]:
    """(statistic, 2.5%, 97.5%) of `stat` over prompts (axis 0) by the percentile bootstrap."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(BOOT, len(values)))
    draws = np.array([stat(values[i]) for i in idx])
    return float(stat(values)), float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def fmt(ci) -> str:
    return f"{ci[0]:+.4f} [{ci[1]:+.4f}, {ci[2]:+.4f}]"


def relabel(records, user, seed: int):
    """The same (prompt, two responses) labelled by `user`'s Bradley–Terry model."""
    import dataclasses

    from pluralign.sandbox.attributes import score_batch
    from pluralign.sandbox.users import preference_probability, utility

    rng = np.random.default_rng(seed)
    out = []
    for r in records:
        u = utility(user.vector(), score_batch([r.prompt] * 2, [r.chosen, r.rejected]))
        first = rng.random() < preference_probability(u[0], u[1], user.temperature)
        c, rej = (r.chosen, r.rejected) if first else (r.rejected, r.chosen)
        out.append(dataclasses.replace(r, chosen=c, rejected=rej, user=user.id, group=user.group))
    return out


def attributes(model, tok, prompts, n, seed, context=None, shown=None):
    """Gold attributes [P, S, A] of `n` samples per prompt (under `context`, e.g. a person's vector; the
    model sees `shown`, e.g. the prompts with a person's control tokens, the gold scores the prompts)."""
    import contextlib

    from pluralign.decode.sampler import sample
    from pluralign.sandbox.gold import attributes_of

    with context or contextlib.nullcontext():
        s = sample(model, tok, shown or prompts, n=n, max_new_tokens=48, temperature=1.0, seed=seed)
    return attributes_of(prompts, s.texts), s


def finish(res: dict[str, float], t0: float) -> None:
    import os

    cpu = time.process_time()
    print(f"\ntotal {time.perf_counter() - t0:.0f}s wall, {cpu:.0f} CPU-s, load average {os.getloadavg()[0]:.1f}")
    print("RESULT " + " ".join(f"{k}={v:.4f}" for k, v in res.items()))


FULL = {"pairs": 2048, "epochs": 2, "eval_prompts": 256, "samples": 8}
QUICK = {"pairs": 256, "epochs": 1, "eval_prompts": 24, "samples": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (exit 2 with a message) before anything is removed or trained."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="defaults of a short run: " +
                   ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()) + " (given flags still count)")
    p.add_argument("--pairs", type=positive_int, default=None, help=f"default {FULL['pairs']}")
    p.add_argument("--epochs", type=positive_int, default=None, help=f"default {FULL['epochs']}")
    p.add_argument("--lr", type=learning_rate, default=1e-3)
    p.add_argument("--eval-prompts", type=positive_int, default=None, help=f"default {FULL['eval_prompts']}")
    p.add_argument("--samples", type=positive_int, default=None, help=f"default {FULL['samples']}")
    p.add_argument("--shots", type=positive_int, default=10, help="pairs the new user's vector is fitted from")
    p.add_argument("--token-lr", type=float, default=1e-2, help="learning rate of the control tokens (policy frozen)")
    p.add_argument("--pas-kl", type=float, default=0.02, help="PAS: per-token KL budget of the α search")
    p.add_argument("--powers", default=str(TUNED_POWER), help="comma-separated powers p of the balanced "
                   "group objective (w_g ∝ n_g^p), one row balanced_p<p> each")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (the models are tiny: one is enough)")
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", default="runs/personal_training",
                   help="output directory, removed and rewritten (only when empty or an earlier run of this script)")
    p.add_argument("--only", default="", help="comma-separated rows to train (shared always), e.g. "
                   "'balanced_p0,balanced_p0.5' (with --powers 0,0.5); the new-user and PAS parts need "
                   "group_conditioned / shared")
    a = p.parse_args(argv)
    try:
        powers = [float(x) for x in a.powers.split(",") if x.strip()]
    except ValueError:
        p.error(f"--powers: comma-separated numbers expected, got {a.powers!r}")
    rows = ["shared", "user_conditioned", "group_conditioned", *FAIR_ROWS, *(f"balanced_p{q:g}" for q in powers),
            "control_tokens"]
    unknown = [r for r in a.only.split(",") if r and r not in rows]
    if unknown:  # else silently not trained
        p.error(f"--only: unknown row(s) {', '.join(map(repr, unknown))}; valid: {', '.join(rows)} "
                "(balanced_p<p> for each of --powers)")
    out = Path(a.out)
    # The run starts from an empty --out, removing what is there: never a directory this script did not write
    # (--out runs would have removed every other run).
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "train.jsonl").is_file())):
        p.error(f"--out {a.out} exists and is not an earlier run of this script (no train.jsonl in it): "
                "give a new or empty directory")
    for key, value in (QUICK if a.quick else FULL).items():  # a flag given explicitly wins over --quick
        if getattr(a, key) is None:
            setattr(a, key, value)
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    out = Path(a.out)

    from pluralign import conditioning
    from pluralign.data.io import write_records
    from pluralign.decode.steer import load_policy
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.personal import steering
    from pluralign.personal.conditioned import load_vectors
    from pluralign.personal.vectors import offset, site
    from pluralign.sandbox import build_base, eval_prompts, generate, population
    from pluralign.sandbox.gold import sample_logps
    from pluralign.sandbox.users import utility
    from pluralign.train.recipes.preference import from_kwargs, run

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    base_dir = build_base(seed=a.seed)
    pop = population("default")
    users = pop.users()
    new_user = next(u for u in users if u.group == "minority")
    records = [r for r in generate("user_pairwise", pop, a.pairs, base_dir, seed=a.seed) if r.chosen != r.rejected]
    train = [r for r in records if r.user != new_user.id]
    extra = generate("user_pairwise", pop, 64 + a.shots, base_dir, seed=a.seed + 7, groups=["minority"])
    mine = relabel([r for r in extra if r.chosen != r.rejected], new_user, a.seed)
    shots, held_out = mine[:a.shots], mine[a.shots:]
    data = write_records(out / "train.jsonl", train)
    shot_file = write_records(out / "new_user_shots.jsonl", shots)
    print(f"{len(train)} training pairs ({sum(r.group == 'minority' for r in train)} minority); new user {new_user.id}: "
          f"{len(shots)} shots, {len(held_out)} held-out pairs ({time.perf_counter() - t0:.0f}s)", flush=True)

    loop = dict(learning_rate=a.lr, batch_size=32, num_epochs=a.epochs, seed=a.seed, progress=False, log_every=50)
    common = dict(model=str(base_dir), data=[str(data)], loss="dpo:1,nll:0.2", loss_params={"beta": 0.1},
                  ref_cache_dir=str(out / "ref_cache"), loop=loop)
    methods = {"shared": {}, "user_conditioned": {"condition_on": "user"}, "group_conditioned": {"condition_on": "group"},
               "worst_group": {"group_objective": "worst_group"}, "nash": {"group_objective": "nash"},
               "group_dro": {"group_objective": "group_dro", "group_objective_params": DRO}}
    powers = [float(x) for x in a.powers.split(",") if x.strip()]
    methods |= {f"balanced_p{q:g}": {"group_objective": "balanced", "group_objective_params": {"power": q}}
                for q in powers}
    group_rows = (*FAIR_ROWS, *(f"balanced_p{q:g}" for q in powers))
    only = {"shared"} | set(filter(None, a.only.split(","))) if a.only else None
    methods = {k: v for k, v in methods.items() if only is None or k in only}
    dirs = {}
    for name, personal in methods.items():
        t = time.perf_counter()
        dirs[name] = run(from_kwargs(output_dir=str(out / name), personal=personal, **common)).model_dir
        print(f"trained {name} ({time.perf_counter() - t:.0f}s)", flush=True)
    # learned control tokens per group, the policy frozen: only 4 token embeddings per group are trained
    if only is None or "control_tokens" in only:
        t = time.perf_counter()
        dirs["control_tokens"] = run(from_kwargs(
            output_dir=str(out / "control_tokens"), **common | {"loop": loop | {"learning_rate": a.token_lr}},
            objectives={"conditioning": "control_tokens", "conditioning_params": {"by": "group", "tokens": 4, "placement": "start"}})).model_dir
        print(f"trained control_tokens ({time.perf_counter() - t:.0f}s)", flush=True)

    tok = load_tokenizer(str(base_dir))
    base = load_model(str(base_dir)).eval()
    prompts = eval_prompts(a.eval_prompts)
    weights = {g.name: g.vector() for g in pop.groups}

    def group_utils(x):  # {group: per-prompt utility [P]}
        return {g: utility(w, x).mean(1) for g, w in weights.items()}

    x_base = attributes(base, tok, prompts, a.samples, a.seed + 1)[0]
    util = {"base": group_utils(x_base)}
    spread = {g: float(utility(w, x_base).std()) for g, w in weights.items()}
    models = {n: load_model(str(d)).eval() for n, d in dirs.items() if n != "control_tokens"}
    for name in ("shared", *group_rows):
        if name in models:
            util[name] = group_utils(attributes(models[name], tok, prompts, a.samples, a.seed + 1)[0])
    # user-conditioned: each group's prompts are served round-robin to the group's (trained) users
    if "user_conditioned" in models:
        cond, (vectors, _) = models["user_conditioned"], load_vectors(dirs["user_conditioned"])
        embed = site(cond, "embeddings")
        util["user_conditioned"] = {}
        for g in pop.groups:
            members = [u.id for u in users if u.group == g.name and u.id in vectors.index]
            x = np.zeros((len(prompts), a.samples, len(next(iter(weights.values())))))
            for k, uid in enumerate(members):
                idx = list(range(k, len(prompts), len(members)))
                x[idx] = attributes(cond, tok, [prompts[i] for i in idx], a.samples, a.seed + 1,
                                    offset(embed, vectors.get(uid)))[0]
            util["user_conditioned"][g.name] = utility(weights[g.name], x).mean(1)

    if "group_conditioned" in models:
        gcond, (gvectors, _) = models["group_conditioned"], load_vectors(dirs["group_conditioned"])
        util["group_conditioned"] = {
            g.name: utility(weights[g.name], attributes(gcond, tok, prompts, a.samples, a.seed + 1,
                                                        offset(site(gcond, "embeddings"), gvectors.get(g.name)))[0]).mean(1)
            for g in pop.groups}
    if "control_tokens" in dirs:
        # control tokens: the saved model re-attached as a decoder would; each group's prompts carry its tokens
        ctl, ctl_tok = load_policy(dirs["control_tokens"])  # its tokenizer knows the control tokens
        scheme = conditioning.attached(ctl).bind(ctl_tok)
        util["control_tokens"] = {
            g.name: utility(weights[g.name], attributes(ctl, ctl_tok, prompts, a.samples, a.seed + 1, shown=[
                scheme.prompt(q, scheme.condition(group=g.name)) for q in prompts])[0]).mean(1) for g in pop.groups}
    res: dict[str, float] = {}
    groups = [g.name for g in pop.groups]
    print(f"\nper-group gold utility (95% bootstrap CI over {len(prompts)} prompts x {a.samples} samples)")
    def std_gain(u):  # [P, G] standardized gains over the base
        return np.stack([(u[g] - util["base"][g]) / spread[g] for g in groups], 1)

    for name, u in util.items():
        cells = "  ".join(f"{g} {fmt(boot_ci(u[g]))}" for g in groups)
        worst = boot_ci(std_gain(u), stat=lambda m: m.mean(0).min())
        print(f"  {name:<17} {cells}  worst-group std. gain {fmt(worst)}")
        res[f"{name}_worst_std_gain"] = worst[0]
        for g in groups:
            res[f"{name}_{g}"] = float(u[g].mean())
    print("\nvs shared (paired differences)")
    for name in ("user_conditioned", "group_conditioned", "control_tokens", *group_rows):
        if name not in util:
            continue
        for g in groups:
            d = boot_ci(util[name][g] - util["shared"][g])
            res[f"{name}_{g}_gain_low"] = d[1]
            print(f"  {name:<17} {g:<9} {fmt(d)}  ({100 * d[0] / abs(util['shared'][g].mean()):+.1f}%)")
        both = np.stack([std_gain(util[name]), std_gain(util["shared"])], 1)
        wd = boot_ci(both, stat=lambda m: m[:, 0].mean(0).min() - m[:, 1].mean(0).min())
        res[f"{name}_worst_gain"], res[f"{name}_worst_gain_low"] = wd[0], wd[1]
        print(f"  {name:<17} worst-group std. gain {fmt(wd)}")

    if only is not None and "group_conditioned" not in only:
        return finish(res, t0)
    # --- a new user from a few pairs, the policy frozen
    t = time.perf_counter()
    # the newcomer joins the group-conditioned policy: their vector is a softmax mixture of the group vectors
    cond, embed = gcond, site(gcond, "embeddings")
    fit = run(from_kwargs(model=str(dirs["group_conditioned"]), data=[str(shot_file)], loss="dpo",
                          loss_params={"beta": 0.1}, output_dir=str(out / "new_user"),
                          ref_cache_dir=str(out / "ref_cache"),
                          personal={"condition_on": "user", "new_users_only": True},
                          loop=dict(learning_rate=5e-2, batch_size=min(5, len(shots)), num_epochs=20, seed=a.seed,
                                    progress=False, log_every=100)))
    new_vec = load_vectors(fit.model_dir)[0].get(new_user.id)
    from pluralign.data.collate import PairwiseCollator
    from pluralign.models.logprobs import sequence_logps

    batch = PairwiseCollator(tok, max_length=128)(held_out)

    def margins(model, ctx=None):
        import contextlib

        with torch.no_grad(), ctx or contextlib.nullcontext():
            s = sequence_logps(model, batch)[0]
        return (s[:len(held_out)] - s[len(held_out):]).numpy()

    ref_m = margins(base)
    acc = {"population": margins(cond) - ref_m > 0, "adapted": margins(cond, offset(embed, new_vec)) - ref_m > 0,
           "shared": margins(models["shared"]) - ref_m > 0}
    w_user = new_user.vector()
    u_pop = utility(w_user, attributes(cond, tok, prompts, a.samples, a.seed + 3)[0]).mean(1)
    u_new = utility(w_user, attributes(cond, tok, prompts, a.samples, a.seed + 3, offset(embed, new_vec))[0]).mean(1)
    gain = boot_ci(u_new - u_pop)
    print(f"\nnew user {new_user.id} from {len(shots)} pairs ({time.perf_counter() - t:.0f}s): held-out implicit-reward "
          f"accuracy population {acc['population'].mean():.3f}, shared policy {acc['shared'].mean():.3f}, adapted "
          f"{acc['adapted'].mean():.3f} (n={len(held_out)}); gold utility gain vs population {fmt(gain)}")
    res |= {"new_user_acc_population": float(acc["population"].mean()), "new_user_acc_adapted": float(acc["adapted"].mean()),
            "new_user_gain": gain[0], "new_user_gain_low": gain[1]}

    # --- PAS steering of the shared policy toward the new user (training-free)
    shared = models["shared"]
    # direction from 60% of the user's pairs, α judged on the other 40% within a per-token KL budget
    pas = steering.fit(shared, tok, shots + held_out[: len(held_out) // 2], layer=0, max_kl=a.pas_kl)
    x0, s0 = attributes(shared, tok, prompts, a.samples, a.seed + 4)
    x1, s1 = attributes(shared, tok, prompts, a.samples, a.seed + 4, pas.apply(shared))
    with pas.apply(shared):
        lp_steered = sample_logps(shared, s1)
    kl = (lp_steered - sample_logps(shared, s1)).mean(1)
    pas_gain = boot_ci(utility(w_user, x1).mean(1) - utility(w_user, x0).mean(1))
    search = ", ".join(f"{k:g}: {v[0]:.3f}/{v[1]:.4f}" for k, v in pas.search.items())
    print(f"PAS alpha={pas.alpha:g} (α: held-out agreement/token KL {search}; budget {a.pas_kl}): user's gold utility "
          f"{fmt(pas_gain)} at KL(steered || shared) {kl.mean():.3f} ± {kl.std(ddof=1) / np.sqrt(len(kl)):.3f}")
    res |= {"pas_alpha": pas.alpha, "pas_gain": pas_gain[0], "pas_gain_low": pas_gain[1], "pas_kl": float(kl.mean())}
    searched = pas.alpha
    for alpha in (2.0, 4.0, 8.0):  # the frontier beyond the searched α: what steering harder buys and costs
        pas.alpha = alpha
        xa, sa = attributes(shared, tok, prompts, a.samples, a.seed + 4, pas.apply(shared))
        with pas.apply(shared):
            lp = sample_logps(shared, sa)
        kla = (lp - sample_logps(shared, sa)).mean(1)
        ga = boot_ci(utility(w_user, xa).mean(1) - utility(w_user, x0).mean(1))
        print(f"PAS alpha={alpha:g}: user's gold utility {fmt(ga)} at KL(steered || shared) {kla.mean():.3f}")
        res |= {f"pas_a{alpha:g}_gain": ga[0], f"pas_a{alpha:g}_gain_low": ga[1], f"pas_a{alpha:g}_kl": float(kla.mean())}
    pas.alpha = searched

    if "user_conditioned_majority" in res:  # absent when --only left the per-user row out
        maj_loss = (res["user_conditioned_majority"] - res["shared_majority"]) / abs(res["shared_majority"])
        res["user_conditioned_majority_change_pct"] = 100 * maj_loss
    finish(res, t0)


if __name__ == "__main__":
    main()
