"""`pluralign data validate | convert | stats`, through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_examples import examples, write_jsonl

from pluralign.cli import main
from pluralign.data import KINDS, Rated, read_records, write_records

GOOD = {"prompt": "p", "responses": ["a", "b"], "scores": [1.0, 2.0]}


def _bad_jsonl(tmp_path: Path) -> tuple[Path, list[tuple[int, str | None]]]:
    rows = [
        GOOD,
        '{"prompt": "p", "responses": ["a"',
        {"prompt": "p", "scores": [1.0, 2.0]},
        {**GOOD, "scores": [1.0, float("nan")]},
        GOOD,
    ]
    return write_jsonl(tmp_path / "in.jsonl", rows), [(2, None), (3, "responses"), (4, "scores[1]")]


def _bad_csv(tmp_path: Path) -> tuple[Path, list[tuple[int, str | None]]]:
    good = 'p,"[""a"", ""b""]","[1.0, 2.0]"\n'
    text = (
        "prompt,responses,scores\n"
        + good
        + "p,oops\n"
        + "p,,[1.0]\n"
        + 'p,"[""a"", ""b""]","[1.0, NaN]"\n'
        + good
    )
    path = tmp_path / "in.csv"
    path.write_text(text)
    return path, [(3, None), (4, "responses"), (5, "scores[1]")]


def _bad_parquet(tmp_path: Path) -> tuple[Path, list[tuple[int, str | None]]]:
    good = {"prompt": "p", "responses": '["a", "b"]', "scores": "[1.0, 2.0]"}
    rows = [
        good,
        {**good, "scores": "[1.0, 2"},
        {**good, "responses": None},
        {**good, "scores": "[1.0, Infinity]"},
        good,
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    return tmp_path / "in.parquet", [(2, "scores"), (3, "responses"), (4, "scores[1]")]  # 1-based rows


def _bad_json(tmp_path: Path) -> tuple[Path, list[tuple[int, str | None]]]:
    rows = [GOOD, {"prompt": "p", "scores": [1.0, 2.0]}, {**GOOD, "scores": [1.0, float("nan")]}, {**GOOD, "prompt": " "},
            GOOD]
    path = tmp_path / "in.json"
    path.write_text("[\n" + ",\n".join(map(json.dumps, rows)) + "\n]\n")  # a record per line, from line 2
    return path, [(3, "responses"), (4, "scores[1]"), (5, "prompt")]


BAD_FILES = {"jsonl": _bad_jsonl, "json": _bad_json, "csv": _bad_csv, "parquet": _bad_parquet}


@pytest.mark.parametrize("fmt", list(BAD_FILES))
def test_validate_names_every_problem_with_line_and_field(tmp_path, capsys, fmt):
    path, expected = BAD_FILES[fmt](tmp_path)
    assert main(["data", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "3 problem(s)" in err and "Traceback" not in err
    for line, field in expected:
        assert f"{path}:{line}: " + (f"field '{field}':" if field else "") in err


@pytest.mark.parametrize("fmt", list(BAD_FILES))
def test_validate_skip_invalid_writes_good_rows_and_rejects_with_reasons(tmp_path, capsys, fmt):
    path, expected = BAD_FILES[fmt](tmp_path)
    assert main(["data", "validate", str(path), "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "kept 2 of 5 ranked rows" in out and "3 rejected row(s)" in out
    assert read_records(tmp_path / f"in.valid.{fmt}") == read_records(tmp_path / f"in.valid.{fmt}", "ranked")
    assert len(read_records(tmp_path / f"in.valid.{fmt}")) == 2
    rejects = [json.loads(line) for line in (tmp_path / "in.rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == [line for line, _ in expected]
    for reject, (_, field) in zip(rejects, expected, strict=True):
        assert reject["raw"] and len(reject["reasons"]) == 1
        assert reject["reasons"][0].startswith(f"{field}: " if field else "")


def test_validate_skip_invalid_with_explicit_paths(tmp_path, capsys):
    path, _ = _bad_jsonl(tmp_path)
    out, rejects = tmp_path / "clean.parquet", tmp_path / "why.jsonl"
    assert (
        main(["data", "validate", str(path), "--skip-invalid", "--out", str(out), "--rejects", str(rejects)])
        == 0
    )
    assert len(read_records(out)) == 2 and len(rejects.read_text().splitlines()) == 3


def test_validate_clean_file(tmp_path, capsys):
    path = write_jsonl(tmp_path / "ok.jsonl", [GOOD, GOOD])
    assert main(["data", "validate", str(path), "--kind", "ranked", "--out", str(tmp_path / "ok.csv")]) == 0
    assert "all 2 ranked records are valid" in capsys.readouterr().out
    assert read_records(tmp_path / "ok.csv") == read_records(path)


def test_an_output_that_cannot_be_written_is_refused_before_the_input_is_judged(tmp_path, capsys):
    # validate printed "all 2 ranked records are valid", then refused --out; convert read and converted first
    path = write_jsonl(tmp_path / "ok.jsonl", [GOOD, GOOD])
    blocker = tmp_path / "file"
    blocker.write_text("")
    for argv, message in ((["validate", str(path), "--out", str(tmp_path / "ok.txt")], "unknown format '.txt'"),
                          (["validate", str(path), "--out", str(blocker / "ok.jsonl")], "is a file, not a directory"),
                          (["convert", str(path), str(blocker / "out.jsonl")], "output")):
        assert main(["data", *argv]) == 2
        captured = capsys.readouterr()
        assert message in captured.err and "valid" not in captured.out and "Traceback" not in captured.err


@pytest.mark.parametrize("args", [["data", "validate", "nowhere.jsonl"], ["data", "stats", "nowhere.csv"]])
def test_missing_file_is_a_clean_error(capsys, args):
    assert main(args) == 2
    assert "nowhere" in capsys.readouterr().err


def test_stats_leave_out_a_spread_with_no_values(tmp_path, capsys):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 2)
    assert main(["data", "stats", str(path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("pairwise: "))
    assert line.startswith("pairwise: with_margin 0, ") and "margin ()" not in line


@pytest.mark.parametrize("kind", list(KINDS))
def test_stats_summarizes_every_kind(tmp_path, capsys, kind):
    records = examples()[kind]
    path = tmp_path / f"{kind}.jsonl"
    write_records(path, records)
    assert main(["data", "stats", str(path)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"records: 3 ({kind} 3)")
    assert "prompt chars" in text and "response words" in text and f"\n{kind}: " in text
    assert main(["data", "stats", str(path), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["kinds"] == {kind: 3}
    assert stats["users"] == {"u1": 1} | ({"u2": 1} if kind == "pairwise" else {})
    assert set(stats["lengths"]["prompt"]["chars"]) == {"p50", "p90", "p99"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_convert_round_trips_through_formats(tmp_path, capsys, kind):
    start = write_records(tmp_path / "a.jsonl", examples()[kind])
    chain = [start, tmp_path / "b.parquet", tmp_path / "c.csv", tmp_path / "d.json", tmp_path / "e.jsonl"]
    for src, dst in zip(chain, chain[1:], strict=False):
        assert main(["data", "convert", str(src), str(dst)]) == 0
    assert read_records(chain[-1]) == examples()[kind]
    assert chain[-1].read_text() == start.read_text()


def test_convert_between_kinds(tmp_path, capsys):
    pairs = write_records(tmp_path / "pairs.jsonl", examples()["pairwise"])
    assert main(["data", "convert", str(pairs), str(tmp_path / "bin.csv"), "--to", "binary"]) == 0
    labels = [b.label for b in read_records(tmp_path / "bin.csv")]
    assert labels == [True, False] * 3
    rated = [
        Rated("q", f"r{i}", {"helpful": h, "safe": s})
        for i, (h, s) in enumerate([(4.0, 5.0), (1.0, 2.5), (-0.5, 0.0)])
    ]
    rated_path = write_records(tmp_path / "rated.parquet", rated)
    assert (
        main(
            [
                "data",
                "convert",
                str(rated_path),
                str(tmp_path / "rp.jsonl"),
                "--to",
                "pairwise",
                "--objective",
                "helpful",
            ]
        )
        == 0
    )
    pairs = read_records(tmp_path / "rp.jsonl")
    assert [(p.chosen, p.rejected, p.margin, p.objective) for p in pairs] == [
        ("r0", "r1", 3.0, "helpful"),
        ("r0", "r2", 4.5, "helpful"),
        ("r1", "r2", 1.5, "helpful"),
    ]
    # 0.5 * helpful + 0.5 * safe = 4.5, 1.75, -0.25
    out = tmp_path / "rb.jsonl"
    weighted = ["--to", "binary", "--weights", "helpful=0.5,safe=0.5", "--threshold", "1.75"]
    assert main(["data", "convert", str(rated_path), str(out), *weighted]) == 0
    assert [b.label for b in read_records(out)] == [True, True, False]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--to", "binary"], "needs a threshold"),
        (["--to", "binary", "--threshold", "1", "--weights", "helpful"], "--weights"),
    ],
)
def test_convert_errors_are_clean(tmp_path, capsys, extra, message):
    rated = write_records(tmp_path / "rated.jsonl", examples()["rated"])
    assert main(["data", "convert", str(rated), str(tmp_path / "out.jsonl"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_real_command_exits_2_without_traceback(tmp_path):
    path, expected = _bad_jsonl(tmp_path)
    command = Path(sys.executable).with_name("pluralign")
    done = subprocess.run(
        [str(command), "data", "validate", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    assert f"{path}:3: field 'responses': missing field" in done.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    """`pluralign data stats x | head -1`: when the reader closes the pipe, no traceback, exit code 141."""
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(5)])
    proc = subprocess.Popen([sys.executable, "-m", "pluralign.cli", "data", "stats", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # gone before the first line is written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"Traceback" not in err and b"Exception ignored" not in err, err


def test_stats_measures_how_much_the_judges_disagree(tmp_path, capsys):
    """Hand-counted: pair (a, b) judged 5 times, 2 against its majority, its groups' majorities differ; pair
    (c, d) judged twice alike; (e, f) once, and (a, b) under another objective is another pair."""
    from pluralign.data import Pairwise
    from pluralign.data.stats import disagreement

    def vote(prompt, chosen, rejected, user, group, objective=None):
        return Pairwise(prompt, chosen, rejected, user=user, group=group, objective=objective)

    pairs = [vote("q", "a", "b", "u1", "g1"), vote("q", "a", "b", "u2", "g1"), vote("q", "b", "a", "u3", "g2"),
             vote("q", "b", "a", "u4", "g2"), vote("q", "a", "b", "u5", "g2"), vote("q2", "c", "d", "u1", "g1"),
             vote("q2", "c", "d", "u3", "g2"), vote("q3", "e", "f", "u1", "g1"), vote("q", "b", "a", "u1", "g1", "brevity")]
    assert disagreement(pairs) == {"judged_more_than_once": 2, "split_verdicts": 0.5,
                                   "verdicts_against_majority": pytest.approx(2 / 7),
                                   "judged_by_several_groups": 2, "a_group_split_evenly": 0,
                                   "group_majorities_differ": 0.5}
    assert disagreement(pairs[-2:]) == {}
    # a group split evenly has no majority: the pair says nothing of how the groups differ (it counted as
    # "the majorities agree")
    tie = [vote("t", "a", "b", "u1", "g1"), vote("t", "a", "b", "u2", "g2"), vote("t", "b", "a", "u3", "g2")]
    assert disagreement(tie)["a_group_split_evenly"] == 1 and "group_majorities_differ" not in disagreement(tie)
    assert disagreement(pairs + tie)["group_majorities_differ"] == 0.5
    path = write_records(tmp_path / "votes.jsonl", pairs)
    assert main(["data", "stats", str(path)]) == 0
    assert "split_verdicts 0.5" in capsys.readouterr().out


def test_stats_measures_how_far_raters_of_one_response_disagree():
    from pluralign.data.stats import rater_spread

    rated = [Rated("q", "r", {"a": 1.0, "b": 0.0}, user="u1"), Rated("q", "r", {"a": 3.0, "b": 0.0}, user="u2"),
             Rated("q", "other", {"a": 9.0, "b": 9.0}, user="u1")]
    assert rater_spread(rated, ["a", "b"]) == {"rated_more_than_once": 1, "rater_spread": {"a": 1.0, "b": 0.0}}
    assert rater_spread(rated[1:], ["a", "b"]) == {}


def test_python_dash_m_pluralign_is_the_command():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pluralign", "data", "validate", "/no/such.jsonl"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "/no/such.jsonl" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_ends_a_command_with_one_line_and_exit_143(tmp_path):
    # by default SIGTERM (a scheduler's stop, `kill`) ended the process on the spot: no message, no unwinding
    import os
    import signal
    import time

    fifo = tmp_path / "feedback.jsonl"
    os.mkfifo(fifo)  # reading it blocks until a writer comes: a command caught mid-work
    proc = subprocess.Popen([sys.executable, "-m", "pluralign.cli", "data", "stats", str(fifo)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # past the imports, into the read
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip() == "terminated", (proc.returncode, err)


def test_rejects_without_skip_invalid_is_refused_not_ignored(tmp_path, capsys):
    # was accepted and ignored: the bad rows stopped the command and no rejects file was written
    path, _ = _bad_jsonl(tmp_path)
    assert main(["data", "validate", str(path), "--rejects", str(tmp_path / "why.jsonl")]) == 2
    assert "add --skip-invalid" in capsys.readouterr().err and not (tmp_path / "why.jsonl").exists()
