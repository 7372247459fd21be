"""Held-out data of `pluralign train rm|morm|...` (eval_data): its problems name its own file, and data of
another kind than the training data (pairs for a model trained on ratings, ratings) is evaluated, not a
traceback after training."""

from __future__ import annotations

import json

from pluralign.cli import main

FAST = ["freeze_backbone=true", "loop.max_steps=2", "loop.batch_size=4", "loop.progress=false"]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _pairs(objectives=("help", "safe")):
    return [{"prompt": f"question {w}", "chosen": f"good {w} ok", "rejected": f"bad {w}", "objective": o}
            for w in ("cat", "dog") for o in objectives]


def _rated():
    return [{"prompt": f"question {w}", "response": f"{a} {w}", "ratings": {"help": h, "safe": s}}
            for w in ("cat", "dog") for a, h, s in (("good", 5, 4), ("bad", 1, 2), ("ok", 3, 5))]


def test_a_problem_of_eval_data_names_the_eval_file(tiny_backbone, tmp_path, capsys):
    train = _write(tmp_path / "train.jsonl", _pairs())
    held_out = _write(tmp_path / "held_out.jsonl", _pairs(("help", "kind")))
    out = tmp_path / "run"
    assert main(["train", "morm", f"model={tiny_backbone}", f"data={train}", f"eval_data={held_out}",
                 f"output_dir={out}", *FAST]) == 2
    err = capsys.readouterr().err
    assert f"{held_out}:2: field 'objective': 'kind'" in err and "train.jsonl" not in err, err
    assert "Traceback" not in err and not (out / "model").exists()


def test_a_model_trained_on_ratings_is_evaluated_on_held_out_pairs(tiny_backbone, tmp_path, capsys):
    # the loop evaluated the pairs with the rating step: KeyError 'response' after training, no model saved
    train = _write(tmp_path / "train.jsonl", _rated())
    held_out = _write(tmp_path / "held_out.jsonl", _pairs())
    out = tmp_path / "run"
    assert main(["train", "morm", f"model={tiny_backbone}", f"data={train}", f"eval_data={held_out}",
                 f"output_dir={out}", *FAST]) == 0, capsys.readouterr().err
    report = json.loads((out / "report" / "eval.json").read_text())
    assert report["n"] == 4 and set(report["per_objective"]) == {"help", "safe"}
    assert (out / "model" / "config.json").exists()


