"""An eval config's mistakes fail before any model generates, naming the config file and the key; paths
in the config are relative to the config file."""

from __future__ import annotations

import pytest
from conftest import Generated
from test_judges_llm import ScriptedServer

import pluralign.evaluate.runner as runner
from pluralign.errors import ConfigError


@pytest.fixture
def judge_url():
    """The base URL of a chat-completions server on 127.0.0.1 (eval probes an LLM judge before generating)."""
    server = ScriptedServer(lambda user, n: ("ok", "[[C]]"))
    yield server.url
    server.close()


def cfg(**extra):
    return {"prompts": ["hi"], "models": [{"name": "base", "path": "sandbox"}], "metrics": ["reward", "win_rate"],
            **extra}


@pytest.mark.parametrize("value", [0, -3, "many", True, 2.5])
def test_bad_bootstrap_fails_before_generation(no_generation, value):
    # was an IndexError (0) or ValueError ("many") after every model had generated
    with pytest.raises(ConfigError, match=r"^eval\.yaml: bootstrap: must be an integer >= 1"):
        runner.evaluate_config(cfg(bootstrap=value), where="eval.yaml")


def test_good_bootstrap_passes_the_checks(no_generation):
    with pytest.raises(Generated):
        runner.evaluate_config(cfg(bootstrap=1), where="eval.yaml")


@pytest.mark.parametrize(("value", "message"), [([1, 2], "must be a device name"), ({"a": 1}, "must be a device name"),
                                              (float("nan"), "must be a device name"), (True, "must be a device name"),
                                              (0, "must be a device name"), ("", "must be a device name"),
                                              ("gpu", "bad device 'gpu'"), (-1, "must be a device name")])
def test_bad_device_fails_before_generation_naming_the_key(no_generation, value, message):
    # a list, number or boolean was a TypeError traceback from torch.device; a bad name did not name the key
    with pytest.raises(ConfigError, match=rf"^eval\.yaml: device: {message}"):
        runner.evaluate_config(cfg(device=value), where="eval.yaml")


@pytest.mark.parametrize("value", [None, "cpu", "auto"])
def test_good_device_passes_the_checks(no_generation, value):
    with pytest.raises(Generated):
        runner.evaluate_config(cfg(device=value), where="eval.yaml")


