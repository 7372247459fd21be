"""Reports from malformed results.json files and from run directories with hostile names: a clear
ConfigError naming the file and the key (CLI exit 2), never a traceback from numpy or matplotlib."""

from __future__ import annotations

import json

import pytest

from pluralign.cli import main
from pluralign.errors import ConfigError
from pluralign.evaluate.report import render_html
from pluralign.evaluate.results_check import check_results
from pluralign.evaluate.run_dirs import load_run_dir

GOOD_RUN = {"name": "a", "method": "dpo", "kl": 0.5, "reward": 1.0, "per_group": {"g": 0.3},
            "objectives": {"x": 1.0, "y": 2.0}}


@pytest.mark.parametrize("results,where", [
    ([GOOD_RUN], "the top level"),
    ({"runs": "dpo"}, "'runs' must be a list"),
    ({"runs": {"name": "a"}}, "'runs' must be a list"),
    ({"runs": [GOOD_RUN, None]}, "'runs[1]' must be an object, got null"),
    ({"runs": [{**GOOD_RUN, "kl": "0.5"}]}, "'runs[0].kl' must be a number or null, got str '0.5'"),
    ({"runs": [{**GOOD_RUN, "reward": True}]}, "'runs[0].reward'"),
    ({"runs": [{**GOOD_RUN, "per_group": {"g": "0.3"}}]}, "'runs[0].per_group.g' must be a number or null"),
    ({"runs": [{**GOOD_RUN, "per_group": ["g"]}]}, "'runs[0].per_group' must be an object"),
    ({"runs": [{**GOOD_RUN, "objectives": {"x": "high"}}]}, "'runs[0].objectives.x'"),
    ({"runs": [{**GOOD_RUN, "win_rate": 55}]}, "'runs[0].win_rate' must be an object"),
    ({"runs": [{**GOOD_RUN, "win_rate": {"win_rate": 55, "baseline": 3}}]}, "'runs[0].win_rate.baseline' must be the baseline run's name"),
    ({"runs": [GOOD_RUN], "pareto": {"objectives": [["x"], "y"]}}, "'pareto.objectives[0]'"),
    ({"runs": [GOOD_RUN], "pareto": {"objectives": ["x", "y"], "reference": [0]}}, "'pareto.reference'"),
    # a misspelt objective left the Pareto section out without a word
    ({"runs": [GOOD_RUN], "pareto": {"objectives": ["x", "z"]}}, "'pareto.objectives[1]' must be an objective of the runs (x, y)"),
    # was an IndexError in the plot: without pareto.objectives the reference is for the runs' first two
    ({"runs": [GOOD_RUN], "pareto": {"reference": [0]}}, "'pareto.reference' must be one number per objective (x, y"),
    # was an AttributeError / TypeError rendering the sample's prompt
    ({"runs": [{**GOOD_RUN, "samples": [{"prompt": {"x": 1}, "response": "r"}]}]}, "'runs[0].samples[0].prompt'"),
    ({"runs": [{**GOOD_RUN, "samples": [{"prompt": 5, "response": "r"}]}]}, "'runs[0].samples[0].prompt'"),
    ({"runs": [{**GOOD_RUN, "samples": [{"prompt": [{"role": "user"}]}]}]}, "'runs[0].samples[0].prompt'"),
    # were rendered as an impossible ECE (3.167)
    ({"calibration": [{"probs": [0.5, 1.5], "labels": [1, 0]}]}, "'calibration[0].probs[1]' must be a probability in [0, 1]"),
    ({"calibration": [{"probs": [0.5, -0.1], "labels": [1, 0]}]}, "'calibration[0].probs[1]'"),
    ({"calibration": [{"probs": [0.5, 0.2], "labels": [1, 3]}]}, "'calibration[0].labels[1]' must be 0 or 1"),
    ({"calibration": [{"probs": [0.5, 0.2], "labels": [None, 0]}]}, "'calibration[0].labels[0]' must be 0 or 1, got null"),
    ({"calibration": [{"name": "rm"}]}, "'calibration[0]' must be an object with 'probs' and 'labels', or 'rows'"),
    ({"calibration": [{"name": "rm", "rows": [{"confidence": 0.5}]}]}, "'calibration[0].rows[0].accuracy'"),
    ({"calibration": [{"probs": [0.5, 0.2], "labels": [1]}]}, "'calibration[0].labels'"),
    ({"calibration": [{"probs": [0.5, "x"], "labels": [1, 0]}]}, "'calibration[0].probs[1]'"),
    ({"calibration": [None]}, "'calibration[0]' must be an object"),
    ({"calibration": [{"probs": [0.5], "labels": [1], "n_bins": "x"}]}, "'calibration[0].n_bins' must be an integer >= 1"),
    ({"calibration": [{"probs": [0.5], "labels": [1], "n_bins": 0}]}, "'calibration[0].n_bins'"),
    ({"calibration": [{"rows": [{"confidence": 0.5, "accuracy": 0.5}], "errors": "x"}]}, "'calibration[0].errors' must be an object"),
    ({"calibration": [{"rows": [], "errors": {"ece": "low"}}]}, "'calibration[0].errors.ece' must be a number"),
    ({"curves": [{"name": "c", "rows": [1, 2]}]}, "'curves[0].rows[0]' must be an object"),
    ({"tables": [{"title": "t", "columns": ["a"], "rows": "ab"}]}, "'tables[0].rows' must be a list"),
    # "\ud800" is valid JSON: a TypeError from matplotlib's text, or from writing the page as UTF-8
    ({"runs": [{**GOOD_RUN, "name": "a\ud800"}]}, "'runs[0].name': lone UTF-16 surrogate"),
    ({"title": "\udc80"}, "'title': lone UTF-16 surrogate"),
])
def test_malformed_results_are_config_errors_naming_the_key(tmp_path, results, where):
    with pytest.raises(ConfigError, match="results: .*" + where.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        render_html(results)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(results))
    with pytest.raises(ConfigError, match="results.json"):
        load_run_dir(run)
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 2


