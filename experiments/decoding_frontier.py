"""Decoding-time alignment on the sandbox: gold reward against KL to the base model, and per-request steering.

Reward: the gold utility of the sandbox "majority" group (weights over the gold attributes), given to
every decoder as per-request objective weights over `pluralign.decode.rewards.GoldReward`.

Frontier points (x = KL(decoder ‖ base), y = mean gold utility of the decoded response):
- BoN, N = 1…64, from one pool of 64 base samples per prompt. The response space of the LM is not
  enumerable, so x is the UPPER BOUND log N − (N−1)/N (Beirami et al. 2024), labelled as such; the exact
  formula (`bon_kl_exact`) applies only to enumerable toys (see tests/test_decode_bon.py).
- Soft BoN (λ grid, same pool): y is the exact selection expectation over the pool; x estimates
  KL(φ_λ ‖ p) by self-normalised importance sampling, Σ w_i u_i/λ − log mean_i e^{u_i/λ}.
- ARGS (sampling mode, k = 10, several w) and MOD fusion (reverse KL) of the base with a
  majority-aligned model (SFT on best-of-16 base samples, a few steps) at several weights: x is the
  Monte-Carlo estimate mean(log q_decoder(y) − log p_base(y)) over decoded samples.

Steering: the same prompts decoded by BoN (N = 16) for two users in one call, each request carrying its
own weight vector (group "majority" vs "minority"). steer_gain_a = mean over prompts of
U_a(y_a) − U_a(y_b) (paired; 95% CI = ±1.96 SE), likewise for b.

bon_winrate_err = |P(BoN(8) beats an independent base sample) − 8/9| on a continuous reward (gold utility
plus a per-text tie-breaker of 1e-9·hash, so equal utilities of different texts are not ties); disjoint
groups of 9 samples of the pool, ties (identical texts) counted ½.

    .venv/bin/python experiments/decoding_frontier.py [--prompts 32] [--repeats 4] [--tiny] [--out runs/decoding_frontier]
Last line: RESULT bon_winrate_err=… steer_gain_a=… steer_gain_b=…
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from pluralign.cli import positive_int
from pluralign.decode.api import Controls, decode
from pluralign.decode.best_of_n import bon_kl_bound
from pluralign.decode.rewards import GoldReward
from pluralign.decode.sampler import sample
from pluralign.runs import atomic_write_bytes, atomic_write_json

NS = (1, 2, 4, 8, 16, 32, 64)
LAMBDAS = (0.5, 0.2, 0.1, 0.05, 0.02)
ARGS_W = (0.0, 1.0, 3.0, 10.0)
FUSION = (0.0, 0.25, 0.5, 0.75, 1.0)


def utilities(gold: GoldReward, prompts: list[str], texts: list[list[str]], weights: dict) -> np.ndarray:
    """[P, n] gold utility of each text under `weights`."""
    flat = gold.score([p for p, row in zip(prompts, texts, strict=True) for _ in row], [t for row in texts for t in row])
    w = np.array([weights.get(a, 0.0) for a in gold.objectives])
    return (flat.numpy() @ w).reshape(len(prompts), -1)


def bon_points(u: np.ndarray) -> list[dict]:
    return [{"method": "bon", "N": n, "kl": bon_kl_bound(n), "kl_kind": "upper bound log N - (N-1)/N",
             "utility": float(u[:, :n].max(1).mean()), "se": float(u[:, :n].max(1).std(ddof=1) / math.sqrt(len(u)))}
            for n in NS]


def soft_points(u: np.ndarray) -> list[dict]:
    out = []
    for lam in LAMBDAS:
        w = torch.softmax(torch.tensor(u / lam), dim=1).numpy()
        y = (w * u).sum(1)
        kl = (w * u / lam).sum(1) - (np.log(np.exp(u / lam - (u / lam).max(1, keepdims=True)).mean(1))
                                      + (u / lam).max(1))
        out.append({"method": "soft_bon", "lambda": lam, "kl": float(kl.mean()), "kl_kind": "SNIS estimate",
                    "utility": float(y.mean()), "se": float(y.std(ddof=1) / math.sqrt(len(y)))})
    return out


def mc_point(method: str, res, u: np.ndarray, **label) -> dict:
    kl = np.array(res.info["decoder_logps"]) - np.array(res.info["model_logps"])
    return {"method": method, **label, "kl": float(kl.mean()), "kl_kind": "Monte-Carlo estimate",
            "utility": float(u.mean()), "se": float(u.std(ddof=1) / math.sqrt(len(u)))}


def train_aligned(base, tok, gold: GoldReward, weights: dict, *, n_prompts: int, steps: int, seed: int = 1):
    """A majority-aligned model for fusion: SFT of a copy of the base on its best-of-16 samples."""
    from pluralign.sandbox.world import World

    prompts = World(seed).prompts(n_prompts)
    s = sample(base, tok, prompts, n=16, max_new_tokens=40, seed=seed)
    u = utilities(gold, prompts, s.texts, weights)
    rows = [(s.prompt_ids[p], s.token_ids[p][int(u[p].argmax())]) for p in range(len(prompts))]
    model = copy.deepcopy(base).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = np.random.default_rng(seed)
    for _ in range(steps):
        batch = [rows[i] for i in g.choice(len(rows), size=16)]
        width = max(len(a) + len(b) for a, b in batch)
        ids = torch.zeros(16, width, dtype=torch.long)
        labels = torch.full((16, width), -100)
        mask = torch.zeros(16, width, dtype=torch.long)
        for i, (a, b) in enumerate(batch):
            ids[i, :len(a) + len(b)] = torch.tensor(a + b)
            labels[i, len(a):len(a) + len(b)] = torch.tensor(b)
            mask[i, :len(a) + len(b)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def continuous_winrate(u: np.ndarray, texts: list[list[str]], n: int = 8) -> float:
    """Win rate of best-of-n over an independent sample, disjoint groups of n + 1 within each pool."""
    tb = np.array([[int(hashlib.sha256(t.encode()).hexdigest()[:12], 16) / 16 ** 12 for t in row] for row in texts])
    r = u + 1e-9 * tb
    wins = []
    for p in range(len(r)):
        for g in range(r.shape[1] // (n + 1)):
            grp = r[p, g * (n + 1):(g + 1) * (n + 1)]
            best, other = grp[:n].max(), grp[n]
            wins.append(1.0 if best > other else 0.5 if best == other else 0.0)
    return float(np.mean(wins))


def steering(model, tok, gold, prompts, wa: dict, wb: dict, n: int, T: int) -> dict:
    ctl = [Controls(weights=wa, n=n, max_new_tokens=T, seed=7)] * len(prompts) + \
          [Controls(weights=wb, n=n, max_new_tokens=T, seed=7)] * len(prompts)
    res = decode("bon", model, tok, prompts + prompts, reward=gold, controls=ctl)
    ya, yb = res.texts[:len(prompts)], res.texts[len(prompts):]
    out = {}
    for name, w in (("a", wa), ("b", wb)):
        own, other = (ya, yb) if name == "a" else (yb, ya)
        d = utilities(gold, prompts, [[t] for t in own], w)[:, 0] - utilities(gold, prompts, [[t] for t in other], w)[:, 0]
        se = float(d.std(ddof=1) / math.sqrt(len(d)))
        out[name] = {"gain": float(d.mean()), "ci95": [float(d.mean() - 1.96 * se), float(d.mean() + 1.96 * se)]}
    return out


def plot(points: list[dict], steer: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [2.2, 1]})
    styles = {"bon": ("o-", "BoN (x = KL upper bound)"), "soft_bon": ("s--", "soft BoN (x = SNIS KL est.)"),
              "args": ("^-", "ARGS k=10 (x = MC KL est.)"), "mod": ("d-", "MOD fusion (x = MC KL est.)")}
    for m, (style, label) in styles.items():
        pts = [p for p in points if p["method"] == m]
        pts.sort(key=lambda p: p["kl"])
        ax.errorbar([p["kl"] for p in pts], [p["utility"] for p in pts], yerr=[1.96 * p["se"] for p in pts],
                    fmt=style, capsize=2, label=label)
    ax.set_xlabel("KL(decoder ‖ base)  [nats]")
    ax.set_ylabel("gold utility (majority weights)")
    ax.set_title("reward vs KL on the sandbox")
    ax.legend(fontsize=8)
    names = ["user a (majority)\nown − other", "user b (minority)\nown − other"]
    vals = [steer["a"]["gain"], steer["b"]["gain"]]
    errs = [[v - steer[k]["ci95"][0] for k, v in zip("ab", vals, strict=True)],
            [steer[k]["ci95"][1] - v for k, v in zip("ab", vals, strict=True)]]
    bx.bar([0, 1], vals, yerr=errs, capsize=4, color=["tab:blue", "tab:orange"])
    bx.set_xticks([0, 1], names, fontsize=8)
    bx.axhline(0, color="k", lw=0.5)
    bx.set_title("per-request steering (BoN 16)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=positive_int, default=32)
    ap.add_argument("--max-new-tokens", type=positive_int, default=40)
    ap.add_argument("--tiny", action="store_true", help="the tiny sandbox preset (fast, weak model)")
    ap.add_argument("--out", default="runs/decoding_frontier")
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--repeats", type=positive_int, default=4, help="samples per prompt for the ARGS and fusion points")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    from pluralign.sandbox.base import SandboxConfig, build_base, load
    from pluralign.sandbox.gold import eval_prompts
    from pluralign.sandbox.users import MAJORITY, MINORITY

    model, tok = load(build_base(config=SandboxConfig.tiny() if args.tiny else SandboxConfig()))
    gold, wa, wb, T = GoldReward(), dict(MAJORITY.weights), dict(MINORITY.weights), args.max_new_tokens
    prompts = eval_prompts(args.prompts)
    pool = sample(model, tok, prompts, n=max(NS), max_new_tokens=T, seed=0)
    u = utilities(gold, prompts, pool.texts, wa)
    points = bon_points(u) + soft_points(u)
    print(f"pool of {max(NS)} samples for {len(prompts)} prompts ({time.time() - t0:.0f}s)")
    many = prompts * args.repeats  # independent samples per prompt for the token-level points
    for w in ARGS_W:
        res = decode("args", model, tok, many, reward=gold,
                     controls=Controls(weights=wa, w=w, max_new_tokens=T, temperature=1.0, seed=1,
                                       extra={"k": 10, "mode": "sample"}))
        points.append(mc_point("args", res, utilities(gold, many, [[t] for t in res.texts], wa)[:, 0], w=w))
    print(f"ARGS done ({time.time() - t0:.0f}s)")
    aligned = train_aligned(model, tok, gold, wa, n_prompts=128, steps=40)
    for lam in FUSION:
        res = decode("mod", model, tok, many, models=[aligned],
                     controls=Controls(weights=[1 - lam, lam], max_new_tokens=T, temperature=1.0, seed=2))
        points.append(mc_point("mod", res, utilities(gold, many, [[t] for t in res.texts], wa)[:, 0], weight=lam))
    print(f"fusion done ({time.time() - t0:.0f}s)")
    steer = steering(model, tok, gold, prompts, wa, wb, n=16, T=T)
    wr = continuous_winrate(u, pool.texts, 8)
    out = Path(args.out)
    for p in points:
        print(f"  {p['method']:9s} {json.dumps({k: v for k, v in p.items() if k not in ('method', 'se')})}")
    print(f"steering: a {steer['a']}, b {steer['b']}")
    print(f"BoN(8) win rate over a base sample: {wr:.4f} (theory 8/9 = {8 / 9:.4f})")
    atomic_write_json(out / "frontier.json", {"points": points, "steering": steer, "bon8_winrate": wr,
                                              "prompts": len(prompts), "seconds": time.time() - t0})
    plot(points, steer, out / "frontier.png")
    print(f"wrote {out / 'frontier.json'} and {out / 'frontier.png'} ({time.time() - t0:.0f}s)")
    print(f"RESULT bon_winrate_err={abs(wr - 8 / 9):.4f} steer_gain_a={steer['a']['gain']:.4f} "
          f"steer_gain_b={steer['b']['gain']:.4f}")


if __name__ == "__main__":
    main()
