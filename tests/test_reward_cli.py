"""`pluralign train rm|pal|binary-rm|morm` and `pluralign eval rm` end to end on a tiny frozen backbone."""

import json
import random

import pytest

from pluralign.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pluralign.models.load import save_model
    from pluralign.models.tiny import tiny_llama, word_tokenizer

    root = tmp_path_factory.mktemp("rmcli")
    tok = word_tokenizer("question answer good bad cat dog ok fine".split())
    save_model(tiny_llama(len(tok), hidden_size=32, num_layers=1, num_heads=2), tok, root / "base")
    rng = random.Random(0)
    pairs, binary, rated = [], [], []
    for i in range(40):
        filler = " ".join(rng.choice(["cat", "dog", "ok", "fine"]) for _ in range(2))
        prompt = "question " + rng.choice(["cat", "dog"])
        pairs.append({"prompt": prompt, "chosen": f"good {filler}", "rejected": f"bad {filler}", "user": f"u{i % 2}",
                      "group": "g", "section": "alpacaeval-easy" if i % 2 else "donotanswer"})
        binary.append({"prompt": prompt, "response": f"good {filler}" if i % 4 == 0 else f"bad {filler}",
                       "label": i % 4 == 0})  # 25% positives
        rated.append({"prompt": prompt, "response": f"good {filler}" if i % 2 else f"bad {filler}",
                      "ratings": {"help": float(i % 2), "safe": 1.0 - (i % 2)}})
    for name, rows in (("pairs", pairs), ("binary", binary), ("rated", rated)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "cfg.yaml").write_text(f"model: {root / 'base'}\nfreeze_backbone: true\nloop:\n  learning_rate: 0.01\n"
                                   f"  batch_size: 8\n  num_epochs: 4\n  progress: false\n")
    return root


def _train(root, command, data, out, *extra):
    assert main(["train", command, "--config", str(root / "cfg.yaml"), f"data={root / data}",
                 f"output_dir={root / out}", *extra]) == 0
    return root / out


def test_train_and_eval_rm_with_sections(setup, capsys):
    run = _train(setup, "rm", "pairs.jsonl", "bt")
    assert main(["eval", "rm", "--model", str(run), "--data", str(setup / "pairs.jsonl"), "--out", str(setup / "ev")]) == 0
    out = capsys.readouterr().out
    assert "accuracy user: u0=" in out and "RewardBench sections:" in out and "Chat=" in out and "ECE before" in out
    report = json.loads((setup / "ev" / "rm_eval.json").read_text())
    assert set(report["rewardbench"]["sections"]) == {"Chat", "Safety"}
    assert (setup / "ev" / "reliability.png").read_bytes()[:4] == b"\x89PNG"


def test_train_binary_rm_reports_auroc(setup, capsys):
    run = _train(setup, "binary-rm", "binary.jsonl", "bin", "loop.num_epochs=25", "loop.learning_rate=0.03")
    assert main(["eval", "rm", "--model", str(run), "--data", str(setup / "binary.jsonl")]) == 0
    report = json.loads((run / "model" / "eval" / "rm_eval.json").read_text())
    assert report["kind"] == "binary" and report["auroc"] == 1.0
    # pos_weight training + prior correction: the mean predicted P(thumbs-up) tracks the 25% base rate
    assert 0.1 < report["mean_probability"] < 0.45
    assert "AUROC 1.0000" in capsys.readouterr().out


def test_train_pal_and_morm(setup):
    from pluralign.reward import load_reward_model

    pal = load_reward_model(_train(setup, "pal", "pairs.jsonl", "pal", "n_prototypes=2", "pal_dim=8"))
    assert pal.user_ids == ["u0", "u1"]
    s = pal.score(["question cat"] * 2, ["good ok", "bad ok"], user="u1")
    assert s[0, 0] > s[1, 0]
    multi = load_reward_model(_train(setup, "morm", "rated.jsonl", "multi", "loop.num_epochs=8"))
    assert multi.objectives == ["help", "safe"]
    s = multi.score(["question cat"] * 2, ["good ok", "bad ok"])
    assert s.shape == (2, 2) and s[0, 0] > s[1, 0] and s[0, 1] < s[1, 1]


