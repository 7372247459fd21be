"""Reading and writing records: every kind through every format, kind detection, dict conversion."""

from __future__ import annotations

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_examples import CHAT, REPLY, examples, write_jsonl

from pluralign.data import (
    KINDS,
    Pairwise,
    Ranked,
    Rated,
    detect_kind,
    kind_of,
    read_records,
    record_from_dict,
    record_to_dict,
    to_dataset,
    write_records,
)
from pluralign.errors import DataError, PluralignError

FILE_FORMATS = ["jsonl", "json", "csv", "parquet"]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_every_kind_round_trips_through_every_file_format(tmp_path, kind, fmt):
    records = examples()[kind]
    path = write_records(tmp_path / f"data.{fmt}", records)
    assert read_records(path) == records  # kind detected from the fields
    assert read_records(path, kind=kind) == records


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_round_trips_through_datasets(tmp_path, kind):
    records = examples()[kind]
    dataset = to_dataset(records)
    assert isinstance(dataset, datasets.Dataset) and len(dataset) == len(records)
    assert read_records(dataset) == records
    dataset.save_to_disk(str(tmp_path / "saved"))
    assert read_records(tmp_path / "saved") == records


def test_native_nested_columns_are_read_as_is(tmp_path):
    # Datasets made elsewhere store chats as list<struct> and scores as list<double>, not JSON text.
    rows = [{"prompt": CHAT, "responses": ["a", "b"], "scores": [1.0, 2.5], "user": "u9"}]
    expected = [Ranked(CHAT, ["a", "b"], scores=[1.0, 2.5], user="u9")]
    assert read_records(datasets.Dataset.from_list(rows)) == expected
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "native.parquet")
    assert read_records(tmp_path / "native.parquet") == expected


def test_csv_cells_hold_json_for_structured_values(tmp_path):
    path = write_records(tmp_path / "r.csv", examples()["ranked"][:2])
    lines = path.read_text().splitlines()
    assert lines[0] == "prompt,responses,scores,ranks,user,group,section"
    assert lines[1] == 'Pick one,"[""a b"", ""c"", ""d e f""]","[0.5, 2.0, -1.0]",,u1,,'


def test_extra_fields_go_to_meta_and_stay_there(tmp_path):
    path = write_jsonl(
        tmp_path / "x.jsonl",
        [{"prompt": "p", "response": "r", "label": 1, "source": "web", "meta": {"a": 1}}],
    )
    (record,) = read_records(path)
    assert record.label is True and record.meta == {"a": 1, "source": "web"}
    assert read_records(write_records(tmp_path / "y.jsonl", [record])) == [record]


def test_numeric_ids_are_read_as_names():
    record = record_from_dict({"prompt": "p", "chosen": "a", "rejected": "b", "user": 17, "group": 3})
    assert (record.user, record.group) == ("17", "3")


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"prompt", "chosen", "rejected"}, "pairwise"),
        ({"prompt", "responses", "ranks"}, "ranked"),
        ({"prompt", "response", "label"}, "binary"),
        ({"prompt", "response", "ratings"}, "rated"),
        ({"prompt", "response", "judgment", "polarity"}, "judged"),
        ({"prompt", "completion"}, "demonstration"),
    ],
)
def test_detect_kind_from_fields(fields, kind):
    assert detect_kind(dict.fromkeys(fields, "x")) == kind


def test_detect_kind_fails_clearly():
    with pytest.raises(DataError, match=r"cannot tell the kind.*\['prompt', 'reply'\]"):
        detect_kind({"prompt": "p", "reply": "r"})


def test_file_kind_is_the_majority_so_one_odd_row_cannot_mislead(tmp_path):
    pair = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "response": "r", "label": True}, pair, pair])
    with pytest.raises(DataError) as e:
        read_records(path)
    assert [(p.line, p.field) for p in e.value.problems] == [(1, "chosen"), (1, "rejected")]


def test_dict_round_trip_omits_unset_fields():
    record = examples()["pairwise"][1]
    row = record_to_dict(record)
    assert row == {"prompt": CHAT, "chosen": REPLY, "rejected": "I won't.\nNo.", "user": "u2"}
    assert record_from_dict(row, "pairwise") == record
    assert kind_of(record_from_dict(row)) == "pairwise"


