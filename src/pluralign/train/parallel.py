"""What it takes to run the one loop unchanged on a CPU, a GPU, or under `accelerate launch`
(DDP / FSDP / DeepSpeed): the process state, the Accelerator, the module the step runs inside, and
means reduced over processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from accelerate import Accelerator

from pluralign.errors import ConfigError, PluralignError
from pluralign.runs import RunDir

Batch = dict[str, Any]
# The key of an evaluation batch's [B] bool mask of its padding rows (weight-0 repeats that keep every process's
# forwards in step), present only when it has some: a step whose values depend on the batch as a whole (a group
# objective's group means) must leave those rows out.
PADDING = "padding_rows"
StepFn = Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, Mapping[str, Any]]]


def process_state():
    """accelerate's view of this process (rank, device), for work done before `train` (loading data,
    reference log-probs, saving). `accelerate launch` marks CPU multi-process jobs only through the
    ACCELERATE_USE_CPU variable, which Accelerator honours but a bare PartialState() does not; the
    first state created is shared by all later ones, so it must get this right."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or _several_processes_without_devices())
    _destroy_process_group_at_exit()
    return state


def _several_processes_without_devices() -> bool:
    """Whether the launcher started several processes (torchrun's WORLD_SIZE) on a machine with no GPU or
    other accelerator. `accelerate launch --num_processes 2` or an FSDP config there sets no ACCELERATE_USE_CPU,
    and accelerate then gives each process a world of its own: two whole runs writing one run directory.
    Such processes can only be CPU ones, so they form one gloo job (MULTI_CPU), as with the variable set."""
    import os

    try:
        several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6; pyproject allows 2.4
    return several and not (accelerator.is_available() if accelerator else torch.cuda.is_available())


_registered_exit = False


def _destroy_process_group_at_exit() -> None:
    """Tear the process group down while Python is still whole. Left to interpreter shutdown, gloo's worker
    threads can free finished work holding tensors after the interpreter is gone, and the process dies of
    SIGABRT ("terminate called without an active exception") after a run that succeeded; the launcher
    then reports the job failed (seen on CI with 2 CPU processes)."""
    global _registered_exit
    if _registered_exit or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    import atexit

    def destroy() -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    atexit.register(destroy)
    _registered_exit = True


def make_accelerator(grad_accum: int, mixed_precision: str, log_with: list[str] | None = None,
                     project_dir: str | None = None) -> Accelerator:
    """The run's Accelerator; `log_with`: accelerate tracker names, writing under `project_dir`."""
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != mixed_precision and process_state().num_processes == 1:
        # accelerate keeps the first precision process-wide; a later run in the same Python process
        # (a notebook, a sweep) may ask for another, which is safe to switch between runs.
        AcceleratorState._reset_state()
    _warn_launcher_precision(mixed_precision)
    trackers = {"log_with": log_with, "project_dir": project_dir} if log_with else {}
    accelerator = Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed_precision, **trackers)
    _fsdp_on_cpu(accelerator)
    _destroy_process_group_at_exit()
    return accelerator


def _warn_launcher_precision(mixed_precision: str) -> None:
    """`accelerate launch` passes its config's mixed_precision on (examples/accelerate/fsdp2.yaml: bf16), but the
    loop gives accelerate its own `loop.mixed_precision`, which wins: a launcher's 16-bit precision the loop
    does not share would be dropped without a word."""
    import os
    import warnings

    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher in ("bf16", "fp16") and launcher != mixed_precision and process_state().is_main_process:
        warnings.warn(f"accelerate launch asked for mixed_precision={launcher}, but this run trains with "
                      f"loop.mixed_precision={mixed_precision}, which pluralign passes to accelerate: set "
                      f"loop.mixed_precision={launcher} to train in {launcher}", stacklevel=3)


def launched_with_fsdp() -> bool:
    """Whether `accelerate launch` was given an FSDP config (known before any Accelerator exists)."""
    from accelerate.utils import parse_flag_from_env

    return parse_flag_from_env("ACCELERATE_USE_FSDP")


