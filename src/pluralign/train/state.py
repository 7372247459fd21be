"""Checkpoints and exact resume.

A checkpoint is a directory `checkpoints/step-N/` holding
  weights.safetensors   the trained parameters only (for LoRA: the adapters), so resume reloads the
                        frozen rest from the model the run starts from;
  optimizer.pt          optimizer and scheduler state dicts (torch.save; read back weights_only=True,
                        so loading a checkpoint never unpickles arbitrary objects);
  extra.pt              state of recipe objects that change during training (e.g. BCO's running reward
                        mean), same format;
  rng-rank{R}.json      torch / numpy / python RNG states of each process;
  state.json            the data position (epoch, step in epoch, global step) and what it depends on.

The directory is written as `step-N.tmp` and renamed when complete, so a crash mid-save never leaves a
directory that looks like a checkpoint; `latest_checkpoint` only ever sees complete ones.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pluralign.errors import PluralignError
from pluralign.runs import atomic_open, atomic_write_json

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Position:
    """Where in the data a run is. The data order is a function of (seed, epoch), so this is enough to
    skip exactly the batches already consumed."""

    global_step: int
    epoch: int
    step_in_epoch: int
    seed: int
    global_batch: int
    dataset_size: int


def checkpoint_dir(root: str | os.PathLike, global_step: int) -> Path:
    return Path(root) / f"step-{global_step}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / "state.json").exists():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


# ---------------------------------------------------------------- RNG states


def capture_rng() -> dict:
    """All RNG states of this process as JSON-able data."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_version, list(py_state), py_gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---------------------------------------------------------------- tensors on disk


def _torch_save(path: Path, obj: Any) -> None:
    with atomic_open(path) as f:
        torch.save(obj, f)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: say which
        raise PluralignError(f"cannot read checkpoint file {path}: {e}") from None


# ---------------------------------------------------------------- save / load


def begin_checkpoint(root: str | os.PathLike, global_step: int) -> Path:
    """Create the temporary directory a checkpoint is written into (main process only)."""
    tmp = Path(root) / f"step-{global_step}.tmp"
    if tmp.exists():  # left by a crash during an earlier save of the same step
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_rank_state(tmp: Path, rank: int) -> None:
    """Each process writes its own RNG states (dropout masks differ per rank)."""
    atomic_write_json(tmp / f"rng-rank{rank}.json", capture_rng(), indent=None)


def write_main_state(
    tmp: Path,
    *,
    weights: Mapping[str, torch.Tensor],
    optimizer: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    extra: Mapping[str, Any],
    position: Position,
) -> None:
    """The state shared by all processes (main process only). `state.json` is written last, though
    completeness is really decided by the directory rename in `commit_checkpoint`."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    weights_tmp = tmp / ".weights.safetensors.tmp"
    save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
    os.replace(weights_tmp, tmp / "weights.safetensors")
    _torch_save(tmp / "optimizer.pt", {"optimizer": dict(optimizer), "scheduler": dict(scheduler)})
    _torch_save(tmp / "extra.pt", dict(extra))
    atomic_write_json(tmp / "state.json", asdict(position))


def commit_checkpoint(tmp: Path, keep: int) -> Path:
    """Rename `step-N.tmp` to `step-N` (the atomic moment) and delete all but the newest `keep`."""
    final = tmp.with_suffix("")
    if final.exists():  # the same step saved again (e.g. a resumed run that had already finished)
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_checkpoints(final.parent)[:-keep]:
            shutil.rmtree(old)
    return final


@dataclass
class Checkpoint:
    """What `load_checkpoint` reads back."""

    path: Path
    weights: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    extra: dict
    rng: dict | None
    position: Position


def load_checkpoint(path: str | os.PathLike, rank: int = 0) -> Checkpoint:
    path = Path(path)
    try:
        position = Position(**json.loads((path / "state.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as e:
        raise PluralignError(f"cannot read checkpoint state {path / 'state.json'}: {e}") from None
    opt = _torch_load(path / "optimizer.pt")
    rng_path = path / f"rng-rank{rank}.json"
    # A run resumed with more processes than it was saved with has no RNG state for the new ranks; they
    # keep their seeded RNG (only dropout-like randomness is affected, never the data order).
    rng = json.loads(rng_path.read_text(encoding="utf-8")) if rng_path.exists() else None
    return Checkpoint(
        path=path,
        weights=load_file(str(path / "weights.safetensors")),
        optimizer=opt["optimizer"],
        scheduler=opt["scheduler"],
        extra=_torch_load(path / "extra.pt"),
        rng=rng,
        position=position,
    )


def load_weights_into(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], names: Callable[[], set[str]]) -> None:
    """Copy checkpointed tensors into `model` in place (keeping the parameters the optimizer holds).
    `names()` lists the parameters the run trains; a mismatch means the checkpoint is from another
    model or another LoRA setup, which must not be resumed silently."""
    expected = names()
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:5]
        unexpected = sorted(set(weights) - expected)[:5]
        raise PluralignError(
            f"checkpoint does not match the model being trained (missing {missing}, unexpected {unexpected}); "
            "start a fresh run directory or pass resume=False"
        )
    state = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in weights.items():
            state[name].copy_(tensor.to(device=state[name].device, dtype=state[name].dtype))
