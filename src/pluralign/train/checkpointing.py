"""Checkpoints as the one loop writes and resumes them: the newest intact checkpoint, the checks that a
resume fits this run, settings changed on resume, and the collective save (every process takes part:
FSDP/DeepSpeed gather shards)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator

from pluralign.errors import ConfigError
from pluralign.runs import RunDir, atomic_write_text, io_error
from pluralign.train import state as ckpt
from pluralign.train.parallel import model_state, optimizer_state


def newest_intact_checkpoint(run: RunDir, accelerator: Accelerator) -> Path | None:
    """The newest checkpoint whose files match their recorded sizes and checksums. Damaged ones are
    reported and renamed `step-N.damaged` (main process, after every process chose), so they are neither
    loaded nor counted when old checkpoints are pruned."""
    damaged, found = [], None
    for path in reversed(ckpt.list_checkpoints(run.checkpoints)):
        why = ckpt.verify_checkpoint(path)
        if why is None:
            found = path
            break
        damaged.append(path)
        accelerator.print(f"warning: checkpoint {path} is damaged ({why}); falling back to an older one")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for path in damaged:
            target, n = path.with_name(path.name + ".damaged"), 1
            while target.exists():  # damaged again after an earlier fall-back: keep both for inspection
                target, n = path.with_name(f"{path.name}.damaged-{n}"), n + 1
            path.rename(target)
    accelerator.wait_for_everyone()
    return found


OPTIMIZER_SETTINGS = ("initial_lr", "betas", "eps", "weight_decay")  # per param group; initial_lr is the peak rate


def apply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                           fresh: list[dict[str, Any]]) -> list[str]:
    """Give a resumed optimizer this run's settings `fresh` (its param groups' settings before the
    checkpoint's state dict brought back the saved ones); returns what changed, as 'name old -> new'."""
    changed: dict[str, str] = {}
    for group, want in zip(optimizer.param_groups, fresh, strict=True):
        for key in OPTIMIZER_SETTINGS:
            old, new = group[key], want[key]
            if (tuple(old) if isinstance(old, list | tuple) else old) != (tuple(new) if isinstance(new, list | tuple) else new):
                changed.setdefault(key, f"{'learning_rate' if key == 'initial_lr' else key} {old} -> {new}")
            group[key] = new
    # The rate of the next step, from the (new) peak and this run's schedule, whether or not a setting changed:
    # a longer max_steps is another schedule, and the checkpoint's rate was the old one's (0 after linear decay,
    # so the first resumed step moved nothing but Adam's moments).
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, lr in zip(optimizer.param_groups, lrs, strict=True):
        group["lr"] = lr
    scheduler._last_lr = lrs
    return list(changed.values())


def read_config(run: RunDir | None) -> str | None:
    try:
        return run.config_path.read_text(encoding="utf-8") if run is not None and run.config_path.exists() else None
    except OSError:
        return None


def archive_config(run: RunDir, previous: str | None, step: int) -> None:
    """Keep the config the first `step` steps ran with next to config.yaml (which now holds this run's)."""
    if previous is not None and previous != read_config(run):
        atomic_write_text(run.root / f"config.until-step-{step}.yaml", previous)


# What a resumed run may change: how the rest of it goes (length, rate, logging, checkpoints: the loop's
# fields) and how fast it runs, not what the steps so far computed (model, data, loss, ...).
CHANGEABLE_ON_RESUME = ("loop", "output_dir", "eval_data", "attention_kernel", "gradient_checkpointing", "merge_lora")


def check_same_run(previous: str | None, now: str, path: Path) -> None:
    """Refuse to resume from `path` when the run's config (YAML text, `previous` as config.yaml held it)
    changed outside `CHANGEABLE_ON_RESUME`: continuing another loss's or model's checkpoint would hand back
    a model config.yaml does not describe."""
    try:
        old, new = _flat(yaml.safe_load(previous or "")), _flat(yaml.safe_load(now))
    except yaml.YAMLError:
        return  # a config.yaml edited by hand into invalid YAML: nothing to compare with
    if not old:
        return
    differ = [k for k in sorted(old.keys() | new.keys())
              if k.split(".")[0] not in CHANGEABLE_ON_RESUME and (k in old, old.get(k)) != (k in new, new.get(k))]
    if differ:
        def show(config: dict, key: str) -> str:
            return repr(config[key]) if key in config else "(unset)"

        shown = "; ".join(f"{k}: {show(old, k)} -> {show(new, k)}" for k in differ[:6])
        more = f" and {len(differ) - 6} more" if len(differ) > 6 else ""
        raise ConfigError(f"cannot resume from {path}: this run's config differs from the one that wrote it "
                          f"({shown}{more}); use a new output_dir, or remove {path.parent} to start over")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def check_compatible(saved: ckpt.Position, now: ckpt.Position, path: Path, total_steps: int) -> None:
    """A checkpoint this run can go on from: the same data order, and not past the run's end."""
    for name in ("seed", "global_batch", "dataset_size"):
        if getattr(saved, name) != getattr(now, name):
            raise ConfigError(
                f"cannot resume from {path}: it was saved with {name}={getattr(saved, name)}, this run has "
                f"{name}={getattr(now, name)} (the data position would not match); use a new run directory"
            )
    if saved.global_step > total_steps:  # handed back as this run's model, under a config.yaml of fewer steps
        raise ConfigError(f"cannot resume from {path}: it is at step {saved.global_step}, past the {total_steps} steps "
                          "this run trains (loop.max_steps / num_epochs / step_limit); train at least that long "
                          "to go on, or use a new run directory")


