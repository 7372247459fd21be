"""Checkpoints and exact resume.

A checkpoint is a directory `checkpoints/step-N/` holding
  weights.safetensors   the trained parameters only (for LoRA: the adapters), so resume reloads the
                        frozen rest from the model the run starts from;
  optimizer.pt          optimizer and scheduler state dicts (torch.save; read back weights_only=True,
                        so loading a checkpoint never unpickles arbitrary objects);
  extra.pt              state of recipe objects that change during training (e.g. BCO's running reward
                        mean), same format;
  rng-rank{R}.json      torch / numpy / python RNG states of each process;
  state.json            the data position (epoch, step in epoch, global step) and what it depends on,
                        and the size and SHA-256 of every other file of the checkpoint.

The directory is written as `step-N.tmp` and renamed when complete, so a crash mid-save never leaves a
directory that looks like a checkpoint; `latest_checkpoint` only ever sees complete ones. Completeness
is not taken on trust: `verify_checkpoint` checks every file against the sizes and checksums in
state.json (a truncated or bit-rotted weights file is caught before it is loaded), and the loop resumes
from the newest checkpoint that passes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
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
from pluralign.runs import atomic_open, atomic_write_json, io_error

_STEP_DIR = re.compile(r"^step-(\d+)$")
# The names `tempfile` gives what pluralign writes under a temporary name (`.model.k3x_9q2a.tmp`): only
# these are removed from a run directory, never a user's own dot-files.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.(tmp|old)$")


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
    if "cuda" in state and torch.cuda.is_available():  # a resume may see fewer GPUs than the run that saved
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8)
                                      for s in state["cuda"][:torch.cuda.device_count()]])


def keeping_callers_rng(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (the training loop) giving the caller back the RNG states it had: the loop seeds Python's, NumPy's
    and torch's global generators (`set_seed`), which made every later draw of a notebook's session the same,
    run after run."""

    @functools.wraps(fn)
    def kept(*args: Any, **kwargs: Any) -> Any:
        state = capture_rng()
        try:
            return fn(*args, **kwargs)
        finally:
            restore_rng(state)

    return kept


# ---------------------------------------------------------------- tensors on disk


class _Recording:
    """A file wrapper that remembers the OSError of a failed write: torch's zip writer swallows it and
    reports only 'unexpected pos', which would hide a full disk."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def _torch_save(path: Path, obj: Any) -> None:
    try:
        with atomic_open(path) as f:
            out = _Recording(f)
            try:
                torch.save(obj, out)
            except RuntimeError as e:
                raise (out.error or e) from None
    except RuntimeError as e:
        raise io_error(path, e) from None


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: say which
        raise PluralignError(f"cannot read checkpoint file {path}: {e}") from None


# ---------------------------------------------------------------- save / load


def begin_checkpoint(root: str | os.PathLike, global_step: int) -> Path:
    """Create the temporary directory a checkpoint is written into (main process only)."""
    tmp = Path(root) / f"step-{global_step}.tmp"
    try:
        if tmp.exists():  # left by a crash during an earlier save of the same step
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise io_error(tmp, e, "create the checkpoint directory") from None
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
    try:  # safetensors writes the file itself (no file object), so its errors are translated here
        save_file(tensors, str(weights_tmp), metadata={"format": "pt"})
        _fsync(weights_tmp)
        os.replace(weights_tmp, tmp / "weights.safetensors")
    except Exception as e:
        with contextlib.suppress(OSError):
            weights_tmp.unlink()
        raise io_error(tmp / "weights.safetensors", e) from None
    _torch_save(tmp / "optimizer.pt", {"optimizer": dict(optimizer), "scheduler": dict(scheduler)})
    _torch_save(tmp / "extra.pt", dict(extra))
    atomic_write_json(tmp / "state.json", asdict(position))


def commit_checkpoint(tmp: Path, keep: int) -> Path:
    """Record the size and checksum of every file in state.json, rename `step-N.tmp` to `step-N` (the
    atomic moment) and delete all but the newest `keep`. Every process's files must be written."""
    try:
        state = json.loads((tmp / "state.json").read_text(encoding="utf-8"))
        state["files"] = {f.name: _fingerprint(f) for f in sorted(tmp.iterdir())
                          if f.is_file() and f.name != "state.json" and not f.name.startswith(".")}
    except OSError as e:
        raise io_error(tmp, e, "read back the checkpoint") from None
    atomic_write_json(tmp / "state.json", state)
    _fsync(tmp)
    final = tmp.with_suffix("")
    try:
        if final.exists():  # the same step saved again (e.g. a resumed run that had already finished)
            _remove_checkpoint(final)
        os.replace(tmp, final)
        _fsync(final.parent)
        if keep > 0:
            for old in list_checkpoints(final.parent)[:-keep]:
                _remove_checkpoint(old)
    except OSError as e:
        raise io_error(final, e, "commit the checkpoint") from None
    return final


