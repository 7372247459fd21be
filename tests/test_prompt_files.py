"""`pluralign.data.prompt_files`: the one reader of prompt files for decode, eval and online training."""

import json

import pytest

from pluralign.data.prompt_files import read_prompt_rows
from pluralign.errors import DataError


def prompts(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return [r.prompt for r in read_prompt_rows([tmp_path / name])]


def test_every_format_gives_the_same_prompts(tmp_path):
    """A JSON list or a CSV table of prompts is read as rows, not as lines of text (a .json file's one line
    was one prompt, a CSV's header another, before this reader served `decode --prompts`)."""
    want = ["What is 2+2?", "Name a fruit, please."]
    assert prompts(tmp_path, "p.txt", "What is 2+2?\n\nName a fruit, please.\n") == want
    assert prompts(tmp_path, "p.jsonl", "".join(json.dumps({"prompt": p}) + "\n" for p in want)) == want
    assert prompts(tmp_path, "p.json", json.dumps([{"question": want[0]}, want[1]])) == want
    assert prompts(tmp_path, "p.csv", 'prompt,user\nWhat is 2+2?,alice\n"Name a fruit, please.",bob\n') == want


def test_rows_keep_their_controls_and_table_cells_are_values(tmp_path):
    (tmp_path / "p.csv").write_text('prompt,user,n,weights,chat_template,beta\n'
                                    'hi,007,4,"{""a"": 1}",never,\n')
    [row] = read_prompt_rows([tmp_path / "p.csv"])
    assert (row.source, row.line) == (str(tmp_path / "p.csv"), 2)
    assert row.fields == {"prompt": "hi", "user": "007", "n": 4, "weights": {"a": 1}, "chat_template": "never"}
    chat = [{"role": "user", "content": "Name a prime."}]
    assert prompts(tmp_path, "c.csv", 'prompt\n"' + json.dumps(chat).replace('"', '""') + '"\n') == [chat]


def test_feedback_data_is_a_prompt_file(tmp_path):
    rows = [{"instruction": "Explain rain.", "output": "Water falls."},
            {"prompt": "q", "chosen": "a", "rejected": "b", "user": "u1"}]
    (tmp_path / "f.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_prompt_rows([tmp_path / "f.jsonl"])
    assert [r.prompt for r in got] == ["Explain rain.", "q"] and got[1].fields["user"] == "u1"


def test_bad_rows_are_all_named_by_file_line_and_field(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "ok"}\nnot json\n{"prompt": "  "}\n{"prompt": 3}\n[1]\n')
    with pytest.raises(DataError) as e:
        read_prompt_rows([tmp_path / "p.jsonl"])
    where = [(p.line, p.field) for p in e.value.problems]
    assert where == [(2, None), (3, "prompt"), (4, "prompt"), (5, None)]
    # a lone surrogate (valid JSON, not Unicode) reached the tokenizer, which raised a TypeError traceback
    (tmp_path / "sur.jsonl").write_text('{"prompt": "ok"}\n{"prompt": "hi \\ud800"}\n{"prompt": "ok", "user": "\\udfff"}\n')
    with pytest.raises(DataError) as e:
        read_prompt_rows([tmp_path / "sur.jsonl"])
    assert [(p.line, p.field) for p in e.value.problems] == [(2, "prompt"), (3, "user")]
    assert "lone UTF-16 surrogate U+D800" in e.value.problems[0].message
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match="empty.txt: no prompts"):
        read_prompt_rows([tmp_path / "empty.txt"])
    with pytest.raises(DataError, match="missing.txt: no such file"):
        read_prompt_rows([tmp_path / "missing.txt"])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_prompt_rows([tmp_path / "latin1.txt"])


def test_a_hub_data_set_gives_prompts_to_decode_eval_and_online_training(monkeypatch, tmp_path):
    """`owner/name:split` is a prompt source everywhere a prompt file is (faked `load_dataset`: nothing is
    downloaded); eval's prompts take it as well as a path."""
    datasets = pytest.importorskip("datasets")
    from pathlib import Path

    from pluralign.evaluate.runner import load_prompts
    from pluralign.online.rollout import read_prompts as online_prompts

    rows = datasets.Dataset.from_list([{"question": "Why is the sky blue?"}, {"question": "Name a prime."}])
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, split=None: rows)
    monkeypatch.chdir(tmp_path)
    want = ["Why is the sky blue?", "Name a prime."]
    assert [r.prompt for r in read_prompt_rows(["owner/questions:test"])] == want
    assert [p.prompt for p in online_prompts(["owner/questions:test"])] == want
    assert load_prompts("owner/questions:test", "cfg", Path(tmp_path)) == want
