"""Reward-model training as users run it: defaults the help shows, packed batches, LoRA, gradient
checkpointing, printed progress and metrics, trackers, the chance warning and the sandbox's Bayes ceiling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pluralign.config import describe, from_dict
from pluralign.errors import ConfigError, DataError, PluralignError


@pytest.fixture
def backbone(tiny_backbone):
    return tiny_backbone


def _pairs(n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        filler = " ".join(rng.choice(["cat", "dog", "ok", "fine"], size=int(rng.integers(1, 5))))
        rows.append({"prompt": "question " + str(rng.choice(["cat", "dog"])), "chosen": f"good {filler}",
                     "rejected": f"bad {filler} ok", "user": f"u{i % 3}", "group": "g" if i % 2 else "h"})
    return rows


def _files(tmp_path):
    for name, n, seed in (("train", 48, 0), ("test", 24, 1)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _pairs(n, seed)))
    return str(tmp_path / "train.jsonl"), str(tmp_path / "test.jsonl")


def test_help_shows_the_loop_defaults_a_reward_run_uses(capsys):
    from pluralign.cli import main
    from pluralign.train.loop import LoopConfig
    from pluralign.train.recipes.reward import RewardConfig

    for command, model_type, limit in (("rm", "bt", 2000), ("pal", "pal", 6000), ("binary-rm", "binary", 2000)):
        used = RewardConfig(model_type=model_type).loop
        assert used.step_limit == limit  # each model type its own measured step budget
        rows = {key: default for key, _, default, _ in describe(RewardConfig, defaults=RewardConfig(model_type=model_type))}
        assert rows["loop.learning_rate"] == used.learning_rate
        assert rows["loop.batch_size"] == used.batch_size
        assert rows["loop.num_epochs"] == used.num_epochs
        assert rows["loop.step_limit"] == used.step_limit
        assert main(["train", command, "--help-config"]) == 0  # what the command's help prints
        out = capsys.readouterr().out
        assert f"loop.step_limit  (int, default {limit})" in out and "model_type  ('bt' | " in out
        assert f"default '{model_type}')" in out

    used = RewardConfig().loop
    assert used.learning_rate != LoopConfig().learning_rate  # the reward recipe has its own default
    assert LoopConfig().step_limit == 0  # and its own step limit: other recipes run their epochs in full
    # a config that sets only some loop fields keeps the recipe's others, the model type's step limit included
    partial = from_dict(RewardConfig, {"loop": {"batch_size": 4}})
    assert partial.loop.learning_rate == used.learning_rate and partial.loop.batch_size == 4
    assert partial.loop.step_limit == 2000
    assert from_dict(RewardConfig, {"model_type": "pal", "loop": {"seed": 3}}).loop.step_limit == 6000
    # and a step limit the config sets is kept, for PAL too
    assert from_dict(RewardConfig, {"model_type": "pal", "loop": {"step_limit": 500}}).loop.step_limit == 500
    assert from_dict(RewardConfig, {"model_type": "bt", "loop": {"step_limit": 0}}).loop.step_limit == 0


def test_packed_reward_features_equal_padded_ones(backbone):
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.models.logprobs import prepare_packing
    from pluralign.reward.base import TextEncoder

    model, tok = load_model(str(backbone)), load_tokenizer(str(backbone))
    assert prepare_packing(model)
    prompts, responses = ["question cat", "question dog", "question cat"], ["good ok", "bad cat cat dog fine", "ok"]
    for pooling in ("last", "mean", "last_mean"):
        padded = TextEncoder(model, tok, pooling=pooling, trainable=False)
        packed = TextEncoder(model, tok, pooling=pooling, trainable=False, packing=True)
        batch = packed.tokenize(prompts, responses)
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        torch.testing.assert_close(packed.embed(prompts, responses), padded.embed(prompts, responses), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed.embed(prompts), padded.embed(prompts), atol=1e-5, rtol=1e-5)


def test_lora_reward_model_trains_adapters_and_head_only_and_reloads(backbone, tmp_path, capsys):
    from pluralign.reward.base import load_reward_model
    from pluralign.train.recipes.reward import RewardConfig, train_records

    train, test = _files(tmp_path)
    cfg = from_dict(RewardConfig, {
        "model": str(backbone), "data": train, "eval_data": test, "output_dir": str(tmp_path / "run"),
        "use_lora": True, "lora": {"r": 4, "alpha": 8}, "gradient_checkpointing": True,
        "loop": {"learning_rate": 3e-3, "batch_size": 8, "num_epochs": 3, "eval_every": 3}})
    from pluralign.data.io import read_records

    model, result = train_records(cfg, read_records(train), read_records(test), source=train)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or n.startswith("head.") for n in trained)
    assert model.encoder.packing  # the tiny Llama keeps packed sequences apart
    out = capsys.readouterr().err
    assert "eval at step 3:" in out and "trained 18 steps" in out and "held-out accuracy" in out
    report = json.loads((result.run_dir / "report" / "eval.json").read_text())
    reloaded = load_reward_model(result.model_dir)
    prompts, responses = ["question cat", "question dog"], ["good ok", "bad fine"]
    torch.testing.assert_close(reloaded.score(prompts, responses), model.score(prompts, responses), atol=1e-5, rtol=1e-5)
    assert report["accuracy"] > 0.9


def test_cli_prints_where_it_saved_and_logs_to_tensorboard(backbone, tmp_path, capsys):
    from pluralign.cli import main

    train, test = _files(tmp_path)
    run = tmp_path / "run"
    code = main(["train", "rm", f"model={backbone}", f"data={train}", f"eval_data={test}", f"output_dir={run}",
                 "loop.batch_size=8", "loop.learning_rate=3e-3", "loop.log_every=2", "loop.report_to=tensorboard"])
    assert code == 0
    assert f"model saved to {run / 'model'}" in capsys.readouterr().out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run / "trackers").rglob("events.out.tfevents.*"))
    assert events
    tags = set()
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"loss", "accuracy", "eval/loss", "eval/accuracy"} <= tags


def test_unknown_or_missing_tracker_is_a_config_error():
    from pluralign.train.trackers import tracker_names

    assert tracker_names([]) == [] and tracker_names(["none"]) == []
    assert tracker_names(["tensorboard"]) == ["tensorboard"]
    with pytest.raises(ConfigError, match="unknown tracker"):
        tracker_names(["tensorbored"])


def test_chance_warning_at_two_standard_errors():
    from pluralign.reward.evaluation import chance_warning

    # n = 400: se = sqrt(0.25 / 400) = 0.025, so 0.5 ± 0.05 is noise
    assert chance_warning({"kind": "pairwise", "accuracy": 0.54, "n": 400}) is not None
    assert chance_warning({"kind": "pairwise", "accuracy": 0.46, "n": 400}) is not None
    assert chance_warning({"kind": "pairwise", "accuracy": 0.56, "n": 400}) is None
    # binary, 50 positives and 50 negatives: se = sqrt(101 / (12 · 2500)) = 0.0580
    assert chance_warning({"kind": "binary", "auroc": 0.6, "n": 100, "positive_rate": 0.5}) is not None
    assert chance_warning({"kind": "binary", "auroc": 0.62, "n": 100, "positive_rate": 0.5}) is None
    assert math.isclose(math.sqrt(101 / 30000), 0.0580, abs_tol=1e-4)


def test_bayes_accuracy_recomputes_the_label_probabilities():
    from pluralign.sandbox import generate, population
    from pluralign.sandbox.attributes import score_batch
    from pluralign.sandbox.feedback import bayes_accuracy, pair_probabilities
    from pluralign.sandbox.users import preference_probability, utility

    records = generate("user_pairwise", "default", 40, seed=3)
    users = {u.id: u for u in population("default").users(0)}
    r = records[0]
    u = users[r.user]
    x = score_batch([r.prompt, r.prompt], [r.chosen, r.rejected])
    expected = preference_probability(utility(u.vector(), x[0]), utility(u.vector(), x[1]), u.temperature)
    p = pair_probabilities(records)
    assert math.isclose(p[0, 0], float(expected), rel_tol=1e-9)
    per_user = bayes_accuracy(records)
    agnostic = bayes_accuracy(records, per_user=False)
    assert 0.5 <= agnostic <= 1.0 and 0.5 <= per_user <= 1.0
    # the labels agree with the likelier side about as often as the ceiling says (40 pairs: loose)
    ids = list(dict.fromkeys(r.user for r in records))
    mine = p[np.arange(len(records)), [ids.index(r.user) for r in records]]
    assert abs(float((mine > 0.5).mean()) - per_user) < 0.25
    with pytest.raises(ConfigError, match="user"):
        bayes_accuracy(generate("pairwise", "default", 5, seed=0))


def test_eval_rm_report_carries_the_chance_warning():
    from pluralign.reward.cli import format_report

    base = {"kind": "pairwise", "n": 100, "mean_margin": 0.0}
    assert "within noise of chance" in format_report(base | {"accuracy": 0.52})
    assert "warning" not in format_report(base | {"accuracy": 0.8})


def test_reward_defaults_learn_sandbox_preferences(tmp_path):
    """`train rm` at its defaults (pooling, lr, epochs) learns the sandbox majority's preferences from text
    on the tiny sandbox model: measured 0.600 held-out accuracy (ceiling 0.876) on these 600/400 pairs,
    where the loop's generic defaults (lr 5e-7, 1 epoch, last-token pooling) leave it at chance (0.447)."""
    from pluralign.sandbox import build_base, generate
    from pluralign.sandbox.base import SandboxConfig
    from pluralign.sandbox.feedback import bayes_accuracy
    from pluralign.train.recipes.reward import RewardConfig, train_records

    base = build_base(config=SandboxConfig.tiny())
    train = generate("user_pairwise", "default", 600, seed=1, groups=["majority"])
    test = generate("user_pairwise", "default", 400, seed=2, groups=["majority"])
    cfg = from_dict(RewardConfig, {"model": str(base), "output_dir": str(tmp_path / "rm"), "loop": {"progress": False}})
    assert cfg.pooling == "" and cfg.loop.learning_rate == 5e-4  # the defaults, not a tuned copy
    model, result = train_records(cfg, train, test)
    assert model.encoder.pooling == "last_mean"
    report = json.loads((result.run_dir / "report" / "eval.json").read_text())
    ceiling = bayes_accuracy(test)
    assert report["n"] == 400 and 0.8 < ceiling < 0.95
    assert report["accuracy"] >= 0.56, report["accuracy"]  # chance ± 2 s.e. is 0.45–0.55


