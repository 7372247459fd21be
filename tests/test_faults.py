"""Fault injection for training: a kill at every stage of a checkpoint write, a real full disk, damaged
checkpoint files, NaN/inf weights from the optimizer, two runs on one directory, resumes with changed
settings. Each fault must end with a clear message, leave nothing that resume would load by mistake,
and resume exactly once it is removed.

(Disk full through a patched writer of each kind is in test_state.py; a real SIGKILL at a random
moment is in test_loop.py.)"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import torch
from loop_toys import collate, make_data, make_model, nll_step, noisy_step, weights

from pluralign.config import load
from pluralign.errors import ConfigError, PluralignError
from pluralign.runs import RunDir
from pluralign.train import state
from pluralign.train.loop import LoopConfig, TrainingDiverged, train


def cfg(**kw) -> LoopConfig:
    base = dict(learning_rate=1e-2, batch_size=4, log_every=1, progress=False, warmup_ratio=0.25,
                max_grad_norm=0.0, save_every=2, keep_checkpoints=0, max_steps=6)
    return LoopConfig(**(base | kw))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Weights of an uninterrupted 6-step run, the reference every resumed run must equal bit for bit."""
    model = make_model()
    train(model, make_data(24), collate, noisy_step, cfg(), tmp_path_factory.mktemp("straight"))
    return weights(model)


def stop_after_step_2(run: Path) -> None:
    """A run of cfg() interrupted during step 3 (same schedule as the reference, step-2 saved)."""
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return noisy_step(model, batch)

    with pytest.raises(KeyboardInterrupt):
        train(make_model(), make_data(24), collate, step, cfg(), run)


def assert_same(model, reference):
    for k, v in reference.items():
        assert torch.equal(weights(model)[k], v), k


# ---------------------------------------------------------------- a kill at each stage of a save

# (function of pluralign.train.state, which call dies, truncate the file it wrote): the second save (at
# step 4) dies right after that call returns, by SIGKILL, so no cleanup code runs. Per save the module
# calls atomic_write_json for rng-rank0.json, state.json, then state.json again with the checksums,
# _torch_save for optimizer.pt then extra.pt, and _fsync for the weights, the directory, its parent.
STAGES = {
    "tmp dir created": ("begin_checkpoint", 2, False),
    "rng written": ("atomic_write_json", 4, False),
    "weights half written": ("save_file", 2, True),
    "optimizer written": ("_torch_save", 3, False),
    "extra written": ("_torch_save", 4, False),
    "state.json without checksums": ("atomic_write_json", 5, False),
    "checksums written, not renamed": ("_fsync", 5, False),
    "renamed, parent not synced": ("_fsync", 6, False),
}


def train_and_die(run: str, attr: str, nth: int, truncate: bool) -> None:
    """In a child process: train, and SIGKILL this process right after the nth call of `state.<attr>`."""
    real, calls = getattr(state, attr), {"n": 0}

    def dying(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == nth:
            if truncate:
                f = Path(args[1])
                f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(state, attr, dying)
    train(make_model(), make_data(24), collate, noisy_step, cfg(), Path(run))


def _run_and_die(run: Path, attr: str, nth: int, truncate: bool) -> int:
    # A fresh interpreter, not os.fork(): a forked child of a process whose torch/OpenMP thread pool has
    # run deadlocks in its first parallel region (seen with OMP_NUM_THREADS unset, as in CI).
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_faults; "
            f"test_faults.train_and_die({str(run)!r}, {attr!r}, {nth}, {truncate})")
    return subprocess.run([sys.executable, "-c", code], timeout=600).returncode


@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_at_each_stage_of_a_save_then_resume_exactly(tmp_path, straight, stage):
    attr, nth, truncate = STAGES[stage]
    run = tmp_path / "run"
    returncode = _run_and_die(run, attr, nth, truncate)
    assert returncode == -signal.SIGKILL, returncode
    last = state.latest_checkpoint(run / "checkpoints")
    renamed = stage.startswith("renamed")
    assert last.name == ("step-4" if renamed else "step-2")
    assert state.verify_checkpoint(last) is None
    resumed = make_model()
    result = train(resumed, make_data(24), collate, noisy_step, cfg(), run)
    assert result.resumed_from == last and result.global_step == 6
    assert_same(resumed, straight)
    assert not list((run / "checkpoints").glob("*.tmp"))  # the crashed save's directory was cleaned up


