"""The one training loop (its settings and optimizer/schedule/data-order pieces are in `loop_config.py`,
checkpoint writing and resume checks in `checkpointing.py`).

A recipe hands `train` a model, a dataset (any sequence), a `collate` function and a
`step(model, batch) -> (per_example_losses, metrics)` function; the loop knows nothing of any method.
It owns the data order, gradient accumulation, clipping, AdamW and its schedule, mixed precision,
logging, evaluation, checkpoints and exact resume, and `accelerate` (so the same code runs on one CPU,
one GPU, or under `accelerate launch` with DDP / FSDP / DeepSpeed).

Two invariants the tests pin down:
- The objective of one optimizer step is the mean of the per-example losses over the whole effective
  batch (micro-batch x accumulation x processes). So batch 8 x accum 1, batch 2 x accum 4, and 2
  processes x batch 2 x accum 2 all produce the same gradients.
- The data order is a permutation drawn from (seed, epoch) and sliced into global batches; each process
  takes its own slice of each global batch. Single- and multi-process runs see the same global batches,
  and resume skips consumed batches by arithmetic, without replaying the data.

Faults end with a clear error and never poison what resume loads: the loss and gradient norm are checked
before each optimizer step and the trained weights after it (non-finite → `TrainingDiverged`, nothing
saved); checkpoints are verified against their recorded checksums and resume falls back to the newest
intact one; a run directory is locked while a run writes it. Resuming with changed optimizer settings
(learning rate, betas, eps, weight decay, schedule length) applies the new ones from the resumed step on;
config.yaml then holds them, and the config that ran before is kept as config.until-step-N.yaml.
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from pluralign.config import dump_yaml
from pluralign.errors import ConfigError, PluralignError
from pluralign.runs import RunDir, atomic_write_text
from pluralign.train import state as ckpt
from pluralign.train import trackers
from pluralign.train.checkpointing import (
    LOOP_LOG,
    OPTIMIZER_SETTINGS,
    LoopLog,
    apply_hyperparameters,
    archive_config,
    check_compatible,
    check_same_run,
    newest_intact_checkpoint,
    read_config,
    save_checkpoint,
)
from pluralign.train.loop_config import (
    LoopConfig,
    check_config,
    global_batch_indices,
    make_optimizer,
    make_scheduler,
    run_steps,
    warn_if_updates_round_away,
)
from pluralign.train.parallel import (
    PADDING,
    Batch,
    StepFn,
    StepModule,
    Weighted,
    held_by_main,
    load_optimizer_state,
    make_accelerator,
    process_state,
    to_device,
)

__all__ = ["LoopConfig", "TrainResult", "TrainingDiverged", "announce_config", "evaluate", "train"]


@dataclass
class TrainResult:
    global_step: int
    epoch: int  # 0-based epoch of the last step
    metrics: dict[str, float] = field(default_factory=dict)  # training metrics of the last step
    eval_metrics: dict[str, float] = field(default_factory=dict)  # of the last evaluation
    checkpoint: Path | None = None  # the last checkpoint written (or resumed from)
    resumed_from: Path | None = None


class TrainingDiverged(PluralignError):
    """The loss, the gradient or the updated weights became NaN/inf; nothing of that step was saved."""


def holding(run_dir: RunDir | str | Path | None) -> Any:
    """The run directory locked by the main process, so two runs never write one directory (the other
    processes of a run share the main process's lock). Recipes hold it from the loop through the saved model."""
    if run_dir is None:
        return nullcontext()
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    distributed = process_state()
    if distributed.num_processes > 1:
        return held_by_main(run, distributed.is_main_process)
    return run.lock()


def _holding_run_dir(fn):
    """Run `fn` (the loop) holding its run directory."""

    @functools.wraps(fn)
    def locked(model, dataset, collate, step, config, run_dir=None, **kwargs):
        run = RunDir(run_dir) if run_dir is not None and not isinstance(run_dir, RunDir) else run_dir
        with holding(run):
            return fn(model, dataset, collate, step, config, run, **kwargs)

    return locked


@ckpt.keeping_callers_rng
@trackers.quiet_unless_progress
@_holding_run_dir
def train(
    model: torch.nn.Module,
    dataset: Sequence,
    collate: Callable[[list], Batch],
    step: StepFn,
    config: LoopConfig,
    run_dir: str | Path | RunDir | None = None,
    *,
    eval_dataset: Sequence | None = None,
    eval_step: StepFn | None = None,
    eval_collate: Callable[[list], Batch] | None = None,
    params: Sequence[torch.nn.Parameter] | None = None,
    resume: bool = True,
    stateful: Mapping[str, Any] | None = None,
    run_config: Any = None,
    prepare_step: Callable[[int, list[list[int]]], None] | None = None,
    finish_step: Callable[[], Mapping[str, Any]] | None = None,
    steps_per_batch: int = 1,
) -> TrainResult:
    """Train `model` in place and return where it stopped.

    `eval_step` / `eval_collate` default to `step` / `collate`. `params`: the parameters to optimize
    (default: those with requires_grad). `stateful`: objects with `state_dict()`/`load_state_dict()`
    that change during training (e.g. a running reward mean), checkpointed with the model.
    `run_config`: the full config of the run, printed and saved as config.yaml (default: `config`).
    `prepare_step(global_step, micro_batches)`: called before each optimizer step with the dataset
    indices of this process's micro-batches, e.g. to generate them from the current policy (online
    alignment: the dataset holds prompts and `collate` returns what the rollout built for them).
    `finish_step()`: called after the step's last backward, before the update; its metrics (measured outside
    `step`, e.g. the step's training throughput) join the step's own in the same row, averaged alike.
    `steps_per_batch`: optimizer steps taken on each global batch of the data order before the next one
    (online PPO epochs x minibatches of one rollout); an epoch then has that many times more steps.
    With `resume`, a run directory holding checkpoints continues from the newest complete one.
    """
    check_config(config, dataset)
    run = RunDir(run_dir) if run_dir is not None and not isinstance(run_dir, RunDir) else run_dir
    stateful = dict(stateful or {})
    eval_step, eval_collate = eval_step or step, eval_collate or collate
    track = trackers.tracker_names(config.report_to)
    accelerator = make_accelerator(config.grad_accum, config.mixed_precision, track,
                                   str(run.root / "trackers") if run is not None else None)
    rank, world = accelerator.process_index, accelerator.num_processes
    previous_config = read_config(run)
    accelerator.wait_for_everyone()  # every process read it before the main one replaces it: all judge alike
    if accelerator.is_main_process:
        announce_config(run_config if run_config is not None else config, run, echo=config.progress)
    trackers.start(accelerator, track, run.root if run is not None else None, run_config if run_config is not None else config)

    # --- what to optimize
    set_seed(config.seed)
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters: every parameter has requires_grad=False")
    trained = {id(p) for p in params}
    trained_names = {n for n, p in model.named_parameters() if id(p) in trained}
    optimizer = make_optimizer(params, config)
    if accelerator.is_main_process and accelerator.distributed_type != DistributedType.DEEPSPEED:
        warn_if_updates_round_away(params, config.learning_rate)
    global_batch = config.batch_size * config.grad_accum * world
    if steps_per_batch < 1:
        raise ConfigError(f"steps_per_batch must be >= 1, got {steps_per_batch}")
    steps_per_epoch = len(dataset) // global_batch * steps_per_batch  # >= 1: check_config saw a whole batch
    total_steps = run_steps(config, steps_per_epoch)
    pos = ckpt.Position(0, 0, 0, config.seed, global_batch, len(dataset))
    if run is not None and accelerator.is_main_process:
        ckpt.remove_stale(run.checkpoints, run.root)  # .tmp files and directories of a crashed save (we hold the lock)
    found = newest_intact_checkpoint(run, accelerator) if run is not None and resume else None
    log = stateful[LOOP_LOG] = LoopLog(run, accelerator.is_main_process, fresh=found is None)  # resumed with the rest
    if found is not None:  # weights go in before wrapping: FSDP then shards the resumed ones
        try:
            loaded = ckpt.load_checkpoint(found, rank, verify=False)  # _resumable verified it
            check_compatible(loaded.position, pos, found, total_steps)
            if run_config is not None:
                check_same_run(previous_config, dump_yaml(run_config), found)
            ckpt.load_weights_into(model, loaded.weights, lambda: trained_names)
        except PluralignError:  # this run never starts: config.yaml goes back to the config that ran
            if accelerator.is_main_process and previous_config is not None:
                atomic_write_text(run.config_path, previous_config)
            raise
    # The step runs inside the forward of this wrapper, so DDP/FSDP/DeepSpeed see one forward per
    # micro-batch (their gradient hooks and parameter gathering hang on it) whatever submodules the
    # step calls, e.g. the decoder and the LM head separately for chunked log-probs.
    wrapped, optimizer = accelerator.prepare(StepModule(model), optimizer)

    # Not prepared by accelerate on purpose: its scheduler wrapper steps once per process per call.
    scheduler = make_scheduler(optimizer, config, total_steps)

    # --- resume
    resumed_from = last_ckpt = None
    if found is not None:
        fresh = [{k: g[k] for k in OPTIMIZER_SETTINGS} for g in optimizer.param_groups]
        load_optimizer_state(accelerator, wrapped, optimizer, loaded.optimizer)
        scheduler.load_state_dict(loaded.scheduler)
        changed = apply_hyperparameters(optimizer, scheduler, fresh)
        if changed and accelerator.is_main_process:
            accelerator.print(f"resuming with changed settings from step {loaded.position.global_step} on: "
                              + ", ".join(changed))
        if accelerator.is_main_process:  # any change (max_steps too: a decaying rate's schedule) keeps the old config
            archive_config(run, previous_config, loaded.position.global_step)
        for name, obj in stateful.items():
            obj.load_state_dict(loaded.extra[name] if name != LOOP_LOG else loaded.extra.get(name))
        if loaded.rng is not None:
            ckpt.restore_rng(loaded.rng)
        pos, resumed_from, last_ckpt = loaded.position, found, found
        accelerator.print(f"resuming from {found} (step {pos.global_step} of {total_steps})")

    def save() -> Path | None:
        return save_checkpoint(accelerator, wrapped, optimizer, scheduler, stateful, trained_names, pos, run, config)

    # --- the loop
    bar = _progress(config, accelerator, total_steps, pos.global_step)
    last, eval_metrics = {}, {}  # of the last step, of the last evaluation
    wrapped.train()
    t0 = log.start_clock()  # elapsed_s continues a resumed run's time
    while pos.global_step < total_steps:
        if pos.step_in_epoch >= steps_per_epoch:  # epoch boundary
            pos.epoch, pos.step_in_epoch = pos.epoch + 1, 0
        indices = global_batch_indices(len(dataset), config.seed, pos.epoch, pos.step_in_epoch // steps_per_batch, global_batch)
        mine = indices[rank * (global_batch // world):(rank + 1) * (global_batch // world)]
        micro = [mine[i:i + config.batch_size] for i in range(0, len(mine), config.batch_size)]
        if prepare_step is not None:
            prepare_step(pos.global_step, micro)

        sums = Weighted(accelerator.device)  # per-example means of loss and metrics, over all processes
        for m, idx in enumerate(micro):
            is_last = m == len(micro) - 1
            # Gradients are all-reduced only after the last micro-batch; DeepSpeed reads this flag to
            # find the accumulation boundary, DDP/FSDP get no_sync on the others.
            accelerator.sync_gradients = is_last
            batch = to_device(collate([dataset[i] for i in idx]), accelerator.device)
            with (accelerator.no_sync(wrapped) if not is_last else nullcontext()), accelerator.autocast():
                losses, metrics = wrapped(step, batch)
                if losses.dim() != 1 or losses.shape[0] != len(idx):
                    raise ValueError(f"step must return one loss per example ([{len(idx)}]), got shape {tuple(losses.shape)}")
                # accelerator.backward divides by grad_accum and DDP averages over processes, so each
                # process contributes sum/batch_size: together, the mean over the effective batch.
                accelerator.backward(losses.sum() / len(idx))
            sums.add("loss", losses.detach().float().mean(), len(idx))
            for k, v in metrics.items():
                sums.add(k, v, len(idx))

        if finish_step is not None:
            for k, v in finish_step().items():
                sums.add(k, v, len(mine))
        reduced = sums.reduce(accelerator)
        grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), config.max_grad_norm or math.inf)
        grad_norm = float(grad_norm) if grad_norm is not None else None  # DeepSpeed clips internally
        # Checked before optimizer.step, so the diverged update is never applied and the last
        # checkpoint stays the last good state. fp16 overflow is the grad scaler's business (it skips).
        loss_ok = math.isfinite(reduced["loss"])
        grad_ok = grad_norm is None or math.isfinite(grad_norm) or config.mixed_precision == "fp16"
        if not (loss_ok and grad_ok):
            keep = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"non-finite {'loss' if not loss_ok else 'gradient norm'} at step {pos.global_step + 1} "
                f"(epoch {pos.epoch}): loss={reduced['loss']}, grad_norm={grad_norm}; the update was not applied "
                f"and {keep}. Lower the learning rate, enable clipping, or check the data of this step."
            )
        lr = scheduler.get_last_lr()[0]  # the rate this update uses
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        pos.global_step += 1
        pos.step_in_epoch += 1
        if bad := _nonfinite(params, trained_names, model, accelerator):
            # Raised before any save: a diverged state never reaches a checkpoint.
            keep = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"step {pos.global_step} (epoch {pos.epoch}) made trained weights non-finite ({bad}); "
                f"loss={reduced['loss']}, grad_norm={grad_norm}, lr={lr}. They were not saved and {keep} "
                "(the model object in memory holds the diverged weights). Resume with a lower learning "
                "rate or a larger adam_eps (a resumed run applies them)."
            )

        last = reduced | {"lr": lr} | ({"grad_norm": grad_norm} if grad_norm is not None else {})
        for k, v in last.items():
            log.window.setdefault(k, []).append(v)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k != "lr"}, refresh=False)
        if pos.global_step % max(config.log_every, 1) == 0 or pos.global_step == total_steps:
            # the window's mean of each training metric, but the rate the row's own step used
            row = {k: sum(v) / len(v) for k, v in log.window.items()} | {"lr": lr}
            row |= {"step": pos.global_step, "epoch": pos.epoch, "elapsed_s": round(log.elapsed(), 3)}
            if run is not None and accelerator.is_main_process:
                run.log_metrics(row)
            trackers.log(accelerator, track, row, pos.global_step)
            log.window = {}
        if eval_dataset is not None and config.eval_every > 0 and pos.global_step % config.eval_every == 0:
            eval_metrics = _evaluate_and_log(wrapped, eval_dataset, eval_collate, eval_step, config, accelerator, run, pos,
                                             track, bar)
            log.evaluated_at = pos.global_step
        if config.save_every > 0 and pos.global_step % config.save_every == 0 and pos.global_step < total_steps:
            last_ckpt = save() or last_ckpt
    if bar is not None:
        bar.close()

    if eval_dataset is not None and log.evaluated_at != pos.global_step:
        eval_metrics = _evaluate_and_log(wrapped, eval_dataset, eval_collate, eval_step, config, accelerator, run, pos, track)
        log.evaluated_at = pos.global_step
    # The end state is written only when resumable checkpoints were asked for: the optimizer state is twice
    # the trained weights, and a run that saves no checkpoints along the way has no use for it at the end.
    if run is not None and config.save_every > 0 and (
            last_ckpt is None or ckpt.checkpoint_dir(run.checkpoints, pos.global_step) != last_ckpt):
        last_ckpt = save() or last_ckpt
    accelerator.wait_for_everyone()
    trackers.finish(accelerator, track)
    if config.progress and accelerator.is_main_process:
        print(f"trained {pos.global_step} steps in {time.perf_counter() - t0:.1f} s; last step: {_fmt(last)}"
              + (f"; eval: {_fmt(eval_metrics)}" if eval_metrics else "")
              + (f"; checkpoint {last_ckpt}" if last_ckpt else ""), file=sys.stderr)
    return TrainResult(pos.global_step, pos.epoch, last, eval_metrics, last_ckpt, resumed_from)