def test_a_save_stopped_half_way_leaves_the_saved_reward_model_as_it_was(backbone, tmp_path, monkeypatch):
    """The backbone, the head and config.json are renamed into place together: a save stopped after the
    new backbone was written leaves the old model whole, not a new backbone under the old head."""
    from pluralign.data.io import read_records
    from pluralign.reward import base
    from pluralign.train.recipes.reward import RewardConfig, train_records

    train, _ = _files(tmp_path)
    cfg = from_dict(RewardConfig, {"model": str(backbone), "data": train, "output_dir": str(tmp_path / "run"),
                                   "loop": {"learning_rate": 3e-3, "batch_size": 8, "max_steps": 2}})
    model, result = train_records(cfg, read_records(train), [], source=train)
    prompts, responses = ["question cat", "question dog"], ["good ok", "bad fine"]
    before = base.load_reward_model(result.model_dir).score(prompts, responses)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)

    def dying(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(base, "atomic_write_bytes", dying)  # the head, written after the backbone
    with pytest.raises(KeyboardInterrupt):
        model.save(result.model_dir)
    torch.testing.assert_close(base.load_reward_model(result.model_dir).score(prompts, responses), before)
    assert sorted(p.name for p in result.run_dir.iterdir() if p.name.startswith(".")) in ([], [".lock"])


def test_a_binary_reward_model_takes_judged_eval_data_as_it_takes_judged_training_data(backbone, tmp_path):
    # judged training data was converted to thumbs up/down, judged eval_data reached binary_items as is:
    # "AttributeError: 'Judged' object has no attribute 'label'" after the backbone had loaded
    from pluralign.train.recipes.reward import run

    rows = [{"prompt": "question cat", "response": ("good " if i % 2 else "bad ") + w, "judgment": "fine",
             "polarity": "positive" if i % 2 else "negative"} for i, w in enumerate(["ok", "fine", "cat", "dog"] * 3)]
    path = tmp_path / "judged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(path.read_text())
    result = run(model=str(backbone), model_type="binary", data=str(path), eval_data=str(held_out),
                 output_dir=str(tmp_path / "run"), freeze_backbone=True, loop={"batch_size": 4, "step_limit": 2})
    report = json.loads((result.run_dir / "report" / "eval.json").read_text())
    assert report["kind"] == "binary" and report["n"] == 12


def test_a_records_problem_is_named_at_its_own_file_and_line(backbone, tmp_path):
    # checked on every file's records at once, an eval_data record's objective was reported at the training
    # file, and at its place among all records (a PKU-SafeRLHF row is two), not at its line
    from pluralign.train.recipes.reward import run

    pku = {"prompt": "q", "response_0": "a", "response_1": "b", "better_response_id": 1, "safer_response_id": 0}
    pair = {"prompt": "q", "chosen": "x", "rejected": "y"}
    train, held_out = tmp_path / "train.jsonl", tmp_path / "held_out.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in [pku, {**pair, "objective": "helpfulness"}]))
    held_out.write_text("\n" + "".join(json.dumps({**pair, "objective": o}) + "\n" for o in ("helpfulness", "honesty")))
    options = {"model": str(backbone), "output_dir": str(tmp_path / "run"), "loop": {"step_limit": 1}}
    with pytest.raises(DataError) as caught:
        run(model_type="multi", data=str(train), eval_data=str(held_out), **options)
    assert [(p.source, p.line, p.field) for p in caught.value.problems] == [(str(held_out), 3, "objective")]
    with pytest.raises(ConfigError, match=r"2 objectives \(helpfulness 2, harmlessness 1\).*set model_type=multi"):
        run(data=str(train), **options)  # one score for pairs of two objectives, which a PKU row's contradict
    plain, other = tmp_path / "plain.jsonl", tmp_path / "other.jsonl"
    plain.write_text("\n" + f"{json.dumps(pair)}\n" * 2)
    other.write_text(json.dumps({**pair, "user": "u1"}) + "\n" + json.dumps(pair) + "\n")
    with pytest.raises(DataError) as caught:
        run(model_type="pal", data=[str(plain), str(other)], **options)
    assert [(p.source, p.line, p.field) for p in caught.value.problems] == [
        (str(plain), 2, "user"), (str(plain), 3, "user"), (str(other), 2, "user")]


def test_helpsteer_columns_given_to_a_multi_objective_reward_model_say_how_to_read_them_as_ratings(backbone, tmp_path):
    # read as demonstrations, they were refused as "multi-objective pairs need an `objective` field", after a
    # warning to give --kind rated, which train rm has not
    from pluralign.train.recipes.reward import run

    path = tmp_path / "hs.jsonl"
    path.write_text("".join(json.dumps({"prompt": "q", "response": r, "helpfulness": h, "verbosity": v}) + "\n"
                            for r, h, v in (("a", 3, 1), ("b", 1, 4))))
    with pytest.warns(UserWarning, match="pluralign data convert .*hs.jsonl OUT --kind rated"), \
            pytest.raises(ConfigError, match=r"not demonstration records.*pluralign data convert .*hs.jsonl OUT --kind rated"):
        run(model=str(backbone), model_type="multi", data=str(path), output_dir=str(tmp_path / "run"))


@pytest.mark.parametrize("frozen", [True, False])
def test_a_bfloat16_backbone_trains_a_reward_model_and_scores_alike_after_reloading(backbone, tmp_path, frozen):
    # its bf16 features met the float32 head: 'mat1 and mat2 must have the same dtype' at the first step
    # (dtype=bfloat16, or dtype=auto on the many models saved in bf16)
    from pluralign.reward.base import load_reward_model
    from pluralign.train.recipes.reward import run

    train, _ = _files(tmp_path)
    result = run(model=str(backbone), data=train, output_dir=str(tmp_path / "run"), dtype="bfloat16",
                 freeze_backbone=frozen, loop={"max_steps": 2, "batch_size": 8, "progress": False})
    model = load_reward_model(result.model_dir)
    # a frozen backbone is loaded again from its source (saved in float32): in the dtype the head was fitted on
    assert next(model.encoder.backbone.parameters()).dtype == torch.bfloat16
    scores = model.score(["question cat", "question dog"], ["good ok", "bad fine"])
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


def test_a_batch_larger_than_the_data_is_refused_before_the_frozen_backbones_feature_pass(backbone, tmp_path,
                                                                                          monkeypatch):
    # Found by the loop only, after the features of the whole data set had been computed.
    from pluralign.reward import data as rdata
    from pluralign.train.recipes.reward import run

    def no_feature_pass(*args, **kwargs):
        raise AssertionError("the feature pass ran")

    monkeypatch.setattr(rdata, "precompute_features", no_feature_pass)
    train, _ = _files(tmp_path)
    with pytest.raises(PluralignError, match=r"fewer than one effective batch \(1000"):
        run(model=str(backbone), data=train, output_dir=str(tmp_path / "run"), freeze_backbone=True,
            loop={"batch_size": 1000, "progress": False})