def test_a_model_killed_between_its_two_renames_is_put_back_not_deleted(tmp_path):
    """Replacing a model renames the old one aside (`.model.*.old/model`), then the new one into place: a kill
    between the two left no model/, and the next run's clean-up deleted the old one with the temporary names."""
    from pluralign.train.state import remove_stale

    run = tmp_path / "run"
    (run / ".model.x9aaaaaa.old" / "model").mkdir(parents=True)
    (run / ".model.x9aaaaaa.old" / "model" / "config.json").write_text("{}")
    remove_stale(run / "checkpoints", run)
    assert (run / "model" / "config.json").read_text() == "{}"
    assert not (run / ".model.x9aaaaaa.old").exists()
    (run / ".model.x9bbbbbb.old" / "model").mkdir(parents=True)  # a model in place: the old one goes
    (run / ".model.x9bbbbbb.old" / "model" / "config.json").write_text("old")
    remove_stale(run / "checkpoints", run)
    assert (run / "model" / "config.json").read_text() == "{}" and not (run / ".model.x9bbbbbb.old").exists()


def test_what_a_killed_run_left_under_temporary_names_is_removed(tmp_path):
    """A run killed while it wrote its model (or any file) leaves `.model.*.tmp` (as large as the model) and
    the like in the run directory; the next run on it removes them, and nothing else."""
    run = tmp_path / "run"
    train(make_model(), make_data(24), collate, noisy_step, cfg(max_steps=2), run)
    (run / ".model.k1l2abc_.tmp").mkdir()
    (run / ".model.k1l2abc_.tmp" / "model.safetensors").write_bytes(b"half")
    (run / ".model.x9aaaaaa.old").mkdir()
    (run / ".config.yaml.a1b2c3d4.tmp").write_text("half")
    (run / ".backup.old").write_text("mine")
    (run / ".notes").write_text("mine")
    train(make_model(), make_data(24), collate, noisy_step, cfg(max_steps=2), run)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".backup.old", ".lock", ".notes"]


def test_a_kill_while_an_old_checkpoint_is_pruned_leaves_nothing_for_good(tmp_path, monkeypatch):
    """Pruning deletes the oldest checkpoint's files one by one; a kill half-way must not leave a `step-N`
    without its state.json, which no later run lists, prunes or removes."""
    real = shutil.rmtree

    def dying(path, *args, **kwargs):  # the first deletion of a checkpoint: its state.json, then the kill
        if (Path(path) / "state.json").exists() and not kwargs.get("ignore_errors"):
            (Path(path) / "state.json").unlink()
            monkeypatch.setattr(state.shutil, "rmtree", real)
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(state.shutil, "rmtree", dying)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # keep 1: the save of step-4 prunes step-2
        train(make_model(), make_data(24), collate, noisy_step, cfg(keep_checkpoints=1), run)
    train(make_model(), make_data(24), collate, noisy_step, cfg(keep_checkpoints=1), run)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-6"]


# ---------------------------------------------------------------- damaged checkpoint files


@pytest.mark.parametrize("damage", ["truncate", "flip a byte", "delete"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, straight, damage, capsys):
    run = tmp_path / "run"
    train(make_model(), make_data(24), collate, noisy_step, cfg(), run)
    f = run / "checkpoints" / "step-6" / "weights.safetensors"
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "flip a byte":
        f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        f.unlink()
    why = state.verify_checkpoint(run / "checkpoints" / "step-6")
    assert why is not None and "weights.safetensors" in why
    resumed = make_model()
    result = train(resumed, make_data(24), collate, noisy_step, cfg(), run)
    assert "step-6 is damaged" in capsys.readouterr().out
    assert result.resumed_from.name == "step-4"  # steps 5 and 6 are trained again
    assert_same(resumed, straight)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-2", "step-4", "step-6", "step-6.damaged"]  # kept for inspection, never loaded
    (run / "checkpoints" / "step-6" / "weights.safetensors").write_bytes(b"")  # damaged again
    assert train(make_model(), make_data(24), collate, noisy_step, cfg(), run).resumed_from.name == "step-4"
    assert (run / "checkpoints" / "step-6.damaged-1").is_dir()


def test_a_damaged_checkpoint_is_not_loaded_directly_either(tmp_path):
    run = tmp_path / "run"
    train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=2), run)
    f = run / "checkpoints" / "step-2" / "weights.safetensors"
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(PluralignError, match="weights.safetensors"):
        state.load_checkpoint(run / "checkpoints" / "step-2")


# ---------------------------------------------------------------- NaN/inf from the optimizer


