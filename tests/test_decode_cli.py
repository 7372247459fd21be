"""`pluralign decode` end to end on a tiny saved model, per-request overrides from JSONL, user errors as
exit code 2, and the `steer` helper."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from pluralign.cli import main
from pluralign.decode.cli import parse_weights
from pluralign.decode.steer import steer
from pluralign.decode.toy import toy_lm, toy_tokenizer


def _words(prompts, responses):
    return torch.tensor([[float(r.split().count("cat")), float(r.split().count("dog"))] for r in responses])


@pytest.fixture(scope="module")
def model_dir(toy_lm_dir):
    mod = types.ModuleType("decode_cli_rewards")
    mod.words = _words
    mod.named = lambda prompts, responses: _words(prompts, responses)
    mod.named.objectives = ["cat", "dog"]
    mod.raises = lambda prompts, responses: 1 / 0
    mod.nan = lambda prompts, responses: [float("nan")] * len(responses)
    mod.short = lambda prompts, responses: [1.0] * (len(responses) - 1)
    mod.text = lambda prompts, responses: ["good"] * len(responses)
    sys.modules["decode_cli_rewards"] = mod
    return toy_lm_dir


def test_cli_bon_with_per_request_weights(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "the", "weights": [1, 0]}) + "\n" +
                       json.dumps({"prompt": "a", "weights": [0, 1], "n": 4}) + "\n")
    out = tmp_path / "out.jsonl"
    rc = main(["decode", "--method", "bon", "--model", str(model_dir), "--reward", "decode_cli_rewards:words",
               "--prompts", str(prompts), "--out", str(out), "--n", "6", "--max-new-tokens", "6"])
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2 and len(rows[0]["candidates"]) == 6 and len(rows[1]["candidates"]) == 4
    assert rows[0]["utility"] == rows[0]["scores"]["r0"] and rows[1]["utility"] == rows[1]["scores"]["r1"]
    assert "forward passes" in capsys.readouterr().out


def test_a_reward_function_names_its_objectives_for_weights_by_name(model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("the\n")
    out = tmp_path / "out.jsonl"
    rc = main(["decode", "--method", "bon", "--model", str(model_dir), "--reward", "decode_cli_rewards:named",
               "--weights", "dog=1,cat=0", "--prompts", str(prompts), "--out", str(out), "--n", "4",
               "--max-new-tokens", "6"])
    row = json.loads(out.read_text())
    assert rc == 0 and set(row["scores"]) == {"cat", "dog"} and row["utility"] == row["scores"]["dog"]


def test_map_palette_out_of_reach_is_a_warning_and_marked_in_the_rows(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("the\na\n")
    out = tmp_path / "out.jsonl"
    args = ["decode", "--method", "map", "--model", str(model_dir), "--reward", "decode_cli_rewards:words",
            "--prompts", str(prompts), "--out", str(out), "--n", "4", "--max-new-tokens", "4", "--set"]
    assert main(args + ["targets=[0,0]"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["feasible"] for r in rows] == [True, True] and rows[0]["lambda"] == [0.0, 0.0]
    assert "warning" not in capsys.readouterr().err
    assert main(args + ["targets=[100,0]"]) == 0  # 100 cats in 4 tokens: out of reach
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["feasible"] for r in rows] == [False, False] and all(r["achieved"][0] < 100 for r in rows)
    assert "warning: map: the targets are out of reach of the candidates of 2 of 2 prompt(s)" in capsys.readouterr().err
    # targets written as --weights takes numbers (a TypeError traceback before), by name too
    assert main(args + ["targets=0,0"]) == 0 and json.loads(out.read_text().splitlines()[0])["lambda"] == [0.0, 0.0]
    assert main(args + ["targets=r1=0,r0=100"]) == 0
    assert json.loads(out.read_text().splitlines()[0])["feasible"] is False
    for bad, message in [("targets=abc", "must be one number per objective"), ("targets=[1]", "1 weights given for 2"),
                         ('targets=["a",1]', "must be numbers"), ("targets=[NaN,0]", "must be finite")]:
        assert main(args + [bad]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (bad, err)


def test_rejection_that_accepted_nothing_is_a_warning():
    from pluralign.decode.api import DecodeResult
    from pluralign.decode.cli import result_warnings

    assert result_warnings("rejection", DecodeResult(texts=["a", "b"], info={"exhausted": []})) == []
    (note,) = result_warnings("rejection", DecodeResult(texts=["a", "b"], info={"exhausted": [1]}))
    assert note.startswith("rejection: 1 of 2 prompt(s) accepted no candidate")


def test_console_script_imports_a_reward_module_from_the_working_directory(model_dir, tmp_path):
    # a console script's sys.path lacks the working directory (python -m has it): a user's `my_reward.py`
    # next to their prompts was "No module named 'my_reward'"
    script = Path(sys.executable).with_name("pluralign")
    if not script.exists():
        pytest.skip("pluralign console script not installed next to this interpreter")
    (tmp_path / "my_reward.py").write_text("def brevity(prompts, responses):\n"
                                           "    return [-float(len(r.split())) for r in responses]\n")
    (tmp_path / "p.txt").write_text("the\n")
    done = subprocess.run([str(script), "decode", "--method", "bon", "--model", str(model_dir), "--reward",
                           "my_reward:brevity", "--prompts", "p.txt", "--out", "out.jsonl", "--n", "3",
                           "--max-new-tokens", "4"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["utility"] == max(-float(len(c.split())) for c in row["candidates"])


@pytest.mark.parametrize("method", ["bon", "args", "rejection"])
@pytest.mark.parametrize("reward, message", [
    ("raises", "reward 'decode_cli_rewards:raises' raised ZeroDivisionError"),
    ("nan", "reward 'decode_cli_rewards:nan' returned a non-finite value"),
    ("short", r"reward 'decode_cli_rewards:short' returned shape \(\d+, 1\) for \d+ responses"),
    ("text", "reward 'decode_cli_rewards:text' returned something that is not numbers"),
])
def test_a_broken_reward_function_exits_2_naming_it(model_dir, tmp_path, capsys, method, reward, message):
    # a reward that scored one response too few used to be broadcast (best-of-N picked blindly, exit 0);
    # one that raised or returned NaN or text ended in a traceback
    (tmp_path / "p.txt").write_text("the\na\n")
    out = tmp_path / "o.jsonl"
    rc = main(["decode", "--method", method, "--model", str(model_dir), "--reward", f"decode_cli_rewards:{reward}",
               "--prompts", str(tmp_path / "p.txt"), "--out", str(out), "--n", "3", "--max-new-tokens", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and __import__("re").search(message, err), err
    assert not out.exists()


def test_weights_the_reward_cannot_read_stop_before_decoding_naming_the_flag_or_row(model_dir, tmp_path, capsys):
    # an unknown objective or a wrong count stopped decoding after the candidates were drawn, with a message that
    # named neither --weights nor the prompts file's line
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "the"}) + "\n" + json.dumps({"prompt": "a", "weights": {"bird": 1}}) + "\n"
                       + json.dumps({"prompt": "a", "weights": [1, 2, 3]}) + "\n")
    args = ["decode", "--method", "bon", "--model", str(model_dir), "--reward", "decode_cli_rewards:named",
            "--out", str(tmp_path / "o.jsonl"), "--n", "2", "--max-new-tokens", "2"]
    assert main(args + ["--prompts", str(prompts)]) == 2
    err = capsys.readouterr().err
    assert "p.jsonl:2: field 'weights': weights name unknown objectives ['bird']; known: ['cat', 'dog']" in err, err
    assert "p.jsonl:3: field 'weights': 3 weights given for 2 objectives" in err and "Traceback" not in err
    (tmp_path / "one.txt").write_text("the\n")
    assert main(args + ["--prompts", str(tmp_path / "one.txt"), "--weights", "cat=1,bird=1"]) == 2
    assert "error: --weights: weights name unknown objectives ['bird']" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_user_errors_exit_2(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\nnot json\n{"nope": 1}\n')
    args = ["decode", "--method", "bon", "--model", str(model_dir), "--reward", "decode_cli_rewards:words",
            "--out", str(tmp_path / "o.jsonl")]
    assert main(args + ["--prompts", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:2" in err and "bad.jsonl:3" in err and "prompt" in err
    good = tmp_path / "p.txt"
    good.write_text("the\n")
    assert main(args + ["--prompts", str(good), "--weights", "1,2,3"]) == 2
    assert main(["decode", "--method", "nope", "--model", str(model_dir), "--prompts", str(good), "--out", "x"]) == 2
    assert main(args[:-2] + ["--reward", "no_such_module:f", "--prompts", str(good), "--out", "x"]) == 2
    # a row's own controls of the wrong shape (a crash in the reward's weighting before): named by line and field
    table = tmp_path / "w.csv"
    table.write_text('prompt,weights,n\nthe,"[1, 0]",2\nthe,a=1,2\nthe,,zero\n')
    capsys.readouterr()
    assert main(args + ["--prompts", str(table)]) == 2
    err = capsys.readouterr().err
    assert "w.csv:3: field 'weights': controls.weights must be finite numbers" in err
    assert "w.csv:4: field 'n': controls.n must be an integer >= 1" in err and "Traceback" not in err


def test_an_out_that_cannot_be_written_is_named_before_anything_is_decoded(model_dir, tmp_path, capsys, monkeypatch):
    # it failed at the very end, after every prompt had been decoded
    import pluralign.decode.steer

    monkeypatch.setattr(pluralign.decode.steer, "load_policy", lambda *a, **k: pytest.fail("loaded the model"))
    prompts, blocker = tmp_path / "p.txt", tmp_path / "file"
    prompts.write_text("the\n")
    blocker.write_text("")
    for out, message in ((blocker / "o.jsonl", "is a file, not a directory"), (tmp_path, "is a directory")):
        assert main(["decode", "--method", "sample", "--model", str(model_dir), "--prompts", str(prompts),
                     "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out {out}" in err and message in err and "Traceback" not in err


@pytest.mark.parametrize("flags, message", [
    (["--method", "soft_bon", "--beta", "-1"], "controls.beta must be > 0"),  # was: quietly best-of-N
    (["--method", "bon", "--n", "0"], "controls.n must be an integer >= 1, got 0"),
    (["--method", "sample", "--max-new-tokens", "0"], "controls.max_new_tokens must be an integer >= 1"),
    (["--method", "sample", "--temperature", "nan"], "controls.temperature must be a finite number"),
    (["--method", "sample", "--temperature", "-1"], "controls.temperature must be >= 0 (0: greedy), got -1"),
    (["--method", "bon", "--set", "tie=first"], "['tie'] not an option of decoding method 'bon' (did you mean 'ties'?)"),
])
def test_cli_out_of_range_controls_exit_2_naming_them(model_dir, tmp_path, capsys, flags, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text("the\n")
    args = ["decode", "--model", str(model_dir), "--reward", "decode_cli_rewards:words", "--prompts", str(prompts),
            "--out", str(tmp_path / "o.jsonl"), *flags]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_warns_when_nothing_reads_the_steering_fields(model_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "the", "user": "u1"}) + "\n")
    args = ["decode", "--method", "sample", "--model", str(model_dir), "--prompts", str(prompts),
            "--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "3"]
    assert main(args + ["--weights", "1,0"]) == 0  # a plain model, no reward: a warning, not an error
    err = capsys.readouterr().err
    assert "warning: weights, user given but nothing reads them" in err and "no reward is given" in err
    assert main(args) == 0  # the per-request user alone
    assert "warning: user given" in capsys.readouterr().err
    assert main(args[:2] + ["bon", *args[3:], "--reward", "decode_cli_rewards:words", "--weights", "1,0"]) == 0
    assert "warning" not in capsys.readouterr().err  # the reward reads the weights
    assert main(args[:2] + ["mod", *args[3:], "--models", str(model_dir), "--weights", "0.5,0.5"]) == 0
    assert "warning" not in capsys.readouterr().err  # fusion weighs the models
    # genarm weighs its ARMs by --w (alpha), never by the weights: they were dropped without a word
    assert main(args[:2] + ["genarm", *args[3:], "--models", str(model_dir), "--weights", "0.5,0.5"]) == 0
    assert "warning: weights, user given but nothing reads them" in capsys.readouterr().err
    # extra models for a method that reads none were loaded and dropped without a word
    assert main(args[:2] + ["bon", *args[3:], "--reward", "decode_cli_rewards:words", "--models", str(model_dir)]) == 2
    assert "error: --models: method 'bon' reads no extra models; genarm and mod do" in capsys.readouterr().err


def test_parse_weights():
    assert parse_weights("1, 0.5") == [1.0, 0.5]
    assert parse_weights("a=1,b=0.5") == {"a": 1.0, "b": 0.5}
    assert parse_weights(None) is None


def test_steer_each_request_gets_its_own_objective(model_dir):
    rows = steer(str(model_dir), ["the", "the"], [[1, 0], [0, 1]], reward=_words, n=16, max_new_tokens=8)
    assert rows[0]["scores"]["r0"] >= rows[1]["scores"]["r0"]
    assert rows[1]["scores"]["r1"] >= rows[0]["scores"]["r1"]
    assert rows[0]["compute"]["reward_evals"] == 32


def test_cli_reads_prompts_from_json_and_csv_tables(model_dir, tmp_path):
    """Rows of a .json list or a CSV table are requests with their controls (before, each line of the file,
    header included, was a prompt)."""
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "the", "n": 2}, {"prompt": "a"}]))
    (tmp_path / "p.csv").write_text("prompt,n\nthe,2\na,\n")
    for name in ("p.json", "p.csv"):
        out = tmp_path / f"{name}.out.jsonl"
        assert main(["decode", "--method", "bon", "--model", str(model_dir), "--reward", "decode_cli_rewards:words",
                     "--prompts", str(tmp_path / name), "--out", str(out), "--n", "3", "--max-new-tokens", "3"]) == 0
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert [(r["prompt"], len(r["candidates"])) for r in rows] == [("the", 2), ("a", 3)]


def test_cli_sampling_flags_and_per_row_sampling_settings(model_dir, tmp_path):
    """--top-k/--top-p/--stop reach the sampler, and a row may set its own limit, temperature and stop (a
    single stop text is one stop, not one per character)."""
    from pluralign.decode.api import Controls

    assert Controls(stop="the end").stop == ["the end"]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "the", "max_new_tokens": 2, "temperature": 0}) + "\n"
                                      + json.dumps({"prompt": "a", "stop": "cat"}) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["decode", "--method", "sample", "--model", str(model_dir), "--prompts", str(tmp_path / "p.jsonl"),
                 "--out", str(out), "--max-new-tokens", "12", "--top-k", "3", "--top-p", "0.9", "--stop", "dog"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows[0]["response"].split()) <= 2 and "cat" not in rows[1]["response"]
    assert rows[0]["tokens"] <= 2 and all(r["finish_reason"] in ("stop", "length") for r in rows)

    from pluralign.decode.sampler import finish_reason

    assert finish_reason([5, 6], 2, {2}) == "length" and finish_reason([5, 2], 2, {2}) == "stop"
    assert finish_reason([5], 2, {2}) == "stop"  # ended early: an end-of-sequence token or a stop string

    class Words:  # id i decodes to word i
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"w{i}" for i in ids)

    # the last token completed a stop string exactly at the limit: the sampler calls that a stop
    assert finish_reason([5, 6], 2, {2}, Words(), ["w6"]) == "stop"
    assert finish_reason([5, 6], 2, {2}, Words(), ["w7"]) == "length"
    assert main(["decode", "--method", "sample", "--model", str(model_dir), "--prompts", str(tmp_path / "p.jsonl"),
                 "--out", str(out), "--top-p", "0"]) == 2


def test_a_rows_bad_weights_for_a_conditioned_model_are_named_by_file_and_line(tmp_path, capsys):
    # the soup's check said "request 1: weights: ..." (0-based, no file)
    from online_toys import make_model_dir

    from pluralign.models.soup import save_soup

    a, b = make_model_dir(tmp_path / "a"), make_model_dir(tmp_path / "b")
    soup = save_soup([a, b], ["x", "y"], tmp_path / "soup")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "the cat"}) + "\n" + json.dumps({"prompt": "a", "weights": {"x": -1, "y": 1}})
                       + "\n" + json.dumps({"prompt": "a", "weights": [1, 1, 1]}) + "\n")
    args = ["decode", "--method", "sample", "--model", str(soup), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
            "--max-new-tokens", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "p.jsonl:2: field 'weights': weights must be non-negative" in err, err
    assert "p.jsonl:3: field 'weights': 3 value(s) given for 2 objectives" in err
    (tmp_path / "one.txt").write_text("the cat\n")
    assert main(args[:6] + [str(tmp_path / "one.txt")] + args[7:] + ["--weights", "0,0"]) == 2
    assert "--weights: weights are all zero" in capsys.readouterr().err
    # a number list starting with "-" is a value, not an option (argparse said "expected one argument")
    assert main(args[:6] + [str(tmp_path / "one.txt")] + args[7:] + ["--weights", "-1,2"]) == 2
    assert "--weights: weights must be non-negative" in capsys.readouterr().err
    # a field the model's scheme does not read: a soup is steered by weights, not by a direction
    assert main(args[:6] + [str(tmp_path / "one.txt")] + args[7:] + ["--direction", "1,0"]) == 0
    assert "warning: direction given but nothing reads them: " in (err := capsys.readouterr().err)
    assert "conditioning scheme 'soup' reads only weights" in err


def test_a_rows_seed_user_group_constraints_and_chat_template_of_the_wrong_kind_are_named_by_line(model_dir, tmp_path,
                                                                                                  capsys):
    # a seed of 1.5 or "x" and a user given as an object were tracebacks from inside the decoder, a misspelt
    # chat_template an error naming no row, and constraints that are not an object were silently ignored
    rows = [{"prompt": "the"}, {"prompt": "a", "seed": 1.5}, {"prompt": "a", "seed": "x"},
            {"prompt": "a", "user": {"id": 1}}, {"prompt": "a", "group": ["g"]},
            {"prompt": "a", "constraints": "cat"}, {"prompt": "a", "chat_template": "sometimes"}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["decode", "--method", "bon", "--model", str(model_dir), "--reward", "decode_cli_rewards:named",
            "--out", str(tmp_path / "o.jsonl"), "--n", "2", "--max-new-tokens", "2", "--prompts", str(prompts)]
    assert main(args) == 2
    err = capsys.readouterr().err
    for line, field in ((2, "seed"), (3, "seed"), (4, "user"), (5, "group"), (6, "constraints"), (7, "chat_template")):
        assert f"p.jsonl:{line}: field '{field}': controls.{field} must be" in err, err
    assert "Traceback" not in err and not (tmp_path / "o.jsonl").exists()


def test_mod_weights_by_name_or_of_the_wrong_count_are_named_by_line_before_decoding(model_dir, tmp_path, capsys):
    # MOD weighs its models in order (the policy first): a row's weights by name were a ValueError traceback
    # from inside the decoder, a wrong count an error naming no row after the models had loaded
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [{"prompt": "the", "weights": [0.3, 0.7]},
                                                                {"prompt": "a", "weights": {"cat": 1, "dog": 0}},
                                                                {"prompt": "a", "weights": [1, 1, 1]}]))
    args = ["decode", "--method", "mod", "--model", str(model_dir), "--models", str(model_dir), "--prompts",
            str(prompts), "--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "p.jsonl:2: field 'weights': mod weighs its models in order" in err, err
    assert "p.jsonl:3: field 'weights': 3 weights for 2 models" in err and "Traceback" not in err
    assert main(args[:-4] + ["--weights", "cat=1", "--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "2"]) == 2
    assert "error: --weights: mod weighs its models in order" in capsys.readouterr().err


@pytest.mark.parametrize("words", [("x", "y", "z"), "reversed"])
def test_extra_models_of_another_vocabulary_are_refused_naming_them(model_dir, tmp_path, capsys, words):
    # a smaller vocabulary was an IndexError traceback mid-decode; the same tokens under other ids silent garbage
    from pluralign.decode.toy import WORDS

    tok = toy_tokenizer(tuple(reversed(WORDS)) if words == "reversed" else words)
    other = tmp_path / "other"
    toy_lm(tok, seed=1).save_pretrained(other)
    tok.save_pretrained(other)
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat\n")
    for method in ("genarm", "mod"):
        args = ["decode", "--method", method, "--model", str(model_dir), "--models", f"{model_dir},{other}",
                "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "2"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"error: --models: {other} has another vocabulary than the policy {model_dir}" in err, err


def test_a_prompt_past_the_models_context_window_is_named_by_line(tmp_path, capsys):
    # GPT-2's learned position table: a prompt + max_new_tokens beyond it was an IndexError traceback
    from pluralign.models.tiny import tiny_gpt2

    tok = toy_tokenizer()
    d = tmp_path / "gpt2"
    tiny_gpt2(len(tok), hidden_size=32, num_heads=2).save_pretrained(d)
    tok.save_pretrained(d)
    window = tiny_gpt2(len(tok), hidden_size=32, num_heads=2).config.n_positions
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat\n" + " ".join(["the cat"] * window) + "\n")
    args = ["decode", "--method", "sample", "--model", str(d), "--prompts", str(prompts),
            "--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"p.txt:2: field 'prompt': {2 * window} prompt tokens + max_new_tokens 3 exceed the model's context " \
           f"window of {window} tokens" in err and "p.txt:1" not in err and "Traceback" not in err, err


def test_python_decode_names_a_request_past_the_context_window():
    # decode() had no check: past GPT-2's learned positions the whole batch failed with an IndexError traceback
    from pluralign.decode.api import Controls, decode
    from pluralign.errors import ConfigError
    from pluralign.models.tiny import tiny_gpt2

    tok = toy_tokenizer()
    model = tiny_gpt2(len(tok), hidden_size=32, num_heads=2)
    window = model.config.n_positions
    prompts = ["the cat", " ".join(["the cat"] * window)]
    with pytest.raises(ConfigError, match=f"request 1: {2 * window} prompt tokens \\+ max_new_tokens 3 exceed the "
                                          f"model's context window of {window} tokens") as e:
        decode("sample", model, tok, prompts, controls=Controls(max_new_tokens=3))
    assert "request 0" not in str(e.value)
    assert len(decode("sample", model, tok, prompts[:1], controls=Controls(max_new_tokens=3)).texts) == 1


def test_a_prompt_the_policy_cannot_render_is_named_by_line(model_dir, tmp_path, capsys):
    # chat messages for a tokenizer without a chat template, or with chat_template=never: an error naming no row
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [{"prompt": "the cat"},
                                                                {"prompt": [{"role": "user", "content": "a dog"}]}]))
    args = ["decode", "--method", "sample", "--model", str(model_dir), "--prompts", str(prompts),
            "--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "p.jsonl:2: field 'prompt': the prompt is a list of chat messages but the tokenizer has no chat " \
           "template" in err and "p.jsonl:1" not in err, err


def test_weights_by_name_for_a_reward_that_names_no_objectives_stop_before_decoding(model_dir, tmp_path, capsys):
    # the reward's columns are r0, r1, ...: any other name was an error after the candidates had been drawn,
    # naming no row
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in [{"prompt": "the", "weights": {"r1": 1}},
                                                                {"prompt": "a", "weights": {"cat": 1}}]))
    args = ["decode", "--method", "bon", "--model", str(model_dir), "--reward", "decode_cli_rewards:words",
            "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"), "--n", "2", "--max-new-tokens", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "p.jsonl:2: field 'weights': weights name objectives ['cat'] but the reward names none" in err, err
    assert "p.jsonl:1" not in err and not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("models", ["{m},", ",{m}", "{m},,{m}"])
def test_an_empty_models_entry_is_named_as_such(model_dir, tmp_path, capsys, models):
    # 'a,' failed as "'' holds no model", naming neither the flag nor the stray comma
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat\n")
    given = models.format(m=model_dir)
    args = ["decode", "--method", "genarm", "--model", str(model_dir), "--models", given,
            "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error: --models {given!r}: an empty entry (a stray comma?)" in err, err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("name", ["out.csv", "out.json", "out.PARQUET"])
def test_an_out_named_as_another_data_format_is_refused_before_decoding(tmp_path, tiny_llama_dir, name, capsys):
    """decode wrote JSON lines into out.csv without a word; pluralign then read that file as CSV ('no records')."""
    (tmp_path / "p.txt").write_text("the cat\n")
    out = tmp_path / name
    assert main(["decode", "--method", "sample", "--model", str(tiny_llama_dir), "--prompts", str(tmp_path / "p.txt"),
                 "--out", str(out), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}: decode writes JSON lines" in err and "name it .jsonl" in err and "Traceback" not in err
    assert not out.exists()