def evaluate(run_step: Callable[[Batch], tuple[torch.Tensor, Mapping[str, Any]]], dataset: Sequence,
             collate: Callable[[list], Batch], batch_size: int, accelerator: Accelerator) -> dict[str, float]:
    """Mean per-example loss and step metrics over `dataset` (no gradients; the caller sets eval mode),
    each process taking every world-th example. Every process runs the same number of batches (padding
    with weight-0 repeats) because FSDP/DeepSpeed forwards are collective."""
    rank, world = accelerator.process_index, accelerator.num_processes
    n = len(dataset)
    per_rank = math.ceil(n / world)
    mine = [rank + world * j for j in range(per_rank)]
    sums = Weighted(accelerator.device)
    with torch.no_grad(), accelerator.autocast():
        for i in range(0, per_rank, batch_size):
            idx = mine[i:i + batch_size]
            real = torch.tensor([j < n for j in idx], device=accelerator.device, dtype=torch.float32)
            batch = to_device(collate([dataset[j if j < n else 0] for j in idx]), accelerator.device)
            if not bool(real.all()):  # for steps with statistics over the batch (a group objective's group means)
                batch[PADDING] = real == 0
            losses, metrics = run_step(batch)
            n_real = real.sum()
            sums.add("loss", (losses.float() * real).sum() / n_real.clamp(min=1), n_real)
            # Batch-level metrics are weighted by the real examples of their batch.
            for k, v in metrics.items():
                if isinstance(v, torch.Tensor) and v.shape == real.shape:  # per-example: drop the padding
                    v = (v.detach().float() * real).sum() / n_real.clamp(min=1)
                sums.add(k, v, n_real)
    return sums.reduce(accelerator)