def test_nonfinite_weights_after_a_step_stop_the_run_before_any_save(tmp_path):
    # adam_eps=0: token ids 0-3 never occur, so their embedding rows get zero gradients and AdamW
    # divides 0 by 0. The loss and gradient norm are finite; only the weights after the step are not.
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"step 1 .*non-finite .*embed_tokens.*no checkpoint was written yet"):
        train(make_model(), make_data(24), collate, noisy_step, cfg(adam_eps=0.0, save_every=1), run)
    assert state.list_checkpoints(run / "checkpoints") == []


def test_divergence_after_resume_names_a_true_last_good_checkpoint_and_resume_is_exact(tmp_path, straight):
    run = tmp_path / "run"
    stop_after_step_2(run)
    with pytest.raises(TrainingDiverged, match=r"step 3 .*not saved and the last good checkpoint is .*step-2"):
        train(make_model(), make_data(24), collate, noisy_step, cfg(adam_eps=0.0, save_every=1), run)
    ckpts = state.list_checkpoints(run / "checkpoints")
    assert [p.name for p in ckpts] == ["step-2"]
    good = state.load_checkpoint(ckpts[-1])
    assert all(torch.isfinite(v).all() for v in good.weights.values())
    resumed = make_model()  # the fault removed (adam_eps back to its value): the run ends as if never hurt
    train(resumed, make_data(24), collate, noisy_step, cfg(), run)
    assert_same(resumed, straight)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e39, 0.0, -1e-3])
def test_absurd_learning_rates_are_config_errors(value):
    with pytest.raises(ConfigError, match="learning_rate"):
        LoopConfig(learning_rate=value)


def test_config_values_are_checked_when_loaded(tmp_path):
    for override in ("learning_rate=.nan", "learning_rate=1e39", "adam_eps=-1", "adam_beta2=1.0", "warmup_ratio=2",
                     "batch_size=0", "grad_accum=0", "max_steps=-1", "save_every=-1", "eval_every=-2",
                     "keep_checkpoints=-1", "log_every=-1", "seed=-1", "seed=4294967296"):
        with pytest.raises(ConfigError, match=override.split("=")[0]):
            load(LoopConfig, None, [override])


# ---------------------------------------------------------------- changed settings on resume


def test_resume_applies_a_changed_learning_rate_and_records_it(tmp_path, capsys):
    run = tmp_path / "run"
    const = dict(scheduler="constant", warmup_ratio=0.0)
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=2, **const), run)
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=4, learning_rate=1e-3, **const), run)
    assert "learning_rate 0.01 -> 0.001" in capsys.readouterr().out
    lrs = {r["step"]: r["lr"] for r in RunDir(run).read_metrics()}
    assert lrs == {1: 1e-2, 2: 1e-2, 3: 1e-3, 4: 1e-3}
    assert load(LoopConfig, run / "config.yaml").learning_rate == 1e-3
    assert load(LoopConfig, run / "config.until-step-2.yaml").learning_rate == 1e-2
    saved = state.load_checkpoint(run / "checkpoints" / "step-4")
    assert {g["initial_lr"] for g in saved.optimizer["param_groups"]} == {1e-3}


def test_resume_with_more_steps_keeps_the_config_that_ran_before(tmp_path):
    # max_steps sets a decaying rate's schedule: the first steps ran under another config than config.yaml's.
    run = tmp_path / "run"
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=2, scheduler="linear"), run)
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=4, scheduler="linear"), run)
    assert load(LoopConfig, run / "config.yaml").max_steps == 4
    assert load(LoopConfig, run / "config.until-step-2.yaml").max_steps == 2
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=4, scheduler="linear"), run)
    assert sorted(p.name for p in run.glob("config*.yaml")) == ["config.until-step-2.yaml", "config.yaml"]


def test_resume_from_a_checkpoint_past_the_runs_steps_is_refused(tmp_path):
    """A rerun with max_steps=3 on a run that reached step 6 'resumed' it ("step 6 of 3"), handed back the
    6-step model and recorded max_steps=3 in config.yaml."""
    run = tmp_path / "run"
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=6, save_every=2), run)
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"it is at step 6, past the 3 steps this run trains"):
        train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=3, save_every=2), run)
    assert (run / "config.yaml").read_text() == before and not list(run.glob("config.until-*"))
    assert train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=6, save_every=2), run).global_step == 6


