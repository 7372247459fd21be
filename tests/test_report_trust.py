"""What the report shows must be earned: intervals and counts next to means, no columns of dashes,
hypervolume only over a real front, samples with scores, a comparison across runs, the judge's name."""

from __future__ import annotations

import math
import statistics

import pytest

from pluralign.evaluate.report import mean_ci, render_html


def _runs():
    return [
        {"name": "base", "method": "base", "n": 64, "kl": 0.0, "reward": 0.5, "reward_se": 0.01,
         "per_group": {"a": 0.4, "b": 0.6}, "per_group_se": {"a": 0.02, "b": 0.03}, "per_group_n": {"a": 64, "b": 64},
         "objectives": {"x": 1.0, "y": 1.0},
         "samples": [{"prompt": [{"role": "user", "content": "hi there"}], "response": "hello", "score": 0.25}]},
        {"name": "dpo-a", "method": "dpo", "n": 64, "kl": 1.0, "reward": 0.6, "reward_se": 0.02,
         "objectives": {"x": 2.0, "y": 0.5}, "win_rate": {"win_rate": 60.0, "ci": [52.0, 68.0]},
         "samples": [{"prompt": [{"role": "user", "content": "hi there"}], "response": "hello, friend", "score": 0.75}]},
        {"name": "dpo-b", "method": "dpo", "n": 64, "kl": 2.0, "reward": 0.7, "objectives": {"x": 0.5, "y": 2.0},
         "win_rate": {"win_rate": 70.0, "ci": [61.0, 79.0]}},
    ]


def test_mean_ci_is_mean_plus_minus_1_96_se():
    assert mean_ci(0.5, 0.01) == "0.5 [0.4804, 0.5196]"
    assert mean_ci(0.5, None) == "0.5" and mean_ci(None, 0.1) == "—"


def test_runs_table_has_intervals_counts_and_only_computable_columns():
    page = render_html({"judge": "reward-model score (rm)", "runs": _runs()})
    assert "reward-model score (rm) (95% CI)" in page and "gold" not in page
    assert "0.5 [0.4804, 0.5196]" in page  # base's reward with its interval
    assert "win rate 95% CI" in page and "LC win rate" not in page  # no run has an LC win rate: no column
    assert "<th>n</th>" in page
    # per-group table: mean [CI] and n
    assert "0.4 [0.3608, 0.4392]" in page and "n a" in page


def test_hypervolume_only_over_a_real_front_with_its_reference():
    page = render_html({"runs": _runs(), "pareto": {"objectives": ["x", "y"], "reference": [0, 0]}})
    # dpo: (2, 0.5) and (0.5, 2) are both non-dominated → a front; base is a single point → none
    assert "— (no front)" in page and "fewer than 2 non-dominated runs" in page
    assert "reference point [0, 0] (given)" in page
    # hypervolume of the dpo front w.r.t. (0, 0): 2·0.5 + 0.5·(2 − 0.5) = 1.75
    assert "<td>1.75</td>" in page