def announce_config(cfg: Any, run: RunDir | None, echo: bool = True) -> None:
    """Save the full config as run_dir/config.yaml, so every run records how it was made; print it if `echo`."""
    text = dump_yaml(cfg)
    if echo:
        print(f"config ({type(cfg).__name__}):\n" + "\n".join("  " + line for line in text.splitlines()), file=sys.stderr)
    if run is not None:
        atomic_write_text(run.config_path, text)


# ---------------------------------------------------------------- pieces


def _nonfinite(params: list[torch.nn.Parameter], trained_names: set[str], model: torch.nn.Module,
               accelerator: Accelerator) -> str:
    """'' when every trained weight is finite on every process, else which are not. One reduction of
    per-tensor sums (NaN/inf propagate into a sum), confirmed element-wise only when it trips."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in params]  # DTensor shards (FSDP2)
    sums = [t.detach().sum(dtype=torch.float32) for t in local if t.numel()]
    flag = torch.tensor(0.0 if not sums or bool(torch.stack(sums).isfinite().all()) else 1.0,
                        device=accelerator.device)
    if accelerator.num_processes > 1:
        flag = accelerator.reduce(flag, "sum")
    if flag.item() == 0:
        return ""
    names = {id(p): n for n, p in model.named_parameters() if n in trained_names}
    bad = [names.get(id(p), "?") for p, t in zip(params, local, strict=True) if t.numel() and not torch.isfinite(t).all()]
    if not bad and sums:  # a finite tensor whose float32 sum overflowed: not a divergence
        return "" if accelerator.num_processes == 1 else "on another process"
    return f"{len(bad)} tensor(s), e.g. {', '.join(bad[:3])}" if bad else "on another process"


def _evaluate_and_log(wrapped, dataset, collate, step, config, accelerator, run, pos, track=(), bar=None) -> dict[str, float]:
    wrapped.eval()
    result = evaluate(lambda batch: wrapped(step, batch), dataset, collate, config.batch_size, accelerator)
    wrapped.train()
    row = {f"eval/{k}": v for k, v in result.items()}
    if run is not None and accelerator.is_main_process:
        run.log_metrics(row | {"step": pos.global_step, "epoch": pos.epoch})
    trackers.log(accelerator, track, row, pos.global_step)
    if config.progress and accelerator.is_main_process:
        (bar.write if bar is not None else print)(f"eval at step {pos.global_step}: {_fmt(result)}", file=sys.stderr)
    return result


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))


def _progress(config: LoopConfig, accelerator: Accelerator, total: int, start: int):
    if not config.progress or not accelerator.is_main_process:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, file=sys.stderr)
