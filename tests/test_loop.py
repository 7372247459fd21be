"""The training loop: accumulation equivalence, exact resume, NaN handling, config recording, eval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from loop_toys import collate, make_data, make_model, nll_step, noisy_step, weights
from torch.optim.optimizer import register_optimizer_step_pre_hook

from pluralign.config import load
from pluralign.errors import ConfigError
from pluralign.runs import RunDir
from pluralign.train import state
from pluralign.train.loop import LoopConfig, TrainingDiverged, train


def cfg(**kw) -> LoopConfig:
    base = dict(learning_rate=1e-2, batch_size=4, grad_accum=1, num_epochs=1, log_every=1, progress=False,
                warmup_ratio=0.25, max_grad_norm=0.0)
    return LoopConfig(**(base | kw))




@pytest.fixture
def grads():
    seen: list[list[torch.Tensor]] = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append([p.grad.clone() for g in opt.param_groups for p in g["params"]]))
    yield seen
    handle.remove()


def test_accumulation_equals_a_larger_batch(tmp_path, grads):
    data = make_data(32)
    runs = {}
    for name, (bs, acc) in {"8x1": (8, 1), "2x4": (2, 4), "4x2": (4, 2)}.items():
        grads.clear()
        model = make_model()
        train(model, data, collate, nll_step, cfg(batch_size=bs, grad_accum=acc, max_steps=3), tmp_path / name)
        runs[name] = ([r["loss"] for r in RunDir(tmp_path / name).read_metrics()], [list(g) for g in grads], weights(model))
    ref_loss, ref_grads, ref_w = runs["8x1"]
    assert len(ref_grads) == 3
    for name in ("2x4", "4x2"):
        loss, g, w = runs[name]
        assert loss == pytest.approx(ref_loss, abs=1e-5)
        for step_a, step_b in zip(ref_grads, g, strict=True):
            for a, b in zip(step_a, step_b, strict=True):
                torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        for k in ref_w:
            torch.testing.assert_close(w[k], ref_w[k], atol=1e-5, rtol=0)
    # The gradients are of the mean loss: a different batch gives a different gradient (the test can fail).
    assert not torch.allclose(ref_grads[0][0], ref_grads[1][0])


class Kill(Exception):
    pass


def killed_at(step_fn, micro_calls: int):
    """`step_fn` that dies on its `micro_calls`-th call, like a process killed mid-step."""
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        if calls["n"] == micro_calls:
            raise Kill
        return step_fn(model, batch)

    return step


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path):
    data = make_data(24)
    config = cfg(batch_size=2, grad_accum=2, num_epochs=2, save_every=2, keep_checkpoints=0)  # 12 steps, linear decay
    straight = make_model()
    train(straight, data, collate, noisy_step, config, tmp_path / "straight")

    model = make_model()
    with pytest.raises(Kill):  # dies in the second micro-batch of step 8: checkpoint step-6 is the last
        train(model, data, collate, killed_at(noisy_step, 7 * 2 + 2), config, tmp_path / "killed")
    assert state.latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step-6"
    fresh = make_model()  # a new process starts from the original weights
    result = train(fresh, data, collate, noisy_step, config, tmp_path / "killed")
    assert result.resumed_from.name == "step-6" and result.global_step == 12 and result.epoch == 1
    for k, v in weights(straight).items():
        assert torch.equal(weights(fresh)[k], v), k
    assert not torch.equal(weights(straight)["lm_head.weight"], weights(make_model())["lm_head.weight"])
    # Logged losses of the resumed steps equal the uninterrupted ones.
    a = {r["step"]: r["loss"] for r in RunDir(tmp_path / "straight").read_metrics()}
    b = {r["step"]: r["loss"] for r in RunDir(tmp_path / "killed").read_metrics()}
    assert all(b[s] == a[s] for s in range(7, 13))


def test_resumed_run_writes_the_metrics_rows_of_an_uninterrupted_one(tmp_path):
    """Rows a killed run logged after its last checkpoint are not duplicated, a log window open at the
    checkpoint averages the same steps, and re-running a finished run adds no rows (no second final eval)."""
    data, evals = make_data(24), make_data(5, seed=1)
    config = cfg(batch_size=2, log_every=2, save_every=3, eval_every=4, keep_checkpoints=0)  # 12 steps
    train(make_model(), data, collate, noisy_step, config, tmp_path / "straight", eval_dataset=evals, eval_step=nll_step)
    with pytest.raises(Kill):  # dies in step 11: step-9 is the last checkpoint, rows of steps 10 were logged
        train(make_model(), data, collate, killed_at(noisy_step, 11), config, tmp_path / "killed",
              eval_dataset=evals, eval_step=nll_step)
    assert [r["step"] for r in RunDir(tmp_path / "killed").read_metrics()][-1] == 10
    for _ in range(2):  # resume, then the same command again once the run is finished
        result = train(make_model(), data, collate, noisy_step, config, tmp_path / "killed", eval_dataset=evals,
                       eval_step=nll_step)
        assert result.global_step == 12

    def rows(name):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in RunDir(tmp_path / name).read_metrics()]

    assert [r["step"] for r in rows("straight")] == [2, 4, 4, 6, 8, 8, 10, 12, 12]
    assert rows("killed") == rows("straight")


def test_a_run_killed_before_its_first_checkpoint_starts_its_metrics_anew(tmp_path):
    data, config = make_data(24), cfg(batch_size=2, save_every=5, max_steps=6)
    train(make_model(), data, collate, noisy_step, config, tmp_path / "straight")
    with pytest.raises(Kill):  # dies in step 4: rows 1-3 logged, no checkpoint yet
        train(make_model(), data, collate, killed_at(noisy_step, 4), config, tmp_path / "killed")
    assert [r["step"] for r in RunDir(tmp_path / "killed").read_metrics()] == [1, 2, 3]
    assert train(make_model(), data, collate, noisy_step, config, tmp_path / "killed").resumed_from is None

    def rows(name):
        return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in RunDir(tmp_path / name).read_metrics()]

    assert rows("killed") == rows("straight")


def test_max_steps_then_resume_to_the_end(tmp_path):
    data = make_data(16)
    # save_every beyond the run: no checkpoint along the way, a resumable one after the last step.
    const = dict(scheduler="constant", warmup_ratio=0.0, save_every=100)
    straight = make_model()
    train(straight, data, collate, noisy_step, cfg(**const, max_steps=6), tmp_path / "a")
    first = make_model()
    train(first, data, collate, noisy_step, cfg(**const, max_steps=3), tmp_path / "b")
    assert [p.name for p in state.list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step-3"]
    second = make_model()
    result = train(second, data, collate, noisy_step, cfg(**const, max_steps=6), tmp_path / "b")
    assert result.resumed_from.name == "step-3" and result.epoch == 1  # 4 steps per epoch: crossed an epoch
    for k, v in weights(straight).items():
        assert torch.equal(weights(second)[k], v), k


def test_step_limit_caps_the_epochs_steps_and_the_schedule_spans_it(tmp_path):
    """16 examples at batch 4: 3 epochs ask for 12 steps; step_limit 6 runs 6, into the second epoch, and is
    the same run as max_steps=6 (the schedule decays over the 6); a limit above 12 changes nothing."""
    data = make_data(16)
    capped, fixed, loose = make_model(), make_model(), make_model()
    result = train(capped, data, collate, noisy_step, cfg(num_epochs=3, step_limit=6), tmp_path / "a")
    assert (result.global_step, result.epoch) == (6, 1)
    assert RunDir(tmp_path / "a").read_metrics()[-1]["lr"] == pytest.approx(1e-2 * (1 - 3 / 4))  # warmup 2, then linear over 4
    train(fixed, data, collate, noisy_step, cfg(num_epochs=3, max_steps=6), tmp_path / "b")
    for k, v in weights(fixed).items():
        assert torch.equal(weights(capped)[k], v), k
    assert train(loose, data, collate, noisy_step, cfg(num_epochs=3, step_limit=50), tmp_path / "c").global_step == 12
    with pytest.raises(ConfigError, match="step_limit"):
        train(make_model(), data, collate, noisy_step, cfg(step_limit=-1), tmp_path / "d")


def test_no_checkpoint_when_none_was_asked_for(tmp_path):
    """save_every=0: the optimizer state (twice the weights) is never written; the run logs and returns."""
    result = train(make_model(), make_data(16), collate, noisy_step, cfg(max_steps=3), tmp_path / "run")
    assert result.global_step == 3 and result.checkpoint is None
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


WORKER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from loop_toys import collate, make_data, make_model, noisy_step
    from pluralign.train.loop import LoopConfig, train

    def slow_step(model, batch):
        time.sleep(0.15)
        return noisy_step(model, batch)

    config = LoopConfig(learning_rate=1e-2, batch_size=2, grad_accum=2, num_epochs=2, log_every=1, progress=False,
                        warmup_ratio=0.25, max_grad_norm=0.0, save_every=1, keep_checkpoints=0)
    train(make_model(), make_data(24), collate, slow_step if sys.argv[2] == "slow" else noisy_step, config, sys.argv[1])
""")


