"""Validation: every kind of problem is found, placed (file, line/row, field) and none is dropped."""

from __future__ import annotations

import json
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_examples import examples, write_jsonl

from pluralign.data import read_checked, read_records, to_dataset, write_records
from pluralign.errors import DataError, PluralignError

NAN, INF = float("nan"), float("inf")
PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}
RANKED = {"prompt": "p", "responses": ["a", "b"], "scores": [1.0, 2.0]}
RESPONSE = {"prompt": "p", "response": "r"}


def _with(base: dict, **changes) -> dict:
    row = {**base, **changes}
    return {k: v for k, v in row.items() if v is not ...}  # `...` deletes a field


# (kind, row, field named by the problem, fragment of its message)
ROW_PROBLEMS = [
    ("pairwise", _with(PAIR, rejected=...), "rejected", "missing field"),
    ("pairwise", _with(PAIR, chosen=None), "chosen", "missing field"),
    ("pairwise", _with(PAIR, chosen="  "), "chosen", "empty text"),
    ("pairwise", _with(PAIR, rejected="a"), "rejected", "identical to chosen"),
    ("pairwise", _with(PAIR, prompt=5), "prompt", "expected text or a list of chat messages, got int"),
    ("pairwise", _with(PAIR, margin="big"), "margin", "expected a number"),
    ("pairwise", _with(PAIR, margin=True), "margin", "expected a number"),
    ("pairwise", _with(PAIR, margin=NAN), "margin", "non-finite value nan"),
    ("pairwise", _with(PAIR, margin=-1.0), "margin", "negative margin"),
    ("pairwise", _with(PAIR, user=["u"]), "user", "expected a text or an integer id, got list"),
    ("pairwise", _with(PAIR, objective=""), "objective", "empty text"),
    ("pairwise", _with(PAIR, meta="x"), "meta", "expected an object"),
    ("pairwise", _with(PAIR, prompt=[]), "prompt", "empty list of chat messages"),
    ("pairwise", _with(PAIR, prompt=["hi"]), "prompt[0]", "must be an object with 'role' and 'content'"),
    ("pairwise", _with(PAIR, prompt=[{"content": "hi"}]), "prompt[0].role", "expected one of system, user, assistant"),
    (
        "pairwise",
        _with(PAIR, chosen=[{"role": "assistant", "content": 3}]),
        "chosen[0].content",
        "expected a string, got int",
    ),
    (
        "pairwise",
        _with(PAIR, chosen=[{"role": "assistant", "content": " "}]),
        "chosen",
        "empty text (every message is blank)",
    ),
    ("ranked", _with(RANKED, responses=["a"], scores=[1.0]), "responses", "at least 2 responses, got 1"),
    ("ranked", _with(RANKED, responses="a"), "responses", "expected a list, got str"),
    ("ranked", _with(RANKED, responses=["a", ""]), "responses[1]", "empty text"),
    ("ranked", _with(RANKED, scores=[1.0, INF]), "scores[1]", "non-finite value inf"),
    ("ranked", _with(RANKED, scores=[1.0, 2.0, 3.0]), "scores", "has 3 values for 2 responses"),
    ("ranked", _with(RANKED, scores=..., ranks=[1]), "ranks", "has 1 values for 2 responses"),
    ("ranked", _with(RANKED, scores=..., ranks=[0, 1]), "ranks[0]", "an integer ≥ 1"),
    ("ranked", _with(RANKED, scores=..., ranks=[1.5, 1]), "ranks[0]", "an integer ≥ 1"),
    ("ranked", _with(RANKED, scores=...), "scores", "needs 'scores' or 'ranks'"),
    ("ranked", _with(RANKED, ranks=[1, 2]), "ranks", "orders responses 0 and 1 unlike the scores"),  # were ignored
    ("ranked", _with(RANKED, scores=[1.0, 1.0], ranks=[1, 2]), "ranks", "unlike the scores"),
    ("binary", _with(RESPONSE, label="yes"), "label", "expected true or false, got 'yes'"),
    ("binary", _with(RESPONSE, label=2), "label", "expected true or false"),
    ("binary", RESPONSE, "label", "missing field"),
    ("rated", _with(RESPONSE, ratings={}), "ratings", "no ratings"),
    ("rated", _with(RESPONSE, ratings=[1.0]), "ratings", "expected an object of objective -> number"),
    ("rated", _with(RESPONSE, ratings={"a": 1.0, "b": NAN}), "ratings.b", "non-finite value nan"),
    ("rated", _with(RESPONSE, ratings={"a": "high"}), "ratings.a", "expected a number"),
    (
        "judged",
        _with(RESPONSE, judgment="ok", polarity="neutral"),
        "polarity",
        "expected 'positive' or 'negative'",
    ),
    ("judged", _with(RESPONSE, judgment=" ", polarity="positive"), "judgment", "empty text"),
    ("judged", _with(RESPONSE, polarity="positive"), "judgment", "missing field"),
]