def test_unreadable_results_json_is_a_config_error(tmp_path):
    for data in (b"\xff\xfe{", b"[" * 100_000, b'{"runs": [{"kl": ' + b"9" * 5000 + b"}]}"):
        run = tmp_path / "run"
        run.mkdir(exist_ok=True)
        (run / "results.json").write_bytes(data)
        with pytest.raises(ConfigError, match="results.json"):
            load_run_dir(run)


def test_valid_results_pass_unchanged():
    results = {"runs": [GOOD_RUN], "calibration": [{"name": "rm", "probs": [0.2, 0.8], "labels": [0, 1]}]}
    assert check_results(results) is results
    assert "<html" in render_html(results)


@pytest.mark.parametrize("name", ["run $x$", "cost $5 and $", r"$\frac{a}{$", "$$", r"a_$b^{$"])
def test_dollar_signs_in_names_do_not_reach_math_text(tmp_path, name):
    run = tmp_path / name
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / s, "kl": s / 10, "reward": s})
                                               + "\n" for s in range(1, 5)))
    (run / "results.json").write_text(json.dumps({"runs": [{**GOOD_RUN, "name": name, "method": name,
                                                            "per_group": {name: 0.3}, "objectives": {name: 1, "y": 2}}],
                                                  "calibration": [{"name": name, "probs": [0.2, 0.8], "labels": [0, 1]}]}))
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert out.read_text().count("data:image/png;base64,") >= 4


def test_a_lone_run_directory_or_results_dict_is_named(tmp_path):
    from pluralign.evaluate.run_dirs import load_run_dirs, merge_results

    (tmp_path / "results.json").write_text(json.dumps({"runs": [{"name": "a", "kl": 1.0, "reward": 0.5}]}))
    with pytest.raises(ConfigError, match="paths: expected a list of run directories") as e:  # read per character
        load_run_dirs(str(tmp_path))
    assert e.value.field == "paths"
    with pytest.raises(ConfigError, match="parts: expected a list of results dicts, got dict"):  # was AttributeError
        merge_results({"runs": []})
    assert load_run_dirs([tmp_path])["runs"][0]["name"] == "a"