def test_reward_recipes_take_a_list_of_data_files_as_the_other_recipes_do(setup):
    import yaml

    two = _train(setup, "rm", "pairs.jsonl", "bt_two", f"data=[{setup / 'pairs.jsonl'},{setup / 'pairs.jsonl'}]",
                 "loop.num_epochs=1", "loop.batch_size=16")
    one = _train(setup, "rm", "pairs.jsonl", "bt_one", "loop.num_epochs=1", "loop.batch_size=16")
    steps = [max(json.loads(line).get("step", 0) for line in open(run / "metrics.jsonl")) for run in (one, two)]
    config = yaml.safe_load((two / "config.yaml").read_text())
    assert config["data"] == [str(setup / "pairs.jsonl")] * 2
    assert steps[1] > steps[0]  # twice the pairs: more steps in the one epoch


@pytest.mark.parametrize("setting, message", [
    ("n_heads=0", "'n_heads' must be >= 1, got 0"),  # was torch's "stack expects a non-empty TensorList"
    ("pal_temperature=0", "'pal_temperature' must be a finite number > 0"),
    ("center_coef=-1", "'center_coef' must be a finite number >= 0"),
    # another model type's options were accepted and ignored: `train rm n_prototypes=4` trained the same BT model
    ("n_prototypes=4", "n_prototypes: not read by a bt reward model (options of pal models)"),
    ("imbalance=none", "imbalance: not read by a bt reward model (options of binary models)"),
    ("objectives=[a]", "objectives: not read by a bt reward model (options of multi models)"),
])
def test_bad_reward_model_settings_exit_2_before_training(tmp_path, capsys, setting, message):
    assert main(["train", "rm", "model=x", "data=y", f"output_dir={tmp_path / 'o'}", setting]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_inputs_exit_2(setup, capsys):
    assert main(["train", "pal", "--config", str(setup / "cfg.yaml"), f"data={setup / 'binary.jsonl'}",
                 f"output_dir={setup / 'bad'}"]) == 2
    assert main(["eval", "rm", "--model", str(setup / "nowhere"), "--data", str(setup / "pairs.jsonl")]) == 2
    assert "not a reward-model directory" in capsys.readouterr().err


def test_written_judgments_train_and_evaluate_a_binary_reward_model(setup, capsys):
    # judged records (a judgment's text and its polarity) were refused by binary-rm, eval rm and data convert
    rows = [json.loads(x) for x in (setup / "binary.jsonl").read_text().splitlines()]
    judged = [{"prompt": r["prompt"], "response": r["response"], "judgment": "good" if r["label"] else "bad",
               "polarity": "positive" if r["label"] else "negative"} for r in rows]
    (setup / "judged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in judged))
    run = _train(setup, "binary-rm", "judged.jsonl", "bin_judged", "loop.num_epochs=25", "loop.learning_rate=0.03")
    assert main(["eval", "rm", "--model", str(run), "--data", str(setup / "judged.jsonl")]) == 0
    assert json.loads((run / "model" / "eval" / "rm_eval.json").read_text())["auroc"] == 1.0
    assert main(["data", "convert", str(setup / "judged.jsonl"), str(setup / "judged_bin.jsonl"), "--to", "binary"]) == 0
    first = json.loads((setup / "judged_bin.jsonl").read_text().splitlines()[0])
    assert first["label"] is True and first["meta"] == {"judgment": "good"}


def test_eval_rm_refuses_bad_bins_and_broken_model_directories(setup, tmp_path, capsys):
    run = _train(setup, "rm", "pairs.jsonl", "bt_for_errors", "loop.num_epochs=1")
    data = str(setup / "pairs.jsonl")
    assert main(["eval", "rm", "--model", str(run), "--data", data, "--bins", "0"]) == 2  # was NaN ECE, exit 0
    assert "--bins must be >= 1" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{bad")
    assert main(["eval", "rm", "--model", str(tmp_path), "--data", data]) == 2  # was a JSONDecodeError traceback
    assert "unreadable JSON" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"type": "bt"}')
    assert main(["eval", "rm", "--model", str(tmp_path), "--data", data]) == 2  # was KeyError: 'objectives'
    assert "an incomplete bt reward model" in capsys.readouterr().err
    for kind, lacking in (("ensemble", "members"), ("implicit", "policy, beta, form, max_length")):
        (tmp_path / "config.json").write_text(json.dumps({"type": kind}))
        assert main(["eval", "rm", "--model", str(tmp_path), "--data", data]) == 2  # were KeyError tracebacks
        assert f"an incomplete {kind} reward model (it lacks {lacking})" in capsys.readouterr().err
    # an evaluation without a calibration (one pair) leaves no earlier evaluation's plot beside its report
    out = tmp_path / "ev"
    assert main(["eval", "rm", "--model", str(run), "--data", data, "--out", str(out)]) == 0
    assert (out / "reliability.png").exists()
    (tmp_path / "one.jsonl").write_text((setup / "pairs.jsonl").read_text().splitlines()[0] + "\n")
    assert main(["eval", "rm", "--model", str(run), "--data", str(tmp_path / "one.jsonl"), "--out", str(out)]) == 0
    assert not (out / "reliability.png").exists()


def test_eval_rm_names_users_a_pal_model_does_not_know(setup, tmp_path, capsys):
    run = _train(setup, "pal", "pairs.jsonl", "pal_unknown", "n_prototypes=2", "pal_dim=8", "loop.num_epochs=1")
    rows = [json.loads(x) | {"user": "newcomer"} for x in (setup / "pairs.jsonl").read_text().splitlines()[:6]]
    (tmp_path / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "rm", "--model", str(run), "--data", str(tmp_path / "new.jsonl"), "--out", str(tmp_path)]) == 0
    assert "1 user(s) unknown to this PAL model (newcomer)" in capsys.readouterr().err
    assert json.loads((tmp_path / "rm_eval.json").read_text())["unknown_users"] == ["newcomer"]


def _newcomer_pairs(setup, tmp_path):
    rows = [json.loads(x) | {"user": "newcomer"} for x in (setup / "pairs.jsonl").read_text().splitlines()[:6]]
    (tmp_path / "new.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"eval_data={tmp_path / 'new.jsonl'}"


def test_pal_trains_when_no_held_out_pair_is_of_a_user_it_knows(setup, tmp_path):
    # the loop's evaluation keeps the pairs of known users only: none left was a traceback ("stack expects
    # a non-empty TensorList") at the first evaluation; the final evaluation scores them all
    run = _train(setup, "pal", "pairs.jsonl", "pal_new_users", "n_prototypes=2", "pal_dim=8", "loop.num_epochs=1",
                 "loop.eval_every=2", _newcomer_pairs(setup, tmp_path))
    assert json.loads((run / "report" / "eval.json").read_text())["n"] == 6


def test_training_pal_with_held_out_users_it_does_not_know_says_so(setup, tmp_path, capsys):
    # eval rm named them; the training run's own held-out evaluation scored them by the population's mean
    # mixture and printed that accuracy as theirs, without a word
    _train(setup, "pal", "pairs.jsonl", "pal_heldout_users", "n_prototypes=2", "pal_dim=8", "loop.num_epochs=1",
           _newcomer_pairs(setup, tmp_path))
    assert "warning: 1 user(s) unknown to this PAL model (newcomer)" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["eval", "rm", "--help"], ["eval", "--help"], ["report", "--help"]])
