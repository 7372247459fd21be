"""`pluralign train` given what users get wrong: refused before any work, with one line naming the field."""

from __future__ import annotations

import json
import shutil

import pytest

from pluralign.cli import main


@pytest.fixture()
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "the cat", "chosen": "yes", "rejected": "no"}, {"prompt": "the dog", "chosen": "no", "rejected": "yes"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("recipe", "field"), [("dpo", "model"), ("dpo", "ref_model"), ("rm", "model"), ("soup", "model")])
def test_output_dir_that_would_replace_an_input_model_is_refused(tmp_path, tiny_llama_dir, pairs, recipe, field, capsys):
    """`model=runs/sft/model output_dir=runs/sft` (or an empty output_dir with ./model) saved the trained model
    over the model the run read: the input was deleted, the run exited 0."""
    run_dir = tmp_path / "runs" / "sft"
    shutil.copytree(tiny_llama_dir, run_dir / "model")
    before = sorted(p.name for p in (run_dir / "model").iterdir())
    if recipe == "soup":  # one member per objective: pairs of each
        rows = [json.loads(line) | {"objective": o} for line in pairs.read_text().splitlines() for o in "ab"]
        pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    inputs = {"model": str(tiny_llama_dir), field: str(run_dir / "model")}
    argv = ["train", recipe, *(f"{k}={v}" for k, v in inputs.items()), f"data=[{pairs}]", "loop.max_steps=1",
            "loop.batch_size=2", f"output_dir={run_dir}", *(["objectives.names=[a,b]"] if recipe == "soup" else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"output_dir '{run_dir}'" in err and f"the {field} this run reads" in err and "Traceback" not in err
    assert sorted(p.name for p in (run_dir / "model").iterdir()) == before


@pytest.mark.parametrize("value", ["-1", "1.5", ".nan", ".inf"])
def test_ld_alpha_out_of_range_is_refused_before_training(tmp_path, tiny_llama_dir, pairs, value, capsys):
    """ld_alpha=-1 or 1.5 trained without a word (a weight on the longer response's excess tokens outside LD-DPO's
    [0, 1]); ld_alpha=.nan loaded the model and failed at step 1 as a 'non-finite loss' advising the learning rate."""
    argv = ["train", "dpo", f"model={tiny_llama_dir}", f"data=[{pairs}]", "loop.max_steps=1", "loop.batch_size=2",
            f"output_dir={tmp_path / 'run'}", f"ld_alpha={value}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "ld_alpha must be in [0, 1]" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv", [["data", "validate", ""], ["data", "stats", " "], ["data", "convert", "", "x.jsonl"],
                                  ["data", "convert", "x.jsonl", ""], ["report", ""]])
def test_an_empty_path_is_refused_not_read_as_the_current_directory(argv, tmp_path, monkeypatch, capsys):
    # `data validate ""` validated every file of the current directory; `report ""` reported it
    from pluralign.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "an empty path" in err and "Traceback" not in err
