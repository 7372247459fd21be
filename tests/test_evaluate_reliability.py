"""Judge reliability metrics on hand-built judges with known behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from pluralign.evaluate import judge_reliability as jr

LABELS = np.array([1, 2, 1, 2, 1, 2, 1, 2], float)


def test_perfect_judge():
    out = jr.reliability_report(LABELS, LABELS, LABELS, len_a=np.arange(8), len_b=np.arange(8)[::-1],
                                repeats=np.tile(LABELS[:, None], 5))
    assert out["acc_both"] == out["acc_random"] == 1.0
    assert out["position_bias"] == 0.0 and out["length_bias"] == 0.0
    assert out["position_consistency"] == 1.0 and out["flip_rate_orders"] == 0.0
    assert out["kappa"] == 1.0 and out["flip_noise"] == 0.0 and out["repetition_stability"] == 1.0


def test_always_first_judge_has_full_position_bias():
    p_orig = np.ones(8)  # always "a" when a is shown first
    p_swap = np.full(8, 2.0)  # always the first shown (b) in the swapped order, un-swapped to 2
    assert jr.accuracy_both(LABELS, p_orig, p_swap) == 0.0
    assert jr.accuracy_random(LABELS, p_orig, p_swap) == 0.5
    assert jr.position_bias(LABELS, p_orig, p_swap) == 1.0
    assert jr.position_consistency(p_orig, p_swap) == 0.0
    assert jr.preference_fairness(p_orig, p_swap) == 1.0
    assert jr.preference_fairness(np.full(8, 2.0), np.ones(8)) == -1.0


def test_acc_random_at_least_acc_both():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.choice([1.0, 2.0], 30)
        po, ps = rng.choice([1.0, 1.5, 2.0], 30), rng.choice([1.0, 1.5, 2.0], 30)
        assert jr.accuracy_random(y, po, ps) >= jr.accuracy_both(y, po, ps)


def test_longer_judge_length_bias():
    len_a = np.array([10, 10, 50, 50, 10, 10, 50, 50], float)
    len_b = 60 - len_a
    longer = np.where(len_b > len_a, 2.0, 1.0)  # picks the longer one regardless of quality
    lb = jr.length_bias(LABELS, longer, longer, len_a, len_b)
    assert lb == 1.0
    assert jr.prob_prefer_longer(longer, len_a, len_b) == 1.0
    assert np.isnan(jr.prob_prefer_longer(longer, len_a, len_a + 5))  # no pair differs by > 30 chars


def test_flip_noise_estimate_and_denoising():
    rng = np.random.default_rng(0)
    truth = rng.choice([1.0, 2.0], 4000)
    q = 0.1
    flips = rng.random((4000, 5)) < q
    repeats = np.where(flips, 3 - truth[:, None], truth[:, None])
    assert jr.flip_noise(repeats) == pytest.approx(q, abs=0.01)
    # a judge that is right 80% of the time, observed through the channel
    a = 0.8
    observed = (1 - q) * a + q * (1 - a)
    assert jr.denoise_accuracy(observed, q) == pytest.approx(a)
    with pytest.raises(ValueError):
        jr.denoise_accuracy(0.7, 0.5)


def test_cohen_kappa_hand_computed():
    a = [1, 1, 1, 0, 0, 0, 1, 0, 1, 1]
    b = [1, 1, 0, 0, 0, 1, 1, 0, 1, 0]
    p_o = 0.7
    p_e = 0.6 * 0.5 + 0.4 * 0.5
    assert jr.cohen_kappa(a, b) == pytest.approx((p_o - p_e) / (1 - p_e))
    assert jr.cohen_kappa(a, a) == 1.0
    ag = jr.agreement([1, 2, 2, np.nan], [1, 2, np.nan, 1])
    assert ag["n"] == 2 and ag["accuracy"] == 1.0


def test_assess_judge_with_a_length_loving_judge():
    from pluralign.judges import ScoreJudge

    judge = ScoreJudge(lambda prompts, responses: np.array([len(r) for r in responses], float))
    a = ["short", "a much longer answer", "tiny", "another long answer here"]
    b = ["a longer answer here", "brief", "quite a long reply", "no"]
    labels = [1.0, 1.0, 1.0, 1.0]  # humans always preferred a
    out = jr.assess_judge(judge, ["q"] * 4, a, b, labels)
    assert out["acc_both"] == out["acc_random"] == 0.5
    assert out["length_bias"] == 1.0 and out["position_bias"] == 0.0 and out["position_consistency"] == 1.0


def test_position_consistency_counts_only_pairs_judged_in_both_orders():
    # A reply the judge's parser could not read (NaN) is no verdict, not a flip: a small LLM judge that
    # answered half the time read as flipping half its verdicts (flip_rate_orders 0.5).
    nan = float("nan")
    p_orig, p_swap = np.array([1.0, nan, 2.0, nan]), np.array([1.0, 1.0, 2.0, nan])
    assert jr.position_consistency(p_orig, p_swap) == 1.0
    assert np.isnan(jr.position_consistency([nan, nan], [1.0, nan]))
    out = jr.reliability_report([1.0, 2.0, 1.0, 2.0], p_orig, p_swap)
    assert out["flip_rate_orders"] == 0.0


def test_agreement_keeps_a_pair_whose_swapped_verdict_is_missing():
    # Either order's verdict alone counts when the other could not be read; a NaN in the swapped order
    # dropped the pair from agreement and prob_prefer_longer, while a NaN in the original did not.
    nan = float("nan")
    labels = [2.0, 2.0, 1.0, 1.0]
    # the first pair: read only in the original order, the shorter answer, against the label
    out = jr.reliability_report(labels, [1.0, nan, 1.0, 1.0], [nan, 2.0, 1.0, 1.0],
                                len_a=[1, 1, 50, 50], len_b=[50, 50, 1, 1])
    assert out["agreement_accuracy"] == 0.75  # 3 of 4 pairs, not 3 of the 3 read in both orders
    assert out["prob_prefer_longer"] == 0.75


def test_repeats_count_only_the_verdicts_that_were_read():
    # An unreadable repeat (NaN) was compared as a verdict that agrees with nothing, not even itself:
    # [NaN, NaN, A] gave a disagreement rate of 1.33 (a rate above 1) and flip noise 0.5.
    nan = float("nan")
    repeats = np.array([[nan, nan, 1.0], [1.0, 1.0, nan], [1.0, 2.0, 2.0]])
    # item 1 has one verdict (no pair to compare); item 2 agrees (0); item 3 disagrees on 4 of 6 ordered pairs
    assert jr.pairwise_disagreement(repeats) == pytest.approx((0 + 4 / 6) / 2)
    assert jr.repetition_stability(repeats) == 0.5
    assert np.isnan(jr.pairwise_disagreement([[nan, 1.0], [2.0, nan]]))
    assert np.isnan(jr.flip_noise([[nan, 1.0], [2.0, nan]]))
    out = jr.reliability_report([1.0, 1.0], [1.0, 1.0], [1.0, 1.0], repeats=[[nan, 1.0], [2.0, nan]])
    assert np.isnan(out["flip_noise"]) and "acc_random_denoised" not in out


def test_pairs_labelled_a_draw_name_no_better_response():
    # A label of 1.5 (a draw) or NaN names no preferred response; such pairs were scored as if b were the
    # preferred one: a judge agreeing with every label, ties included, got acc_both 0.5, position bias 0.67
    # and length bias 0.67.
    nan = float("nan")
    labels, verdicts = [1.0, 1.5, 2.0, 1.5, nan], [1.0, 1.5, 2.0, 1.5, 1.0]
    out = jr.reliability_report(labels, verdicts, verdicts, len_a=[10, 5, 15, 50, 1], len_b=[5, 10, 10, 5, 9])
    assert out["acc_both"] == out["acc_random"] == 1.0
    assert out["position_bias"] == 0.0 and out["length_bias"] == 0.0
    assert out["agreement_accuracy"] == 1.0  # draws stay a category of their own in the agreement
    assert np.isnan(jr.accuracy_both([1.5], [1.5], [1.5]))


def test_n_counts_the_pairs_the_agreement_rests_on_and_the_others_are_counted_apart():
    # n was every pair given, whatever the judge answered: 40 unreadable replies of 100 still showed n = 100
    # beside an agreement over 60. Now n is what agreement_accuracy and kappa rest on (a verdict read in either
    # order, and a label); n_decided what the accuracies and biases rest on (a label naming a winner);
    # n_unreadable the pairs with no verdict in either order.
    nan = float("nan")
    labels = [1, 2, 1.5, 1, 2, nan]
    p_orig = [1, 2, 1.5, nan, nan, 1]
    p_swap = [1, 1, 1.5, nan, 2, 1]
    out = jr.reliability_report(labels, p_orig, p_swap)
    assert out["n"] == 4 and out["agreement_accuracy"] == pytest.approx(3 / 4)
    assert out["n_decided"] == 4 and out["acc_random"] == pytest.approx(0.5 * (2 / 4 + 2 / 4))
    assert out["n_unreadable"] == 1


def test_the_report_shows_each_count_of_the_reliability_table():
    from pluralign.evaluate.report import RELIABILITY_COLUMNS

    assert {"n", "n_decided", "n_unreadable"} <= set(RELIABILITY_COLUMNS)
