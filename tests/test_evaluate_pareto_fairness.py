"""Pareto fronts, hypervolume, the reward–KL frontier and fairness metrics."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pluralign.evaluate import fairness, frontier, pareto


def test_dominance_and_front():
    assert pareto.dominates([2, 2], [1, 2]) and not pareto.dominates([1, 2], [1, 2])
    pts = [[1, 5], [2, 4], [1.5, 3], [3, 1], [0, 0], [3, 1]]
    assert pareto.pareto_mask(pts).tolist() == [True, True, False, True, False, True]
    assert pareto.pareto_front(pts).tolist() == [0, 1, 3, 5]


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_hypervolume_single_point_is_box(m):
    rng = np.random.default_rng(m)
    p, r = rng.random(m) + 1, rng.random(m) - 1
    assert pareto.hypervolume([p], r) == pytest.approx(np.prod(p - r))


@pytest.mark.parametrize("m", [2, 3, 4])
def test_dominated_point_adds_nothing(m):
    rng = np.random.default_rng(10 + m)
    pts = rng.random((6, m))
    ref = np.zeros(m)
    base = pareto.hypervolume(pts, ref)
    dominated = pts[0] * 0.5  # dominated by pts[0]
    assert pareto.hypervolume(np.vstack([pts, dominated]), ref) == pytest.approx(base)


def test_hypervolume_2d_hand_computed_and_3d_inclusion_exclusion():
    pts = [[3, 1], [2, 2], [1, 3]]
    assert pareto.hypervolume(pts, [0, 0]) == pytest.approx(3 + 2 + 1)  # 3·1 + 2·(2−1) + 1·(3−2)
    assert pareto.hypervolume([[1, 1], [-1, 5]], [0, 0]) == 1.0  # points not above ref add nothing
    rng = np.random.default_rng(3)
    P, r = rng.random((4, 3)), np.zeros(3)
    # inclusion–exclusion over the union of boxes [r, p]
    total = 0.0
    for k in range(1, 5):
        for sub in itertools.combinations(range(4), k):
            total += (-1) ** (k + 1) * np.prod(P[list(sub)].min(0) - r)
    assert pareto.hypervolume(P, r) == pytest.approx(total)


def test_hypervolume_monte_carlo_5d():
    rng = np.random.default_rng(4)
    P = rng.random((5, 5)) * 0.5 + 0.5
    samples = rng.random((200_000, 5))
    mc = np.mean((samples[:, None, :] <= P[None]).all(-1).any(-1))
    assert pareto.hypervolume(P, np.zeros(5)) == pytest.approx(mc, abs=0.01)


def test_default_reference_is_dominated():
    pts = np.array([[1.0, 5.0], [3.0, 2.0]])
    ref = pareto.default_reference(pts)
    assert (pts > ref).all()


def test_reward_kl_frontier():
    kl = [0.0, 1.0, 2.0, 1.5, 3.0, 0.5]
    reward = [0.1, 0.5, 0.6, 0.4, 0.9, 0.05]
    assert frontier.frontier(kl, reward).tolist() == [0, 1, 2, 4]  # run 3 and run 5 are beaten
    assert frontier.upper_hull(kl, reward).tolist() == [0, 1, 4]  # run 2 lies under the chord 1→4
    assert frontier.reward_at_kl(kl, reward, 2.0) == pytest.approx(0.7)
    assert np.isnan(frontier.reward_at_kl([1.0], [1.0], 0.5))
    assert frontier.frontier([np.nan, 1.0], [1.0, 0.0]).tolist() == [1]


def test_kl_estimates():
    lp = np.array([-3.0, -2.0, -5.0])
    assert frontier.sequence_kl(lp, lp) == 0.0  # π = π_ref
    assert frontier.bon_kl(1) == 0.0 and frontier.bon_kl(4) == pytest.approx(np.log(4) - 0.75)


def test_fairness_metrics():
    assert fairness.gini([2.0, 2.0, 2.0, 2.0]) == 0.0
    assert fairness.gini([0, 0, 0, 5.0]) == pytest.approx(3 / 4)  # (n − 1)/n
    assert fairness.gini({"a": 1.0, "b": 3.0}) == pytest.approx(2 * 2 / (2 * 4 * 2))
    assert fairness.worst_group({"a": 0.3, "b": -0.2}) == -0.2
    s = fairness.fairness_summary([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["p20_satisfaction"] == pytest.approx(np.percentile([0, .25, .5, .75, 1], 20))
    assert s["total"] == 15 and s["worst_group"] == 1
    assert fairness.percentile_satisfaction([3, 3, 3]) == 1.0
    with pytest.raises(ValueError, match="positive mean"):
        fairness.gini([-1.0, 0.5])
    assert np.isnan(fairness.fairness_summary([-1.0, 0.5])["gini"])


@pytest.mark.parametrize("utilities", [{}, [], "high", [[1.0, 2.0]]])
def test_fairness_of_no_utilities_or_of_a_text_is_named(utilities):
    # {} was numpy's "zero-size array to reduction operation minimum" after two RuntimeWarnings
    from pluralign.errors import ConfigError
    from pluralign.evaluate.fairness import fairness_summary

    with pytest.raises(ConfigError, match="utilities: expected one number per group or user") as e:
        fairness_summary(utilities)
    assert e.value.field == "utilities"
