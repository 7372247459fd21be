"""Bad multi-objective and personal input stops the recipes with exit code 2, a message naming the file,
the record and the field, no traceback, and nothing written to the output directory."""

from __future__ import annotations

import json

import pytest
from conftest import CHAT_ANSWERS as ANSWERS

from pluralign.cli import main

LOOP = ["loop.max_steps=2", "loop.batch_size=4", "loop.progress=false", "gradient_checkpointing=false"]
OBJ = "[informativeness,conciseness]"


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _pairs(n=8, **extra):
    """Pairs of two users in two groups, each with signs over both objectives (row 6 changed by `extra`)."""
    rows = []
    for i in range(n):
        row = {"prompt": [{"role": "user", "content": "what is the cat"}], "chosen": ANSWERS[i % 6],
               "rejected": ANSWERS[(i + 1) % 6], "user": f"u{i % 2}", "group": f"g{i % 2}",
               "meta": {"signs": {"informativeness": 1, "conciseness": -1}}}
        rows.append(row | extra if i == 5 else row)
    return rows


def _fails(argv, out, capsys, *messages):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(m in err for m in messages), err
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))  # nothing half-written
    return err


@pytest.mark.parametrize("recipe, settings", [
    ("dpo", ["objectives.rated_pairs=signed", "objectives.combine=raco"]),
    ("soup", ["joint=true"]),
])
def test_an_objective_without_ratings_names_it(tmp_path, chat_model, rated, capsys, recipe, settings):
    out = tmp_path / "o"
    _fails(["train", recipe, f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}",
            "objectives.names=[informativeness,formality]", *settings, *LOOP], out, capsys,
           "no ratings for objective(s) formality")


def test_mahdpo_heads_saved_as_a_lora_adapter_are_refused_before_training(tmp_path, chat_model, rated, capsys):
    # the heads train in full and live in lm_head.extra, which the adapter directory lacks: the run trained,
    # then saved a model whose every decode stopped ("no lm_head.extra weights")
    out = tmp_path / "o"
    _fails(["train", "dpo", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}", f"objectives.names={OBJ}",
            "objectives.conditioning=heads", "use_lora=true", "merge_lora=false", *LOOP], out, capsys,
           "set merge_lora=true")


@pytest.mark.parametrize("meta, message", [
    ({"signs": {"informativeness": 1}, "weights": {"informativeness": -1}},
     "field 'meta.weights': weights must be non-negative"),
    ({"signs": {"informativeness": "up"}}, "field 'meta.signs': expected {objective: -1, 0 or 1}"),
    ({"signs": {"foo": 1}}, "field 'meta.signs': expected"),
    ({"signs": [1, -1]}, "field 'meta.signs': expected"),
])
def test_bad_meta_names_the_file_line_and_field(tmp_path, chat_model, capsys, meta, message):
    data, out = _write(tmp_path / "pairs.jsonl", _pairs(meta=meta)), tmp_path / "o"
    _fails(["train", "dpo", f"model={chat_model}", f"data=[{data}]", f"output_dir={out}",
            f"objectives.names={OBJ}", *LOOP], out, capsys, f"{data}:6: {message}")


def test_an_unknown_objective_names_the_file_line_and_field(tmp_path, chat_model, capsys):
    data, out = _write(tmp_path / "pairs.jsonl", _pairs(objective="fun")), tmp_path / "o"
    _fails(["train", "dpo", f"model={chat_model}", f"data=[{data}]", f"output_dir={out}",
            f"objectives.names={OBJ}", *LOOP], out, capsys, f"{data}:6: field 'objective': 'fun' is not one of")


@pytest.mark.parametrize("extra, settings, message", [
    ({"objective": "fun"}, [f"objectives.names={OBJ}"], "field 'objective': 'fun' is not one of"),
    ({"group": None}, ["personal.group_objective=worst_group"], "field 'group': missing"),
])
def test_checks_after_reading_name_the_source_line_past_blank_lines(tmp_path, chat_model, capsys, extra, settings,
                                                                     message):
    # Record 6 is on line 9: blank and whitespace-only lines come before it, and its position is not its line.
    lines = [json.dumps({k: v for k, v in r.items() if v is not None}) for r in _pairs(**extra)]
    data, out = tmp_path / "pairs.jsonl", tmp_path / "o"
    data.write_text("\n".join(lines[:2]) + "\n\n   \n\r\n" + "\n".join(lines[2:]) + "\n")
    err = _fails(["train", "dpo", f"model={chat_model}", f"data=[{data}]", f"output_dir={out}", *settings, *LOOP],
                 out, capsys, f"{data}:9: {message}")
    assert f"{data}:6:" not in err