def test_help_states_each_default_once(argv, capsys):
    # Options without a value showed "(default: None)", after help that names the real default: "Device for the
    # model (default: CPU). (default: None)".
    with pytest.raises(SystemExit):
        main(argv)
    out = capsys.readouterr().out
    assert "default: None" not in out
    assert argv[1] != "rm" or "(default: 10)" in out  # a real default is still shown


def test_ranked_lists_that_all_tie_are_named_not_scored_as_nothing(setup, tmp_path, capsys):
    # eval rm reported "accuracy nan" on 0 pairs and exited 0; train rm said "the training set is empty", no file
    ties = tmp_path / "ties.jsonl"
    ties.write_text(json.dumps({"prompt": "question cat", "responses": ["good ok", "bad ok"], "scores": [1, 1]}) + "\n")
    run = _train(setup, "rm", "pairs.jsonl", "bt_ties")
    assert main(["eval", "rm", "--model", str(run), "--data", str(ties)]) == 2
    assert f"{ties}: its ranked lists give no pairs to evaluate" in capsys.readouterr().err
    assert main(["train", "rm", "--config", str(setup / "cfg.yaml"), f"data={ties}", f"output_dir={tmp_path / 'o'}"]) == 2
    assert f"{ties}: its ranked lists give no pairs to train on" in capsys.readouterr().err


