"""`pluralign train dpa | soup | map` on a tiny chat model (message-list prompts rendered by the
tokenizer's chat template): each recipe trains and saves a model that decodes with per-request controls,
and bad input stops with exit code 2 and a message naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CHAT_ANSWERS as ANSWERS

from pluralign.cli import main

OBJ = ["informativeness", "conciseness"]
LOOP = ["loop.max_steps=2", "loop.batch_size=4", "loop.progress=false", "loop.learning_rate=1e-2"]


def lengths(prompts, responses):
    """A two-objective reward: (words, −words) of each response."""
    n = torch.tensor([float(len(r.split())) for r in responses])
    return torch.stack([n, -n], 1)


def test_train_soup_trains_a_member_per_objective_and_one_hot_weights_give_the_member(tmp_path, chat_model, rated):
    from pluralign.decode.api import Controls, decode
    from pluralign.decode.steer import load_policy
    from pluralign.models.soup import member_state

    out = tmp_path / "soup"
    assert main(["train", "soup", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}",
                 "objectives.names=[informativeness,conciseness]", "gradient_checkpointing=false", *LOOP]) == 0
    assert "joint: false" in (out / "config.yaml").read_text()  # the soup's run directory says how it was made
    model, tok = load_policy(out / "model")
    assert model.pluralign_conditioning.name == "soup" and len(model.pluralign_conditioning.params["members"]) == 2
    assert len(list((out / "ref_cache").glob("*.safetensors"))) == 1  # the members' one shared reference pass
    member = member_state(out / "members" / "conciseness" / "model")
    with model.pluralign_conditioning.steer(model, model.pluralign_conditioning.condition(weights=[0, 1])):
        assert all(torch.equal(v, member[k]) for k, v in model.state_dict().items())
    res = decode("sample", model, tok, [[{"role": "user", "content": "what is the cat"}]] * 2,
                 controls=[Controls(weights=[1, 0], max_new_tokens=3), Controls(weights=[0.5, 0.5], max_new_tokens=3)])
    assert len(res.texts) == 2


def test_train_map_solves_the_palette_and_trains_on_its_pairs(tmp_path, chat_model, rated):
    out = tmp_path / "map"
    assert main(["train", "map", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}",
                 "palette={informativeness: 0.7}", "palette_quantiles={conciseness: 0.3}", "gradient_checkpointing=false", *LOOP]) == 0
    palette = json.loads((out / "palette.json").read_text())
    assert palette["objectives"] == OBJ and all(x >= 0 for x in palette["lambda"]) and any(x > 0 for x in palette["lambda"])
    assert (out / "model").is_dir() and (out / "map_pairs.jsonl").read_text().strip()


def test_train_dpa_rounds_save_a_direction_conditioned_model(tmp_path, chat_model, rated):
    from pluralign.decode.api import Controls, decode
    from pluralign.decode.steer import load_policy

    out = tmp_path / "dpa"
    assert main(["train", "dpa", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}",
                 "objectives=[informativeness,conciseness]", f"reward={__name__}:lengths", "rounds=2", "n=2",
                 # batch 1: a round's SFT needs one kept answer, whichever prompt's best sample is not empty
                 # (the untrained model's best can be, by luck of the seed)
                 "max_new_tokens=4", "max_length=64", *LOOP, "loop.batch_size=1"]) == 0
    model, tok = load_policy(out / "round1" / "model")
    assert model.pluralign_conditioning.name == "system_message"
    # weights are stated as the direction along them, the only statement DPA trains on ("weights : …" was new)
    scheme = model.pluralign_conditioning.bind(tok)
    for controls in (Controls(weights=[0.3, 0.4]), Controls(direction=[0.6, 0.8])):
        shown = scheme.prompt([{"role": "user", "content": "hi"}], scheme.condition_of_request(controls))
        assert shown[0]["content"] == "direction : informativeness 60 conciseness 80 ."
    kept = [json.loads(line) for line in (out / "round0.jsonl").read_text().splitlines()]
    assert kept and all(set(r["meta"]["direction"]) == set(OBJ) for r in kept)
    res = decode("sample", model, tok, [[{"role": "user", "content": "what is the cat"}]],
                 controls=Controls(direction=[1, 1], max_new_tokens=3))
    assert len(res.texts) == 1


def test_train_dpa_with_lora_merges_each_round_into_a_full_model(tmp_path, chat_model, rated):
    import yaml
    from safetensors.torch import load_file

    out = tmp_path / "dpa_lora"
    assert main(["train", "dpa", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}",
                 "objectives=[informativeness,conciseness]", f"reward={__name__}:lengths", "rounds=1", "n=2",
                 "max_new_tokens=4", "max_length=64", "use_lora=true", "lora.r=4", *LOOP, "loop.batch_size=2"]) == 0
    config = yaml.safe_load((out / "round0" / "config.yaml").read_text())
    assert config["use_lora"] is True and config["lora"]["r"] == 4
    base, trained = load_file(chat_model / "model.safetensors"), load_file(out / "round0" / "model" / "model.safetensors")
    assert set(trained) == set(base)  # merged: the base's tensors, no adapter weights
    assert any(not torch.equal(trained[k], base[k]) for k in base if k.endswith("proj.weight"))


@pytest.mark.parametrize("argv, message", [
    (["train", "soup", "objectives.names=[informativeness]"], "a soup needs at least two objectives"),
    (["train", "soup", "objectives.names=[informativeness,formality]"], "no ratings for objective(s) formality"),
    (["train", "soup", "objectives.names=[informativeness,conciseness]", "objectives.conditioning=system_message"],
     "a soup is steered by interpolating its members"),
    (["train", "map", "palette={formality: 0.5}"], "rated.jsonl: field 'ratings': no ratings for objective(s) formality"),
    (["train", "map", "palette={informativeness: 5.0}"], "not reachable"),
    (["train", "map", "palette_quantiles={conciseness: 1.5}"], "'palette_quantiles.conciseness' must be in [0, 1]"),
    (["train", "dpa", "objectives=[informativeness,conciseness]", "reward=gold", "angles=[90, 0]"], "'angles' must be"),
    (["train", "dpa", "objectives=[informativeness,fun]", "reward=gold"], "scores no objective(s) ['fun']"),
    (["train", "dpa", "objectives=[informativeness,conciseness]", "n=0"], "'n' must be at least 1"),
])
def test_bad_input_exits_2_naming_the_field(tmp_path, chat_model, rated, capsys, argv, message):
    assert main([*argv, f"model={chat_model}", f"data=[{rated}]", f"output_dir={tmp_path / 'o'}", *LOOP]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name, field", [("dpa", "rounds"), ("soup", "objectives"), ("map", "palette_quantiles")])
def test_help_config_lists_the_fields(capsys, name, field):
    assert main(["train", name, "--help-config"]) == 0
    assert field in capsys.readouterr().out


def test_soup_objective_without_pairs_exits_2(tmp_path, chat_model, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": "what is the cat"}], "chosen": a,
                                         "rejected": "no", "objective": "informativeness"}) + "\n" for a in ANSWERS[:4]))
    assert main(["train", "soup", f"model={chat_model}", f"data=[{pairs}]", f"output_dir={tmp_path / 'o'}",
                 "objectives.names=[informativeness,conciseness]", *LOOP]) == 2
    assert "objective 'conciseness' has no pairs" in capsys.readouterr().err


def test_soup_members_keep_the_objectives_settings(tmp_path, chat_model, rated):
    # objectives.drop_ties is meant for soup experts (their one-hot weight leaves many pairs tied); each member
    # was trained with a fresh objectives section, so it and combine_params had no effect
    out = tmp_path / "soup"
    assert main(["train", "soup", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}",
                 "objectives.names=[informativeness,conciseness]", "objectives.drop_ties=true",
                 "objectives.combine_params={normalize: batch}", "gradient_checkpointing=false", *LOOP]) == 0
    for name in OBJ:
        member = (out / "members" / name / "config.yaml").read_text()
        assert "drop_ties: true" in member and "normalize: batch" in member
        assert f"{name}: 1.0" in member  # still the member's own one-hot weights


def test_train_dpa_directions_may_weigh_an_objective_negatively(tmp_path, chat_model, rated):
    # DPA's paper samples θ in [−45°, 45°]: v = (cos θ, sin θ) has a negative component. The conditioned rounds
    # stopped at round 1: the direction, also the best-of-n weights of vᵀr, was checked as simplex weights
    out = tmp_path / "dpa"
    assert main(["train", "dpa", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}",
                 "objectives=[informativeness,conciseness]", f"reward={__name__}:lengths", "rounds=2", "n=2",
                 "angles=[-45, -30]", "max_new_tokens=4", "max_length=64", *LOOP, "loop.batch_size=2"]) == 0
    kept = [json.loads(line) for line in (out / "round1.jsonl").read_text().splitlines()]
    assert kept and all(r["meta"]["direction"]["conciseness"] < 0 for r in kept)


def test_soup_members_are_evaluated_on_the_eval_data(tmp_path, chat_model, rated):
    # eval_data was dropped for every member: a soup run evaluated nothing, silently
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": "what is the cat"}], "chosen": a,
                                         "rejected": b, "objective": o}) + "\n"
                             for o, (a, b) in [("informativeness", ANSWERS[1:3]), ("conciseness", ANSWERS[2:0:-1])] * 4))
    for data in (rated, pairs):
        out = tmp_path / f"soup_{data.stem}"
        assert main(["train", "soup", f"model={chat_model}", f"data=[{data}]", f"eval_data=[{data}]", f"output_dir={out}",
                     "objectives.names=[informativeness,conciseness]", "gradient_checkpointing=false", *LOOP]) == 0
        for name in OBJ:
            rows = [json.loads(line) for line in (out / "members" / name / "metrics.jsonl").read_text().splitlines()]
            assert any(k.startswith("eval/") for row in rows for k in row), (data, name)


def _dpa(out, chat_model, rated, *extra):
    return main(["train", "dpa", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}",
                 "objectives=[informativeness,conciseness]", f"reward={__name__}:lengths", "rounds=2", "n=2",
                 "max_new_tokens=4", "max_length=64", *LOOP, "loop.batch_size=1", "loop.scheduler=constant", *extra])


def test_dpa_round_trained_on_samples_of_an_earlier_model_is_not_resumed(tmp_path, chat_model, rated, capsys):
    """Raising loop.max_steps trains round 0 further, so round 1 samples another model: its checkpoints were
    trained on the old samples, and continuing them on the new ones mixed two data sets into one model."""
    out = tmp_path / "dpa"
    assert _dpa(out, chat_model, rated, "loop.save_every=2") == 0
    old = (out / "round1.jsonl").read_text()
    assert _dpa(out, chat_model, rated, "loop.save_every=2", "loop.max_steps=4") == 2
    err = capsys.readouterr().err
    assert f"dpa round 1: {out / 'round1'} was trained on samples of another model" in err and "Traceback" not in err
    assert (out / "round1.jsonl").read_text() == old  # the round's data is left as its checkpoints were trained on


def test_dpa_resumed_in_a_round_reuses_its_samples_and_equals_an_uninterrupted_run(tmp_path, chat_model, rated, monkeypatch):
    """A kill in round 1 after its step-2 checkpoint: the rerun resumes round 0 (finished) and round 1 on the samples
    the checkpoint was trained on, read back rather than drawn again (sampling on a GPU need not repeat bit for
    bit), and ends with the weights of a run never stopped."""
    import shutil

    from safetensors.torch import load_file

    from pluralign.train import steerable

    steps = ["loop.max_steps=4", "loop.save_every=2", "loop.keep_checkpoints=5"]
    assert _dpa(tmp_path / "straight", chat_model, rated, *steps) == 0
    assert _dpa(tmp_path / "killed", chat_model, rated, *steps) == 0
    shutil.rmtree(tmp_path / "killed" / "round1" / "checkpoints" / "step-4")
    shutil.rmtree(tmp_path / "killed" / "round1" / "model")

    def no_sampling(*args, **kwargs):
        raise AssertionError("a round whose samples are on disk was sampled again")

    monkeypatch.setattr(steerable, "dpa_records", no_sampling)
    assert _dpa(tmp_path / "killed", chat_model, rated, *steps) == 0
    a = load_file(tmp_path / "straight" / "round1" / "model" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "round1" / "model" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_dpa_does_not_hash_its_base_model_to_key_round_zero(tmp_path, chat_model, rated, monkeypatch):
    """Round 0's samples are keyed by the base's name (a base of many GB was read through on every run);
    the rounds' own models, which a run trains further, by their files."""
    import hashlib

    from pluralign.train import steerable

    read = []
    real = hashlib.file_digest

    def recording(f, digest):
        read.append(Path(f.name).parent)
        return real(f, digest)

    monkeypatch.setattr(steerable.hashlib, "file_digest", recording)
    assert _dpa(tmp_path / "dpa", chat_model, rated) == 0
    assert chat_model not in read and tmp_path / "dpa" / "round0" / "model" in read
