"""A group objective over the whole optimizer step, not over each micro-batch.

The loop's invariant is that batch 8 x grad_accum 1, batch 2 x grad_accum 4 and 2 processes x batch 2 x
grad_accum 2 train alike. It holds for any objective that is a mean over examples; the group objectives
(`pluralign.personal.group_fair`) are not: the worst group of each half of a step is not the worst group of
the step, a log of group means is not the mean of logs, and group DRO's weights moved once per micro-batch.
So in each step whose examples are split (grad_accum > 1 or several processes), `StepGroups` first runs the
step's micro-batches once without gradient, gathers every example's loss and group from every process, and
each micro-batch then trains on `group_fair.over_step`: the objective of the whole step, with its own
losses carrying the gradient, which sums over the micro-batches and processes to the gradient of the big
batch. Group DRO updates its weights once per step, from the whole step's group losses.

The first pass runs inside the step's first micro-batch, where the loop runs the step: inside its DDP / FSDP
wrapper and autocast, as every forward of the step must (outside it, FSDP2's sharded weights fail). Its cost
is one forward without gradient per example (about a third of a step) when a step is split, none otherwise.
It is the training step itself (in training mode, so WPO weighs its pairs as the second pass does), with the
random draws (person-vector dropout, model dropout) and `keep`'s running state (BCO's reward shift) put back
after it, so the second pass computes the same losses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from pluralign.personal.group_fair import Combiner, over_step
from pluralign.train.parallel import all_processes_rows, to_device


class StepGroups:
    """The group objective of a run: per batch in evaluation and in unsplit steps, over the whole step in
    split ones (`hook` makes the loop's ``prepare_step``)."""

    def __init__(self, combine: Combiner, stateful: bool):
        self.combine, self.stateful = combine, stateful
        self.parts: list[tuple[Tensor, Tensor, int]] = []  # (step losses, step groups, start) per micro-batch
        self.pending: list[list[int]] | None = None  # a split step's micro-batches, until their first pass
        self.collecting = False  # in the first pass: the step returns its per-example losses uncombined
        self.source: tuple[Sequence, Callable, Callable, list] | None = None

    def hook(self, dataset: Sequence, collate: Callable[[list], dict], step: Callable,
             keep: Sequence[Any] = ()) -> Callable[[int, list[list[int]]], None]:
        """The loop's ``prepare_step``: notes a split step's micro-batches (dataset indices, this process's),
        for the first pass `gather` runs; `step` is the training step as the loop runs it."""
        self.source = (dataset, collate, step, list(keep))

        def prepare(global_step: int, micro: list[list[int]]) -> None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            world = torch.distributed.get_world_size() if distributed else 1
            self.parts, self.pending = [], None if len(micro) * world == 1 else micro  # unsplit: nothing to do

        return prepare

    def begin(self, model: Any) -> None:
        """Called as a training step starts, before its own forward (whose random draws the first pass must
        reproduce): the first pass, on the model the step runs, when its step is split and not yet gathered."""
        if self.pending is not None:
            self.gather(model)

    def values(self, losses: Tensor, groups: Tensor, *, training: bool) -> Tensor:
        """The objective's per-example values of a batch."""
        if training and self.parts:
            step_losses, step_groups, start = self.parts.pop(0)
            return over_step(self.combine, losses, groups, step_losses, step_groups, start)
        return self.combine(losses, groups, update=training)

    def gather(self, model: Any) -> None:
        """The first pass over the pending step: every example's loss and group, of every process."""
        dataset, collate, step, keep = self.source
        micro, self.pending = self.pending, None
        device = next(model.parameters()).device
        saved = [obj.state_dict() for obj in keep]
        rows = []
        self.collecting = True
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
                for idx in micro:
                    batch = to_device(collate([dataset[i] for i in idx]), device)
                    losses, _ = step(model, batch)
                    rows.append(torch.stack([losses.double(), batch["group_index"].double()], 1).cpu())
        finally:
            self.collecting = False
            for obj, state in zip(keep, saved, strict=True):
                obj.load_state_dict(state)
        every, first = all_processes_rows(torch.cat(rows))
        step_losses, step_groups = every[:, 0].to(device), every[:, 1].long().to(device)
        if self.stateful:  # group DRO: its weights move once per step, by the whole step's group losses
            self.combine(step_losses, step_groups, update=True)
        starts = first + torch.tensor([0] + [len(idx) for idx in micro[:-1]]).cumsum(0)
        self.parts = [(step_losses, step_groups, int(s)) for s in starts]