def test_eval_rm_refuses_an_output_it_cannot_write_before_loading_the_model(tmp_path, monkeypatch, capsys):
    # found once the model had scored every record
    import pluralign.reward.base

    def load(*args, **kwargs):
        raise AssertionError("the model loaded before its output was checked")

    monkeypatch.setattr(pluralign.reward.base, "load_reward_model", load)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, message in ((afile / "ev", "afile is a file, not a directory"), (afile, "is a file; give a directory")):
        assert main(["eval", "rm", "--model", str(tmp_path), "--data", "pairs.jsonl", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and message in err, err


def test_conversations_for_a_tokenizer_without_a_chat_template_are_named_before_training(setup, tmp_path, capsys):
    """Anthropic HH rows are conversations; this backbone's tokenizer has no chat template. The first training
    step stopped with an error naming no file, line or field; each row is now named, before any training."""
    hh = [{"chosen": "\n\nHuman: question cat\n\nAssistant: good ok", "rejected": "\n\nHuman: question cat\n\nAssistant: bad ok"},
          {"prompt": "question dog", "chosen": "good fine", "rejected": "bad fine"}]
    (tmp_path / "hh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hh))
    assert main(["train", "rm", "--config", str(setup / "cfg.yaml"), f"data={tmp_path / 'hh.jsonl'}",
                 f"eval_data={tmp_path / 'hh.jsonl'}", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("hh.jsonl:1: field 'prompt': the prompt is a list of chat messages but the tokenizer has no "
                     "chat template") == 2  # as training data and as eval data
    assert "hh.jsonl:2" not in err and "Traceback" not in err and not (tmp_path / "run" / "model").exists()


def test_in_memory_conversations_without_a_chat_template_are_named_by_position(setup, tmp_path):
    from pluralign.data.records import Pairwise
    from pluralign.errors import DataError
    from pluralign.train.recipes.reward import train_records

    records = [Pairwise("question dog", "good fine", "bad fine"),
               Pairwise([{"role": "user", "content": "question cat"}], "good ok", "bad ok")]
    with pytest.raises(DataError, match=r"<records>:2: field 'prompt': the prompt is a list of chat messages"):
        train_records({"model": str(setup / "base"), "freeze_backbone": True, "output_dir": str(tmp_path / "r")},
                      records * 8)


def test_morm_trains_and_evaluates_on_masked_ratings_from_a_file(setup, tmp_path, capsys):
    """Rows rating some objectives only (a blank ratings.<objective> cell): train_records masks the others, but
    `train morm data=FILE` refused every such row ("expected the objectives of line/row 2")."""
    lines = ["prompt,response,ratings.help,ratings.safe"]
    for i in range(24):
        good = i % 2
        safe = "" if i % 3 == 0 else str(1.0 - good)  # every third row leaves safe unrated
        lines.append(f"question {'cat' if i % 4 < 2 else 'dog'},{'good' if good else 'bad'} ok {i},{float(good)},{safe}")
    (tmp_path / "masked.csv").write_text("\n".join(lines) + "\n")
    run = _train(setup, "morm", tmp_path / "masked.csv", tmp_path / "run", f"eval_data={tmp_path / 'masked.csv'}")
    report = json.loads((run / "report" / "eval.json").read_text())
    assert set(report["per_objective"]) == {"help", "safe"} and report["n"] > 0
    assert main(["data", "validate", str(tmp_path / "masked.csv"), "--kind", "rated"]) == 2  # still strict elsewhere
    # `eval rm` reads the file as training did: a multi-objective model scores each pair on the objectives its
    # rows rate (it refused the masked rows, "expected the objectives of line/row 2", exit 2)
    assert main(["eval", "rm", "--model", str(run), "--data", str(tmp_path / "masked.csv"),
                 "--out", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval" / "rm_eval.json").read_text())
    assert evaluated["per_objective"] == pytest.approx(report["per_objective"])  # the same pairs as training's eval
    assert evaluated["n"] == report["n"]


def test_files_of_several_kinds_train_or_are_named_by_file(setup, tmp_path, capsys):
    """binary-rm data=[pairs, thumbs] ended in AttributeError ('Binary' object has no attribute 'chosen'), and
    with the files the other way round said binary-rm needs "binary, pairwise or judged feedback" (each was);
    train rm data=[pairs, thumbs] named each thumbs row as "pairs.jsonl, binary.jsonl:41"."""
    both = f"data=[{setup / 'pairs.jsonl'},{setup / 'binary.jsonl'}]"
    run = _train(setup, "binary-rm", "pairs.jsonl", tmp_path / "bin", both, "loop.num_epochs=1")
    assert (run / "model").is_dir()
    for command, files, message in (
            ("rm", both, f"a bt reward model trains on pairwise or ranked feedback, not binary records "
                         f"({setup / 'binary.jsonl'})"),
            ("morm", f"data=[{setup / 'rated.jsonl'},{setup / 'pairs.jsonl'}]",
             f"a multi-objective reward model regresses on ratings or compares pairs, not both: {setup / 'rated.jsonl'} "
             f"rated, {setup / 'pairs.jsonl'} not")):
        assert main(["train", command, "--config", str(setup / "cfg.yaml"), files,
                     f"output_dir={tmp_path / command}"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