@pytest.mark.parametrize("settings, message", [
    (["personal.group_objective=foo"], "unknown group objective 'foo'"),
    (["personal.group_objective=group_dro", "personal.group_objective_params={step_size: -1}"], "step_size"),
    (["personal.group_objective=group_dro", "personal.group_objective_params={foo: 1}"], "bad group_objective_params"),
    (["personal.group_objective=balanced", "personal.group_objective_params={power: .nan}"], "finite numbers"),
    (["personal.condition_on=user", "personal.new_users_only=true"], "no person vectors"),
])
def test_bad_personal_settings_fail_before_the_reference_pass(tmp_path, chat_model, capsys, settings, message):
    data, out = _write(tmp_path / "pairs.jsonl", _pairs()), tmp_path / "o"
    _fails(["train", "dpo", f"model={chat_model}", f"data=[{data}]", f"output_dir={out}", *settings, *LOOP],
           out, capsys, message)


def test_dpa_with_fewer_prompts_than_a_batch_writes_no_round(tmp_path, chat_model, rated, capsys):
    out = tmp_path / "o"
    _fails(["train", "dpa", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}", f"objectives={OBJ}",
            "reward=gold", "rounds=1", "n=2", "max_new_tokens=4", *LOOP], out, capsys,
           "2 prompt(s)", "fewer than one effective batch (4")


def test_map_names_the_file_and_field(tmp_path, chat_model, rated, capsys):
    pairs, out = _write(tmp_path / "pairs.jsonl", _pairs()), tmp_path / "o"
    _fails(["train", "map", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}",
            "palette_quantiles={informativeness: 0.7, formality: 0.5}", *LOOP], out, capsys,
           f"{rated}: field 'ratings': no ratings for objective(s) formality")
    _fails(["train", "map", f"model={chat_model}", f"data=[{pairs}]", f"output_dir={out}",
            "palette={informativeness: 0.7}", *LOOP], out, capsys, f"{pairs}: MAP needs rated records")


def test_reward_tokens_name_the_record_and_field(tmp_path, chat_model, rated, capsys):
    out = tmp_path / "o"
    err = _fails(["train", "sft", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}",
                  "objectives=[informativeness,formality]", "conditioning=reward_tokens", *LOOP], out, capsys,
                 f"{rated}:1: field 'ratings': no reward for objective(s) formality")
    assert "'informativeness':" not in err  # the objectives it covers, not the record's ratings dumped


def test_reward_tokens_name_the_file_and_line_of_each_bad_reward(tmp_path, chat_model, rated, capsys):
    # The second file's bad rows sit past a blank line: named by that file and their own lines, not by their
    # position in the files joined; strings and non-finite numbers are refused as a rated record's are.
    rows = [{"prompt": "what is the cat", "response": a, "meta": {"rewards": {"informativeness": 1, "conciseness": 0}}}
            for a in ANSWERS[:3]]
    rows[1]["meta"]["rewards"] = {"informativeness": "1.5", "conciseness": 0}
    rows[2]["meta"]["rewards"] = {"informativeness": 1}
    demos, out = tmp_path / "demos.jsonl", tmp_path / "o"
    demos.write_text(json.dumps(rows[0]) + "\n\n" + "".join(json.dumps(r) + "\n" for r in rows[1:]))
    demos.with_name("nan.jsonl").write_text(json.dumps(rows[0]).replace('"conciseness": 0', '"conciseness": NaN'))
    _fails(["train", "sft", f"model={chat_model}", f"data=[{rated},{demos}]", f"eval_data=[{demos.with_name('nan.jsonl')}]",
            f"output_dir={out}", f"objectives={OBJ}", "conditioning=reward_tokens", *LOOP], out, capsys,
           f"{demos}:3: field 'meta.rewards.informativeness': expected a number, got str '1.5'",
           f"{demos}:4: field 'meta.rewards': no reward for objective(s) conciseness",
           f"{demos.with_name('nan.jsonl')}:1: field 'meta.rewards.conciseness': non-finite value nan")


