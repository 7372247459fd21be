"""Rated responses as public multi-objective data sets store them: HelpSteer's plain numeric columns (read as
ratings when the kind is given, a warning when they would be left in meta) and UltraFeedback's rows of
several annotated completions (one rated record per completion, problems named by completion and aspect)."""

from __future__ import annotations

import json
import warnings

import pytest
from data_examples import write_jsonl

from pluralign.cli import main
from pluralign.data import Demonstration, Rated, convert, read_checked, read_records
from pluralign.errors import DataError

HELPSTEER = [
    {"id": 7, "prompt": "What is 2+2?", "response": "4", "helpfulness": 3, "correctness": 4, "verbosity": 0},
    {"id": 8, "prompt": "What is 2+2?", "response": "Two and two make four.", "helpfulness": 4, "correctness": 4,
     "verbosity": 2},
]


def aspects(helpfulness, honesty):
    return {"helpfulness": {"Rating": str(helpfulness), "Rationale": "…"},
            "honesty": {"Rating": str(honesty), "Rationale": "…"}}


def ultrafeedback(*completions, instruction="Name a prime."):
    return {"source": "evol_instruct", "instruction": instruction, "models": ["a", "b"],
            "completions": [{"model": m, "response": r, "overall_score": s, "annotations": a}
                            for m, r, s, a in completions]}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_helpsteer_columns_are_the_ratings_when_the_kind_is_rated(tmp_path, fmt):
    if fmt == "jsonl":
        path = write_jsonl(tmp_path / "hs.jsonl", HELPSTEER)
    else:
        path = tmp_path / "hs.csv"
        names = list(HELPSTEER[0])
        path.write_text(",".join(names) + "\n" + "".join(",".join(str(r[n]) for n in names) + "\n" for r in HELPSTEER))
    records = read_records(path, "rated")
    assert [type(r) for r in records] == [Rated, Rated]
    assert records[1].ratings == {"helpfulness": 4.0, "correctness": 4.0, "verbosity": 2.0}  # the id is no rating
    pairs = convert(records, "pairwise", objective="verbosity")
    assert [(p.chosen, p.margin) for p in pairs] == [("Two and two make four.", 2.0)]


def test_helpsteer_rows_told_by_their_fields_are_demonstrations_with_a_warning(tmp_path, capsys):
    path = write_jsonl(tmp_path / "hs.jsonl", HELPSTEER)
    with pytest.warns(UserWarning, match=r"hs.jsonl: read as demonstrations, with the numeric column\(s\) "
                                         r"helpfulness, correctness, verbosity kept as meta.*--kind rated"):
        checked = read_checked(path)
    assert checked.kind == "demonstration" and isinstance(checked.records[0], Demonstration)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_checked(write_jsonl(tmp_path / "sft.jsonl", [{"id": 1, "prompt": "q", "response": "r"}]))  # ids: no warning
        # numbers inside a `meta` object are no columns --kind rated could read (it then refused every row as
        # missing its ratings): no warning either, e.g. a demonstration converted from UltraFeedback pairs
        read_checked(write_jsonl(tmp_path / "meta.jsonl", [{"prompt": "q", "response": "r", "meta": {"score": 8.0}}]))
    assert main(["data", "validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: ") and "--kind rated" in err and "UserWarning" not in err  # for people


def test_ultrafeedback_completions_are_one_rated_record_each(tmp_path):
    rows = [ultrafeedback(("a", "7", 8.0, aspects(5, 5)), ("b", "9", 2.0, aspects(1, 3))),
            ultrafeedback(("a", "11", 7.5, aspects(4, 5)), ("b", "eleven", 7.0, aspects(4, 4)), instruction="Another.")]
    records = read_records(write_jsonl(tmp_path / "uf.jsonl", rows))
    assert [(r.prompt, r.response, r.ratings) for r in records] == [
        ("Name a prime.", "7", {"helpfulness": 5.0, "honesty": 5.0}),
        ("Name a prime.", "9", {"helpfulness": 1.0, "honesty": 3.0}),
        ("Another.", "11", {"helpfulness": 4.0, "honesty": 5.0}),
        ("Another.", "eleven", {"helpfulness": 4.0, "honesty": 4.0})]
    assert records[0].meta["model"] == "a" and records[0].meta["overall_score"] == 8.0
    assert records[0].meta["source"] == "evol_instruct"
    honest = convert(records, "pairwise", objective="honesty")
    assert [(p.chosen, p.rejected, p.margin) for p in honest] == [("7", "9", 2.0), ("11", "eleven", 1.0)]
    helpful = convert(records, "pairwise", objective="helpfulness")
    assert [(p.chosen, p.rejected) for p in helpful] == [("7", "9")]  # a tie is no preference


def test_ultrafeedback_problems_name_the_completion_and_the_aspect(tmp_path):
    bad = ultrafeedback(("a", "7", 8.0, aspects(5, "N/A")), ("b", "9", 2.0, aspects(1, 3)))
    del bad["completions"][1]["response"]
    path = write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback(("a", "2", 9.0, aspects(5, 5))), bad])
    with pytest.raises(DataError) as caught:
        read_records(path)
    message = str(caught.value)
    assert "uf.jsonl:2: field 'completions[0].annotations.honesty': not a numeric rating: 'N/A'" in message
    assert "uf.jsonl:2: field 'completions[1].response': missing field" in message
    checked = read_checked(path)
    assert len(checked.records) == 1 and len(checked.rejects) == 2 and checked.kind == "rated"
    out = tmp_path / "kept.jsonl"
    assert main(["data", "validate", str(path), "--skip-invalid", "--out", str(out)]) == 0
    assert [json.loads(line)["response"] for line in out.read_text().splitlines()] == ["2"]


def test_ultrafeedback_in_a_table_holds_its_completions_as_json_text(tmp_path):
    import csv

    row = ultrafeedback(("a", "7", 8.0, aspects(5, 5)), ("b", "9", 2.0, aspects(1, 3)))
    path = tmp_path / "uf.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["instruction", "completions"])
        writer.writerow([row["instruction"], json.dumps(row["completions"])])
    records = read_records(path)
    assert [(r.prompt, r.response, r.ratings) for r in records] == [
        ("Name a prime.", "7", {"helpfulness": 5.0, "honesty": 5.0}), ("Name a prime.", "9", {"helpfulness": 1.0, "honesty": 3.0})]