@pytest.mark.parametrize(("kind", "row", "field", "fragment"), ROW_PROBLEMS)
def test_each_row_problem_is_named_with_line_and_field(tmp_path, kind, row, field, fragment):
    path = write_jsonl(tmp_path / "in.jsonl", [row])
    checked = read_checked(path, kind)
    assert checked.records == []
    (problem,) = checked.problems
    assert (problem.source, problem.line, problem.field) == (str(path), 1, field)
    assert fragment in problem.message


def test_malformed_and_non_object_lines(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [PAIR, '{"prompt": "p", "chosen"', "[1, 2]", "", PAIR])
    checked = read_checked(path)
    assert len(checked.records) == 2
    assert [(p.line, p.field) for p in checked.problems] == [(2, None), (3, None)]
    assert "malformed JSON" in checked.problems[0].message
    assert "expected an object with fields, got list" in checked.problems[1].message


def test_all_problems_of_a_row_are_reported_together(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [_with(PAIR, prompt="", margin=NAN, rejected=...)])
    with pytest.raises(DataError) as e:
        read_records(path, kind="pairwise")
    assert [p.field for p in e.value.problems] == ["prompt", "rejected", "margin"]


def test_rated_rows_must_rate_the_same_objectives(tmp_path):
    rows = [
        {
            "prompt": "p",
            "response": "",
            "ratings": {"x": 1.0},
        },  # bad row: does not set the expected objectives
        _with(RESPONSE, ratings={"a": 1.0, "b": 2.0}),
        _with(RESPONSE, ratings={"a": 1.0}),
        _with(RESPONSE, ratings={"b": 0.0, "a": 3.0}),
        _with(RESPONSE, ratings={"a": 1.0, "b": 2.0, "c": 3.0}),
    ]
    checked = read_checked(write_jsonl(tmp_path / "in.jsonl", rows))
    assert len(checked.records) == 2
    assert [(p.line, p.field) for p in checked.problems] == [(1, "response"), (3, "ratings"), (5, "ratings")]
    assert "rates ['a']; expected the objectives of line/row 2: ['a', 'b']" in checked.problems[1].message


