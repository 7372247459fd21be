"""The Python entry points as a notebook calls them: configs as objects, mappings or YAML paths with keyword
overrides, and a caller's mistakes (a lone text or function where a list belongs) as `ConfigError`s naming
the argument, never a TypeError from deep inside."""

from __future__ import annotations

import pytest
from loop_toys import make_model_dir, write_pairs

from pluralign.errors import ConfigError
from pluralign.train import run_online, run_preference, run_reward, run_sft
from pluralign.train.loop import LoopConfig
from pluralign.train.recipes import online, preference

LOOP = {"learning_rate": 1e-2, "batch_size": 4, "max_steps": 1, "progress": False}


@pytest.fixture
def captured(monkeypatch):
    """The config each recipe would run, without running it."""
    seen: dict = {}
    def keep(name, value):
        seen[name] = value
        return value

    monkeypatch.setattr(preference, "run", lambda config: keep("preference", config))
    monkeypatch.setattr(online, "run", lambda config, **kw: keep("online", (config, kw)))
    return seen


def test_a_mapping_config_trains_like_keyword_arguments(tmp_path):
    base, pairs = make_model_dir(tmp_path / "base"), write_pairs(tmp_path / "pairs.jsonl", 8)
    common = {"model": str(base), "data": [str(pairs)], "loop": LOOP}
    as_mapping = run_preference(common | {"output_dir": str(tmp_path / "a")})
    as_kwargs = run_preference(**common, output_dir=str(tmp_path / "b"))
    assert as_mapping.train.metrics["loss"] == as_kwargs.train.metrics["loss"]


def test_a_misspelt_key_of_a_mapping_config_is_named(captured):
    with pytest.raises(ConfigError, match="unknown config key 'los'; did you mean 'loss'"):
        run_preference({"model": "m", "data": ["d"], "los": "ipo"})
    with pytest.raises(ConfigError, match="config: expected a PreferenceConfig"):
        run_preference(42)


def test_keyword_arguments_override_a_yaml_config_or_a_config_object(tmp_path, captured):
    path = tmp_path / "dpo.yaml"
    path.write_text("model: m\ndata: [d]\nloss: ipo\noutput_dir: runs/a\nloop: {batch_size: 2}\n")
    config = run_preference(path, output_dir="runs/b", loop={"max_steps": 3})
    assert (config.loss, config.output_dir, config.loop.batch_size, config.loop.max_steps) == ("ipo", "runs/b", 2, 3)
    again = run_preference(config, loss_params={"beta": 0.5})
    assert (again.loss, again.output_dir, again.loss_params) == ("ipo", "runs/b", {"beta": 0.5})
    assert run_preference(config) is config


def test_online_takes_a_loop_config_object(captured):
    config, _ = run_online(algorithm="rloo", model="m", prompts=["hi"], rewards=[len],
                           loop=LoopConfig(batch_size=2, max_steps=5))
    assert (config.loop.batch_size, config.loop.max_steps) == (2, 5)


@pytest.mark.parametrize("kwargs, field", [({"prompts": "Tell me about cats."}, "prompts"),
                                           ({"rewards": len}, "rewards")])
def test_online_refuses_a_lone_prompt_or_reward(captured, kwargs, field):
    args = {"prompts": ["hi"], "rewards": [len]} | kwargs
    with pytest.raises(ConfigError, match=f"{field}: expected a list") as e:
        run_online(algorithm="grpo", model="m", **args)
    assert e.value.field == field and "online" not in captured


@pytest.fixture(scope="module")
def toy():
    from pluralign.decode.toy import toy_lm, toy_tokenizer

    tokenizer = toy_tokenizer()
    return toy_lm(tokenizer), tokenizer


@pytest.mark.parametrize("change, field", [
    ({"prompts": "a lone prompt"}, "prompts"),            # used to decode each of its characters as a prompt
    ({"model": "runs/base/model"}, "model"),              # used to fail on tokenizer.encode of None
    ({"tokenizer": None}, "tokenizer"),
    ({"controls": {"n": 2}}, "controls"),                 # used to fail with AttributeError: .extra
    ({"controls": [{"n": 2}]}, "controls"),
    ({"reward_modle": object()}, "reward_modle"),         # used to be ignored without a word
])
def test_decode_names_the_argument_a_caller_got_wrong(toy, change, field):
    from pluralign.decode.api import Controls, decode

    model, tokenizer = toy
    args = {"model": model, "tokenizer": tokenizer, "prompts": ["the"], "controls": Controls(max_new_tokens=2)} | change
    with pytest.raises(ConfigError) as e:
        decode("sample", **args)
    assert e.value.field == field and field in str(e.value)


