"""Best-of-N family: exact PMF/KL/win rate vs the log N − (N−1)/N bound, the KL-RL optimum, soft BoN,
rejection sampling histograms, InfAlign calibration, and the BoN decoder's Monte-Carlo win rate."""

import hashlib
import math

import numpy as np
import pytest
import torch

from pluralign.decode.api import Controls, decode
from pluralign.decode.best_of_n import (
    bon_kl_bound,
    bon_kl_exact,
    bon_pmf,
    bon_win_rate_exact,
    kl,
    select_best,
    select_soft,
    tilted,
)
from pluralign.decode.infalign import bon_vs_bon_win_rate, calibrate, transform
from pluralign.decode.kv import encode_prompts
from pluralign.decode.rejection import accept_mask, rso_select
from pluralign.decode.sampler import sample
from pluralign.decode.toy import toy_lm, toy_tokenizer


def test_exact_kl_continuous_limit_and_win_rate():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(50000))
    r = rng.random(50000)
    for n, expected_kl in ((2, 0.1931), (4, 0.6363), (16, 1.8351)):
        assert abs(bon_kl_exact(p, r, n) - bon_kl_bound(n)) < 1e-2
        assert abs(bon_kl_bound(n) - expected_kl) < 1e-4
        assert abs(bon_win_rate_exact(p, r, n) - n / (n + 1)) < 1e-3
        assert abs(bon_pmf(p, r, n).sum() - 1) < 1e-9


def test_exact_kl_below_bound_on_discrete_toys():
    rng = np.random.default_rng(1)
    for _ in range(200):
        k = int(rng.integers(2, 8))
        p = rng.dirichlet(np.ones(k))
        r = rng.integers(0, 3, size=k).astype(float)  # ties on purpose
        for n in (1, 2, 4, 16, 64):
            q = bon_pmf(p, r, n)
            assert abs(q.sum() - 1) < 1e-9 and (q >= -1e-12).all()
            assert bon_kl_exact(p, r, n) <= bon_kl_bound(n) + 1e-12
            assert bon_win_rate_exact(p, r, n) <= n / (n + 1) + 1e-12
    assert bon_kl_exact([0.5, 0.5], [0.0, 1.0], 1) == pytest.approx(0.0, abs=1e-12)
    assert bon_win_rate_exact([0.3, 0.7], [0.0, 1.0], 1) == pytest.approx(0.5)
    assert bon_kl_exact([0.5, 0.5], [0.0, 1.0], 40) == pytest.approx(math.log(2), abs=1e-9)
    # K = 2, N = 16 numbers from the spec check: KL 0.913 < 1.835 and WR 0.80 < 0.941 for some p;
    # ties share their level's mass in proportion to p
    q = bon_pmf([0.2, 0.3, 0.5], [1.0, 1.0, 0.0], 3)
    assert q[0] / q[1] == pytest.approx(2 / 3)


def test_tilted_optimum_gibbs():
    rng = np.random.default_rng(2)
    p, r, beta = rng.dirichlet(np.ones(10)), rng.normal(size=10), 0.7
    phi = tilted(p, r, beta)
    logZ = math.log(np.sum(p * np.exp(r / beta)))
    J = lambda q: float(np.sum(q * r)) - beta * kl(q, p)
    assert J(phi) == pytest.approx(beta * logZ, abs=1e-12)
    assert all(J(rng.dirichlet(np.ones(10))) < beta * logZ for _ in range(200))
    kls = [kl(tilted(p, r, b), p) for b in (0.1, 0.5, 1.0, 5.0)]
    assert all(a > b for a, b in zip(kls, kls[1:], strict=False))


def test_select_ties_and_soft_limits():
    u = torch.tensor([1.0, 3.0, 3.0, 2.0])
    assert select_best(u) == 1
    picks = {select_best(u, ties="random", generator=torch.Generator().manual_seed(s)) for s in range(30)}
    assert picks == {1, 2}
    u2 = torch.tensor([0.1, 0.5, 0.3])
    assert all(select_soft(u2, 1e-6, torch.Generator().manual_seed(s)) == 1 for s in range(20))
    g = torch.Generator().manual_seed(0)
    counts = np.bincount([select_soft(u2, 1e6, g) for _ in range(3000)], minlength=3)
    assert np.abs(counts / 3000 - 1 / 3).max() < 0.04


def _chi2_ok(counts: np.ndarray, probs: np.ndarray) -> bool:
    n, df = counts.sum(), len(probs) - 1
    stat = float(np.sum((counts - n * probs) ** 2 / (n * probs)))
    return stat < df + 6 * math.sqrt(2 * df)  # well above the 99.9% quantile for these df


def test_soft_bon_histogram_tends_to_tilted():
    rng = np.random.default_rng(3)
    p, r, lam = np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.0, 1.0, 2.0, 3.0]), 1.0
    g = torch.Generator().manual_seed(0)
    picks = []
    for _ in range(3000):
        ys = rng.choice(4, size=256, p=p)
        picks.append(ys[select_soft(torch.tensor(r[ys]), lam, g)])
    hist = np.bincount(picks, minlength=4) / 3000
    assert 0.5 * np.abs(hist - tilted(p, r, lam)).sum() < 0.04