def test_missing_model_directory_names_the_config_and_key(no_generation, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    models = [{"name": "base", "path": "sandbox"}, {"name": "dpo", "path": "runs/nope"}]
    with pytest.raises(ConfigError, match=r"^eval\.yaml: models\[1\]\.path: model directory not found: 'runs/nope'"):
        runner.evaluate_config(cfg(models=models), where="eval.yaml")


@pytest.mark.parametrize("extra,message", [
    ({"judge": {"kind": "gold", "group": "nobody"}},
     r"^eval\.yaml: judge\.group: population 'default' has no group 'nobody'"),
    ({"judge": {"kind": "gold", "population": "nowhere"}}, r"^eval\.yaml: judge\.population: unknown population"),
    ({"population": "nowhere", "metrics": ["per_group"]}, r"^eval\.yaml: population: unknown population"),
    # without per_group the population was checked only as the default judge's, named judge.population
    ({"population": "nowhere", "metrics": ["reward"]}, r"^eval\.yaml: population: unknown population"),
    ({"population": ["a"]}, r"^eval\.yaml: population: must be a population name, got \['a'\]"),
    ({"judge": {"kind": "llm", "base_url": "http://127.0.0.1:9/v1", "model": "m", "mode": "vibes"}},
     r"^eval\.yaml: judge: LLMJudge mode"),
])
def test_judge_and_population_errors_name_the_config(no_generation, extra, message):
    with pytest.raises(ConfigError, match=message):
        runner.evaluate_config(cfg(**extra), where="eval.yaml")


def test_per_group_asked_for_without_a_population_is_refused(no_generation):
    # metrics: [per_group] without `population` evaluated every model and wrote no per-group numbers, unsaid
    with pytest.raises(ConfigError, match=r"^eval\.yaml: metrics: per_group .* set `population`"):
        runner.evaluate_config(cfg(metrics=["reward", "per_group"]), where="eval.yaml")
    with pytest.raises(Generated):  # the default metrics ask for per-group numbers only when there is a population
        runner.evaluate_config({k: v for k, v in cfg().items() if k != "metrics"}, where="eval.yaml")


def test_llm_judge_cache_dir_is_relative_to_the_config_file(no_generation, tmp_path, monkeypatch, judge_url):
    made = []

    class Recording(runner.LLMJudge):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(runner, "LLMJudge", Recording)
    monkeypatch.chdir(tmp_path)
    judge = {"kind": "llm", "base_url": judge_url, "model": "m", "api_key_env": None}
    for given, expected in [("cache", tmp_path / "conf" / "cache"), (str(tmp_path / "abs"), tmp_path / "abs")]:
        with pytest.raises(Generated):
            runner.evaluate_config(cfg(judge={**judge, "cache_dir": given}), where="conf/eval.yaml",
                                   base_dir=tmp_path / "conf")
        assert made[-1].cache_dir == expected


def test_a_misspelt_decoder_fails_before_any_entry_generates_naming_the_entry(no_generation):
    # the run stopped only at that entry's turn, after the entries before it had generated, naming no file or key
    models = [{"name": "base", "path": "sandbox"}, {"name": "bon4", "path": "sandbox", "decoder": "bonn"}]
    with pytest.raises(ConfigError, match=r"^eval\.yaml: models\[1\]\.decoder: unknown decoding method 'bonn' \(did you mean 'bon'"):
        runner.evaluate_config(cfg(models=models), where="eval.yaml")


@pytest.mark.parametrize("entry, message", [
    # was "decoding method 'bon' needs a reward (--reward)" once the entries before it had generated
    ({"decoder": "bon"}, r"^eval\.yaml: models\[1\]: decoder 'bon' needs a reward: give the entry a 'reward'"),
    ({"decoder": "args"}, r"^eval\.yaml: models\[1\]: decoder 'args' needs a reward"),
    ({"decoder": "genarm", "reward": "gold"}, r"^eval\.yaml: models\[1\]\.decoder: 'genarm' needs models, which "),
])
def test_a_decoder_without_what_it_steers_by_fails_before_any_entry_generates(no_generation, entry, message):
    models = [{"name": "base", "path": "sandbox"}, {"name": "steered", "path": "sandbox", **entry}]
    with pytest.raises(ConfigError, match=message):
        runner.evaluate_config(cfg(models=models), where="eval.yaml")


@pytest.mark.parametrize("controls, generation, message", [
    # each stopped the run only at its entry's turn, after the entries before it had generated
    ({"beta": -1}, {}, r"^eval\.yaml: models\[1\]\.controls: controls\.beta must be > 0"),
    ({"nn": 3}, {}, r"^eval\.yaml: models\[1\]\.controls: .*'nn'"),
    ("n=4", {}, r"^eval\.yaml: models\[1\]\.controls: must be a mapping of controls, got 'n=4'"),
    ({}, {"temperature": -1}, r"^eval\.yaml: generation: controls\.temperature must be >= 0"),
])
def test_bad_controls_fail_before_any_entry_generates(no_generation, controls, generation, message):
    models = [{"name": "base", "path": "sandbox"},
              {"name": "bon", "path": "sandbox", "decoder": "bon", "reward": "gold", "controls": controls}]
    with pytest.raises(ConfigError, match=message):
        runner.evaluate_config(cfg(models=models, generation=generation), where="eval.yaml")


@pytest.mark.parametrize("entry, message", [
    # a misspelt objective stopped the run once the entry's candidates had been drawn, naming no config or entry
    ({"reward": "gold", "controls": {"weights": {"kindness": 1}}},
     r"^eval\.yaml: models\[1\]\.controls\.weights: weights name unknown objectives \['kindness'\]"),
    ({"reward": "gold", "controls": {"weights": [1, 0]}}, r"^eval\.yaml: models\[1\]\.controls\.weights: 2 weights"),
    ({"reward": 3}, r"^eval\.yaml: models\[1\]\.reward: not a reward source: int"),
])
def test_weights_that_do_not_fit_the_reward_fail_before_any_entry_generates(no_generation, entry, message):
    models = [{"name": "base", "path": "sandbox"}, {"name": "bon", "path": "sandbox", "decoder": "bon", **entry}]
    with pytest.raises(ConfigError, match=message):
        runner.evaluate_config(cfg(models=models), where="eval.yaml")


def test_decoders_given_a_reward_pass_the_checks(no_generation):
    models = [{"name": "base", "path": "sandbox"}] + [
        {"name": d, "path": "sandbox", "decoder": d, "reward": "gold"} for d in ("bon", "args", "cd_block", "deal")]
    with pytest.raises(Generated):
        runner.evaluate_config(cfg(models=models), where="eval.yaml")


@pytest.mark.parametrize("key", ["baseline", "reference"])
def test_a_baseline_or_reference_that_names_no_model_says_which_and_what_there_is(no_generation, key):
    with pytest.raises(ConfigError, match=rf"^eval\.yaml: {key}: 'bse' names no model; models: \['base'\]"):
        runner.evaluate_config(cfg(**{key: "bse"}), where="eval.yaml")


@pytest.mark.parametrize("extra,message", [
    ({"judge": {"kind": "reward", "source": "runs/no_rm"}},
     r"^eval\.yaml: judge\.source 'runs/no_rm': expected 'gold', 'module:function' or an existing directory"),
    ({"judge": {"kind": "reward", "source": "scorers:two", "weights": {"detail": 1, "nope": 1}}},
     r"^eval\.yaml: judge\.weights: weights name unknown objectives \['nope'\]; known: \['detail', 'brevity'\]"),
    ({"judge": {"kind": "reward", "source": "scorers:two", "weights": {"detail": "high"}}},
     r"^eval\.yaml: judge\.weights: weights must be numbers"),
    ({"judge": {"kind": "reward", "source": "scorers:two", "weights": [1, 2, 3]}},
     r"^eval\.yaml: judge\.weights: 3 weights given for 2 objectives"),
    ({"models": [{"name": "base", "path": "sandbox"}, {"name": "bon", "path": "sandbox", "decoder": "bon",
                                                        "reward": "runs/no_rm"}]},
     r"^eval\.yaml: models\[1\]\.reward 'runs/no_rm': expected"),
    ({"judge": {"kind": "reward", "source": 3}}, r"^eval\.yaml: judge\.source: not a reward source: int"),
])
def test_a_reward_source_or_its_weights_fail_before_generation_naming_the_key(no_generation, tmp_path, monkeypatch,
                                                                              extra, message):
    # were "--reward 'runs/no_rm': ...", naming a command-line flag the user never gave, and a bad judge
    # weight failed only when the first model's answers were scored, without the config or key
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "scorers.py").write_text("def two(prompts, responses):\n    return [[0.0, 1.0] for _ in responses]\n"
                                         "two.objectives = ['detail', 'brevity']\n")
    with pytest.raises(ConfigError, match=message):
        runner.evaluate_config(cfg(**extra), where="eval.yaml")


