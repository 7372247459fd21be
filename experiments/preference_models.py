"""Preference models on the sandbox: Bradley–Terry accuracy vs its noise ceiling, PAL vs one shared RM on
a population with a minority group, few-shot adaptation of a new user, and temperature scaling.

    .venv/bin/python experiments/preference_models.py [--seed 0] [--seeds 3] [--quick]

Responses are grammar responses of the sandbox world; each pair is labelled by a simulated user drawn
from `pluralign.sandbox.users` (Bradley–Terry on the user's gold utility, so labels are noisy). Models see
fixed lexicon features of the text (`featurize`: word-class counts, per-topic noun counts, length, the
prompt's topic and instructions and their products) — never the gold attributes or utilities — and are
trained with the project loop on those frozen features.

Section [5] trains what `pluralign train rm` trains at its defaults — a BT reward model on the sandbox base
model as a trainable backbone, from the text alone — on majority pairs of responses sampled from that base
model (as the README's `sandbox feedback --model runs/base` writes them), against the same Bayes ceiling, and
what `pluralign train pal` trains at its defaults on pairs of the whole population, per group against the
per-user ceiling; 32000 training pairs for each: one epoch of `train rm` under its 2000-step limit (fresh
pairs rather than repeated ones), three of `train pal` under its 6000-step limit (48000 pairs, two epochs,
measured within noise of it on the development set), over `--seeds` seeds (`_loop_defaults` in the reward
recipe has the sweep). `--quick` trains on 600 pairs and one seed: a smoke run, far below the target.

Section [2] (shared BT vs PAL per group) is repeated over `--seeds` seeds (fresh pairs, initialisation and
data order each time) and reported as mean ± 95% t-interval over seeds, with the held-out pairs per group.

Last line: RESULT bt_acc=… bt_ceiling=… rm_acc=… rm_ceiling=… rm_pairs=… rm_frac=… rm_frac_ci=… rm_seeds=…
pal_rm_majority_frac=… pal_rm_minority_frac=… pal_minority_gain=… pal_minority_gain_ci=… pal_majority_delta=…
pal_majority_delta_ci=… seeds=… fewshot_gain=… ece_before=… ece_after=…  (gains/deltas in accuracy points,
_frac in % of the Bayes ceiling, means over seeds; _ci the half-width of their 95% interval).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from pluralign.cli import positive_int, seed_int
from pluralign.evaluate.calibration import fit_temperature, pairwise_calibration
from pluralign.reward.bt import BTRewardModel, bt_pair_step
from pluralign.reward.data import pair_collate
from pluralign.reward.pal import PALRewardModel, adapt_user, pal_pair_step
from pluralign.sandbox import world as W
from pluralign.sandbox.attributes import parse_prompt, score_batch, words
from pluralign.sandbox.gold import plus_minus, seed_ci
from pluralign.sandbox.users import User, population, preference_probability
from pluralign.sandbox.world import World
from pluralign.train.loop import LoopConfig, train

TOPICS = list(W.TOPICS)
NOUN_TOPIC = {n: i for i, t in enumerate(TOPICS) for n in W.TOPICS[t]}
WORD_CLASSES = (W.POSITIVE_PLAIN, (*W.POSITIVE_CASUAL, "love"), W.NEGATIVE_PLAIN, W.NEGATIVE_CASUAL, W.FORMAL_WORDS,
                W.CASUAL_WORDS, W.HARMFUL)


def prompt_features(prompts: list[str]) -> torch.Tensor:
    """Topic one-hot and instruction flags of each request."""
    out = torch.zeros(len(prompts), len(TOPICS) + len(W.INSTRUCTIONS))
    for i, p in enumerate(prompts):
        topic, instructions = parse_prompt(p)
        if topic:
            out[i, TOPICS.index(topic)] = 1
        for j, ins in enumerate(W.INSTRUCTIONS):
            out[i, len(TOPICS) + j] = float(ins in instructions)
    return out


def featurize(prompts: list[str], responses: list[str]) -> torch.Tensor:
    """Lexicon features of (prompt, response): log counts of word classes (sentiment, register, harm),
    distinct nouns per topic, length, the prompt's topic/instructions, and their products (topic × noun
    topic, instruction × length/register) — a fixed 'frozen encoder'; the models learn all weights."""
    p = prompt_features(prompts)
    rows = []
    for i, r in enumerate(responses):
        ws = words(r)
        classes = torch.log1p(torch.tensor([float(sum(w in set(c) for w in ws)) for c in WORD_CLASSES]))
        nouns = torch.zeros(len(TOPICS))
        for w in set(ws):
            if w in NOUN_TOPIC:
                nouns[NOUN_TOPIC[w]] += 1
        nouns = torch.log1p(nouns)
        length = torch.tensor([len(ws) / 40])
        topic, flags = p[i, :len(TOPICS)], p[i, len(TOPICS):]
        style = torch.cat([length, classes[4:6]])
        rows.append(torch.cat([classes, nouns, length, p[i], torch.outer(topic, nouns).flatten(),
                               torch.outer(flags, style).flatten()]))
    return torch.stack(rows)


def make_pairs(world: World, users: list[User], rng: np.random.Generator) -> dict:
    """One pair per entry of `users`, labelled by that user (BT on their gold utility)."""
    prompts = world.prompts(len(users), rng)
    resp = world.responses(prompts, k=2, rng=rng)
    a, b = [r[0] for r in resp], [r[1] for r in resp]
    w = np.stack([u.vector() for u in users])
    du = ((score_batch(prompts, a) - score_batch(prompts, b)) * w).sum(1)  # utility(a) − utility(b) per user
    p = preference_probability(du, 0.0, users[0].temperature) if len({u.temperature for u in users}) == 1 else \
        np.array([preference_probability(d, 0.0, u.temperature) for d, u in zip(du, users, strict=True)])
    a_wins = rng.random(len(users)) < p
    chosen = [x if win else y for x, y, win in zip(a, b, a_wins, strict=True)]
    rejected = [y if win else x for x, y, win in zip(a, b, a_wins, strict=True)]
    return {"prompts": prompts, "chosen": chosen, "rejected": rejected, "users": [u.id for u in users],
            "groups": [u.group for u in users], "p_a": p,
            "f_c": featurize(prompts, chosen), "f_r": featurize(prompts, rejected), "f_p": prompt_features(prompts)}


def items(pairs: dict, user_index: dict[str, int] | None = None) -> list[dict]:
    return [{"f_chosen": pairs["f_c"][i], "f_rejected": pairs["f_r"][i], "f_prompt": pairs["f_p"][i], "margin": 0.0,
             "user": (user_index or {}).get(u, -1), "task": 0} for i, u in enumerate(pairs["users"])]


def loop_config(n: int, steps: int, lr: float, seed: int) -> LoopConfig:
    """Large batches and few steps: the heads are small and the features fixed."""
    return LoopConfig(learning_rate=lr, batch_size=min(500, n), max_steps=steps, warmup_ratio=0.05, weight_decay=0.0,
                      seed=seed, progress=False, log_every=10**9, scheduler="cosine", max_grad_norm=0.0)


def train_bt(pairs: dict, dim: int, seed: int, steps: int) -> BTRewardModel:
    model = BTRewardModel(None, feature_dim=dim, seed=seed)
    train(model, items(pairs), pair_collate(), bt_pair_step, loop_config(len(pairs["users"]), steps, 2e-2, seed))
    return model.eval()


def train_pal(pairs: dict, dim: int, user_ids: list[str], seed: int, steps: int) -> PALRewardModel:
    model = PALRewardModel(None, feature_dim=dim, prompt_dim=pairs["f_p"].shape[1], n_prototypes=2, dim=16,
                           scorer="dist", variant="b", user_ids=user_ids, seed=seed)
    index = {u: i for i, u in enumerate(user_ids)}
    train(model, items(pairs, index), pair_collate(needs_prompt=True), pal_pair_step,
          loop_config(len(pairs["users"]), steps, 2e-2, seed))
    return model.eval()


@torch.no_grad()
def bt_margins(model: BTRewardModel, pairs: dict) -> torch.Tensor:
    return (model.rewards(pairs["f_c"]) - model.rewards(pairs["f_r"]))[:, 0]


@torch.no_grad()
def pal_margins(model: PALRewardModel, pairs: dict, users: list | None = None) -> torch.Tensor:
    idx = torch.tensor([model.user_index(u) for u in (users or pairs["users"])])
    return (model.rewards(pairs["f_c"], pairs["f_p"], user=idx) - model.rewards(pairs["f_r"], pairs["f_p"], user=idx))[:, 0]


def accuracy(margins: torch.Tensor, mask: np.ndarray | None = None) -> float:
    ok = (margins > 0).float().numpy()
    return float(ok[mask].mean() if mask is not None else ok.mean())


def backbone_rm(n_train: int, n_test: int, seed: int, out_dir: str, model_type: str = "bt",
                groups: list[str] | None = None) -> dict[str, tuple[float, float, int]]:
    """[5] `train rm` / `train pal` at the recipe's defaults on the sandbox base model: {group or "all":
    (held-out accuracy, Bayes ceiling, held-out pairs)}. The ceiling is per user (the likelier label of each
    pair's own annotator), which PAL can reach and a text-only BT model only approaches."""
    from pluralign.config import from_dict
    from pluralign.sandbox import build_base, generate
    from pluralign.sandbox.feedback import bayes_accuracy
    from pluralign.train.recipes.reward import RewardConfig, train_records

    base = build_base()
    pairs = [generate("user_pairwise", "default", n, base, seed=seed + k, groups=groups)
             for k, n in ((1, n_train), (2, n_test))]
    config = from_dict(RewardConfig, {"model": str(base), "output_dir": out_dir, "seed": seed, "model_type": model_type,
                                      "loop": {"seed": seed, "progress": False}})
    _, run = train_records(config, pairs[0], pairs[1])
    report = json.loads((run.run_dir / "report" / "eval.json").read_text())
    out = {"all": (report["accuracy"], bayes_accuracy(pairs[1]), report["n"])}
    for g, acc in report["per_group"].items():
        held = [r for r in pairs[1] if r.group == g]
        out[g] = (acc, bayes_accuracy(held), len(held))
    return out


def over_seeds(n: int) -> str:
    """What a printed interval is over: one seed has none, and `plus_minus` says so already."""
    return f", mean ± 95% CI over {n} seeds" if n > 1 else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=seed_int, default=0)
    ap.add_argument("--quick", action="store_true", help="fewer pairs and epochs (smoke run)")
    ap.add_argument("--seeds", type=positive_int, default=3, help="seeds of the BT-vs-PAL comparison [2]")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    t0 = time.time()
    world, rng = World(seed=args.seed), np.random.default_rng(args.seed)
    n_train, steps = (1000, 60) if args.quick else (1500, 150)
    n_test = 1000

    # 1. BT on one group: held-out accuracy vs the ceiling the BT label noise allows, E[max(p, 1 − p)].
    pop = population("default")
    majority_users = [u for u in pop.users(args.seed) if u.group == "majority"]
    draw = lambda us, n: [us[i] for i in rng.integers(0, len(us), size=n)]  # noqa: E731
    g_train, g_test = make_pairs(world, draw(majority_users, n_train), rng), make_pairs(world, draw(majority_users, n_test), rng)
    dim = g_train["f_c"].shape[1]
    bt = train_bt(g_train, dim, args.seed, steps)
    bt_acc = accuracy(bt_margins(bt, g_test))
    bt_ceiling = float(np.maximum(g_test["p_a"], 1 - g_test["p_a"]).mean())
    print(f"[1] BT on the majority group: held-out accuracy {bt_acc:.3f}, noise ceiling {bt_ceiling:.3f} "
          f"({bt_acc / bt_ceiling:.1%} of it)  [{time.time() - t0:.0f}s]")

    # 2. Population with a minority: one shared BT RM vs PAL (K = 2) trained on the same per-user pairs,
    # over several seeds (new pairs, initialisation and data order each time).
    per_seed = []
    for k in range(max(1, args.seeds)):
        s = args.seed + k
        srng = np.random.default_rng([args.seed, k, 2])
        p_train = make_pairs(world, pop.draw_users(n_train * 2, srng, args.seed), srng)
        p_test_k = make_pairs(world, pop.draw_users(n_test, srng, args.seed), srng)
        shared_k = train_bt(p_train, dim, s, steps)
        user_ids = sorted(set(p_train["users"]))
        pal_k = train_pal(p_train, dim, user_ids, s, steps)
        groups = np.array(p_test_k["groups"])
        m_shared, m_pal = bt_margins(shared_k, p_test_k), pal_margins(pal_k, p_test_k)
        per_seed.append({(name, g): 100 * accuracy(m, groups == g) for name, m in (("shared", m_shared), ("pal", m_pal))
                         for g in ("majority", "minority")} | {("n", g): int((groups == g).sum()) for g in ("majority", "minority")})
        if k == 0:
            shared, pal = shared_k, pal_k
    stat = {key: seed_ci([r[key] for r in per_seed]) for key in per_seed[0] if key[0] != "n"}
    gain = {g: seed_ci([r["pal", g] - r["shared", g] for r in per_seed]) for g in ("majority", "minority")}
    minority_gain, majority_delta = gain["minority"][0], gain["majority"][0]
    for g in ("majority", "minority"):
        (bm, bh), (pm, ph), (dm, dh) = stat["shared", g], stat["pal", g], gain[g]
        print(f"[2] {g} ({per_seed[0]['n', g]} held-out pairs per seed): shared BT {plus_minus(bm, bh)}, "
              f"PAL {plus_minus(pm, ph)}, PAL − BT {plus_minus(dm, dh, '+.1f')}  (accuracy %{over_seeds(len(per_seed))})")
    d, h = gain["minority"]
    verdict = ("PAL beats the shared BT model on the minority" if d - h > 0 else
               "PAL is below the shared BT model on the minority" if d + h < 0 else
               "no clear difference between PAL and the shared BT model on the minority")
    print(f"[2] {verdict} at {len(per_seed)} seeds  [{time.time() - t0:.0f}s]")

    # 3. A new minority user (not in training) adapted from 10 pairs: only its mixture weights are fitted.
    new_user = User("new-minority", "minority", {**pop.group("minority").weights, "informativeness": -0.3},
                    pop.group("minority").temperature)
    few, held = make_pairs(world, [new_user] * 10, rng), make_pairs(world, [new_user] * n_test, rng)
    adapt_user(pal, new_user.id, few["f_c"], few["f_r"], few["f_p"], steps=200, lr=0.05, seed=args.seed)
    fewshot_acc = accuracy(pal_margins(pal, held))
    shared_acc = accuracy(bt_margins(shared, held))
    print(f"[3] new user from 10 pairs: PAL {fewshot_acc:.3f} vs shared RM {shared_acc:.3f}  [{time.time() - t0:.0f}s]")

    # 4. A deliberately over-confident RM (rewards × 5), calibrated by a temperature fitted on other pairs.
    margins = 5 * bt_margins(bt, g_test)
    fit, evaluate = margins[: n_test // 2], margins[n_test // 2:]
    temperature = fit_temperature(fit)
    ece_before = pairwise_calibration(evaluate)["ece"]
    ece_after = pairwise_calibration(evaluate, temperature=temperature)["ece"]
    print(f"[4] over-confident RM: ECE {ece_before:.4f} → {ece_after:.4f} after T = {temperature:.2f}  [{time.time() - t0:.0f}s]")
    # 5. BT on the backbone, as `pluralign train rm` trains it at its defaults (the text, not lexicon features),
    # and PAL as `pluralign train pal` does, per group, each over seeds (fresh pairs and initialisation).
    rm_pairs, pal_pairs, rm_seeds = (600, 600, 1) if args.quick else (32000, 32000, max(1, args.seeds))
    n_held = 300 if args.quick else 1000
    rm_runs, pal_runs = [], []
    for k in range(rm_seeds):
        with tempfile.TemporaryDirectory() as tmp:
            rm_runs.append(backbone_rm(rm_pairs, n_held, args.seed + k, tmp, groups=["majority"])["all"])
        with tempfile.TemporaryDirectory() as tmp:
            pal_runs.append(backbone_rm(pal_pairs, 2 * n_held, args.seed + k, tmp, model_type="pal"))
        print(f"[5] seed {args.seed + k}: `train rm` {rm_runs[-1][0]:.3f} of ceiling {rm_runs[-1][1]:.3f}; `train pal` "
              + ", ".join(f"{g} {a:.3f} of {c:.3f} ({n} pairs)" for g, (a, c, n) in pal_runs[-1].items() if g != "all")
              + f"  [{time.time() - t0:.0f}s]")
    rm_acc, rm_ceiling = (float(np.mean([r[i] for r in rm_runs])) for i in (0, 1))
    rm_frac, rm_frac_ci = seed_ci([100 * a / c for a, c, _ in rm_runs])
    print(f"[5] `train rm` defaults on the sandbox base model, {rm_pairs} majority pairs: held-out accuracy "
          f"{rm_acc:.3f} ({rm_runs[0][2]} pairs per seed), Bayes ceiling {rm_ceiling:.3f}: % of it "
          f"{plus_minus(rm_frac, rm_frac_ci)}{over_seeds(len(rm_runs))}")
    pal_frac = {g: seed_ci([100 * r[g][0] / r[g][1] for r in pal_runs]) for g in ("majority", "minority")}
    print(f"[5] `train pal` defaults, {pal_pairs} pairs of the whole population: "
          + ", ".join(f"{g} {plus_minus(m, h)}" for g, (m, h) in pal_frac.items())
          + f" (% of each group's per-user ceiling{over_seeds(len(pal_runs))})  [{time.time() - t0:.0f}s]")
    print(f"RESULT bt_acc={bt_acc:.4f} bt_ceiling={bt_ceiling:.4f} rm_acc={rm_acc:.4f} rm_ceiling={rm_ceiling:.4f} "
          f"rm_pairs={rm_pairs} rm_frac={rm_frac:.1f} rm_frac_ci={rm_frac_ci:.1f} rm_seeds={len(rm_runs)} "
          f"pal_rm_majority_frac={pal_frac['majority'][0]:.1f} pal_rm_minority_frac={pal_frac['minority'][0]:.1f} pal_minority_gain={minority_gain:.2f} "
          f"pal_minority_gain_ci={gain['minority'][1]:.2f} pal_majority_delta={majority_delta:.2f} "
          f"pal_majority_delta_ci={gain['majority'][1]:.2f} seeds={len(per_seed)} fewshot_gain={100 * (fewshot_acc - shared_acc):.2f} "
          f"ece_before={ece_before:.4f} ece_after={ece_after:.4f}")


if __name__ == "__main__":
    main()
