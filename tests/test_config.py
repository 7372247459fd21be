"""Typed config: YAML ⇄ dataclass ⇄ key=value overrides, with helpful errors."""

import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from pluralign import config
from pluralign.errors import ConfigError


@dataclass
class Optim:
    lr: float = config.option(1e-4, help="learning rate")
    betas: list[float] = config.option(default_factory=lambda: [0.9, 0.999], help="Adam betas")


@dataclass
class Run:
    model: str = config.option("tiny", help="model path")
    loss: Literal["dpo", "ipo"] = config.option("dpo", help="loss name")
    steps: int = config.option(10, help="optimizer steps")
    lora_r: int | None = config.option(None, help="LoRA rank or none")
    hparams: dict[str, float] = config.option(default_factory=dict, help="loss hyper-parameters")
    optim: Optim = field(default_factory=Optim, metadata={"help": "optimizer"})


def test_yaml_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: a\nsteps: 3\noptim:\n  lr: 0.5\n")
    cfg = config.load(Run, path, ["steps=7", "optim.lr=2e-3", "hparams.beta=0.2", "optim.betas=[0.8,0.9]"])
    assert (cfg.model, cfg.steps, cfg.optim.lr, cfg.optim.betas) == ("a", 7, 2e-3, [0.8, 0.9])
    assert cfg.hparams == {"beta": 0.2}
    assert isinstance(cfg.optim.lr, float)