def save_checkpoint(accelerator, wrapped, optimizer, scheduler, stateful, trained_names, pos, run, config) -> Path | None:
    if run is None:
        return None
    # get_state_dict gathers shards under FSDP/DeepSpeed, so every process must call it.
    full = {k.removeprefix("model."): v for k, v in model_state(accelerator, wrapped).items()}
    optimizer_full = optimizer_state(accelerator, wrapped, optimizer)  # collective under FSDP
    tmp = ckpt.checkpoint_dir(run.checkpoints, pos.global_step).with_suffix(".tmp")
    try:
        if accelerator.is_main_process:
            ckpt.begin_checkpoint(run.checkpoints, pos.global_step)
        accelerator.wait_for_everyone()
        ckpt.write_rank_state(tmp, accelerator.process_index)
        if accelerator.is_main_process:
            ckpt.write_main_state(
                tmp,
                weights={k: v for k, v in full.items() if k in trained_names},
                optimizer=optimizer_full,
                scheduler=scheduler.state_dict(),
                extra={k: obj.state_dict() for k, obj in stateful.items()},
                position=ckpt.Position(**vars(pos)),
            )
        accelerator.wait_for_everyone()
        final = ckpt.checkpoint_dir(run.checkpoints, pos.global_step)
        if accelerator.is_main_process:
            ckpt.commit_checkpoint(tmp, config.keep_checkpoints)
    except BaseException:  # disk full, a kill signal turned exception, …: leave no half-written directory
        if accelerator.is_main_process:
            ckpt.abort_checkpoint(tmp)
        raise
    accelerator.wait_for_everyone()
    return final


class LoopLog:
    """What the loop has logged, checkpointed with it (in extra.pt, as `LOOP_LOG`) so a resumed run writes
    the rows an uninterrupted one would: the metrics of the steps since the last row (averaged into the
    next one), the step of the last evaluation, the length of metrics.jsonl and the training time (`elapsed`,
    which a resumed run continues from) at the save. Rows a
    killed run appended after its last checkpoint are cut off on resume (the resumed run writes them
    again), and a `fresh` run, which resumes nothing, starts metrics.jsonl anew (the rows of an attempt
    killed before its first checkpoint would be followed by their repeats); only the main process, which
    writes metrics.jsonl, cuts."""

    def __init__(self, run: RunDir | None, main: bool, fresh: bool = False):
        self.run, self.main = run, main
        self.window: dict[str, list[float]] = {}
        self.evaluated_at = -1
        self.elapsed_before, self.started = 0.0, time.perf_counter()  # training time of earlier runs; this one's start
        if fresh:
            self.load_state_dict({"window": {}, "evaluated_at": -1, "metrics_bytes": 0})

    def state_dict(self) -> dict[str, Any]:
        path = self.run.metrics_path if self.run is not None else None
        size = path.stat().st_size if path is not None and path.exists() else 0
        return {"window": self.window, "evaluated_at": self.evaluated_at, "metrics_bytes": size,
                "elapsed_s": self.elapsed()}

    def start_clock(self) -> float:
        """Start timing this run's steps (`elapsed` adds them to the resumed checkpoint's time); returns the start."""
        self.started = time.perf_counter()
        return self.started

    def elapsed(self) -> float:
        """Seconds of training: the checkpoint's (on resume) plus this run's since `start_clock`."""
        return self.elapsed_before + time.perf_counter() - self.started

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:  # a checkpoint written before the loop's log was saved
            return
        self.window = {k: list(v) for k, v in state["window"].items()}
        self.evaluated_at = state["evaluated_at"]
        self.elapsed_before = float(state.get("elapsed_s", 0.0))  # absent from checkpoints written before it was kept
        path = self.run.metrics_path if self.run is not None else None
        if self.main and path is not None and path.exists() and path.stat().st_size > state["metrics_bytes"]:
            try:
                os.truncate(path, state["metrics_bytes"])
            except OSError as e:
                raise io_error(path, e) from None


LOOP_LOG = "_loop_log"