def test_three_objective_fronts_are_drawn_pairwise_with_the_hypervolume_over_all_three():
    from pluralign.evaluate import plots

    runs = [{"name": f"m{i}", "method": "m", "objectives": dict(zip("xyz", p, strict=True))}
            for i, p in enumerate([(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (0.2, 0.2, 0.2)])]
    page = render_html({"runs": runs, "pareto": {"objectives": ["x", "y", "z"], "reference": [-1, -1, -1]}})
    assert "hypervolume over x, y, z w.r.t. the reference point [-1, -1, -1] (given)" in page
    assert "one panel per pair of objectives" in page
    # Boxes from the reference, shifted by +1: A = 2·1·1, B = 1·2·1, C = 1·1·2 (union 6 − 3 + 1 = 4) and
    # D = 1.2³ = 1.728, of which A∪B∪C covers 3·1.2 − 3·1 + 1 = 1.6: 4 + 1.728 − 1.6 = 4.128.
    png, hvs = plots.pareto_fronts(runs, ["x", "y", "z"], [-1, -1, -1])
    assert png[:4] == b"\x89PNG" and hvs["m"] == pytest.approx(4.128)
    assert "<td>4.128</td>" in page


def test_samples_side_by_side_with_scores_and_rendered_prompts():
    page = render_html({"runs": _runs()})
    assert "Sample generations" in page
    assert "hi there" in page and "{&#x27;role&#x27;" not in page  # the conversation, not a Python repr
    assert "(score 0.25)" in page and "(score 0.75)" in page


def test_comparison_table_across_training_runs():
    curves = [{"name": "a", "rows": [{"step": 5, "loss": 0.6}, {"step": 10, "loss": 0.5, "eval/accuracy": 0.7}]},
              {"name": "b", "rows": [{"step": 10, "loss": 0.4, "eval/accuracy": 0.8}]}]
    page = render_html({"curves": curves})
    assert "Run comparison" in page and "last eval/accuracy" in page and "last loss" in page
    assert "<td>0.8</td>" in page and "<td>0.5</td>" in page
    assert "Run comparison" not in render_html({"curves": curves[:1]})


def test_judge_label_never_says_gold_for_a_learned_judge():
    from pluralign.evaluate.runner import judge_label

    assert judge_label({"kind": "reward", "source": "runs/rm/model"}) == "reward-model score (rm/model)"
    assert judge_label({"kind": "reward", "source": "gold"}) == "gold utility"
    assert judge_label({"kind": "gold"}) == "gold utility"
    assert "LLM" in judge_label({"kind": "llm", "model": "m"})


@pytest.mark.parametrize("df,t", [(10, 2.2281), (15, 2.1314), (20, 2.0860), (30, 2.0423), (100, 1.9840)])
def test_a_seed_interval_past_ten_seeds_uses_students_t(df, t):
    # From 11 seeds on the half-width used the normal 1.96: 12% too narrow at 11 seeds (t = 2.228)
    from pluralign.sandbox.gold import seed_ci

    values = [0.0, 1.0] * ((df + 1) // 2) + [0.5] * ((df + 1) % 2)
    mean, half = seed_ci(values)
    sd = statistics.stdev(values)
    assert half == pytest.approx(t * sd / math.sqrt(len(values)), rel=2e-4)


def test_seed_interval_and_the_pal_verdict():
    from pluralign.demo_report import pal_verdict
    from pluralign.sandbox.gold import plus_minus, seed_ci

    mean, half = seed_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and math.isclose(half, 4.303 * 1.0 / math.sqrt(3), rel_tol=1e-9)
    one = seed_ci([5.0])  # one seed: no interval, not a zero-width one
    assert one[0] == 5.0 and math.isnan(one[1])
    assert plus_minus(*one) == "5.0 (one seed, no CI)" and plus_minus(2.0, 0.25, "+.2f") == "+2.00 ± 0.25"
    assert "on one seed, which gives no interval" in pal_verdict({("pal-bt", "m"): (3.0, float("nan"))}, "m")
    assert "PAL beats" in pal_verdict({("pal-bt", "m"): (3.0, 1.0)}, "m")
    assert "below" in pal_verdict({("pal-bt", "m"): (-3.0, 1.0)}, "m")
    assert "no clear difference" in pal_verdict({("pal-bt", "m"): (0.5, 1.0)}, "m")


def test_malformed_new_fields_are_config_errors():
    from pluralign.errors import ConfigError
    from pluralign.evaluate.results_check import check_results

    with pytest.raises(ConfigError, match=r"runs\[0\].per_group_se.a"):
        check_results({"runs": [{"per_group_se": {"a": "x"}}]})
    with pytest.raises(ConfigError, match=r"runs\[0\].samples"):
        check_results({"runs": [{"samples": "text"}]})


def test_a_kto_runs_baseline_is_not_reported_as_its_kl(tmp_path):
    # KTO logged its batch baseline z0 as "kl" (TRL's name), and `pluralign report` showed it as the run's KL
    import torch

    from pluralign import losses
    from pluralign.evaluate.run_dirs import load_run_dir
    from pluralign.runs import RunDir

    x = torch.tensor([-2.0, -3.0])
    _, metrics = losses.get("kto")(x, x - 1, torch.tensor([True, False]), kl_policy_logps=x, kl_ref_logps=x + 0.5)
    assert "kl" not in metrics and metrics["kl_baseline"].item() == 0.0  # z0 = max(mean KL estimate, 0)
    RunDir(tmp_path).log_metrics({"step": 1, "loss": 0.5, "kl_baseline": 0.03})
    assert "runs" not in load_run_dir(tmp_path)


def test_runs_that_tie_on_every_objective_are_one_point_and_no_front():
    # two runs of one method at the same objective means (greedy decoding, a deterministic judge) were
    # given the hypervolume of that one point's box to the reference point (here 1·1 = 1)
    runs = [{"name": n, "method": "m", "objectives": {"x": 1.0, "y": 1.0}} for n in ("a", "b")]
    page = render_html({"runs": runs, "pareto": {"reference": [0, 0]}})
    assert "<tr><td>m</td><td>2</td><td>2</td><td>— (no front)</td></tr>" in page


def test_means_over_fewer_judged_answers_say_so_in_the_report():
    # an LLM judge that could not read every reply: the page showed the win rate and reward as if every
    # answer had been judged (only the command line said otherwise)
    runs = [{"name": "base", "n": 4, "reward": 6.0, "reward_n": 3},
            {"name": "dpo", "n": 4, "reward": 7.0, "win_rate": {"win_rate": 50.0, "n_total": 3, "n_invalid": 1}},
            {"reward_n": 2, "win_rate": {"n_invalid": "2", "lc_is_extreme_change": True}}]  # hand-written: no note
    page = render_html({"runs": runs})
    assert "base: the judge graded 3 of 4 responses" in page
    assert "dpo: the judge&#x27;s verdict could not be read for 1 of 4 pairs" in page
