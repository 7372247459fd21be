"""Checkpoint files: atomic directories, weights-only loading, RNG round trips, LoRA-sized weights."""

from __future__ import annotations

import errno
import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from loop_toys import collate, make_data, make_model, nll_step, weights
from safetensors import SafetensorError

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


def test_a_resume_that_sees_fewer_gpus_restores_the_cuda_states_it_can(monkeypatch):
    # Every visible GPU's generator state is saved: a run saved with 8 GPUs visible and resumed with fewer gave
    # torch.cuda.set_rng_state_all 8 states, which indexes past the devices there (IndexError, a traceback).
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(states))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.zeros(4, dtype=torch.uint8)] * 2)
    saved = state.capture_rng()
    assert len(saved["cuda"]) == 2
    state.restore_rng(saved)
    assert len(restored) == 1


@pytest.mark.parametrize("writer", ["safetensors", "torch.save", "mkdir"])
def test_disk_full_mid_save_is_a_clear_error_and_leaves_no_checkpoint_directory(tmp_path, monkeypatch, writer):
    """ENOSPC from each writer of a checkpoint: a PluralignError naming the path and the cause, no
    `.tmp` directory left, the previous checkpoint still the newest, and an exact resume afterwards."""
    run = tmp_path / "run"
    train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=1), run)

    if writer == "safetensors":
        def full(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"partial")  # half a file on disk, as a real ENOSPC leaves it
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(state, "save_file", full)
    elif writer == "torch.save":
        def full(obj, f, *a, **kw):
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(torch, "save", full)
    else:
        real_mkdir = Path.mkdir

        def full(self, *a, **kw):
            if self.name.endswith(".tmp"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_mkdir(self, *a, **kw)
        monkeypatch.setattr(Path, "mkdir", full)
    with pytest.raises(PluralignError, match=r"step-2\.tmp.*: no space left on device \(errno 28\)"):
        train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=2), run)
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-1"]  # the partial directory is gone
    monkeypatch.undo()
    resumed = make_model()
    result = train(resumed, make_data(8), collate, nll_step, cfg(max_steps=2), run)
    assert result.resumed_from.name == "step-1"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-1", "step-2"]
    straight = make_model()
    train(straight, make_data(8), collate, nll_step, cfg(max_steps=2), tmp_path / "straight")
    for k, v in weights(straight).items():
        assert torch.equal(weights(resumed)[k], v), k


def test_stale_tmp_directories_are_removed_when_a_run_starts(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-7.tmp").mkdir(parents=True)
    (run / "checkpoints" / "step-7.tmp" / "weights.safetensors").write_bytes(b"junk")
    train(make_model(), make_data(8), collate, nll_step, cfg(max_steps=1), run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1"]


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