def test_resume_after_sigkill_of_a_real_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed"), "slow"], env=env)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts / "step-4").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    last = state.latest_checkpoint(ckpts)
    assert last is not None and 4 <= int(last.name.split("-")[1]) < 12, last

    straight = make_model()
    config = cfg(batch_size=2, grad_accum=2, num_epochs=2, save_every=1, keep_checkpoints=0)
    train(straight, make_data(24), collate, noisy_step, config, tmp_path / "straight")
    resumed = make_model()
    result = train(resumed, make_data(24), collate, noisy_step, config, tmp_path / "killed")
    assert result.resumed_from == last and result.global_step == 12
    for k, v in weights(straight).items():
        assert torch.equal(weights(resumed)[k], v), k


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = make_data(32)
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        losses, metrics = nll_step(model, batch)
        if calls["n"] == 5:  # step 5 (batch 4, accum 1)
            losses = losses * float("nan")
        return losses, metrics

    model = make_model()
    snapshots = []
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at step 5 .*step-4"):
        train(model, data, collate, lambda m, b: (snapshots.append(weights(m)), step(m, b))[1],
              cfg(save_every=2), tmp_path / "run")
    ckpts = state.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in ckpts] == ["step-2", "step-4"]
    # The diverged update was not applied: the weights are those step 5 started from.
    for k, v in snapshots[-1].items():
        assert torch.equal(weights(model)[k], v)
    saved = state.load_checkpoint(ckpts[-1])
    for k, v in saved.weights.items():
        assert torch.equal(v, snapshots[-1][k])


