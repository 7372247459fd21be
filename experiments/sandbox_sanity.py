"""Sanity of the sandbox world (issue 3): does it give alignment methods something real to work on?

Checks, on samples of the base model:
1. every gold attribute spreads (its standard deviation across samples is reported; the minimum is
   `spread_min`);
2. some attributes trade off: pairs with a negative correlation whose 95% CI (Fisher z) excludes 0
   (`neg_corr_pairs`);
3. simulated labels follow the configured Bradley–Terry model: on per-user pairwise feedback with a fixed
   temperature T, the share of labels agreeing with the noiseless preference (higher utility wins) is
   compared with its expectation E[σ(|Δu|/T)] (`bt_agreement_err` = observed − expected, with a 95% CI
   from the Poisson-binomial variance), and T is re-estimated by maximum likelihood with a 95% CI.

Usage: python experiments/sandbox_sanity.py [--seed 0] [--n-pairs 3000] [--temperature 0.2] [--tiny]
Ends with one line: RESULT spread_min=… neg_corr_pairs=… bt_agreement_err=…
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np

from pluralign.cli import positive_int, seed_int
from pluralign.sandbox.attributes import ATTRIBUTES, score_batch
from pluralign.sandbox.base import SandboxConfig, build_base, load
from pluralign.sandbox.feedback import draw_responses, generate
from pluralign.sandbox.gold import attributes_of, eval_prompts
from pluralign.sandbox.users import population, utility


def spread_and_correlations(model_dir, n_prompts: int, seed: int) -> tuple[np.ndarray, list[tuple[str, str, float, float, float]]]:
    """Attribute matrix of base-model samples, and every attribute pair's correlation with its 95% CI."""
    model, tok = load(model_dir)
    prompts = eval_prompts(n_prompts)
    texts = draw_responses(prompts, 2, seed=seed, model=model, tokenizer=tok, stream="sanity")
    x = attributes_of(prompts, texts).reshape(-1, len(ATTRIBUTES))
    n = len(x)
    pairs = []
    for i, j in itertools.combinations(range(len(ATTRIBUTES)), 2):
        if x[:, i].std() == 0 or x[:, j].std() == 0:
            continue
        r = float(np.corrcoef(x[:, i], x[:, j])[0, 1])
        z, half = np.arctanh(np.clip(r, -0.999999, 0.999999)), 1.96 / np.sqrt(n - 3)
        pairs.append((ATTRIBUTES[i], ATTRIBUTES[j], r, float(np.tanh(z - half)), float(np.tanh(z + half))))
    return x, pairs


def bt_agreement(model_dir, n_pairs: int, temperature: float, seed: int) -> dict[str, float]:
    """Observed vs expected agreement of per-user pairwise labels with the noiseless preference, and the
    maximum-likelihood temperature."""
    pop = population("default")
    users = {u.id: u for u in pop.users()}
    records = generate("user_pairwise", pop, n_pairs, model_dir, seed=seed, temperature=temperature)

    xc = score_batch([r.prompt for r in records], [r.chosen for r in records])
    xr = score_batch([r.prompt for r in records], [r.rejected for r in records])
    du = np.array([utility(users[r.user].vector(), a - b) for r, a, b in zip(records, xc, xr, strict=True)])
    du = du[du != 0]  # ties have no noiseless preference
    p = 1.0 / (1.0 + np.exp(-np.abs(du) / temperature))  # P(label agrees with the noiseless preference)
    observed, expected = float(np.mean(du > 0)), float(p.mean())
    half = 1.96 * float(np.sqrt(np.sum(p * (1 - p)))) / len(du)
    t_hat, t_se = _fit_temperature(du)
    return {"n": len(du), "observed": observed, "expected": expected, "err": observed - expected, "ci_half": half,
            "t_hat": t_hat, "t_ci_low": t_hat - 1.96 * t_se, "t_ci_high": t_hat + 1.96 * t_se}


def _fit_temperature(du: np.ndarray) -> tuple[float, float]:
    """MLE of T in P(label) = σ(Δu/T), Δu = u_chosen − u_rejected, by Newton on β = 1/T; SE by the delta
    method from the Fisher information."""
    beta = 1.0
    for _ in range(100):
        s = 1.0 / (1.0 + np.exp(-beta * du))
        grad, info = float(np.sum((1 - s) * du)), float(np.sum(s * (1 - s) * du**2))
        step = grad / info
        beta += step
        if abs(step) < 1e-10:
            break
    s = 1.0 / (1.0 + np.exp(-beta * du))
    beta_se = 1.0 / np.sqrt(float(np.sum(s * (1 - s) * du**2)))
    return 1.0 / beta, beta_se / beta**2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=seed_int, default=0)
    ap.add_argument("--n-prompts", type=positive_int, default=512)
    ap.add_argument("--n-pairs", type=positive_int, default=3000)
    ap.add_argument("--temperature", type=float, default=0.2)
    ap.add_argument("--tiny", action="store_true", help="use the tiny test preset (fast, weak model)")
    args = ap.parse_args()
    if not args.temperature > 0:
        ap.error(f"--temperature must be above 0, got {args.temperature}")

    t0 = time.perf_counter()
    model_dir = build_base(seed=args.seed, config=SandboxConfig.tiny() if args.tiny else SandboxConfig())
    print(f"base model: {model_dir} ({time.perf_counter() - t0:.1f} s incl. cache lookup)")

    x, pairs = spread_and_correlations(model_dir, args.n_prompts, args.seed)
    print(f"\nattribute spread over {len(x)} base-model samples")
    for a, mean, std in zip(ATTRIBUTES, x.mean(0), x.std(0), strict=True):
        print(f"  {a:<16} mean {mean:+.3f}  std {std:.3f}")
    negative = [p for p in pairs if p[4] < 0]
    print("\nnegatively correlated pairs (95% CI below 0)")
    for a, b, r, lo, hi in sorted(negative, key=lambda p: p[2]):
        print(f"  {a:<16} {b:<16} r={r:+.3f}  [{lo:+.3f}, {hi:+.3f}]")

    bt = bt_agreement(model_dir, args.n_pairs, args.temperature, args.seed)
    print(f"\nBradley-Terry check on {bt['n']} per-user pairs, T={args.temperature}")
    print(f"  agreement with the noiseless preference: observed {bt['observed']:.4f}, expected {bt['expected']:.4f}, "
          f"diff {bt['err']:+.4f} (95% CI half-width {bt['ci_half']:.4f}: "
          f"{'within' if abs(bt['err']) <= bt['ci_half'] else 'OUTSIDE'})")
    inside = bt["t_ci_low"] <= args.temperature <= bt["t_ci_high"]
    print(f"  maximum-likelihood T = {bt['t_hat']:.4f}, 95% CI [{bt['t_ci_low']:.4f}, {bt['t_ci_high']:.4f}] "
          f"({'contains' if inside else 'MISSES'} the configured {args.temperature})")
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    print(f"RESULT spread_min={x.std(0).min():.4f} neg_corr_pairs={len(negative)} bt_agreement_err={bt['err']:+.4f}")


if __name__ == "__main__":
    main()