def test_record_from_dict_names_every_bad_field():
    with pytest.raises(DataError) as e:
        record_from_dict({"prompt": "", "chosen": "a", "rejected": "b", "margin": "big"}, "pairwise")
    assert [(p.field, p.message) for p in e.value.problems] == [
        ("prompt", "empty text"),
        ("margin", "expected a number, got str 'big'"),
    ]


def test_writing_several_kinds_to_one_file_is_refused(tmp_path):
    mixed = [examples()["pairwise"][0], examples()["binary"][0]]
    with pytest.raises(PluralignError, match="several kinds"):
        write_records(tmp_path / "x.jsonl", mixed)


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    for fmt in FILE_FORMATS:
        write_records(tmp_path / f"d.{fmt}", examples()["judged"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"d.{fmt}" for fmt in sorted(FILE_FORMATS)]


def test_unknown_output_format_is_refused(tmp_path):
    with pytest.raises(PluralignError, match="unknown format '.txt'"):
        write_records(tmp_path / "x.txt", examples()["binary"])


def test_json_output_is_a_list_of_objects(tmp_path):
    path = write_records(tmp_path / "x.json", [Pairwise("p", "a", "b", margin=2)])
    assert json.loads(path.read_text()) == [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2}]


def test_json_lines_named_json_as_datasets_writes_them_are_read(tmp_path):
    # `Dataset.to_json("x.json")` writes one object per line; it was refused: "x.json:2: malformed JSON: Extra data"
    path = tmp_path / "x.json"
    datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}] * 2).to_json(path)
    assert read_records(path) == [Pairwise("p", "a", "b")] * 2
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n\n{"prompt": "p", "chosen": "a"\n')
    with pytest.raises(DataError) as e:
        read_records(path)
    (problem,) = e.value.problems
    assert problem.line == 3 and "malformed JSON" in problem.message


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_wide_ratings_columns_are_the_ratings_object(tmp_path, fmt):
    # HelpSteer-style tables hold one column per objective; `ratings.<objective>` names them as ratings.
    rows = [{"prompt": "q", "response": "r1", "ratings.helpful": 4, "ratings.brief": 1.5},
            {"prompt": "q", "response": "r2", "ratings.helpful": 2, "ratings.brief": 3}]
    path = tmp_path / f"wide.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, rows)
    elif fmt == "csv":
        path.write_text("prompt,response,ratings.helpful,ratings.brief\nq,r1,4,1.5\nq,r2,2,3\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    assert read_records(path) == [Rated("q", "r1", {"helpful": 4.0, "brief": 1.5}),
                                  Rated("q", "r2", {"helpful": 2.0, "brief": 3.0})]


def test_a_wide_rating_that_is_not_a_number_names_its_column(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("prompt,response,ratings.helpful\nq,r1,4\nq,r2,lots\n")
    with pytest.raises(DataError, match=r"wide.csv:3: field 'ratings.helpful': expected a number"):
        read_records(path)


def test_a_hub_data_set_is_read_by_owner_name_and_split(monkeypatch, tmp_path):
    """`owner/name:split` loads through `datasets.load_dataset` (faked here: nothing is downloaded); a data set
    of several splits must be given one; a hub that cannot be reached is an error naming the source."""
    rows = [{"prompt": "q", "chosen": "good", "rejected": "bad"}]
    splits = datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows),
                                   "test_prefs": datasets.Dataset.from_list(rows)})
    asked = []

    def load_dataset(repo, split=None):
        asked.append((repo, split))
        if repo != "owner/prefs":
            raise ConnectionError("Couldn't reach 'owner/other' on the Hub (offline)")
        return splits[split] if split else splits

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.chdir(tmp_path)
    assert read_records("owner/prefs:train_prefs")[0].chosen == "good"
    with pytest.raises(DataError, match=r"owner/prefs: holds several splits \(train_prefs, test_prefs\); name one, "
                                        r"e\.g\. owner/prefs:train_prefs"):
        read_records("owner/prefs")
    with pytest.raises(DataError, match="owner/other: no such local file, and not loadable from the Hugging Face "
                                        "hub: Couldn't reach 'owner/other'"):
        read_records("owner/other")
    assert asked == [("owner/prefs", "train_prefs"), ("owner/prefs", None), ("owner/other", None)]