def test_nan_gradient_is_caught_too(tmp_path):
    def step(model, batch):
        losses, metrics = nll_step(model, batch)
        # a finite loss whose gradient is NaN: sqrt'(0) * 0 ... = inf * 0
        return losses + 0.0 * torch.sqrt(losses * 0.0), metrics

    with pytest.raises(TrainingDiverged, match="non-finite gradient norm at step 1"):
        train(make_model(), make_data(8), collate, step, cfg(), tmp_path / "run")


def test_config_is_printed_and_saved(tmp_path, capsys):
    config = cfg(max_steps=1, learning_rate=3e-4, progress=True)
    train(make_model(), make_data(8), collate, nll_step, config, tmp_path / "run")
    err = capsys.readouterr().err
    assert "learning_rate: 0.0003" in err and "grad_accum: 1" in err
    assert load(LoopConfig, tmp_path / "run" / "config.yaml") == config


def test_quiet_run_saves_the_config_without_printing_it(tmp_path, capsys):
    config = cfg(max_steps=1, progress=False)
    train(make_model(), make_data(8), collate, nll_step, config, tmp_path / "run")
    assert "learning_rate" not in capsys.readouterr().err
    assert load(LoopConfig, tmp_path / "run" / "config.yaml") == config


def test_checkpoints_are_pruned_and_eval_is_logged(tmp_path):
    result = train(make_model(), make_data(16), collate, nll_step,
                   cfg(num_epochs=2, save_every=1, keep_checkpoints=2, eval_every=3), tmp_path / "run",
                   eval_dataset=make_data(5, seed=1))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step-7", "step-8"]
    rows = RunDir(tmp_path / "run").read_metrics()
    evals = [r for r in rows if "eval/loss" in r]
    assert [r["step"] for r in evals] == [3, 6, 8]  # every 3 steps and at the end
    assert result.eval_metrics["loss"] == pytest.approx(evals[-1]["eval/loss"])
    assert {"loss", "ppl", "lr", "grad_norm", "step"} <= set(rows[0])


def test_eval_mean_covers_every_example_once(tmp_path):
    from accelerate import Accelerator

    from pluralign.train.loop import evaluate

    model, data = make_model(), make_data(7, seed=3)
    direct = nll_step(model, collate(data))[0].mean().item()
    got = evaluate(lambda b: nll_step(model, b), data, collate, batch_size=3, accelerator=Accelerator())
    assert got["loss"] == pytest.approx(direct, abs=1e-6)


def test_resume_with_a_different_batch_is_refused(tmp_path):
    data = make_data(16)
    train(make_model(), data, collate, nll_step, cfg(max_steps=2, save_every=2), tmp_path / "run")
    with pytest.raises(ConfigError, match="global_batch"):
        train(make_model(), data, collate, nll_step, cfg(max_steps=4, batch_size=8), tmp_path / "run")


