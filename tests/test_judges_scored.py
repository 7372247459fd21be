"""Gold and reward-model judges, and the shared preference helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pluralign.errors import ConfigError, PluralignError
from pluralign.judges import (
    GoldJudge,
    Judge,
    RewardModelJudge,
    combine_orders,
    normalize_preferences,
    preferences_from_scores,
    unswap,
)


class LengthReward:
    """A reward source with the pluralign interface: two objectives, length and count of 'please'."""

    def __init__(self):
        self.users = []

    def score(self, prompts, responses, user=None):
        self.users.append(user)
        return torch.tensor([[len(r), r.count("please")] for r in responses], dtype=torch.float32)


def test_preference_helpers():
    np.testing.assert_array_equal(preferences_from_scores([1, 2, 3], [2, 2, 1]), [2, 1.5, 1])
    soft = preferences_from_scores([0.0], [np.log(3)], temperature=1.0)
    assert soft[0] == pytest.approx(1.75)
    np.testing.assert_array_equal(unswap([1, 2, 1.5, 1.25]), [2, 1, 1.5, 1.75])
    np.testing.assert_array_equal(normalize_preferences([0, 1, 2]), [1.5, 1, 2])
    both = combine_orders(np.array([1.0, np.nan, np.nan, 2.0]), np.array([2.0, 1.0, np.nan, 2.0]))
    assert both[0] == 1.5 and both[1] == 1.0 and np.isnan(both[2]) and both[3] == 2.0


def test_reward_model_judge_objectives_weights_and_user():
    rm = LengthReward()
    judge = RewardModelJudge(rm, weights=[0.0, 1.0], user="u7")
    assert isinstance(judge, Judge)
    p = judge.pairwise(["q", "q"], ["please please", "long answer here"], ["please", "x"])
    np.testing.assert_array_equal(p, [1.0, 1.5])
    assert rm.users == ["u7", "u7"]
    mean_judge = RewardModelJudge(rm)  # default: mean of objectives
    np.testing.assert_allclose(mean_judge.single(["q"], ["please"]), [(6 + 1) / 2])
    plain = RewardModelJudge(lambda ps, rs: np.array([len(r) for r in rs]))
    assert plain.pairwise(["q"], ["aa"], ["a"]).tolist() == [1.0]
    with pytest.raises(ConfigError, match="weights: 2 weights for 1"):
        RewardModelJudge(lambda ps, rs: np.ones((1, 1)), weights=[1, 2]).pairwise(["q"], ["a"], ["b"])


def test_gold_judge_uses_sandbox_utility():
    sandbox = pytest.importorskip("pluralign.sandbox.attributes", reason="sandbox not available yet")
    from pluralign.sandbox import users

    attrs = list(sandbox.ATTRIBUTES)
    weights = {attrs[0]: 1.0}
    judge = GoldJudge(weights)
    prompts, responses = ["tell me something"] * 2, ["short", "a much longer and more detailed answer here"]
    expected = users.utility(weights, sandbox.score_batch(prompts, responses))
    np.testing.assert_allclose(judge.single(prompts, responses), np.asarray(expected, float))
    p = judge.pairwise(prompts, responses, responses[::-1])
    assert p[0] == 3 - p[1]
    with pytest.raises(ConfigError, match="no_such_attribute"):
        GoldJudge({"no_such_attribute": 1.0}).single(prompts, responses)


@pytest.mark.parametrize("source, error, message", [
    (lambda ps, rs: [1.0], PluralignError, r"returned shape \(1, 1\) for 2 responses"),
    (lambda ps, rs: [1.0, float("nan")], PluralignError, "non-finite value for 1 of 2 responses"),
    (lambda ps, rs: 1 / 0, PluralignError, "raised ZeroDivisionError"),
    (lambda ps, rs: ["good", "bad"], PluralignError, "not numbers"),
    (lambda ps, rs: np.ones((2, 1, 1)), PluralignError, r"returned shape \(2, 1, 1\)"),
    (42, ConfigError, "not a reward source: int"),
])
def test_a_bad_reward_source_is_a_pluralign_error(source, error, message):
    # these were numpy's / Python's ValueError and TypeError, which a caller catching PluralignError misses;
    # NaN passed as "no verdict", and what the user's function raised was not named as theirs
    with pytest.raises(error, match=message):
        RewardModelJudge(source).pairwise(["q", "q"], ["a", "b"], ["c", "d"])


def test_a_judge_called_with_mismatched_lists_or_temperature_0_is_a_config_error():
    judge = RewardModelJudge(lambda ps, rs: [len(r) for r in rs])
    with pytest.raises(ConfigError, match="lengths differ: 2 prompts, 2 a, 1 b"):
        judge.pairwise(["q", "q"], ["a", "b"], ["c"])
    with pytest.raises(ConfigError, match="temperature must be a positive number.*got 0"):
        RewardModelJudge(lambda ps, rs: [1.0], temperature=0).pairwise(["q"], ["a"], ["b"])


@pytest.mark.parametrize("call, field", [
    (lambda j: j.single("describe rivers.", "rivers flow."), "prompts"),   # judged each character as a prompt
    (lambda j: j.pairwise(["q"], "a", ["b"]), "a"),
    (lambda j: j.single(["q", "r"], ["a"]), "responses"),                 # one score came back for two prompts
    (lambda j: j.single_and_objectives(["q", "r"], ["a"]), "responses"),
])
@pytest.mark.parametrize("judge", [RewardModelJudge(lambda ps, rs: [1.0] * len(rs)), GoldJudge({"relevance": 1.0})])
def test_a_judge_called_with_a_lone_text_or_lists_of_different_lengths_names_the_argument(judge, call, field):
    with pytest.raises(ConfigError) as e:
        call(judge)
    assert e.value.field == field


@pytest.mark.parametrize("tolerance", [-0.5, float("nan"), "0.1", True])
def test_a_tie_tolerance_that_is_not_a_number_at_least_0_is_refused(tolerance):
    # -0.5 gave b the pairs a won by less than 0.5: a win rate biased toward b without a word
    with pytest.raises(ConfigError, match="tie_tolerance must be a number >= 0") as e:
        RewardModelJudge(lambda ps, rs: [len(r) for r in rs], tie_tolerance=tolerance)
    assert e.value.field == "tie_tolerance"
    assert GoldJudge({"relevance": 1.0}, tie_tolerance=0.25).tie_tolerance == 0.25
