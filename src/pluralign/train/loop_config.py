"""The one loop's settings (`LoopConfig`) and the pieces they build: the optimizer, its schedule and the
data order. Kept apart from `loop.py` so the loop reads top to bottom."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from pluralign.config import option
from pluralign.errors import ConfigError, PluralignError


@dataclass
class LoopConfig:
    # What the HF Trainer (and so most users' scripts) calls these settings: an unknown key suggests ours.
    OTHER_NAMES: ClassVar[dict[str, str]] = {
        "lr": "learning_rate", "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
        "num_train_epochs": "num_epochs", "epochs": "num_epochs", "lr_scheduler_type": "scheduler",
        "warmup_steps": "warmup_ratio", "bf16": "mixed_precision", "fp16": "mixed_precision",
        "logging_steps": "log_every", "eval_steps": "eval_every", "save_steps": "save_every",
        "save_total_limit": "keep_checkpoints"}

    learning_rate: float = option(5e-7, help="Peak learning rate of AdamW (reached after warmup).")
    batch_size: int = option(8, help="Examples per micro-batch on each device.")
    grad_accum: int = option(1, help="Micro-batches accumulated per optimizer step. Effective batch = batch_size x grad_accum x processes.")
    num_epochs: int = option(1, help="Passes over the training data (ignored when max_steps > 0). Each epoch drops the last incomplete effective batch.")
    max_steps: int = option(0, help="Optimizer steps to run; 0 means num_epochs worth of steps.")
    step_limit: int = option(0, help="At most this many optimizer steps when num_epochs counts them (a budget that large data sets reach "
                                     "before their last epoch; 0: no limit); ignored when max_steps > 0.")
    scheduler: Literal["linear", "cosine", "constant"] = option("linear", help="Learning-rate decay after warmup: linear or cosine to 0, or constant.")
    warmup_ratio: float = option(0.1, help="Fraction of the steps over which the learning rate ramps linearly from 0.")
    weight_decay: float = option(0.0, help="AdamW decoupled weight decay (not applied to biases and norm weights).")
    max_grad_norm: float = option(1.0, help="Clip the global gradient norm to this value; 0 disables clipping (the norm is still logged).")
    adam_beta1: float = option(0.9, help="AdamW beta1.")
    adam_beta2: float = option(0.999, help="AdamW beta2.")
    adam_eps: float = option(1e-8, help="AdamW epsilon.")
    seed: int = option(0, help="Seed of the data order and of every RNG (torch, numpy, python).")
    log_every: int = option(10, help="Write training metrics to metrics.jsonl every N steps: each averaged over those steps, "
                                  "the learning rate the last of them used.")
    eval_every: int = option(0, help="Evaluate on the eval set every N steps (0: only at the end, when an eval set is given).")
    save_every: int = option(0, help="Save a resumable checkpoint (trained weights, optimizer and scheduler state, RNG, data position) every N steps and after the last one; 0: none (recipes still save the trained model). Needs a run directory.")
    keep_checkpoints: int = option(2, help="Keep the newest N checkpoints (0 keeps all).")
    mixed_precision: Literal["no", "bf16", "fp16"] = option("no", help="Autocast precision: no, bf16 (CPU or a bf16-capable GPU), fp16 (CUDA only, with loss scaling).")
    progress: bool = option(True, help="Show a progress bar with the live loss and step metrics, print the config, every evaluation's metrics and the final metrics.")
    report_to: list[str] = option(default_factory=list, help="Experiment trackers that also get the metrics and the config, through accelerate (as the HF Trainer's report_to): tensorboard, wandb, mlflow, trackio, … or all (every installed one); empty or none: metrics.jsonl only. Not dependencies of pluralign: install the ones you use. File-based ones write to <run_dir>/trackers.")

    def __post_init__(self) -> None:
        # Checked when the config is made (YAML, overrides or code), not at the first optimizer step.
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"'{name}' must be {rule}, got {getattr(self, name)!r}")

        for name in ("learning_rate", "warmup_ratio", "weight_decay", "max_grad_norm", "adam_beta1",
                     "adam_beta2", "adam_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise bad(name, "a finite number")
        if not 0 < self.learning_rate <= 10:
            raise bad("learning_rate", "in (0, 10] (a larger AdamW step is certainly a typo)")
        if not 0 <= self.warmup_ratio <= 1:
            raise bad("warmup_ratio", "in [0, 1]")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "in [0, 1)")
        for name in ("weight_decay", "max_grad_norm", "adam_eps"):
            if getattr(self, name) < 0:
                raise bad(name, ">= 0")
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise bad(name, ">= 1")
        # A negative count was read as 0 or as "never" without a word: save_every=-1 saved no checkpoint,
        # keep_checkpoints=-1 kept them all, max_steps=-1 ran num_epochs.
        for name in ("max_steps", "log_every", "eval_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise bad(name, ">= 0")
        if not 0 <= self.seed < 2**32:  # NumPy's seed range (every RNG is seeded with it): -1 was its traceback
            raise bad("seed", "in [0, 2**32)")
        if self.max_steps <= 0 and self.num_epochs < 1:
            raise ConfigError("set num_epochs >= 1 or max_steps > 0")


def check_config(config: LoopConfig, dataset: Sequence) -> None:
    """What depends on the machine and the data, and step_limit (a recipe's defaults may hold a sentinel that
    it resolves later); the rest is checked when the config is made. The loop calls it; a recipe with work
    before the loop (a reference pass) calls it first too."""
    if config.step_limit < 0:
        raise ConfigError(f"'step_limit' must be >= 0, got {config.step_limit}")
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision=fp16 needs a CUDA GPU; use bf16 or no")
    if config.mixed_precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16; use fp16 or no")
    from pluralign.train.trackers import tracker_names

    tracker_names(config.report_to)  # an uninstalled tracker was found after a preference run's reference pass
    if len(dataset) == 0:
        raise PluralignError("the training set is empty")
    if len(dataset) < effective_batch(config):  # every epoch drops its last incomplete effective batch
        raise PluralignError(f"the training set has {len(dataset)} examples, fewer than one effective batch "
                             f"({effective_batch(config)}: loop.batch_size x loop.grad_accum x processes)")


def effective_batch(config: LoopConfig) -> int:
    """Examples per optimizer step over all processes."""
    from pluralign.train.parallel import process_state

    return config.batch_size * config.grad_accum * process_state().num_processes


def run_steps(config: LoopConfig, steps_per_epoch: int) -> int:
    """The run's optimizer steps: max_steps when set, else num_epochs' worth, at most step_limit when set."""
    if config.max_steps > 0:
        return config.max_steps
    steps = config.num_epochs * steps_per_epoch
    return min(steps, config.step_limit) if config.step_limit > 0 else steps


def global_batch_indices(n: int, seed: int, epoch: int, step_in_epoch: int, global_batch: int) -> list[int]:
    """The dataset indices of one optimizer step. The incomplete last batch of an epoch is dropped so
    that every step averages over the same number of examples on any number of processes."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    return perm[step_in_epoch * global_batch:(step_in_epoch + 1) * global_batch].tolist()