def test_a_reward_judge_with_good_weights_passes_the_checks(no_generation, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "scorers.py").write_text("def two(prompts, responses):\n    return [[0.0, 1.0] for _ in responses]\n"
                                         "two.objectives = ['detail', 'brevity']\n")
    with pytest.raises(Generated):
        runner.evaluate_config(cfg(judge={"kind": "reward", "source": "scorers:two", "weights": {"brevity": 1}}),
                               where="eval.yaml")


@pytest.mark.parametrize("judge", [{"kind": "gold", "population": "default", "temperature": 0},
                                   {"kind": "gold", "weights": {"relevance": 1}, "temperature": -1},
                                   {"kind": "reward", "source": "gold", "temperature": "warm"}])
def test_a_judge_temperature_that_is_not_positive_fails_before_generation(no_generation, judge):
    # was raised by the first win rate, after every model had generated, without the config or key
    with pytest.raises(ConfigError, match=r"^eval\.yaml: judge: temperature must be a positive number"):
        runner.evaluate_config(cfg(judge=judge), where="eval.yaml")


@pytest.mark.parametrize("weights,message", [
    ({"relevence": 1}, r"^eval\.yaml: judge\.weights: unknown attribute\(s\) \['relevence'\]"),
    ({"relevance": "high"}, r"^eval\.yaml: judge\.weights: .*'high'"),
    # NaN or inf made every gold score null and every win rate invalid, and the run exited 0
    ({"relevance": float("nan")}, r"^eval\.yaml: judge\.weights: weights must be finite numbers, got \{'relevance': nan\}"),
    ({"safety": float("-inf")}, r"^eval\.yaml: judge\.weights: weights must be finite numbers, got \{'safety': -inf\}"),
])
def test_gold_judge_weights_fail_before_generation_naming_the_key(no_generation, weights, message):
    # a misspelt attribute failed when the first answers were scored ("high": a ValueError traceback)
    with pytest.raises(ConfigError, match=message):
        runner.evaluate_config(cfg(judge={"kind": "gold", "weights": weights}), where="eval.yaml")


