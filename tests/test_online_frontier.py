"""The pure pieces of experiments/online_frontier.py, with hand-computed numbers: the exact best-of-n
expectation, reading a trace at a KL, the bootstrap CI and the `--set` overrides."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).parents[1] / "experiments" / "online_frontier.py"
sys.path.insert(0, str(PATH.parent))
spec = importlib.util.spec_from_file_location("online_frontier", PATH)
of = importlib.util.module_from_spec(spec)
spec.loader.exec_module(of)


def test_expected_best_of_by_hand():
    u = np.array([[0.0, 1.0], [2.0, 4.0]])
    # n=1: the mean of each row; n=2 with replacement from 2 values: max is the larger w.p. 3/4
    assert of.expected_best_of(u, 1) == pytest.approx((0.5 + 3.0) / 2)
    assert of.expected_best_of(u, 2) == pytest.approx((0.75 + (2 * 0.25 + 4 * 0.75)) / 2)
    three = np.array([[1.0, 2.0, 3.0]])  # P(max = k-th smallest) = (k/3)^2 - ((k-1)/3)^2 = 1/9, 3/9, 5/9
    assert of.expected_best_of(three, 2) == pytest.approx((1 + 6 + 15) / 9)


def test_at_kl_interpolates_between_the_points_around_it_and_stops_at_the_end():
    trace = [{"kl": 0.0, "u": np.array([0.0, 0.0])}, {"kl": 0.4, "u": np.array([2.0, 4.0])},
             {"kl": 0.2, "u": np.array([1.0, 1.0])}]  # unsorted on purpose
    assert np.allclose(of.at_kl(trace, 0.1), [0.5, 0.5])
    assert np.allclose(of.at_kl(trace, 0.3), [1.5, 2.5])
    assert np.allclose(of.at_kl(trace, 0.4), [2.0, 4.0])
    assert of.at_kl(trace, 0.41) is None


def test_bootstrap_ci_brackets_the_mean_and_collapses_for_a_constant():
    assert of.bootstrap_ci(np.full(10, 0.3), 200, 0) == pytest.approx((0.3, 0.3, 0.3))
    x = np.random.default_rng(1).normal(1.0, 1.0, 400)
    mean, low, high = of.bootstrap_ci(x, 4000, 0)
    assert mean == pytest.approx(x.mean())
    se = x.std() / np.sqrt(len(x))  # the bootstrap's 95% interval is close to the normal one here
    assert low == pytest.approx(mean - 1.96 * se, abs=0.3 * se) and high == pytest.approx(mean + 1.96 * se, abs=0.3 * se)


def test_set_overrides_merge_into_one_method_only():
    s = of.method_settings(["grpo.beta=0.04", "grpo.loop.learning_rate=5e-5"])
    assert s["grpo"]["beta"] == 0.04 and float(s["grpo"]["loop"]["learning_rate"]) == 5e-5  # the config coerces YAML's "5e-5"
    assert s["rloo"] == of.ONLINE["rloo"]
    with pytest.raises(SystemExit, match="unknown method"):
        of.method_settings(["sac.beta=1"])


def test_set_overrides_are_plain_values_that_results_json_can_hold():
    # parse_overrides wrapped numbers with their text (for string config fields) and the wrappers reached
    # the experiment's results.json, which could not hold them
    import json

    s = of.method_settings(["grpo.beta=0.04", "grpo.loop.seed=3"])
    assert json.loads(json.dumps(s["grpo"]))["beta"] == 0.04 and s["grpo"]["loop"]["seed"] == 3