def test_rejection_histogram_matches_tilted():
    rng = np.random.default_rng(4)
    p, r, beta = rng.dirichlet(np.ones(6)), rng.normal(size=6), 0.7
    ys = rng.choice(6, size=60000, p=p)
    acc = accept_mask(torch.tensor(r[ys]), beta, float(r.max()), torch.Generator().manual_seed(0)).numpy()
    counts = np.bincount(ys[acc], minlength=6)
    assert counts.sum() > 3000
    assert _chi2_ok(counts, tilted(p, r, beta))
    assert rso_select(torch.tensor([0.1, 5.0, 0.2]), 1e-3, torch.Generator().manual_seed(0)) == 1


def test_rejection_decoder_histogram():
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=3, scale=0.5)
    with torch.no_grad():
        logits = lm(torch.tensor([encode_prompts(tok, ["the"])[0]])).logits[0, -1]
    p = torch.softmax(logits.double(), -1).numpy()
    vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
    table = {w: (i % 5) / 2.0 for i, w in enumerate(vocab)}
    reward = lambda prompts, responses: torch.tensor([table.get(x.strip(), 0.0) if x.strip() else 0.0 for x in responses])
    r = np.array([table[w] if i > 3 else 0.0 for i, w in enumerate(vocab)])
    beta = 0.8
    out = decode("rejection", lm, tok, ["the"] * 1500, reward=reward,
                 controls=Controls(n=4, beta=beta, max_new_tokens=1, extra={"reward_max": float(r.max())}, seed=0))
    assert not out.info["exhausted"]
    # group outcomes by reward level (special tokens decode to "" and share reward 0)
    phi = tilted(p, r, beta)
    levels = sorted(set(r.tolist()))
    got = np.array([sum(float(u) == lv for u in out.utility) for lv in levels], dtype=float)
    want = np.array([phi[r == lv].sum() for lv in levels])
    assert _chi2_ok(got, want)


def test_rejection_rounds_of_nearby_seeds_draw_apart(monkeypatch):
    # round r drew with seed + 7919·r: a prompt's round-1 candidates under seed 0 were its round-0 ones under
    # seed 7919, so requests with those seeds were offered the same proposals
    import pluralign.decode.rejection as rejection

    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=3, scale=0.5)
    drawn = rejection.draw_candidates
    offered: dict[int, list[list[str]]] = {}

    def candidates(model, tokenizer, prompts, controls, **kwargs):
        out = drawn(model, tokenizer, prompts, controls, **kwargs)
        offered.setdefault(controls[0].seed, []).append(out[0][0])
        return out

    monkeypatch.setattr(rejection, "draw_candidates", candidates)
    never = Controls(n=3, max_new_tokens=4, extra={"reward_max": 1e9, "max_rounds": 2})  # nothing is accepted
    for seed in (0, 7919):
        decode("rejection", lm, tok, ["the"], reward=lambda p, r: torch.zeros(len(r)), controls=never.replace(seed=seed))
    assert len(offered) == 4  # two rounds of each request, each from its own seed


def test_infalign_calibration():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2000, generator=g)
    own = torch.randn(2000, generator=g)
    c = calibrate(ref, own)
    assert abs(float(c.mean()) - 0.5) < 0.02
    assert torch.equal(calibrate(ref.exp(), own.exp()), c)  # invariant to increasing transforms
    assert abs(bon_vs_bon_win_rate(np.random.default_rng(0).random(20000), 4) - 0.5) < 0.01  # G(u) = u
    assert bon_vs_bon_win_rate(np.full(100, 0.99), 4) > 0.9
    assert torch.all(transform(torch.tensor([0.2, 0.8]), "bon", 2.0).diff() > 0)
    assert torch.all(transform(torch.tensor([0.2, 0.8]), "won", 2.0).diff() > 0)


def _hash_reward(prompts, responses):
    """A continuous reward: a deterministic uniform value per distinct response."""
    return torch.tensor([int(hashlib.sha256(r.encode()).hexdigest()[:12], 16) / 16 ** 12 for r in responses])


def test_bon_decoder_win_rate_within_binomial_ci():
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=5, scale=0.3)
    P, N = 400, 8
    out = decode("bon", lm, tok, ["the cat"] * P, reward=_hash_reward, controls=Controls(n=N, max_new_tokens=6, seed=1))
    assert len(out.candidates[0]) == N and out.candidate_scores[0].shape == (N, 1)
    assert out.compute.forward > 0 and out.reward_compute.forward == P * N
    base = sample(lm, tok, ["the cat"] * P, n=1, max_new_tokens=6, seed=2)
    rb = _hash_reward(None, [t[0] for t in base.texts])
    wins = (out.utility > rb).float() + 0.5 * (out.utility == rb).float()
    se = math.sqrt((N / (N + 1)) * (1 / (N + 1)) / P)
    assert abs(float(wins.mean()) - N / (N + 1)) < 3 * se