def test_steer_refuses_a_lone_prompt_or_mismatched_weights(toy):
    from pluralign.decode.steer import steer

    with pytest.raises(ConfigError, match="prompts: expected a list"):
        steer(toy, "the", [{"r0": 1.0}], reward=len)
    with pytest.raises(ConfigError, match="weights_per_request: expected a list with one entry per prompt"):
        steer(toy, ["the", "the"], [{"r0": 1.0}], reward=len)


def test_eval_mode_restores_every_sub_module_as_it_was():
    import torch

    from pluralign.decode.sampler import eval_mode

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(2))
    model.train()
    model[2].eval()  # frozen normalisation inside a model in training
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, True, False]


@pytest.mark.parametrize("recipe, cls", [("run_soup", "SoupConfig"), ("run_dpa", "DPAConfig"), ("run_map", "MAPConfig")])
def test_steerable_recipes_take_a_mapping_config(monkeypatch, recipe, cls):
    """They used to fail on a mapping with an AttributeError ('dict' object has no attribute 'objectives')."""
    from pluralign.train.recipes import steerable

    monkeypatch.setattr(steerable, "_need", lambda *a: (_ for _ in ()).throw(RuntimeError("configured")))
    monkeypatch.setattr(steerable, "run_preference", lambda config: config)
    with pytest.raises((RuntimeError, ConfigError)) as e:
        getattr(steerable, recipe)({"model": "m", "data": ["d"], "objectives": {"names": ["a", "b"]}} if recipe == "run_soup"
                                   else {"model": "m", "palette": {"a": 1.0}} if recipe == "run_map"
                                   else {"model": "m", "objectives": ["a", "b"]}, output_dir="runs/x")
    assert "configured" in str(e.value)
    with pytest.raises(ConfigError, match=f"config: expected a {cls}"):
        getattr(steerable, recipe)(42)


def test_reward_recipe_takes_a_mapping_and_refuses_a_lone_path(monkeypatch, tmp_path):
    from pluralign.train.recipes import reward

    monkeypatch.setattr(reward, "train_records", lambda config, records, *a, **k: (None, config))
    monkeypatch.setattr(reward, "_read_all", lambda paths, *a: [])
    config = reward.run({"model": "m", "data": "pairs.jsonl"}, model_type="pal")
    assert (config.model_type, config.loop.step_limit) == ("pal", reward.STEP_LIMITS["pal"])
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="records: expected a list of records, got str") as e:
        reward.train_records({"model": "m", "output_dir": str(tmp_path / "o")}, "pairs.jsonl")
    assert e.value.field == "records" and not (tmp_path / "o").exists()


def test_modpo_without_a_margin_reward_is_named(tmp_path):
    with pytest.raises(ConfigError, match="set objectives.names and objectives.margin_reward") as e:  # was a TypeError
        run_preference(model="m", data=["d"], loss="modpo", objectives={"names": ["a", "b"]}, output_dir=str(tmp_path / "o"))
    assert e.value.field == "objectives.margin_reward"


@pytest.mark.parametrize("fn", [run_preference, run_sft, run_reward, run_online])
def test_every_run_function_says_it_returns_a_recipe_result(fn):
    # they had no return annotation, and only run_reward's docstring hinted at what comes back
    import inspect

    from pluralign.train.recipes.common import RecipeResult

    assert inspect.signature(fn).return_annotation == "RecipeResult"
    assert "RecipeResult" in fn.__doc__ and RecipeResult.__doc__ and "model_dir" in RecipeResult.__doc__


def test_a_loaded_model_given_as_model_is_named_in_a_short_message(captured):
    # the message held the model's whole repr: one line per layer, hundreds for a real chat model
    import torch

    model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(ConfigError, match="'model' must be a string, got Sequential") as e:
        run_preference(model=model, data=["d"])
    assert len(str(e.value)) < 120 and "preference" not in captured


def test_the_public_functions_say_what_they_return():
    # to_dataset and sandbox.load had no return annotation; per_request, read_manifest, population_names and
    # is_peft_model no docstring
    import inspect

    from pluralign.data import to_dataset
    from pluralign.decode.api import per_request
    from pluralign.models import is_peft_model
    from pluralign.sandbox import load, population_names, read_manifest

    for fn in (to_dataset, per_request, is_peft_model, load, population_names, read_manifest):
        assert inspect.signature(fn).return_annotation is not inspect.Signature.empty and fn.__doc__, fn.__name__
