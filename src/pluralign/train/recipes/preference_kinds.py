"""The kinds of preference loss (pairwise, unpaired, listwise) as the preference recipe uses them: per kind,
the record type, the collator, how log-probs are taken from a batch and how they become the loss's inputs
(`KINDS`); and the items and collation that carry per-example values computed before training."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from pluralign import losses
from pluralign.data.collate import ListwiseCollator, PairwiseCollator, UnpairedCollator
from pluralign.data.records import Binary
from pluralign.errors import ConfigError
from pluralign.models.logprobs import sequence_logps

Tensors = dict[str, torch.Tensor]


def gather(t: torch.Tensor | None) -> torch.Tensor | None:
    """All processes' values (equal batch sizes), or `t` itself in a single process."""
    if t is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return t
    parts = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts)


# ---------------------------------------------------------------- the kinds of loss


@dataclass(frozen=True)
class Kind:
    """How one kind of loss gets its data and its inputs."""

    records: str  # record kind the data is converted to
    collator: type
    logps: Callable[..., Tensors]  # (model, batch, info) -> per-example log-prob tensors
    inputs: Callable[[Tensors, Tensors, dict], dict]  # (policy, reference, batch) -> loss inputs
    rewards: tuple[tuple[str, str], ...]  # (policy input, reference input) pairs of implicit rewards
    collator_options: Mapping[str, Any] = field(default_factory=dict)


def _pairwise_logps(model, batch, info) -> Tensors:
    sums, lengths = sequence_logps(model, batch)
    b = sums.shape[0] // 2  # chosen rows first
    return {"chosen": sums[:b], "rejected": sums[b:], "chosen_lengths": lengths[:b], "rejected_lengths": lengths[b:]}


def _pairwise_inputs(p: Tensors, r: Tensors, batch: dict) -> dict:
    history = {k: batch[k] for k in ("history_chosen_logps", "history_rejected_logps") if k in batch}  # MNPO
    return {"policy_chosen_logps": p["chosen"], "policy_rejected_logps": p["rejected"],
            "ref_chosen_logps": r.get("chosen"), "ref_rejected_logps": r.get("rejected"),
            "chosen_lengths": p["chosen_lengths"], "rejected_lengths": p["rejected_lengths"]} | history


def _unpaired_logps(model, batch, info) -> Tensors:
    out = {"logps": sequence_logps(model, batch)[0]}
    if "kl_policy_logps" in info.inputs:
        # z0 is detached inside the loss: no graph needed for the mismatched pairs.
        with torch.no_grad():
            out["kl_logps"] = sequence_logps(model, batch, prefix="kl_")[0]
    return out


def _unpaired_inputs(p: Tensors, r: Tensors, batch: dict) -> dict:
    # z0 is a batch mean over all processes (TRL gathers too), so every rank uses the same baseline.
    return {"policy_logps": p["logps"], "ref_logps": r.get("logps"), "labels": batch["labels"],
            "kl_policy_logps": gather(p.get("kl_logps")), "kl_ref_logps": gather(r.get("kl_logps")),
            "weights": batch.get("udm_weights")}


def _listwise_logps(model, batch, info) -> Tensors:
    b, k = batch["scores"].shape
    return {"logps": sequence_logps(model, batch)[0].view(b, k)}


def _listwise_inputs(p: Tensors, r: Tensors, batch: dict) -> dict:
    k = batch["scores"].shape[1]  # cached rows are padded to the widest list of the dataset
    ref = r["logps"][:, :k] if "logps" in r else None
    # The losses take LiPO's labels ψ in [0, 1] (each response's share of the list it beats), not the data's
    # scores: ranks arrive as scores −r, under which softmax_list's target put most weight on the worst
    # response, and LiPO-λ's gains 2^ψ − 1 depended on the rating scale. Order-only losses are unchanged.
    labels = losses.win_rate_labels(batch["scores"], batch["list_mask"])
    return {"policy_logps": p["logps"], "ref_logps": ref, "scores": labels, "mask": batch["list_mask"]}


KINDS: dict[str, Kind] = {
    "pairwise": Kind("pairwise", PairwiseCollator, _pairwise_logps, _pairwise_inputs,
                     (("policy_chosen_logps", "ref_chosen_logps"), ("policy_rejected_logps", "ref_rejected_logps"))),
    # kl=False: the mismatched pairs are fixed per dataset (see the module doc), not built per batch.
    "unpaired": Kind("binary", UnpairedCollator, _unpaired_logps, _unpaired_inputs, (("policy_logps", "ref_logps"),),
                     {"kl": False}),
    "listwise": Kind("ranked", ListwiseCollator, _listwise_logps, _listwise_inputs, (("policy_logps", "ref_logps"),)),
}


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Item:
    index: int  # row of the reference cache
    record: Any
    mismatched: Any = None  # KTO: the same prompt with another example's response


def make_items(records: Sequence[Any], info: losses.LossInfo, seed: int, field: str = "data") -> list[Item]:
    """The items of `records`, from the config's `field` (data or eval_data, named when they are too few)."""
    if "kl_policy_logps" not in info.inputs:
        return [Item(i, r) for i, r in enumerate(records)]
    if len(records) < 2:
        raise ConfigError(f"{field}: loss '{info.name}' needs at least 2 examples for its mismatched pairs "
                          f"(its baseline pairs each prompt with another example's response), got {len(records)}",
                          field=field)
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    partner = {order[j]: order[j - 1] for j in range(len(order))}  # a cyclic shift: never itself
    return [Item(i, r, Binary(prompt=r.prompt, response=records[partner[i]].response, label=r.label))
            for i, r in enumerate(records)]


class Collate:
    """Items → one batch: the kind's collator, the mismatched `kl_*` rows, and per-example values computed
    before training (cached reference log-probs as `ref_*`, UDM weights, opponents' log-probs), picked by the
    items' indices."""

    def __init__(self, collator: Callable[[list], dict], per_example: Tensors | None = None):
        self.collator, self.per_example = collator, per_example or {}

    def __call__(self, items: list[Item]) -> dict:
        batch = self.collator([it.record for it in items])
        if items[0].mismatched is not None:
            kl = self.collator([it.mismatched for it in items])
            batch |= {f"kl_{k}": v for k, v in kl.items() if k != "labels"}
        index = torch.tensor([it.index for it in items])
        return batch | {k: v[index] for k, v in self.per_example.items()}