def test_round_trip_through_yaml(tmp_path):
    cfg = config.load(Run, None, ["lora_r=8", "loss=ipo"])
    path = tmp_path / "saved.yaml"
    path.write_text(config.dump_yaml(cfg))
    assert config.load(Run, path) == cfg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("step=3", "did you mean 'steps'"),
        ("optim.lrr=1", "did you mean 'optim.lr'"),
        ("lr=1", "did you mean 'optim.lr'"),  # a section's key given at the top level
        ("steps=abc", "'steps' must be an integer"),
        ("loss=kto", "'loss' must be one of"),
        ("optim.lr=fast", "'optim.lr' must be a number"),
        ("steps", "key=value"),
        ("run.yaml", "not of the form key=value; a config file is given as --config run.yaml"),
    ],
)
def test_bad_keys_and_values_are_clear_errors(override, expected):
    with pytest.raises(ConfigError, match=expected):
        config.load(Run, None, [override])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(Run, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML") as e:
        config.load(Run, bad)
    # one line, located as data files' errors are, without PyYAML's excerpt of an unnamed '<unicode string>'
    assert str(e.value).startswith(f"{bad}:2:1: invalid YAML: while parsing a flow node; expected the node content")
    assert "\n" not in str(e.value) and "unicode string" not in str(e.value)
    # a directory or bytes that are not UTF-8 were tracebacks (IsADirectoryError, UnicodeDecodeError)
    with pytest.raises(ConfigError, match=f"^{tmp_path}: cannot read the config: Is a directory"):
        config.load(Run, tmp_path)
    (tmp_path / "latin1.yaml").write_bytes("steps: 3\nmodel: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml:2: not UTF-8 text \(byte 0xe9\)"):
        config.load(Run, tmp_path / "latin1.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(Run, tmp_path / "list.yaml")


def test_help_lists_every_field_with_its_text():
    text = config.format_help(Run)
    for key in ("model", "loss", "steps", "lora_r", "hparams", "optim.lr", "optim.betas"):
        assert f"  {key}  (" in text
    assert "learning rate" in text
    assert "  loss  ('dpo' | 'ipo', default 'dpo')" in text  # a choice shows its values, not "Literal"


@dataclass
class Recipe:
    optim: Optim = field(default_factory=lambda: Optim(lr=0.5), metadata={"help": "optimizer with a recipe default"})


def test_partial_nested_section_keeps_the_recipes_defaults():
    cfg = config.load(Recipe, None, ["optim.betas=[0.1,0.2]"])
    assert cfg.optim.lr == 0.5 and cfg.optim.betas == [0.1, 0.2]
    assert config.load(Recipe).optim.lr == 0.5


@dataclass
class Precision:
    mixed_precision: Literal["no", "bf16", "fp16"] = config.option("bf16", help="autocast precision")


def test_a_choice_spelt_as_a_yaml_boolean_word_is_that_choice(tmp_path):
    # YAML 1.1 reads an unquoted `no` as False; the choice "no" is what the user wrote.
    assert config.load(Precision, None, ["mixed_precision=no"]).mixed_precision == "no"
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\n")
    assert config.load(Precision, path).mixed_precision == "no"
    with pytest.raises(ConfigError, match="'mixed_precision' must be one of"):
        config.load(Precision, None, ["mixed_precision=yes"])  # no choice is a "yes" word


def test_a_key_given_twice_in_a_yaml_file_is_an_error_not_the_last_one(tmp_path):
    # YAML keeps the last `optim:` without a word, so the first one's lr was dropped: the run used the default
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.5\nsteps: 3\noptim:\n  betas: [0.8, 0.9]\n")
    with pytest.raises(ConfigError, match=r":4:1: invalid YAML: key 'optim' given more than once \(first on line 1\)"):
        config.load(Run, path)
    path.write_text("hparams: {beta: 0.1, beta: 0.2}\n")
    with pytest.raises(ConfigError, match="key 'beta' given more than once"):
        config.load(Run, path)
    path.write_text("base: &b {lr: 0.5}\noptim:\n  <<: *b\n  lr: 0.25\n")  # a merge key's value overridden: fine
    assert config.read_yaml(path)["optim"] == {"lr": 0.25}


def test_a_dotted_key_in_a_yaml_file_says_to_nest_it(tmp_path):
    """`optim.lr: 1` in a file was 'unknown config key' with the hint to write the very same key."""
    path = tmp_path / "c.yaml"
    path.write_text("optim.lr: 1\n")
    with pytest.raises(ConfigError, match=r"'optim.lr': dotted keys are for key=value overrides; in YAML nest it"):
        config.load(Run, path)


@pytest.mark.parametrize(("override", "expected"), [
    ("model=007", "007"), ("model=2024_01", "2024_01"), ("model=12:30", "12:30"), ("model=on", "on"),
    ("model=2.10", "2.10"),
])
def test_a_string_override_keeps_the_text_it_was_given(override, expected):
    """Read as YAML, model=007 became '7', 2024_01 '202401' and 12:30 '750' (base 60), without a word."""
    assert config.load(Run, None, [override]).model == expected


def test_typed_overrides_still_read_as_yaml():
    cfg = config.load(Run, None, ["steps=007", "lora_r=null", "optim.lr=1e-4", "loss=ipo"])
    assert (cfg.steps, cfg.lora_r, cfg.optim.lr, cfg.loss) == (7, None, 1e-4, "ipo")
    with pytest.raises(ConfigError, match="'model' must be a string, got None"):
        config.load(Run, None, ["model=null"])


def test_a_path_object_is_taken_where_a_string_or_a_list_of_them_goes(tmp_path):
    """run_sft(model=Path(...)) was "'model' must be a string, got PosixPath(...)"."""
    from pathlib import Path

    @dataclass
    class Files:
        model: str = config.option("", help="a directory")
        data: list[str] = config.option(default_factory=list, help="files")
        ref: str | None = config.option(None, help="another directory")

    cfg = config.from_dict(Files, {"model": tmp_path / "m", "data": Path("a,b.jsonl"), "ref": Path("r")})
    assert (cfg.model, cfg.data, cfg.ref) == (str(tmp_path / "m"), ["a,b.jsonl"], "r")
    assert config.from_dict(Files, {"data": [Path("x.jsonl"), "y.jsonl"]}).data == ["x.jsonl", "y.jsonl"]


@pytest.mark.parametrize(("override", "expected"), [
    ("loop.lr=1e-4", "unknown config key 'loop.lr'; did you mean 'loop.learning_rate'?"),
    ("gradient_accumulation_steps=4", "unknown config key 'gradient_accumulation_steps'; did you mean 'loop.grad_accum'?"),
    ("loop.per_device_train_batch_size=4", "did you mean 'loop.batch_size'?"),
])
def test_the_hf_trainers_names_of_loop_settings_suggest_ours(override, expected):
    """'loop.lr' listed every loop key and named none (the spellings are too far apart for difflib)."""
    from pluralign.train.recipes.sft import SFTConfig

    with pytest.raises(ConfigError, match=re.escape(expected)):
        config.load(SFTConfig, None, [override])
