"""What it takes to run the one loop unchanged on a CPU, a GPU, or under `accelerate launch`
(DDP / FSDP / DeepSpeed): the process state, the Accelerator, the module the step runs inside, and
means reduced over processes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from accelerate import Accelerator

Batch = dict[str, Any]
StepFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, Mapping[str, Any]]]


def process_state():
    """accelerate's view of this process (rank, device), for work done before `train` (loading data,
    reference log-probs, saving). `accelerate launch` marks CPU multi-process jobs only through the
    ACCELERATE_USE_CPU variable, which Accelerator honours but a bare PartialState() does not; the
    first state created is shared by all later ones, so it must get this right."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def make_accelerator(grad_accum: int, mixed_precision: str, log_with: list[str] | None = None,
                     project_dir: str | None = None) -> Accelerator:
    """The run's Accelerator; `log_with`: accelerate tracker names, writing under `project_dir`."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != mixed_precision and process_state().num_processes == 1:
        # accelerate keeps the first precision process-wide; a later run in the same Python process
        # (a notebook, a sweep) may ask for another, which is safe to switch between runs.
        AcceleratorState._reset_state()
    trackers = {"log_with": log_with, "project_dir": project_dir} if log_with else {}
    return Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision, **trackers)


class StepModule(torch.nn.Module):
    """Holds the model; its forward runs a step function on it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, step: StepFn, batch: Batch) -> tuple[torch.Tensor, Mapping[str, Any]]:
        return step(self.model, batch)


class Weighted:
    """Weighted means of named values over micro-batches and processes. A metric may be missing from
    some batches (e.g. a reward mean of a label absent from the batch), so each key keeps its own
    weight and the processes agree on the union of keys before reducing."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.weights: dict[str, torch.Tensor] = {}

    def add(self, key: str, value: Any, weight: Any) -> None:
        """`value` is a mean over `weight` examples (a per-example tensor is averaged first)."""
        value = value.detach().float().mean() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
        weight = torch.as_tensor(weight, dtype=torch.float32)
        zero = torch.zeros((), device=self.device)
        self.sums[key] = self.sums.get(key, zero) + value.to(self.device) * weight.to(self.device)
        self.weights[key] = self.weights.get(key, zero) + weight.to(self.device)

    def reduce(self, accelerator: Accelerator) -> dict[str, float]:
        keys = sorted(self.sums)
        if accelerator.num_processes > 1:
            everyone: list[list[str]] = [[] for _ in range(accelerator.num_processes)]
            torch.distributed.all_gather_object(everyone, keys)
            keys = sorted(set().union(*everyone))
        zero = torch.zeros((), device=self.device)
        stacked = torch.stack([self.sums.get(k, zero) for k in keys] + [self.weights.get(k, zero) for k in keys])
        total = accelerator.reduce(stacked, reduction="sum")
        n = len(keys)
        return {k: (total[i] / total[n + i]).item() for i, k in enumerate(keys) if total[n + i] > 0}


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