def test_bad_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="grad_accum"):
        train(make_model(), make_data(8), collate, nll_step, cfg(grad_accum=0))
    with pytest.raises(Exception, match="fewer than one effective batch"):
        train(make_model(), make_data(3), collate, nll_step, cfg())
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16"):
            train(make_model(), make_data(8), collate, nll_step, cfg(mixed_precision="fp16"))


def test_a_launchers_16_bit_precision_the_loop_overrides_is_said(tmp_path, monkeypatch):
    # examples/accelerate/fsdp2.yaml says mixed_precision: bf16, and accelerate launch passes it on; the loop
    # hands accelerate its own loop.mixed_precision (default no), which wins: the run trained in fp32 silently.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.warns(UserWarning, match="asked for mixed_precision=bf16.*loop.mixed_precision=no"):
        train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=1), None)


def test_metrics_file_is_json_lines(tmp_path):
    train(make_model(), make_data(8), collate, nll_step, cfg(log_every=2, num_epochs=2), tmp_path / "run")
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [2, 4]


def test_bf16_autocast_runs_on_cpu_and_is_close_to_fp32(tmp_path):
    data = make_data(8)
    full = train(make_model(), data, collate, nll_step, cfg(max_steps=1), None)
    half = train(make_model(), data, collate, nll_step, cfg(max_steps=1, mixed_precision="bf16"), None)
    assert half.metrics["loss"] != full.metrics["loss"]  # autocast really ran in bf16
    assert half.metrics["loss"] == pytest.approx(full.metrics["loss"], abs=2e-2)


def test_training_gives_the_caller_back_its_random_state(tmp_path):
    # the loop seeds Python's, NumPy's and torch's global generators: every draw after a run was the same
    import random

    import numpy as np

    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    expected = random.random(), np.random.rand(), torch.rand(1).item()
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=1), tmp_path / "run")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_run_without_progress_bars_leaves_transformers_bars_as_they_were(tmp_path):
    # progress=false turned transformers' bars off for the rest of the caller's session
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    try:
        seen = []
        step = lambda model, batch: (seen.append(hf_logging.is_progress_bar_enabled()), nll_step(model, batch))[1]
        train(make_model(), make_data(8), collate, step, cfg(max_steps=1), tmp_path / "run")
        assert seen and not any(seen) and hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()


def test_a_logged_row_gives_the_rate_of_its_step_and_averages_the_training_metrics(tmp_path):
    """Rows written every log_every steps average the loss over the window, but the learning rate is the one
    the row's step used: averaged, the rate at step 6 of a warmup + linear decay read as 2.9x the real one."""
    run = tmp_path / "r"
    train(make_model(), make_data(32), collate, noisy_step, cfg(max_steps=8, log_every=4), run)
    train(make_model(), make_data(32), collate, noisy_step, cfg(max_steps=8, log_every=1), tmp_path / "one")
    each = RunDir(tmp_path / "one").read_metrics()
    rows = RunDir(run).read_metrics()
    assert [r["step"] for r in rows] == [4, 8]
    for row in rows:
        window = [r for r in each if row["step"] - 4 < r["step"] <= row["step"]]
        assert row["lr"] == pytest.approx(window[-1]["lr"])
        assert row["loss"] == pytest.approx(sum(r["loss"] for r in window) / 4)


def test_bf16_weights_that_a_step_of_the_learning_rate_leaves_unchanged_are_warned_about(tmp_path, recwarn):
    """A model saved in bf16 and loaded as saved trained in bf16: DPO's default rate 5e-7 changed under 1% of
    its weights (AdamW's updates rounded away), without a word. A rate its weights can take, or float32, is quiet."""
    before = weights(model := make_model().to(torch.bfloat16))
    with pytest.warns(UserWarning, match=r"of the trained weights are bfloat16 values .* rounded away"):
        train(model, make_data(8), collate, nll_step, cfg(learning_rate=5e-7, max_steps=2))
    unchanged = sum(int((weights(model)[k] == v).sum()) for k, v in before.items()) / sum(v.numel() for v in before.values())
    assert unchanged > 0.9  # what the warning says
    for model, lr in ((make_model().to(torch.bfloat16), 1e-2), (make_model(), 5e-7)):
        recwarn.clear()
        train(model, make_data(8), collate, nll_step, cfg(learning_rate=lr, max_steps=1))
        assert not [w for w in recwarn if "rounded away" in str(w.message)]
