"""Whole conversations as hub data sets store them: `messages` SFT rows, UltraFeedback-binarized replies that
repeat the prompt's turns, Anthropic HH rows with no prompt — read as a prompt and an assistant-only reply."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_examples import write_jsonl

from pluralign.cli import main
from pluralign.data import Demonstration, Pairwise, convert, read_checked, read_records
from pluralign.data.collate import SFTCollator
from pluralign.data.prompt_files import read_prompt_rows
from pluralign.errors import DataError, PluralignError
from pluralign.runs import RunDir


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Be brief."}


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[json.dumps(c) if isinstance(c, list) else c for c in row] for row in rows])
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_messages_rows_are_the_earlier_turns_and_the_assistants_last_reply(tmp_path, fmt):
    talk = [SYSTEM, user("hi"), bot("hello"), user("what is the cat"), bot("the cat sat")]
    rows = [{"messages": talk}, {"messages": [user("yes or no"), bot("yes")]}]
    path = (write_jsonl(tmp_path / "sft.jsonl", rows) if fmt == "jsonl"
            else write_csv(tmp_path / "sft.csv", ["messages"], [[r["messages"]] for r in rows]))
    assert read_records(path) == [Demonstration(talk[:-1], [bot("the cat sat")]),
                                  Demonstration([user("yes or no")], [bot("yes")])]


def test_a_messages_row_that_cannot_be_split_is_named_at_its_own_field(tmp_path):
    # was: "field 'prompt': missing field" and "field 'response': missing field", fields the row never had
    rows = [{"messages": [user("hi"), bot("hello")]}, {"messages": [user("hi"), bot("hello"), user("more")]},
            {"messages": [bot("hello")]}, {"messages": "hello"}]
    checked = read_checked(write_jsonl(tmp_path / "sft.jsonl", rows))
    assert len(checked.records) == 1
    assert [(p.line, p.field) for p in checked.problems] == [(2, "messages[2].role"), (3, "messages"), (4, "messages")]
    assert "ends with the assistant's reply, this one with a 'user' turn" in checked.problems[0].message


def test_messages_rows_that_repeat_their_first_turn_as_prompt_are_conversations(tmp_path):
    # UltraChat-200k and No Robots give `prompt` (the first user turn) beside `messages`: every row was refused,
    # "cannot tell the kind" (with --kind demonstration: "field 'response': missing field")
    talk = [user("hi"), bot("hello"), user("what is the cat"), bot("the cat sat")]
    rows = [{"prompt": "hi", "prompt_id": "a1", "messages": talk},
            {"prompt": "hi", "messages": [SYSTEM, user("hi"), bot("hello")], "category": "Chat"},
            {"prompt": "what is the dog", "messages": talk}]  # not how the conversation opens: which is meant?
    checked = read_checked(write_jsonl(tmp_path / "chat.jsonl", rows))
    assert checked.records == [Demonstration(talk[:-1], [bot("the cat sat")], meta={"prompt_id": "a1"}),
                               Demonstration([SYSTEM, user("hi")], [bot("hello")], meta={"category": "Chat"})]
    assert [(p.line, p.field) for p in checked.problems] == [(3, "prompt")]
    assert "does not open with this prompt" in checked.problems[0].message


def test_prompt_and_completion_rows_are_demonstrations_that_only_sft_takes(tmp_path):
    path = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "say yes", "completion": "yes", "id": 7}])
    records = read_records(path)
    assert records == [Demonstration("say yes", "yes", meta={"id": 7})]
    with pytest.raises(PluralignError, match="pluralign train sft"):
        convert(records, "pairwise")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_ultrafeedback_replies_lose_the_prompt_turns_they_repeat(tmp_path, fmt):
    row = {"prompt": "what is the cat", "chosen": [user("what is the cat"), bot("the cat sat")],
           "rejected": [user("what is the cat"), bot("no")], "score_chosen": 8.0}
    path = (write_jsonl(tmp_path / "uf.jsonl", [row]) if fmt == "jsonl"
            else write_csv(tmp_path / "uf.csv", list(row), [list(row.values())]))
    (record,) = read_records(path)
    assert (record.prompt, record.chosen, record.rejected) == ("what is the cat", [bot("the cat sat")], [bot("no")])


def test_hh_rows_without_a_prompt_take_the_shared_turns_up_to_the_last_user_turn(tmp_path):
    history = [user("hi"), bot("hello"), user("what is the cat")]
    rows = [{"chosen": [*history, bot("the cat sat")], "rejected": [*history, bot("no")]},
            # they part at the first reply, so the chosen "reply" goes on with a user turn: refused, not trained on
            {"chosen": [user("hi"), bot("hello"), user("more"), bot("yes")], "rejected": [user("hi"), bot("go")]}]
    checked = read_checked(write_jsonl(tmp_path / "hh.jsonl", rows))
    assert checked.records == [Pairwise(history, [bot("the cat sat")], [bot("no")])]
    assert [(p.line, p.field) for p in checked.rejects[0].problems] == [(2, "chosen[1].role")]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_hh_as_published_one_text_per_side_is_read_as_its_turns(tmp_path, fmt):
    # Anthropic/hh-rlhf stores each side as one text with "\n\nHuman: " / "\n\nAssistant: " turns and no
    # prompt: every row was refused as missing its prompt.
    shared = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: what is the cat"
    row = {"chosen": shared + "\n\nAssistant: the cat sat", "rejected": shared + "\n\nAssistant: no"}
    path = (write_jsonl(tmp_path / "hh.jsonl", [row]) if fmt == "jsonl"
            else write_csv(tmp_path / "hh.csv", list(row), [list(row.values())]))
    assert read_records(path) == [Pairwise([user("hi"), bot("hello"), user("what is the cat")],
                                           [bot("the cat sat")], [bot("no")])]


def test_hh_transcripts_beside_a_prompt_are_read_as_turns_and_lose_the_prompts(tmp_path):
    # HH's sides kept whole beside a `prompt` column were read as plain text: each reply repeated the
    # prompt's "Human:" turn and was trained on, prompt and all, as the assistant's reply.
    sides = {"chosen": "\n\nHuman: what is the cat\n\nAssistant: the cat sat",
             "rejected": "\n\nHuman: what is the cat\n\nAssistant: no"}
    rows = [{"prompt": "\n\nHuman: what is the cat\n\nAssistant:", **sides}, {"prompt": "what is the cat", **sides},
            {"prompt": "\n\nHuman: what is the dog\n\nAssistant:", **sides}]
    checked = read_checked(write_jsonl(tmp_path / "hh.jsonl", rows))
    assert checked.records == [Pairwise([user("what is the cat")], [bot("the cat sat")], [bot("no")]),
                               Pairwise("what is the cat", [bot("the cat sat")], [bot("no")])]
    # replies that do not go on from their prompt hold a user turn: refused, never trained on
    assert [(p.line, p.field) for p in checked.problems] == [(3, "chosen[0].role"), (3, "rejected[0].role")]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_ranked_lists_responses_lose_the_prompt_turns_they_repeat_or_are_refused(tmp_path, fmt):
    # a list's responses were never checked: one that held the user's turn was trained on (LiPO) as the reply,
    # and `data convert --to pairwise` wrote pairs that the reader then refused
    rows = [{"prompt": "what is the cat", "responses": [[user("what is the cat"), bot("the cat sat")], "no"],
             "scores": [2, 1]},
            {"prompt": "what is the cat", "responses": ["yes", [user("what is the dog"), bot("a dog")]], "ranks": [1, 2]}]
    path = (write_jsonl(tmp_path / "lists.jsonl", rows) if fmt == "jsonl"
            else write_csv(tmp_path / "lists.csv", ["prompt", "responses", "scores", "ranks"],
                           [[r["prompt"], r["responses"], r.get("scores", ""), r.get("ranks", "")] for r in rows]))
    checked = read_checked(path, "ranked")
    assert [r.responses for r in checked.records] == [[[bot("the cat sat")], "no"]]
    assert [(p.line, p.field) for p in checked.problems] == [(3 if fmt == "csv" else 2, "responses[1][0].role")]


def test_a_reply_that_still_holds_a_user_turn_is_a_located_error(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "another question", "chosen": [user("what is the cat"), bot("the cat")], "rejected": "no"}]
    checked = read_checked(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert len(checked.records) == 1
    (problem,) = checked.rejects[0].problems
    assert (problem.line, problem.field) == (2, "chosen[0].role") and "'user' turn" in problem.message
    assert main(["data", "validate", str(tmp_path / "bad.jsonl")]) == 2


# One prompt of every kind's row, each given as chat messages: a misspelt role or a prompt that ends on the
# assistant's turn is the row's error, named at its line and turn, in every format (was: read as valid).
BAD_PROMPTS = [([user("hi"), {"role": "usr", "content": "hi"}], "prompt[1].role", "got 'usr'"),
               ([{"role": "tool", "content": "42"}, user("hi")], "prompt[0].role", "got 'tool'"),
               ([user("hi"), bot("hello")], "prompt[1].role", "ends with the user's turn"),
               ([SYSTEM], "prompt[0].role", "ends with the user's turn, this one with a 'system' turn")]
KIND_ROWS = {"pairwise": {"chosen": "a", "rejected": "b"}, "ranked": {"responses": ["a", "b"], "scores": [1, 2]},
             "binary": {"response": "a", "label": True}, "rated": {"response": "a", "ratings": {"x": 1}},
             "judged": {"response": "a", "judgment": "fine", "polarity": "positive"}, "demonstration": {"response": "a"}}


@pytest.mark.parametrize("kind", list(KIND_ROWS))
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_a_prompts_roles_and_last_turn_are_checked_for_every_kind(tmp_path, kind, fmt):
    rows = [{"prompt": [SYSTEM, user("fine")], **KIND_ROWS[kind]}] + [{"prompt": p, **KIND_ROWS[kind]}
                                                                      for p, _, _ in BAD_PROMPTS]
    path = tmp_path / f"in.{fmt}"
    if fmt in ("jsonl", "json"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) if fmt == "jsonl" else json.dumps(rows))
    else:  # a table holds chat messages, lists and objects as JSON text in their cells
        cells = [{k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.items()} for r in rows]
        if fmt == "csv":
            write_csv(path, list(cells[0]), [list(r.values()) for r in cells])
        else:
            pq.write_table(pa.Table.from_pylist(cells), path)
    checked = read_checked(path, kind)
    assert [r.prompt for r in checked.records] == [[SYSTEM, user("fine")]]
    problems = [p for r in checked.rejects for p in r.problems]
    assert [p.field for p in problems] == [field for _, field, _ in BAD_PROMPTS]
    for problem, (_, _, fragment) in zip(problems, BAD_PROMPTS, strict=True):
        assert fragment in problem.message


def test_validate_refuses_a_misspelt_role_with_its_file_line_and_turn(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": [{"role": "usr", "content": "hi"}], "chosen": "c",
                                                 "rejected": "r"}, {"prompt": "q", "chosen": "a", "rejected": "b"}])
    assert main(["data", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:1: field 'prompt[0].role': expected one of system, user, assistant, got 'usr'" in err
    assert "Traceback" not in err


def test_a_prompt_files_chat_is_held_to_the_same_roles_and_last_turn(tmp_path):
    rows = [{"prompt": [user("fine")]}, {"prompt": [{"role": "usr", "content": "hi"}]},
            {"prompt": [user("hi"), bot("hello")]}, {"prompt": [SYSTEM, user("also fine")], "n": 2}]
    with pytest.raises(DataError) as e:
        read_prompt_rows([write_jsonl(tmp_path / "p.jsonl", rows)])
    assert [(p.line, p.field) for p in e.value.problems] == [(2, "prompt[0].role"), (3, "prompt[1].role")]
    write_csv(tmp_path / "p.csv", ["prompt"], [[r["prompt"]] for r in rows])
    with pytest.raises(DataError) as e:
        read_prompt_rows([tmp_path / "p.csv"])
    assert [(p.line, p.field) for p in e.value.problems] == [(3, "prompt[0].role"), (4, "prompt[1].role")]


def test_sft_on_messages_trains_on_the_assistant_reply_only(tmp_path, chat_model, chat_tokenizer):
    talk = [user("what is the cat"), bot("the cat sat on the mat")]
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": talk}] * 8)
    (record,) = read_records(path)[:1]
    collate = SFTCollator(chat_tokenizer, max_length=64)
    batch = collate([record])
    completion = batch["input_ids"][0][batch["completion_mask"][0].bool()]
    assert "user" not in chat_tokenizer.decode(completion) and "the cat sat on the mat" in chat_tokenizer.decode(completion)
    assert collate([record])["input_ids"].tolist() == collate([(talk[:1], talk[1:])])["input_ids"].tolist()
    out = tmp_path / "run"
    assert main(["train", "sft", f"model={chat_model}", f"data=[{path}]", f"output_dir={out}", "loop.batch_size=4",
                 "loop.progress=false", "loop.log_every=1"]) == 0
    assert len(RunDir(out).read_metrics()) == 2
