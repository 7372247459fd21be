"""Personal settings and data checked before a run writes anything (group objectives' groups, token
weighting, Janus statements, worst_group's temperature), Janus's warning for a request without a statement,
a new user's run without population dropout, and the per-group losses every group objective logs."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from loop_toys import make_model_dir
from test_personal import LOOP, _opposed, _write

from pluralign import conditioning
from pluralign.errors import ConfigError, DataError
from pluralign.personal import group_fair
from pluralign.train import run_preference
from pluralign.train.recipes.preference import from_kwargs


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("checks") / "base")


def _cli(argv, capsys):
    from pluralign.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- group objectives need every record's group


def test_group_objective_refuses_records_without_a_group_before_writing(base, tmp_path, capsys):
    rows = _opposed(8)
    rows[2].pop("group")
    rows[5]["group"] = None
    data = _write(tmp_path / "few.jsonl", rows)
    out = tmp_path / "run"
    code, err = _cli(["train", "dpo", f"model={base}", f"data=[{data}]", f"output_dir={out}",
                      "personal.group_objective=group_dro", "loop.progress=false", "loop.batch_size=2"], capsys)
    assert code == 2 and not out.exists()
    assert "2 problem(s)" in err and f"{data}:3: field 'group': missing" in err and f"{data}:6: field 'group'" in err
    assert "train the population" not in err  # the old, false warning


def test_eval_records_must_have_a_training_group(base, tmp_path):
    data = _write(tmp_path / "pairs.jsonl", _opposed(8))
    unseen = _write(tmp_path / "eval.jsonl", [r | {"group": "zzz"} for r in _opposed(2)]
                    + [{k: v for k, v in r.items() if k != "group"} for r in _opposed(1)])
    out = tmp_path / "run"
    with pytest.raises(DataError) as e:
        run_preference(from_kwargs(model=str(base), data=[data], eval_data=[unseen], loss="dpo", output_dir=str(out),
                                   loop=LOOP | {"max_steps": 1}, personal={"group_objective": "worst_group"}))
    shown = str(e.value)
    assert f"{unseen}:1: field 'group': 'zzz' is not a group of the training data ['a', 'b']" in shown
    assert f"{unseen}:3: field 'group': missing" in shown and not out.exists()


def test_group_objectives_log_each_groups_loss(base, tmp_path):
    rows = _opposed(8)
    data = _write(tmp_path / "pairs.jsonl", rows)
    for objective in ("worst_group", "nash", "balanced", "group_dro"):
        out = tmp_path / objective
        run_preference(from_kwargs(model=str(base), data=[data], loss="dpo", output_dir=str(out),
                                   loop=LOOP | {"num_epochs": 1}, personal={"group_objective": objective}))
        first = _metrics(out)[0]
        # step 1: the policy is the reference, so every example's DPO loss, and each group's mean, is log 2
        assert first["group_loss/a"] == pytest.approx(0.6931, abs=1e-3), objective
        assert first["group_loss/b"] == pytest.approx(0.6931, abs=1e-3), objective


def test_worst_group_refuses_a_negative_temperature_when_built():
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        group_fair.make("worst_group", 2, {"temperature": -0.5})
    losses, groups = torch.tensor([1.0, 3.0]), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        group_fair.worst_group(losses, groups, temperature=-1.0)
    hard, _ = group_fair.make("worst_group", 2, {"temperature": 0})
    assert hard(losses, groups)[0].item() == 3.0  # 0: the hard max, as documented


# ---------------------------------------------------------------- token weighting


@pytest.mark.parametrize("setting, key", [("personal.token_temperature=0", "personal.token_temperature"),
                                          ("personal.token_temperature=-1", "personal.token_temperature"),
                                          ("personal.history_size=0", "personal.history_size")])
def test_bad_token_weighting_settings_name_their_key_before_writing(base, tmp_path, capsys, setting, key):
    data = _write(tmp_path / "pairs.jsonl", _opposed(8))
    out = tmp_path / "run"
    code, err = _cli(["train", "dpo", f"model={base}", f"data=[{data}]", f"output_dir={out}",
                      "personal.token_weighting=true", setting, "loop.max_steps=1", "loop.progress=false"], capsys)
    assert code == 2 and key in err and not out.exists()


@pytest.mark.parametrize("value", ["0", "-1", ".nan"])
def test_a_bad_vector_scale_is_refused_before_writing(base, tmp_path, capsys, value):
    # 0 trained nothing and saved NaN vectors (stored divided by the scale); a user's request then failed
    data = _write(tmp_path / "pairs.jsonl", _opposed(8))
    out = tmp_path / "run"
    code, err = _cli(["train", "dpo", f"model={base}", f"data=[{data}]", f"output_dir={out}",
                      "personal.condition_on=user", f"personal.vector_scale={value}", "loop.max_steps=1",
                      "loop.progress=false"], capsys)
    assert code == 2 and "personal.vector_scale must be a finite number > 0" in err and not out.exists()


def test_token_weighting_without_any_users_history_is_refused_before_writing(base, tmp_path, capsys):
    data = _write(tmp_path / "pairs.jsonl", [r | {"user": f"u{i}"} for i, r in enumerate(_opposed(4))])
    out = tmp_path / "run"
    code, err = _cli(["train", "dpo", f"model={base}", f"data=[{data}]", f"output_dir={out}",
                      "personal.token_weighting=true", "loop.max_steps=1", "loop.batch_size=2", "loop.progress=false"], capsys)
    assert code == 2 and "no user of the training data has 2 or more records" in err
    assert not out.exists()  # it was refused after the reference pass had cached its log-probs there


@pytest.mark.parametrize("scheme", ["objectives.conditioning=persona_message",
                                    "objectives.conditioning=control_tokens"])
def test_person_vectors_with_another_conditioning_scheme_are_refused_before_training(base, tmp_path, capsys, scheme):
    data = _write(tmp_path / "pairs.jsonl", _opposed(8))
    out = tmp_path / "run"
    code, err = _cli(["train", "dpo", f"model={base}", f"data=[{data}]", f"output_dir={out}", scheme,
                      "objectives.conditioning_params={statements: {a: good}}" if "persona" in scheme else "loop.seed=0",
                      "personal.condition_on=user", "loop.max_steps=1", "loop.progress=false"], capsys)
    # it failed only when saving, after the whole run ("... person vectors cannot be added to it")
    assert code == 2 and "a model holds one of them" in err and not out.exists()


# ---------------------------------------------------------------- Janus statements


def test_janus_statement_keys_must_name_someone_in_the_data(base, tmp_path):
    data = _write(tmp_path / "pairs.jsonl", _opposed(8))
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        run_preference(from_kwargs(model=str(base), data=[data], loss="dpo", output_dir=str(out),
                                   loop=LOOP | {"max_steps": 1},
                                   objectives={"conditioning": "persona_message",
                                               "conditioning_params": {"statements": {"a": "yes", "alcie": "x"}}}))
    shown = str(e.value)
    assert "'alcie' is no user or group" in shown and "groups: a, b" in shown and "did you mean 'alice'" in shown
    assert "key 'a'" not in shown and not out.exists()


def test_janus_warns_for_a_request_without_a_statement():
    scheme = conditioning.get("persona_message", statements={"a": "yes good"})
    with pytest.warns(UserWarning, match="group 'zzz' has no statement in this model: using the population model"):
        assert scheme.prompt("hi", scheme.condition(group="zzz")) == "hi"
    with pytest.warns(UserWarning, match="user 'zed' has no statement"):
        scheme.prompt("hi", scheme.condition(user="zed"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scheme.prompt("hi", scheme.condition(user="zed", group="a")) == "yes good hi"
        assert scheme.prompt("hi", scheme.condition()) == "hi"  # nobody named: the population, as asked
        # in training, records without a statement train the population model by design: no warning each
        scheme.fit([_record("alice", "a"), _record("bob", "b")])
        assert scheme.prompt("hi", scheme.condition(user="bob", group="b")) == "hi"


def _record(user, group):
    from pluralign.data.records import Pairwise

    return Pairwise("p", "c", "r", user=user, group=group)


# ---------------------------------------------------------------- a new user's run


def test_a_new_users_run_trains_on_every_example_despite_population_dropout(base, tmp_path):
    data = _write(tmp_path / "pairs.jsonl", _opposed())
    trained = run_preference(from_kwargs(model=str(base), data=[data], loss="dpo", output_dir=str(tmp_path / "cond"),
                                         loop=LOOP | {"num_epochs": 1},
                                         personal={"condition_on": "user", "population_dropout": 0.0})).model_dir
    carol = [r | {"user": "carol", "group": None} for r in _opposed(16) if r["user"] == "alice"]
    out = tmp_path / "carol"
    run_preference(from_kwargs(model=str(trained), data=[_write(tmp_path / "carol.jsonl", carol)], loss="dpo",
                               output_dir=str(out), loop=LOOP | {"num_epochs": 3},
                               personal={"condition_on": "user", "new_users_only": True, "population_dropout": 0.9}))
    # the old code dropped ~90% of carol's examples to the population model: steps with no gradient at all
    assert all(row["grad_norm"] > 0 for row in _metrics(out))


def test_group_losses_over_several_batches_are_the_groups_mean_losses(base):
    """Evaluation (and gradient accumulation) combines batches: each group's logged loss is its examples'
    mean loss, not the batches' group means weighted by the batches' sizes."""
    from accelerate import Accelerator

    from pluralign.personal.conditioned import PersonalConfig, Personalization
    from pluralign.train.loop import evaluate

    rows = _opposed(4)  # groups a, b, a, b
    records = [type("R", (), {"user": r["user"], "group": r["group"]})() for r in rows]
    personal = Personalization(PersonalConfig(group_objective="worst_group"), None, str(base), records, False)
    index = personal.per_example(records)["group_index"]
    losses = torch.tensor([1.0, 2.0, 5.0, 2.0])
    order = [0, 1, 2, 2]  # batch 1: a (1.0), b (2.0); batch 2: a (5.0), a (5.0)

    def collate(items):
        return {"group_index": index[items], "losses": losses[items]}

    step = personal.wrap(lambda model, batch: (batch["losses"], {}), training=False)
    result = evaluate(lambda batch: step(None, batch), order, collate, 2, Accelerator(cpu=True))
    assert result["group_loss/a"] == pytest.approx((1.0 + 5.0 + 5.0) / 3)  # the batches' way: (1·2 + 5·2)/4 = 3
    assert result["group_loss/b"] == pytest.approx(2.0)


# ---------------------------------------------------------------- PAS steering saved with a model


def test_pas_steerings_saved_one_user_at_a_time_are_all_kept(base, tmp_path):
    import shutil

    from pluralign.personal import steering
    from pluralign.personal.conditioned import load_vectors, save_vectors
    from pluralign.personal.vectors import PersonVectors

    d = shutil.copytree(base, tmp_path / "steered")
    u = torch.eye(16)
    steering.save(d, {"alice": steering.Steering(0, u[0], 2.0, alpha=1.0)})
    steering.save(d, {"bob": steering.Steering(0, u[1], 3.0, alpha=0.5)})  # alice was lost here
    vectors, index = load_vectors(d)
    assert vectors.names == ["alice", "bob"] and sorted(index["pas"]) == ["alice", "bob"]
    assert torch.allclose(vectors.get("alice"), 2 * u[0]) and torch.allclose(vectors.get("bob"), 1.5 * u[1])
    with pytest.raises(ConfigError, match="layer 0"):  # one layer per model
        steering.save(d, {"carol": steering.Steering(1, u[2], 1.0, alpha=1.0)})
    trained = shutil.copytree(base, tmp_path / "trained")
    save_vectors(trained, PersonVectors(["dan"], 16), {"on": "user", "layer": "embeddings", "user_groups": {}})
    with pytest.raises(ConfigError, match="trained person vectors .*dan"):
        steering.save(trained, {"carol": steering.Steering(0, u[2], 1.0, alpha=1.0)})
    assert load_vectors(trained)[0].names == ["dan"]


def test_a_model_with_a_missing_or_mismatched_vector_table_is_a_clear_error(base, tmp_path, capsys):
    import shutil

    from pluralign.personal.conditioned import INDEX, WEIGHTS, save_vectors
    from pluralign.personal.vectors import PersonVectors

    d = shutil.copytree(base, tmp_path / "cond")
    save_vectors(d, PersonVectors(["alice", "bob"], 16), {"on": "user", "layer": "embeddings", "user_groups": {}})
    index = json.loads((d / INDEX).read_text())
    (d / INDEX).write_text(json.dumps(index | {"names": ["alice", "bob", "carol"]}))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("tell me about the cat\n")
    argv = ["decode", "--method", "sample", "--model", str(d), "--prompts", str(prompts),
            "--out", str(tmp_path / "out.jsonl"), "--user", "alice", "--max-new-tokens", "2"]
    code, err = _cli(argv, capsys)
    assert code == 2 and "2 vectors for the 3 names" in err
    (d / WEIGHTS).unlink()  # a traceback (FileNotFoundError) before
    code, err = _cli(argv, capsys)
    assert code == 2 and f"{WEIGHTS} is missing" in err


@pytest.mark.parametrize("personal", [{}, {"condition_on": "user"}])
def test_training_on_from_a_conditioned_model_says_its_vectors_are_not_kept(base, tmp_path, personal):
    # the saved model silently had no person vectors (or vectors trained anew from zero): its users were lost
    data = _write(tmp_path / "pairs.jsonl", _opposed(8))
    trained = run_preference(from_kwargs(model=str(base), data=[data], loss="dpo", output_dir=str(tmp_path / "cond"),
                                         loop=LOOP | {"num_epochs": 1}, personal={"condition_on": "user"})).model_dir
    with pytest.warns(UserWarning, match="holds person vectors \\(per user\\); this run does not keep them"):
        run_preference(from_kwargs(model=str(trained), data=[data], loss="dpo", output_dir=str(tmp_path / "on"),
                                   loop=LOOP | {"num_epochs": 1}, personal=personal))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*holds person vectors")
        run_preference(from_kwargs(model=str(base), data=[data], loss="dpo", output_dir=str(tmp_path / "plain"),
                                   loop=LOOP | {"num_epochs": 1}, personal=personal))
