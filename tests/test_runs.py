"""Atomic writes and the run directory."""

import errno
import json
import os

import pytest

from pluralign.errors import PluralignError
from pluralign.runs import RunDir, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "f.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert os.listdir(target.parent) == ["f.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(PluralignError, match=r"cannot write .*f\.txt: no space left on device"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_metrics_log_skips_a_torn_last_line(tmp_path):
    run = RunDir(tmp_path / "run")
    run.log_metrics({"step": 1, "loss": 0.5})
    run.log_metrics({"step": 2, "loss": 0.4})
    with open(run.metrics_path, "a") as f:
        f.write('{"step": 3, "lo')  # a crash mid-line
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


def test_written_files_follow_the_umask(tmp_path, monkeypatch):
    # The umask pluralign.runs read at import, set here rather than by reloading the module: a reload makes
    # a second RunDir class, and modules imported afterwards (the reward recipe) hand the loop RunDirs it
    # does not recognise ("expected str, bytes or os.PathLike object, not RunDir").
    import pluralign.runs as runs

    monkeypatch.setattr(runs, "_UMASK", 0o022)
    path = runs.atomic_write_text(tmp_path / "f.txt", "x")
    assert (path.stat().st_mode & 0o777) == 0o644
