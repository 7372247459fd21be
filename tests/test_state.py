"""Checkpoint files: atomic directories, weights-only loading, RNG round trips, LoRA-sized weights."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from loop_toys import collate, make_data, make_model, nll_step

from pluralign.errors import PluralignError
from pluralign.train import state
from pluralign.train.loop import LoopConfig, train


def cfg(**kw) -> LoopConfig:
    return LoopConfig(**(dict(learning_rate=1e-2, batch_size=4, progress=False, save_every=1, keep_checkpoints=0) | kw))


def test_rng_states_round_trip():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    saved = state.capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    state.restore_rng(saved)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_a_crash_mid_save_leaves_no_checkpoint_directory(tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=1), run)

    def crash(tmp, **kw):
        (tmp / "weights.safetensors").write_bytes(b"partial")  # half of a checkpoint on disk
        raise OSError("disk full")

    monkeypatch.setattr(state, "write_main_state", crash)
    with pytest.raises(OSError):
        train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=2), run)
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-1", "step-2.tmp"]
    assert state.latest_checkpoint(ckpts).name == "step-1"  # the partial one is invisible
    monkeypatch.undo()
    result = train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=2), run)
    assert result.resumed_from.name == "step-1"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-1", "step-2"]  # the stale .tmp was replaced


def test_checkpoint_files_load_weights_only_and_refuse_pickles(tmp_path):
    run = tmp_path / "run"
    train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=2), run)
    ckpt = state.latest_checkpoint(run / "checkpoints")
    loaded = state.load_checkpoint(ckpt)
    assert loaded.position.global_step == 2 and loaded.position.epoch == 0
    assert loaded.optimizer["state"] and loaded.scheduler["last_epoch"] == 2
    assert set(loaded.weights) == {n for n, _ in make_model().named_parameters()}

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"optimizer": Evil(), "scheduler": {}}, buf)
    (ckpt / "optimizer.pt").write_bytes(buf.getvalue())
    with pytest.raises(PluralignError, match="optimizer.pt"):
        state.load_checkpoint(ckpt)


def test_only_trained_parameters_are_saved_and_checked(tmp_path):
    model = make_model()
    head = [model.lm_head.weight]  # like LoRA: a small trainable subset
    train(model, make_data(8), collate, nll_step, cfg(max_steps=1), tmp_path / "run", params=head)
    ckpt = state.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert set(state.load_checkpoint(ckpt).weights) == {"lm_head.weight"}
    with pytest.raises(PluralignError, match="does not match the model"):
        train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=2), tmp_path / "run")


def test_stateful_objects_are_checkpointed(tmp_path):
    class Counter:
        def __init__(self):
            self.n = torch.zeros(())

        def state_dict(self):
            return {"n": self.n.clone()}

        def load_state_dict(self, d):
            self.n = d["n"].clone()

    counter = Counter()

    def step(model, batch):
        counter.n += 1
        return nll_step(model, batch)

    train(make_model(), make_data(8), collate, step, cfg(max_steps=2), tmp_path / "run", stateful={"c": counter})
    counter.n = torch.zeros(())
    train(make_model(), make_data(8), collate, step, cfg(max_steps=3), tmp_path / "run", stateful={"c": counter})
    assert counter.n.item() == 3  # 2 restored + 1 new step