def test_csv_problems_carry_csv_line_numbers(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(
        "prompt,chosen,rejected,margin\n"
        '"two\nlines",a,b,1\n'  # lines 2-3: a quoted cell spanning two lines
        "p,a,b,nan\n"  # line 4
        "p,a\n"  # line 5: too few cells
        "p,a,b,lots\n"  # line 6
        "\n"
        "p,,b,\n"  # line 8: empty required text
        "p,a,b,\n"  # line 9: fine, empty margin is absent
    )
    checked = read_checked(path)
    assert [r.margin for r in checked.records] == [1.0, None]
    assert [(p.line, p.field) for p in checked.problems] == [
        (4, "margin"),
        (5, None),
        (6, "margin"),
        (8, "chosen"),
    ]
    assert "expected 4 cells, found 2" in checked.problems[1].message
    assert [r.raw for r in checked.rejects] == ["p,a,b,nan", "p,a", "p,a,b,lots", "p,,b,"]


def test_bad_json_cells_in_tables(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text(
        'prompt,responses,scores,meta\np,"[""a"", ""b""]","[1, 2",\np,"[""a"", ""b""]","[1, 2]","{bad"\n'
    )
    checked = read_checked(path)
    assert [(p.line, p.field, p.message) for p in checked.problems] == [
        (2, "scores", "cell is not valid JSON (Expecting ',' delimiter)"),
        (3, "meta", "cell is not valid JSON (Expecting property name enclosed in double quotes)"),
    ]


def test_parquet_and_dataset_problems_carry_1_based_row_numbers(tmp_path):
    rows = [_with(RANKED, scores=[NAN, 1.0]), RANKED, _with(RANKED, responses=None)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    for source in (tmp_path / "in.parquet", datasets.Dataset.from_list(rows)):
        checked = read_checked(source)
        assert [(p.line, p.field) for p in checked.problems] == [(1, "scores[0]"), (3, "responses")]
    assert str(read_checked(tmp_path / "in.parquet").problems[0]).startswith(f"{tmp_path / 'in.parquet'}:1: ")


def test_json_list_problems_carry_the_line_each_record_starts_on(tmp_path):
    """As in JSONL: the first record is not line 0, and a record spread over lines is found where it starts."""
    path = tmp_path / "in.json"
    path.write_text('[\n{"prompt": "p", "chosen": "c"},\n'  # line 2: no rejected
                    '{"prompt": "p",\n "chosen": "c", "rejected": "r"},\n'  # lines 3-4: fine
                    '\n  {"prompt": "p", "chosen": "c",\n "rejected": "c"}]\n')  # line 6: identical sides
    checked = read_checked(path)
    assert [(p.line, p.field) for p in checked.problems] == [(2, "rejected"), (6, "rejected")]
    assert str(checked.problems[0]) == f"{path}:2: field 'rejected': missing field"
    read_records(path, skip_invalid=True)
    rejects = [json.loads(line) for line in (tmp_path / "in.rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [2, 6]


def test_skip_invalid_keeps_good_rows_and_writes_every_reject(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [PAIR, "{oops", _with(PAIR, margin=INF), PAIR])
    good = read_records(path, skip_invalid=True)
    assert len(good) == 2
    rejects = [json.loads(line) for line in (tmp_path / "in.rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["raw"]) for r in rejects] == [
        (2, "{oops"),
        (3, json.dumps(_with(PAIR, margin=INF))),
    ]
    assert rejects[1]["reasons"] == ["margin: non-finite value inf"]
    assert len(good) + len(rejects) == 4  # nothing dropped silently


def test_skip_invalid_rejects_file_is_always_rewritten(tmp_path):
    path = write_records(tmp_path / "ok.jsonl", examples()["binary"])
    custom = tmp_path / "side" / "rej.jsonl"
    custom.parent.mkdir()
    custom.write_text("stale\n")
    assert len(read_records(path, skip_invalid=True, rejects_path=custom)) == 3
    assert custom.read_text() == ""


def test_skip_invalid_on_an_in_memory_dataset_needs_a_rejects_path(tmp_path):
    dataset = to_dataset(examples()["binary"])
    with pytest.raises(PluralignError, match="rejects_path"):
        read_records(dataset, skip_invalid=True)
    assert len(read_records(dataset, skip_invalid=True, rejects_path=tmp_path / "r.jsonl")) == 3


def test_many_problems_are_all_kept_but_the_message_is_capped(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [_with(PAIR, rejected="a")] * 25)
    with pytest.raises(DataError) as e:
        read_records(path)
    assert len(e.value.problems) == 25
    assert str(e.value).count("identical to chosen") == 20 and "… and 5 more problem(s)" in str(e.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "no such file"),
        ("data.txt", "hello", "unknown format '.txt'"),
        ("empty.jsonl", "\n\n", "no records found"),
        ("empty.json", "\n", "no records found"),
        ("odd.jsonl", '{"prompt": "p", "reply": "r"}\n', "cannot tell the kind"),
        ("list.json", '{"prompt": "p"}', "expected a JSON list of objects, got dict"),
        ("broken.json", '[\n{"prompt": "p",\n]', "malformed JSON"),
        ("latin.csv", b"prompt,chosen,rejected\ncaf\xe9,a,b\n", "not UTF-8 text"),
        ("bad.parquet", b"not parquet at all", "unreadable Parquet"),
        ("dup.csv", "prompt,prompt\np,q\n", "repeated column names"),
    ],
)
def test_whole_file_problems(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as e:
        read_records(path)
    assert e.value.problems[0].source == str(path)


def test_unreadable_path_is_a_clean_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot read file"):
        read_records(tmp_path / "file" / "data.jsonl")  # a file used as a directory


def test_unknown_kind_is_refused(tmp_path):
    path = write_records(tmp_path / "x.jsonl", examples()["binary"])
    with pytest.raises(PluralignError, match="unknown kind 'thumbs'; choose one of pairwise, ranked"):
        read_records(path, kind="thumbs")


def test_dataset_directories(tmp_path, monkeypatch):
    splits = datasets.DatasetDict(
        {"train": to_dataset(examples()["binary"]), "test": to_dataset(examples()["binary"])}
    )
    splits.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="several splits"):
        read_records(tmp_path / "dd")
    assert len(read_records(tmp_path / "dd" / "train")) == 3
    with pytest.raises(PluralignError, match="a DatasetDict holds several splits"):
        read_records(splits)
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        read_records(tmp_path)
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(PluralignError, match=r"pip install 'pluralign\[datasets\]'"):
        read_records(tmp_path / "dd" / "train")


def test_scores_and_ranks_that_agree_are_one_ranked_list(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [_with(RANKED, responses=["a", "b", "c"], scores=[2.0, 3.0, 2.0],
                                                     ranks=[2, 1, 2])])
    (record,) = read_records(path)
    assert (record.scores, record.ranks) == ([2.0, 3.0, 2.0], [2, 1, 2])