@pytest.mark.parametrize("recipe, setting", [("sft", "conditioning=system_message"), ("sft", "conditioning=reward_tokens"),
                                             ("dpo", "objectives.conditioning=system_message"),
                                             ("dpo", "objectives.conditioning=heads")])
def test_a_weight_steered_scheme_without_objectives_names_them(tmp_path, chat_model, rated, capsys, recipe, setting):
    # a ZeroDivisionError traceback (system_message), RiC trained on "scores : ." to a model no weights could
    # steer, heads refused only after the reference pass
    out = tmp_path / "o"
    _fails(["train", recipe, f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}", setting, *LOOP], out, capsys,
           "none are given", "objectives")


def test_pairs_of_several_objectives_without_objectives_names_are_refused(tmp_path, chat_model, capsys):
    # a PKU-SafeRLHF row is a helpfulness pair and a harmlessness pair, often of opposite verdicts on the same
    # two answers: a plain DPO run took them all as one preference and trained each such row toward a tie
    row = {"prompt": "what is the cat", "response_0": ANSWERS[0], "response_1": ANSWERS[1],
           "better_response_id": 1, "safer_response_id": 0}
    data, out = _write(tmp_path / "pku.jsonl", [row] * 4), tmp_path / "o"
    _fails(["train", "dpo", f"model={chat_model}", f"data=[{data}]", f"output_dir={out}", *LOOP], out, capsys,
           "pku.jsonl: its pairs speak to 2 objectives (helpfulness 4, harmlessness 4)",
           "objectives.names=[helpfulness,harmlessness]")
    assert main(["train", "dpo", f"model={chat_model}", f"data=[{data}]", f"output_dir={out}", *LOOP,
                 "objectives.names=[helpfulness,harmlessness]"]) == 0


@pytest.mark.parametrize("setting", ["conditioning=system_message", "conditioning=reward_tokens"])
def test_sft_under_a_scheme_imitates_only_what_feedback_approves(tmp_path, chat_model, rated, capsys, setting):
    # Under a scheme every record was kept as it was: thumbs-down answers were imitated, with the statement
    # of their objective, and a ranked list stopped the run with "cannot take a (prompt, completion) pair
    # from a Ranked", naming no file
    prompt = [{"role": "user", "content": "what is the cat"}]
    down = _write(tmp_path / "down.jsonl", [{"prompt": prompt, "response": a, "label": False,
                                              "objective": "conciseness"} for a in ANSWERS[:4]])
    ranked = _write(tmp_path / "ranked.jsonl", [{"prompt": prompt, "responses": ANSWERS[i:i + 3], "ranks": [1, 2, 3]}
                                                for i in range(4)])
    out = tmp_path / "o"
    data = f"data=[{rated},{down}]" if "reward_tokens" in setting else f"data=[{down}]"  # RiC fits on the ratings
    _fails(["train", "sft", f"model={chat_model}", data, f"output_dir={out}", f"objectives={OBJ}", setting, *LOOP],
           out, capsys, f"{down}: its 4 binary record(s) give no demonstration record")
    data = f"data=[{rated},{ranked}]" if "reward_tokens" in setting else f"data=[{ranked}]"
    assert main(["train", "sft", f"model={chat_model}", data, f"output_dir={out}", f"objectives={OBJ}", setting,
                 *LOOP]) == 0, capsys.readouterr().err


def test_a_statement_every_pair_shares_is_refused(tmp_path, chat_model, rated, capsys):
    # Signed pairs without meta.weights all stated "weights : informativeness 50 conciseness 50 .": the run
    # trained, saved a system_message model, and no request's weights could steer it
    out = tmp_path / "o"
    _fails(["train", "dpo", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}", f"objectives.names={OBJ}",
            "objectives.rated_pairs=signed", "objectives.conditioning=system_message", *LOOP], out, capsys,
           "every pair of the training data states the same condition", "meta.weights")
    assert main(["train", "dpo", f"model={chat_model}", f"data=[{rated}]", f"output_dir={out}", f"objectives.names={OBJ}",
                 "objectives.conditioning=system_message", *LOOP]) == 0  # per-objective pairs: one-hot statements