def test_held_out_ratings_are_evaluated_as_pairs_of_each_objective(tiny_backbone, tmp_path, capsys):
    # the final evaluation refused ratings after training ('needs pairwise, ranked, binary or judged records')
    train = _write(tmp_path / "train.jsonl", _rated())
    out = tmp_path / "run"
    assert main(["train", "morm", f"model={tiny_backbone}", f"data={train}", f"eval_data={train}",
                 f"output_dir={out}", *FAST]) == 0, capsys.readouterr().err
    report = json.loads((out / "report" / "eval.json").read_text())
    # per prompt, 3 responses rated apart on each objective: 3 pairs × 2 objectives × 2 prompts
    assert report["n"] == 12 and set(report["per_objective"]) == {"help", "safe"}
    assert main(["eval", "rm", "--model", str(out), "--data", train, "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "rm_eval.json").read_text())["per_objective"] == report["per_objective"]


def test_ratings_that_give_no_pair_are_evaluated_by_the_loop_only(tiny_backbone, tmp_path, capsys):
    # one rated response per prompt (sandbox feedback's default): no pair to score after training
    train = _write(tmp_path / "train.jsonl", _rated())
    held_out = _write(tmp_path / "held_out.jsonl", _rated()[::3])
    out = tmp_path / "run"
    assert main(["train", "morm", f"model={tiny_backbone}", f"data={train}", f"eval_data={held_out}",
                 f"output_dir={out}", *FAST]) == 0
    err = capsys.readouterr().err
    assert f"{held_out}: its ratings give no pairs" in err, err
    assert (out / "model" / "config.json").exists() and not (out / "report" / "eval.json").exists()
    assert "eval/mse_help" in (out / "metrics.jsonl").read_text()  # the loop evaluated them
    assert main(["eval", "rm", "--model", str(out), "--data", held_out, "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert f"{held_out}: its ratings give no pairs" in err and "Traceback" not in err
    # a model trained on pairs has no loop evaluation of ratings: refused before training
    pairs, run = _write(tmp_path / "pairs.jsonl", _pairs()), tmp_path / "pair_run"
    assert main(["train", "morm", f"model={tiny_backbone}", f"data={pairs}", f"eval_data={held_out}",
                 f"output_dir={run}", *FAST]) == 2
    assert f"{held_out}: its ratings give no pairs" in capsys.readouterr().err and not (run / "model").exists()


def test_pairs_of_an_objective_the_model_lacks_are_refused_not_scored_by_the_mean():
    # 'helpfulness' for a model of 'helpful' was scored by the mean of its objectives and reported as its own
    import pytest
    import torch

    from pluralign.data.records import Pairwise
    from pluralign.errors import ConfigError
    from pluralign.reward.evaluation import evaluate_records

    class TwoObjectives:
        objectives = ["helpful", "safe"]

        def score(self, prompts, responses, user=None):
            return torch.tensor([[1.0, -3.0] if r == "a" else [0.0, 0.0] for r in responses])

    records = [Pairwise("q", "a", "b", objective=o) for o in ("helpful", "safe", None)]
    report = evaluate_records(TwoObjectives(), records)
    assert report["per_objective"] == {"helpful": 1.0, "safe": 0.0} and report["accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match=r"held_out.jsonl: .*'helpfulness'.*\['helpful', 'safe'\]"):
        evaluate_records(TwoObjectives(), [*records, Pairwise("q", "a", "b", objective="helpfulness")],
                         source="held_out.jsonl")


def test_a_thumbs_up_model_is_calibrated_on_pairs_from_its_logits():
    # its probabilities' differences were taken as the pairs' margins: σ(p_w − p_l) stays within σ(±1), so
    # the margins and the calibration of P(chosen ≻ rejected) described nothing the model says
    import pytest
    import torch

    from pluralign.data.records import Pairwise
    from pluralign.reward.evaluation import evaluate_records

    class Thumbs:
        def __init__(self, output):
            self.output, self.objectives = output, ["p_positive"]

        def score(self, prompts, responses, user=None):
            z = torch.tensor([float(r) for r in responses])[:, None]
            return torch.sigmoid(z) if self.output == "prob" else z

    records = [Pairwise("q", c, r) for c, r in (("4", "-2"), ("1", "3"), ("0.5", "-1"), ("6", "2"))]
    as_prob, as_logit = evaluate_records(Thumbs("prob"), records), evaluate_records(Thumbs("logit"), records)
    assert as_prob["mean_margin"] == pytest.approx(as_logit["mean_margin"], abs=1e-4)
    assert as_prob["calibration"]["before"] == pytest.approx(as_logit["calibration"]["before"], abs=1e-4)


def test_held_out_data_mixing_pairs_lists_and_ratings_is_evaluated_as_the_pairs_they_make():
    # a file of pairs and ranked lists was refused ("needs pairwise, ranked, rated, binary or judged records, got
    # ['Pairwise', 'Ranked']"), though each kind alone was evaluated
    import pytest

    from pluralign.data.records import Binary, Pairwise, Ranked, Rated
    from pluralign.errors import ConfigError
    from pluralign.reward.evaluation import evaluable

    pair = Pairwise("q", "a", "b")
    ranked = Ranked("q", ["c", "a", "b"], ranks=[1, 2, 3])  # c > a > b: three pairs
    rated = [Rated("r", "x", {"help": 2.0}), Rated("r", "y", {"help": 1.0})]  # x > y on help
    pairs = evaluable([pair, ranked, *rated])
    assert all(isinstance(p, Pairwise) for p in pairs)
    assert sorted((p.chosen, p.rejected) for p in pairs) == [("a", "b"), ("a", "b"), ("c", "a"), ("c", "b"), ("x", "y")]
    with pytest.raises(ConfigError, match=r"held_out.jsonl: mixes records scored as pairs .* with labels .* evaluate them apart"):
        evaluable([pair, Binary("q", "a", True)], "held_out.jsonl")