@pytest.mark.parametrize("prompts,message", [
    ([], r"^eval\.yaml: prompts: an empty list of prompts"),
    (["hi", " "], r"^eval\.yaml: prompts\[1\]: empty text"),
    (["hi", 3], r"^eval\.yaml: prompts\[1\]: expected text or a list of chat messages, got int"),
    ([[{"role": "usr", "content": "hi"}]], r"^eval\.yaml: prompts\[0\]\[0\]\.role: expected one of system, user"),
    (["hi \ud800"], r"^eval\.yaml: prompts\[0\]: lone UTF-16 surrogate"),
])
def test_prompts_listed_in_the_config_are_checked_as_a_prompt_file_is(no_generation, prompts, message):
    # were evaluated as given (an empty list gave results of no prompts), or failed at generation naming no key
    with pytest.raises(ConfigError, match=message):
        runner.evaluate_config(cfg(prompts=prompts), where="eval.yaml")


def test_listed_chat_prompts_pass_the_checks(no_generation):
    with pytest.raises(Generated):
        runner.evaluate_config(cfg(prompts=["hi", [{"role": "user", "content": "hello"}]]), where="eval.yaml")


@pytest.mark.parametrize("extra,message", [
    ({"generation": [1]}, r"eval\.yaml: generation: must be a mapping"),
    ({"metrics": "reward"}, r"eval\.yaml: metrics: must be a list of metric names"),
    ({"out": 3}, r"eval\.yaml: out: must be a file path, got 3"),
    ({"out": None}, r"eval\.yaml: out: must be a file path"),
    ({"models": [{"name": ["x"], "path": "sandbox"}]}, r"eval\.yaml: models\[0\]\.name: must be text"),
])
def test_keys_of_the_wrong_kind_fail_before_generation_naming_the_key(no_generation, extra, message):
    # were tracebacks (a list as generation or name), 'metrics: reward' read letter by letter, and
    # `out: 3` failed only after every model had generated, writing nothing
    with pytest.raises(ConfigError, match=message):
        runner.evaluate_config(cfg(**extra), where="eval.yaml")


def test_per_group_utilities_are_labelled_gold_under_a_reward_judge(monkeypatch):
    # `eval` scores each group with gold utility whatever the judge; the report titled those numbers with
    # the reward model's label ("reward-model score (rm) per group")
    from pluralign.evaluate.report import render_html

    monkeypatch.setattr(runner, "generate", lambda entry, prompts, *a, **k: {"texts": ["an answer."] * len(prompts)})
    judge = {"kind": "reward", "source": lambda prompts, responses: [float(len(r)) for r in responses]}
    results = runner.evaluate_config(cfg(judge=judge, population="default", metrics=["reward", "per_group"]),
                                     where="eval.yaml")
    assert results["judge"] != "gold utility" and results["per_group_judge"] == "gold utility"
    page = render_html(results)
    assert "<h2>gold utility per group</h2>" in page and page.count("per group</h2>") == 1


