"""Every number the report shows is what it says: results of different judges are not merged into one
column, NaN is written as null (strict JSON) and shown as a dash, and a Gini coefficient of negative
utilities is left undefined instead of shown as 1."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pluralign.cli import main
from pluralign.errors import ConfigError
from pluralign.evaluate import fairness
from pluralign.evaluate.report import render_html
from pluralign.evaluate.run_dirs import load_run_dir, load_run_dirs, merge_results
from pluralign.runs import RunDir, atomic_write_json, atomic_write_jsonl, to_json


def _strict(text: str):
    """json.loads that refuses the non-JSON tokens NaN / Infinity."""
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def _run_dir(root, name, results):
    d = root / name
    d.mkdir()
    atomic_write_json(d / "results.json", results)
    return d


# ---- judges ------------------------------------------------------------------------------------
def test_runs_of_different_judges_are_not_merged(tmp_path):
    gold = _run_dir(tmp_path, "gold", {"judge": "gold utility", "runs": [{"name": "a", "reward": 0.5}]})
    rm = _run_dir(tmp_path, "rm", {"judge": "reward-model score (rm)", "runs": [{"name": "b", "reward": 3.0}]})
    with pytest.raises(ConfigError, match=r"cannot merge .*gold \(judge 'gold utility'\) with .*rm "
                                          r"\(judge 'reward-model score \(rm\)'\)"):
        load_run_dirs([gold, rm])
    assert main(["report", str(gold), str(rm), "--out", str(tmp_path / "r.html")]) == 2


def test_runs_of_one_judge_merge_and_curves_go_with_any_judge(tmp_path):
    a = _run_dir(tmp_path, "a", {"judge": "gold utility", "runs": [{"name": "a", "reward": 0.5}]})
    b = _run_dir(tmp_path, "b", {"judge": "gold utility", "runs": [{"name": "b", "reward": 0.7}]})
    curves = _run_dir(tmp_path, "c", {"curves": [{"name": "train", "rows": [{"step": 1, "loss": 0.5}]}]})
    merged = load_run_dirs([a, b, curves])
    assert [r["name"] for r in merged["runs"]] == ["a", "b"] and merged["judge"] == "gold utility"
    # no judge given is the report's default label, "reward"
    with pytest.raises(ConfigError, match="results #1 .*'reward'.* results #2 .*'gold utility'"):
        merge_results([{"runs": [{"name": "x"}]}, {"judge": "gold utility", "runs": [{"name": "y"}]}])


# ---- NaN → null --------------------------------------------------------------------------------
def test_json_writers_write_nan_and_inf_as_null(tmp_path):
    obj = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float64("nan"), "d": np.array([1.0, np.nan]),
           "e": (np.int64(3), np.bool_(True)), "f": {"g": float("nan")}}
    want = {"a": None, "b": [None, None, 1.5], "c": None, "d": [1.0, None], "e": [3, True], "f": {"g": None}}
    assert _strict(to_json(obj)) == want
    assert _strict(atomic_write_json(tmp_path / "x.json", obj).read_text()) == want
    atomic_write_jsonl(tmp_path / "x.jsonl", [obj])
    assert _strict((tmp_path / "x.jsonl").read_text()) == want
    run = RunDir(tmp_path / "run")
    run.log_metrics({"step": 1, "loss": math.nan})
    assert _strict(run.metrics_path.read_text()) == {"step": 1, "loss": None}


def test_a_results_json_with_unmeasured_numbers_renders_them_as_dashes(tmp_path):
    """What the runner writes when a mean has no finite value: null where NaN was, shown as a dash."""
    nan = math.nan
    run = {"name": "r", "method": "dpo", "kl": nan, "kl_se": nan, "reward": nan, "reward_se": nan, "n": 4,
           "per_group": {"g": nan, "h": 0.5}, "per_group_se": {"g": nan, "h": nan}, "per_group_n": {"g": 4, "h": 4},
           "objectives": {"x": nan, "y": 1.0}, "win_rate": {"win_rate": nan, "ci": [nan, nan], "lc_win_rate": nan},
           "samples": [{"prompt": [{"role": "user", "content": "hi"}], "response": "yo", "score": nan}]}
    d = _run_dir(tmp_path, "run", {"judge": "gold utility", "runs": [run]})
    results = load_run_dir(d)
    assert results["runs"][0]["reward"] is None and results["runs"][0]["per_group"]["g"] is None
    page = render_html(results)
    assert "<td>—</td>" in page and "user: hi" in page and "[—, —]" in page
    assert main(["report", str(d), "--out", str(tmp_path / "r.html")]) == 0


# ---- Gini --------------------------------------------------------------------------------------
def test_gini_is_undefined_for_negative_utilities():
    # mean positive but one group negative: the old formula said 1.0 for these two groups
    assert np.isnan(fairness.fairness_summary({"a": -0.5, "b": 1.5})["gini"])
    with pytest.raises(ValueError, match="non-negative"):
        fairness.gini([-0.5, 1.5])
    assert not fairness.gini_defined([0.0, 0.0]) and fairness.gini_defined([0.0, 2.0])
    page = render_html({"runs": [{"name": "neg", "per_group": {"a": -0.5, "b": 1.5}},
                                 {"name": "pos", "per_group": {"a": 0.5, "b": 1.5}}]})
    cells = page.split("<tbody>")[1].split("</tbody>")[0]
    neg_row, pos_row = cells.split("</tr>")[:2]
    assert neg_row.endswith("<td>—</td>") and pos_row.endswith("<td>0.25</td>")
    assert "Gini is undefined (—) for neg:" in page


def test_a_reward_model_run_brings_its_held_out_calibration_and_accuracy(tmp_path):
    # `pluralign report RUN` promises calibration diagrams; a reward-model run keeps its held-out
    # evaluation in report/eval.json (and `eval rm` in model/eval/rm_eval.json), which were never read:
    # the report showed its training curves only.
    import json

    import torch

    from pluralign.reward.evaluation import calibration_report
    from pluralign.runs import RunDir

    run = tmp_path / "rm"
    RunDir(run).log_metrics({"step": 1, "loss": 0.69})
    margins = torch.tensor([2.0, -1.0, 0.5, 1.5, 0.2, -0.3])
    report = {"kind": "pairwise", "n": 6, "accuracy": 4 / 6, "mean_margin": 0.48, "per_group": {"a": 0.5, "b": 1.0},
              "calibration": calibration_report(margins)}
    (run / "report").mkdir(parents=True, exist_ok=True)
    (run / "report" / "eval.json").write_text(json.dumps(report))
    results = load_run_dir(run)
    (entry,) = results["calibration"]
    assert entry["name"] == "rm (held-out)" and entry["errors"] == report["calibration"]["before"]
    assert entry["rows"] == report["calibration"]["reliability_before"]
    (table,) = results["tables"]
    assert table["rows"] == [["rm (held-out)", 6, 4 / 6, 0.5, 1.0]] and table["columns"][-2:] == ["a", "b"]
    page = render_html(results)
    assert "Calibration" in page and "rm (held-out)" in page


def test_the_pareto_section_names_the_runs_it_leaves_out():
    # A run without a value for a compared objective was dropped from the fronts and the "runs" count unsaid
    runs = [{"name": "a", "method": "m", "objectives": {"h": 0.1, "s": 0.9}},
            {"name": "b", "method": "m", "objectives": {"h": 0.9, "s": 0.1}},
            {"name": "c", "method": "m", "objectives": {"h": 0.95, "s": None}}]
    html = render_html({"runs": runs})
    assert "Left out of the Pareto fronts (no value for every objective): c." in html
    assert "Left out" not in render_html({"runs": runs[:2]})


def test_the_reward_kl_plot_names_the_runs_it_cannot_draw():
    # A run without a KL estimate (a decoder that names no distribution) was missing from the plot unsaid
    runs = [{"name": "base", "kl": 0.0, "reward": 1.0}, {"name": "guided", "kl": None, "reward": 1.4}]
    assert "not drawn (no KL or reward): guided" in render_html({"runs": runs})
    assert "not drawn" not in render_html({"runs": runs[:1]})