def _fsdp_on_cpu(accelerator: Accelerator) -> None:
    """`accelerate launch --use_fsdp` with CPU processes: accelerate (1.16) only enables FSDP for accelerator
    devices and silently runs such a job as DDP (MULTI_CPU). FSDP2 (`fully_shard`) works on CPU with gloo
    in torch >= 2.6, so the FSDP2 plugin the launcher described is installed and accelerate's own FSDP2
    preparation runs: the same code path as on GPUs, testable without one."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU or not launched_with_fsdp():
        return
    plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* variables
    if plugin.fsdp_version != 2:
        raise ConfigError("FSDP on CPU processes needs FSDP2: launch with --fsdp_version 2")
    # Both shared states: a later AcceleratorState() copies the process state's type over its own.
    process_state().distributed_type = accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def model_state(accelerator: Accelerator, wrapped: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of the prepared model (a collective under FSDP/DeepSpeed: every process calls it)."""
    state = accelerator.get_state_dict(wrapped)
    if not accelerator.is_fsdp2:
        return state
    # Seen with accelerate 1.16 on CPU: the state comes back sharded (DTensors) on every process.
    return _gathered(state)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's full state dict when FSDP2 left its parameters sharded (DTensors) after training, else
    None (it holds full tensors: save it as it is). A collective under FSDP2: every process calls it before
    the main one saves; save_pretrained of the shards on the main process alone fails."""
    from torch.distributed.tensor import DTensor

    state = model.state_dict()
    return _gathered(state) if any(isinstance(v, DTensor) for v in state.values()) else None


def _gathered(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Each DTensor of `state` gathered into a full tensor (in the same order on every process), copied to the
    CPU (where they are saved from): on CPU they can alias parameter storage that FSDP frees when it reshards,
    and copies kept on the GPU would hold the whole model there on every process at once, the memory FSDP
    was there to save (each gathered tensor leaves the GPU before the next is gathered)."""
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().to("cpu", copy=True)
            for k, v in state.items()}


def optimizer_state(accelerator: Accelerator, wrapped: torch.nn.Module, optimizer: Any) -> dict:
    """The optimizer's state dict to checkpoint. Under FSDP2 each process holds shards of the moments, so
    they are gathered into one full, parameter-name-keyed state on the main process (a collective: every
    process calls this); elsewhere the optimizer's own state dict."""
    if not accelerator.is_fsdp2:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(wrapped, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(accelerator: Accelerator, wrapped: torch.nn.Module, optimizer: Any, state: dict) -> None:
    """Restore what `optimizer_state` saved: under FSDP2 each process keeps its own shard of the full state."""
    if not accelerator.is_fsdp2:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(wrapped, optimizer, state, options=StateDictOptions(full_state_dict=True))


@contextmanager
def held_by_main(run: RunDir, main: bool) -> Iterator[None]:
    """The main process takes the lock and tells the others whether it got it (a collective: every process
    enters), so a directory in use stops every process with the same error. Raised on the main process
    alone, it left the others waiting at the loop's first barrier, which then broke with a traceback."""
    with ExitStack() as held:
        error: PluralignError | None = None
        if main:
            try:
                held.enter_context(run.lock())
            except PluralignError as e:
                error = e
        refused = [str(error) if error is not None else None]
        torch.distributed.broadcast_object_list(refused, src=0)
        if error is not None:
            raise error
        if refused[0] is not None:
            raise PluralignError(refused[0])
        yield


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
        """`value` is a mean over `weight` examples (a per-example tensor is averaged first); a step may
        give a metric as a (mean, count) pair, a mean over its own count of the batch's examples (e.g. one
        group's), so that micro-batches and evaluation batches combine into that subset's real mean."""
        if isinstance(value, tuple):
            value, weight = value
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


def all_processes_sum(x: torch.Tensor) -> torch.Tensor:
    """x summed over every process, on x's device (NCCL reduces CUDA tensors only), or x in a single process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    nccl = torch.distributed.get_backend() == "nccl"
    y = x.to(torch.device("cuda", torch.cuda.current_device()), copy=True) if nccl else x.clone()
    torch.distributed.all_reduce(y)
    return y.to(x.device)


def all_processes_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The rows x [N, ...] of every process concatenated in rank order (later dims zero-padded to the widest),
    and where this process's rows begin."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x, 0
    world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    nccl = torch.distributed.get_backend() == "nccl"  # NCCL gathers only CUDA tensors
    on = (lambda t: t.cuda()) if nccl else (lambda t: t)
    shapes = [on(torch.zeros(x.dim(), dtype=torch.long)) for _ in range(world)]
    torch.distributed.all_gather(shapes, on(torch.tensor(x.shape)))
    shapes = [s.cpu().tolist() for s in shapes]
    widest = [max(s[d] for s in shapes) for d in range(x.dim())]
    pad = [p for d in reversed(range(1, x.dim())) for p in (0, widest[d] - x.shape[d])] + [0, widest[0] - len(x)]
    parts = [on(torch.zeros(widest, dtype=x.dtype)) for _ in range(world)]
    torch.distributed.all_gather(parts, on(torch.nn.functional.pad(x, pad)))
    rows = [s[0] for s in shapes]
    return torch.cat([p.cpu()[:n] for p, n in zip(parts, rows, strict=True)]), sum(rows[:rank])
