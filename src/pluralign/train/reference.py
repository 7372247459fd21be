"""Reference log-probs: computed once before training, cached on disk, read back by dataset index.

Methods like DPO compare the policy with a frozen reference model on every example. Holding a second
model during training doubles the weights in memory and costs a forward per step; but the reference
never changes, so its log-probs are a function of (data, reference weights) alone. We compute them in
one no-grad pass, store them as `<cache_dir>/<key>.safetensors`, and the training batches carry them
as tensors. The key hashes the tokenized batches (so a change of data, tokenizer, max_length or
truncation misses) and the reference weights (so another reference misses).

What is computed is up to the caller: `logps_of(model, batch) -> dict[str, Tensor]` with one row per
example (e.g. chosen/rejected sums for pairs, [B, K] for lists).
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pluralign.decode.sampler import eval_mode
from pluralign.models.lora import is_peft_model
from pluralign.runs import io_error

LogpsFn = Callable[[Any, dict], Mapping[str, torch.Tensor]]

# peft names of adapter weights: with adapters disabled the model computes without them, so they are
# not part of the reference's identity.
_ADAPTER_MARKERS = ("lora_", ".modules_to_save.")


def adapters_off(model: torch.nn.Module) -> bool:
    """Whether every adapter layer (peft's) of `model` is switched off, as inside `adapters_disabled`; True
    for a model without adapters."""
    return all(m.disable_adapters for m in model.modules() if hasattr(m, "disable_adapters") and hasattr(m, "lora_A"))


def weights_fingerprint(model: torch.nn.Module, *, skip_adapters: bool | None = None) -> str:
    """BLAKE2b of every parameter and buffer (name, dtype, shape, bytes), in name order. Adapter weights are
    left out when they do not compute (default: when `adapters_off`): a reference that is a saved adapter's
    policy (loaded frozen, adapters on) computes with them, and two such adapters on one base shared a key,
    so a shared ref_cache_dir served one adapter's reference log-probs to the other's run."""
    if skip_adapters is None:
        skip_adapters = adapters_off(model)
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        if skip_adapters and any(m in name for m in _ADAPTER_MARKERS):
            continue
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def batches_fingerprint(batches: Iterator[Mapping[str, Any]]) -> str:
    """BLAKE2b of every tensor of every batch (keys, dtypes, shapes and values)."""
    h = hashlib.blake2b(digest_size=16)
    for batch in batches:
        for key in sorted(batch):
            value = batch[key]
            if isinstance(value, torch.Tensor):
                t = value.detach().to("cpu").contiguous()
                h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def cache_key(dataset: Sequence, collate: Callable[[list], dict], model: torch.nn.Module, *, batch_size: int,
              what: str) -> str:
    """The cache key of `what` (a label of the quantities computed) on this data with this model."""
    data = batches_fingerprint(_batches(dataset, collate, batch_size))
    return hashlib.blake2b(f"{what}|{data}|{weights_fingerprint(model)}".encode(), digest_size=16).hexdigest()


def compute_reference(model: torch.nn.Module, dataset: Sequence, collate: Callable[[list], dict],
                      logps_of: LogpsFn, *, batch_size: int, device: torch.device | str | None = None,
                      show_progress: bool = False, precision: str = "no") -> dict[str, torch.Tensor]:
    """`logps_of` over the whole dataset in order, concatenated per key (rows padded with 0 along dim 1
    when batches differ in width, as listwise batches do). fp32 on CPU.

    `precision` is the training loop's autocast ("no", "bf16", "fp16"): the reference is computed under the
    same autocast as the policy's log-probs in training, so that policy and reference agree exactly at
    initialization (as TRL's precomputed reference does) and the pass runs at 16-bit speed."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    batches = _batches(dataset, collate, batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=-(-len(dataset) // batch_size), desc="reference log-probs")
    with torch.inference_mode(), loop_autocast(device, precision):
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            for key, value in logps_of(model, batch).items():
                parts.setdefault(key, []).append(value.float().cpu())
    model.train(was_training)
    # Concatenated outside inference mode: the result is an ordinary tensor that training may use freely.
    return {key: _cat_padded(values) for key, values in parts.items()}


def loop_autocast(device: torch.device | str, precision: str) -> torch.autocast:
    """The training loop's autocast for `precision` ("no", "bf16", "fp16") on `device`: forwards made outside
    the loop (reference, rollout log-probs) run under it so that they round as the loop's own forward does."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def cached_reference(model: torch.nn.Module, dataset: Sequence, collate: Callable[[list], dict],
                     logps_of: LogpsFn, *, cache_dir: str | os.PathLike, batch_size: int, what: str,
                     show_progress: bool = False, precision: str = "no") -> tuple[dict[str, torch.Tensor], Path, bool]:
    """Reference values from the cache, computing and storing them on a miss (under `precision`'s
    autocast, which is part of the key). Returns (values, cache file, hit)."""
    what = what if precision == "no" else f"{what}|{precision}"
    key = cache_key(dataset, collate, model, batch_size=batch_size, what=what)
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.exists():
        values = load_file(str(path))
        if all(v.shape[0] == len(dataset) for v in values.values()):
            return values, path, True
    values = compute_reference(model, dataset, collate, logps_of, batch_size=batch_size, show_progress=show_progress,
                               precision=precision)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in values.items()}, str(tmp), metadata={"what": what})
        os.replace(tmp, path)  # atomic: a reader never sees half a cache file
    except Exception as e:  # read-only or full disk (safetensors' errors are not OSErrors): say where and why
        with suppress(OSError):
            tmp.unlink()
        raise io_error(path, e) from None
    return values, path, False


@contextmanager
def adapters_disabled(model: Any) -> Iterator[Any]:
    """The base model of a peft model (adapters off) as the reference, without a second copy."""
    if not hasattr(model, "disable_adapter"):
        raise TypeError("adapters_disabled needs a peft model")
    with model.disable_adapter():
        yield model


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `model` in eval mode: the reference when there are no adapters to switch off."""
    return copy.deepcopy(model).requires_grad_(False).eval()


class Snapshot:
    """The policy's weights at one moment, to compute log-probs with later: a moving reference (the policy at a
    round's start) or a past policy (MNPO's opponents).

    Under LoRA only the trainable weights (adapters, modules_to_save) change, so only they are kept, and
    `model()` swaps them into the policy for a no-grad forward and back afterwards: a 7B model's snapshot is
    its adapters' megabytes, not a second copy of the base. Callers run it outside any autograd graph of the
    policy (rollout time), where the in-place swap is invisible. Without adapters it is a frozen copy."""

    def __init__(self, policy: torch.nn.Module):
        self.policy = policy
        self.adapters_only = is_peft_model(policy)
        self.copy: torch.nn.Module | None = None
        self.weights: dict[str, torch.Tensor] = {}
        self.take()

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.policy.named_parameters() if p.requires_grad}

    def take(self) -> None:
        """Snapshot the policy as it stands now."""
        if self.adapters_only:
            self.weights = {n: p.detach().clone() for n, p in self._trainable().items()}
        elif self.copy is None:
            self.copy = frozen_copy(self.policy)
        else:
            self.copy.load_state_dict(self.policy.state_dict())

    @contextmanager
    def model(self) -> Iterator[torch.nn.Module]:
        """The snapshot as a model to run forwards on (no gradients)."""
        if not self.adapters_only:
            yield self.copy
            return
        live = self._trainable()
        current = {n: p.detach().clone() for n, p in live.items()}
        with torch.no_grad():
            for n, p in live.items():
                p.copy_(self.weights[n])
        try:
            yield self.policy
        finally:
            with torch.no_grad():
                for n, p in live.items():
                    p.copy_(current[n])

    # Checkpointed with the run: under LoRA the adapters alone.
    def state_dict(self) -> dict[str, torch.Tensor]:
        weights = self.weights if self.adapters_only else self.copy.state_dict()
        return {k: v.detach().cpu().clone() for k, v in weights.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if not self.adapters_only:
            self.copy.load_state_dict(state)
            return
        live = self._trainable()
        missing = sorted(set(live) - set(state))
        if missing:
            raise ValueError(f"snapshot lacks the policy's trainable weights {missing[:3]}")
        # a full state dict (older checkpoints) holds the adapters among the base's weights
        self.weights = {n: state[n].to(p.device, p.dtype) for n, p in live.items()}


@contextmanager
def as_reference(ref: Any, policy: Any) -> Iterator[Any]:
    """The model that computes reference log-probs: `ref` when given, else the policy's base with
    adapters off (LoRA), else the policy itself (its initial weights, before training)."""
    if ref is None and is_peft_model(policy):
        with adapters_disabled(policy) as base:
            yield base
    else:
        yield ref if ref is not None else policy


def live_reference(ref: Any, logps_of: Callable[[Any, dict], Any]) -> Callable[[Any, dict], Any]:
    """A step-time reference: `logps_of` on `ref`, or on the model in hand with adapters off (ref None), in
    eval mode as the cached reference is computed (with `disable_dropout: false` the base's dropout made the
    live reference noisy, and unlike the cached one)."""
    def reference(model: Any, batch: dict) -> Any:
        if ref is not None:
            return logps_of(ref, batch)
        with adapters_disabled(model), eval_mode(model):
            return logps_of(model, batch)

    return reference


def _batches(dataset: Sequence, collate: Callable[[list], dict], batch_size: int) -> Iterator[dict]:
    for start in range(0, len(dataset), batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


def _cat_padded(values: list[torch.Tensor]) -> torch.Tensor:
    if values[0].dim() < 2:
        return torch.cat(values)
    width = max(v.shape[1] for v in values)
    return torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[1])) for v in values])
