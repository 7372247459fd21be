"""The verdicts of experiments/pareto_training.py's RESULT line, on hand-made method entries: each is computed
from the methods it is about, and left out when none of them ran."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PATH = Path(__file__).parents[1] / "experiments" / "pareto_training.py"
sys.path.insert(0, str(PATH.parent))
spec = importlib.util.spec_from_file_location("pareto_training", PATH)
pt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pt)


def _entry(hv: float, cpu_s: float) -> dict:
    return {"hv": hv, "cpu_s": cpu_s}


def test_verdicts_follow_the_measured_ratios():
    v = pt.verdicts({"methods": {"linear": _entry(0.40, 30.0), "soups": _entry(0.39, 9.0), "pama": _entry(0.41, 31.0)}})
    assert v["soups_hv_ratio"] == 0.39 / 0.40 and v["soups_cost_ratio"] == 9.0 / 30.0
    assert v["single_run_95pct_at_third_cost"] is True  # 0.975 of the sweep at 0.3 of its cost
    assert v["raco_or_pama_ge_linear_at_equal_cpu"] is True  # pama +0.01 at 1.03x
    v = pt.verdicts({"methods": {"linear": _entry(0.40, 30.0), "soups": _entry(0.37, 9.0), "pama": _entry(0.41, 40.0)}})
    assert v["single_run_95pct_at_third_cost"] is False and v["raco_or_pama_ge_linear_at_equal_cpu"] is False


def test_a_verdict_about_methods_that_did_not_run_is_left_out():
    # --methods linear,soups printed raco_or_pama_ge_linear_at_equal_cpu=False, and --methods linear,pama
    # single_run_95pct_at_third_cost=False: findings about methods never trained
    soups = pt.verdicts({"methods": {"linear": _entry(0.40, 30.0), "soups": _entry(0.39, 9.0)}})
    assert "raco_or_pama_ge_linear_at_equal_cpu" not in soups and soups["single_run_95pct_at_third_cost"] is True
    pama = pt.verdicts({"methods": {"linear": _entry(0.40, 30.0), "pama": _entry(0.41, 31.0)}})
    assert not any(k.startswith("single_run_95pct") for k in pama) and pama["raco_or_pama_ge_linear_at_equal_cpu"]
    # --quick (no dense grid) printed single_run_95pct_at_third_cost_dense, a copy of the sweep-grid verdict
    assert "single_run_95pct_at_third_cost_dense" not in soups
    dense = pt.verdicts({"methods": {"linear": _entry(0.40, 30.0), "soups": _entry(0.37, 9.0),
                                     "soups_dense": _entry(0.39, 9.0)}})
    assert dense["single_run_95pct_at_third_cost"] is False and dense["single_run_95pct_at_third_cost_dense"] is True