def make_optimizer(params: list[torch.nn.Parameter], config: LoopConfig) -> torch.optim.Optimizer:
    # Decaying biases and norm gains only shrinks them toward 0 for no regularization benefit.
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # torch's fused AdamW kernel updates every tensor in one pass: 0.18 s against 0.67 s a step for
    # SmolLM2-135M's weights on one CPU thread. It needs the parameters on one CPU or CUDA device.
    devices = {p.device.type for p in params}
    fused = len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.learning_rate,
                             betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps, fused=fused or None)


def warn_if_updates_round_away(params: Sequence[torch.nn.Parameter], learning_rate: float) -> None:
    """Warn when most trained weights are 16-bit values that a step of the peak learning rate (about AdamW's
    largest update) does not change: AdamW then rounds its updates away. A model saved in bf16 and loaded as saved
    (dtype=auto) trained that way: DPO at its default rate 5e-7 changed under 1% of a bf16 model's weights. DeepSpeed
    keeps float32 master weights of its own, so its launches never reach this (the loop skips the check)."""
    half = [p for p in params if p.dtype in (torch.bfloat16, torch.float16)]
    if not half:
        return
    with torch.no_grad():  # a strided sample of each tensor: the share, not every element, is needed
        samples = [(p.numel(), p.detach().reshape(-1)[:: max(1, p.numel() // 4096)]) for p in half if p.numel()]
        lost = sum(n * float((t + learning_rate == t).float().mean()) for n, t in samples)
    total = sum(p.numel() for p in params)
    if total and lost / total > 0.5:
        warnings.warn(f"{lost / total:.0%} of the trained weights are {str(half[0].dtype).removeprefix('torch.')} values "
                      f"that a step of the learning rate ({learning_rate:g}) leaves unchanged: AdamW's updates are "
                      "rounded away and the model hardly trains. Load it in float32 (dtype=float32), with "
                      "loop.mixed_precision=bf16 for 16-bit compute", stacklevel=2)


def make_scheduler(optimizer: torch.optim.Optimizer, config: LoopConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = math.ceil(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if config.scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