def _remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint directory under a `.tmp` name: deleted in place, a kill half-way left a `step-N`
    without its state.json, never listed again, so never pruned (an optimizer's and a model's worth of disk
    for good); renamed first, it is what `remove_stale` removes at the next run."""
    doomed = path.with_name(f"{path.name}.pruned.tmp")
    if doomed.exists():
        shutil.rmtree(doomed)
    os.replace(path, doomed)
    shutil.rmtree(doomed)


def abort_checkpoint(tmp: Path) -> None:
    """Remove a checkpoint that failed half-way (best effort: the cause is already being reported)."""
    shutil.rmtree(tmp, ignore_errors=True)


def remove_stale(root: str | os.PathLike, run_root: str | os.PathLike | None = None) -> list[Path]:
    """Delete `step-N.tmp` directories left by a crashed save and, directly under `run_root`, what a killed
    run left of the outputs it was writing under temporary names (`.model.*.tmp`, a whole model's size;
    `.config.yaml.*.tmp`; a replaced model's `.model.*.old`); call only while holding the run lock."""
    root = Path(root)
    stale = [d for d in root.glob("step-*.tmp") if d.is_dir()] if root.is_dir() else []
    if run_root is not None and Path(run_root).is_dir():
        stale += [p for p in Path(run_root).glob(".*") if _TEMPORARY.match(p.name)]
    for d in stale:
        if run_root is not None and d.name.endswith(".old"):
            _put_back(d, Path(run_root))
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                d.unlink()
    return stale


def _put_back(old: Path, run_root: Path) -> None:
    """A replaced output renamed aside (`runs.write_dir`: `.NAME.*.old/NAME`) whose replacement never came (a
    kill between the two renames) is moved back to `NAME`, so that clean-up does not delete the last copy."""
    name = _TEMPORARY.match(old.name).group("name")
    if (old / name).exists() and not (run_root / name).exists():
        with contextlib.suppress(OSError):
            os.replace(old / name, run_root / name)


def verify_checkpoint(path: str | os.PathLike) -> str | None:
    """None when every file of the checkpoint has the size and SHA-256 recorded in state.json, else
    what is wrong. Checkpoints written before checksums were recorded pass on their file list alone."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        files = state.get("files") if isinstance(state, dict) else None
    except (OSError, ValueError) as e:
        return f"unreadable state.json ({e})"
    if files is None:
        missing = [n for n in ("weights.safetensors", "optimizer.pt", "extra.pt") if not (path / n).is_file()]
        return f"missing {', '.join(missing)}" if missing else None
    for name, want in files.items():
        f = path / name
        try:
            size = f.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != want["size"]:
            return f"{name} has {size} bytes, {want['size']} were written (truncated or replaced)"
    for name, want in files.items():  # sizes first: a truncated file is found without hashing the rest
        try:
            if _fingerprint(path / name)["sha256"] != want["sha256"]:
                return f"{name} does not match its checksum (corrupted on disk)"
        except OSError as e:
            return f"{name} is unreadable ({e})"
    return None


def _fingerprint(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": digest}


def _fsync(path: Path) -> None:
    """Flush a file or directory entry to disk, so a power loss after the rename finds the bytes too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def load_checkpoint(path: str | os.PathLike, rank: int = 0, verify: bool = True) -> Checkpoint:
    """Read a checkpoint back; with `verify`, first check its files against their checksums."""
    path = Path(path)
    if verify and (why := verify_checkpoint(path)) is not None:
        raise PluralignError(f"checkpoint {path} is damaged: {why}")
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        position = Position(**{k: state[k] for k in Position.__dataclass_fields__})
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise PluralignError(f"cannot read checkpoint state {path / 'state.json'}: {e}") from None
    opt = _torch_load(path / "optimizer.pt")
    rng_path = path / f"rng-rank{rank}.json"
    # A run resumed with more processes than it was saved with has no RNG state for the new ranks; they
    # keep their seeded RNG (only dropout-like randomness is affected, never the data order).
    try:
        rng = json.loads(rng_path.read_text(encoding="utf-8")) if rng_path.exists() else None
        weights = load_file(str(path / "weights.safetensors"))
    except Exception as e:  # OSError, JSON or safetensors errors: a damaged file, say which
        raise PluralignError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    return Checkpoint(
        path=path,
        weights=weights,
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