def test_per_row_decoding_controls_in_a_prompt_file_are_refused_naming_row_and_field(tmp_path):
    # eval steers each model entry by its own controls: a row's weights were silently dropped, so a file
    # written for `pluralign decode` was evaluated as if unsteered
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b", "weights": {"positivity": 1}}\n'
                                      '{"prompt": "c", "user": "alice"}\n')
    with pytest.raises(ConfigError) as e:
        runner.load_prompts("p.jsonl", "eval.yaml: prompts", tmp_path)
    assert "p.jsonl:2: field 'weights': eval does not read per-row decoding controls" in str(e.value)
    assert "p.jsonl:3: field 'user'" in str(e.value) and str(e.value).startswith("eval.yaml: prompts: ")
    # a feedback record's user and group say who gave it: its prompt is taken as before
    (tmp_path / "f.jsonl").write_text('{"prompt": "a", "chosen": "x", "rejected": "y", "user": "alice", "group": 1}\n')
    assert runner.load_prompts("f.jsonl", "cfg", tmp_path) == ["a"]


def test_an_output_that_cannot_be_written_is_refused_before_any_model_generates(tmp_path, monkeypatch, capsys):
    # found only once every model had generated and been judged, with nothing written
    from pluralign.cli import main

    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated before the outputs were checked")

    monkeypatch.setattr(runner, "evaluate_config", evaluate)
    afile = tmp_path / "afile"
    afile.write_text("x")
    config = tmp_path / "eval.yaml"
    for yaml, flags, message in [
        ("out: afile/results.json\n", [], "eval.yaml: out " + str(afile / "results.json") + ": " + str(afile)
         + " is a file, not a directory"),
        ("", ["--out", str(tmp_path)], "--out " + str(tmp_path) + ": is a directory"),
        ("", ["--report", str(afile / "r.html")], "--report " + str(afile / "r.html") + ": "),
    ]:
        config.write_text("models: [{name: base, path: sandbox}]\n" + yaml)
        assert main(["eval", "--config", str(config), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "eval.yaml"]


def test_an_llm_judge_cache_dir_that_cannot_be_written_fails_before_generation(no_generation, tmp_path, judge_url):
    # found at the first reply cached, once every model had generated
    afile = tmp_path / "afile"
    afile.write_text("x")
    judge = {"kind": "llm", "base_url": judge_url, "model": "m", "api_key_env": None,
             "cache_dir": str(afile / "cache")}
    with pytest.raises(ConfigError, match=r"^eval\.yaml: judge: cache_dir .*afile is a file, not a directory"):
        runner.evaluate_config(cfg(judge=judge), where="eval.yaml")
    with pytest.raises(Generated):  # a new directory is fine: made with the first reply
        runner.evaluate_config(cfg(judge=judge | {"cache_dir": str(tmp_path / "new" / "cache")}), where="eval.yaml")
    assert not (tmp_path / "new").exists()


def test_help_config_documents_every_key_a_config_may_hold(capsys):
    """`pluralign eval --help-config` prints the config's keys; each key the checks accept is in it (there
    was no such option, and the docstring it prints left out `description` and `device`)."""
    from pluralign.cli import main

    assert main(["eval", "--help-config"]) == 0
    text = capsys.readouterr().out
    keys = runner.TOP_KEYS | runner.MODEL_KEYS | set(runner.GENERATION_KEYS) | set().union(*runner.JUDGE_KEYS.values())
    assert sorted(k for k in keys if k not in text) == []
    assert text.startswith("Config (YAML)") and "models:" in text


def test_help_config_example_points_at_where_training_saves_models():
    """The example's trained entry named `runs/dpo/final`, a directory no recipe writes: `pluralign train`
    saves its model to <output_dir>/model, so a config copied from the help failed on a missing path."""
    import textwrap

    import yaml

    block = runner.__doc__.split("Config (YAML)::", 1)[1].split("\n\n", 2)[1]
    example = yaml.safe_load(textwrap.dedent(block))
    runs = [m["path"] for m in example["models"] if m["path"].startswith("runs/")]
    assert runs and [p for p in runs if not p.endswith("/model")] == []