def test_resume_with_more_steps_takes_its_first_rate_from_the_new_schedule(tmp_path):
    # Linear decay over 2 steps ends at rate 0; over 4 steps, step 3's rate is half the peak (as in a run of 4).
    run, straight = tmp_path / "run", tmp_path / "straight"
    linear = dict(scheduler="linear", warmup_ratio=0.0)
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=2, **linear), run)
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=4, **linear), run)
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=4, **linear), straight)
    lrs = {r["step"]: r["lr"] for r in RunDir(run).read_metrics()}
    assert lrs[3] == {r["step"]: r["lr"] for r in RunDir(straight).read_metrics()}[3] == 5e-3  # was 0.0: a lost step


def test_resume_with_the_same_optimizer_settings_reports_no_change(tmp_path, capsys):
    run = tmp_path / "run"
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=2), run)
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=4), run)
    assert "changed settings" not in capsys.readouterr().out


def test_a_refused_resume_leaves_config_yaml_as_it_was(tmp_path):
    run = tmp_path / "run"
    train(make_model(), make_data(16), collate, nll_step, cfg(max_steps=2), run)
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="global_batch"):
        train(make_model(), make_data(16), collate, nll_step, cfg(max_steps=4, batch_size=8), run)
    assert (run / "config.yaml").read_text() == before


def test_resume_is_refused_when_the_run_itself_changed(tmp_path):
    # rerun into the same output_dir with another loss: it "resumed" the old loss's final checkpoint, saved
    # that model again, and config.yaml claimed the new loss
    from dataclasses import dataclass, field

    @dataclass
    class Recipe:
        loss: str = "dpo"
        beta: float = 0.1
        loop: LoopConfig = field(default_factory=cfg)

    run = tmp_path / "run"
    train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=2), run, run_config=Recipe(loop=cfg(max_steps=2)))
    before = (run / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"differs .*beta: 0.1 -> 0.5; loss: 'dpo' -> 'ipo'.*new output_dir"):
        train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=4), run,
              run_config=Recipe(loss="ipo", beta=0.5, loop=cfg(max_steps=4)))
    assert (run / "config.yaml").read_text() == before
    # the loop's own settings may change: a longer run at another rate continues
    out = train(make_model(), make_data(24), collate, nll_step, cfg(max_steps=4, learning_rate=1e-3), run,
                run_config=Recipe(loop=cfg(max_steps=4, learning_rate=1e-3)))
    assert out.resumed_from is not None and out.global_step == 4


# ---------------------------------------------------------------- two runs, one directory


@contextlib.contextmanager
def held_elsewhere(run: RunDir):
    """`run` locked by another thread of this process for the duration of the block."""
    taken, done = threading.Event(), threading.Event()

    def hold():
        with run.lock():
            taken.set()
            done.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    assert taken.wait(30)
    try:
        yield
    finally:
        done.set()
        thread.join()


def test_a_second_run_on_a_locked_directory_is_refused_naming_the_holder(tmp_path):
    run = RunDir(tmp_path / "run")
    with held_elsewhere(run):
        with pytest.raises(PluralignError, match=rf"in use by another run \(pid {os.getpid()}"):
            train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=1), run.root)
    train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=1), run.root)  # released
    with run.lock(), run.lock():  # the holding thread may take it again (a recipe around its loop)
        train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=2), run.root)


def test_the_lock_of_a_killed_run_is_not_stale(tmp_path):
    run = RunDir(tmp_path / "run")
    pid = os.fork()
    if pid == 0:
        try:
            with run.lock():
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(3)
    os.waitpid(pid, 0)
    assert (run.root / ".lock").read_text().strip() == str(pid)  # what a killed holder leaves behind
    result = train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=1), run.root)
    assert result.global_step == 1


# ---------------------------------------------------------------- a real full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mnt = Path("/tmp") / f"pluralign-full-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        mnt.rmdir()
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)
    mnt.rmdir()


def test_real_disk_full_then_resume_exactly(small_disk, straight):
    run = small_disk / "run"
    stop_after_step_2(run)
    size = sum(f.stat().st_size for f in (run / "checkpoints" / "step-2").iterdir())
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - size // 3))  # room for a third of a checkpoint
    with pytest.raises(PluralignError, match="no space left on device"):
        train(make_model(), make_data(24), collate, noisy_step, cfg(), run)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-2"]
    (small_disk / "filler").unlink()
    resumed = make_model()
    assert train(resumed, make_data(24), collate, noisy_step, cfg(), run).resumed_from.name == "step-2"
    assert_same(resumed, straight)
