"""Whole conversations as hub data sets store them: `messages` SFT rows, UltraFeedback-binarized replies that
repeat the prompt's turns, Anthropic HH rows with no prompt — read as a prompt and an assistant-only reply."""

from __future__ import annotations

import csv
import json

import pytest
from data_examples import write_jsonl

from pluralign.cli import main
from pluralign.data import Demonstration, Pairwise, convert, read_checked, read_records
from pluralign.data.collate import SFTCollator
from pluralign.errors import PluralignError
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


def test_a_reply_that_still_holds_a_user_turn_is_a_located_error(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "another question", "chosen": [user("what is the cat"), bot("the cat")], "rejected": "no"}]
    checked = read_checked(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert len(checked.records) == 1
    (problem,) = checked.rejects[0].problems
    assert (problem.line, problem.field) == (2, "chosen[0].role") and "'user' turn" in problem.message
    assert main(["data", "validate", str(tmp_path / "bad.jsonl")]) == 2


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
