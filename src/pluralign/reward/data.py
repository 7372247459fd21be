"""Feedback records → training items and batches for reward models.

Items are small dicts. With a trainable backbone the collate functions tokenize the texts through the
model's own `TextEncoder.tokenize` (so training and `score` see identical inputs); with a frozen backbone
`precompute_features` replaces the texts by their features once, and collating just stacks tensors.
Batches: pairwise → 2B rows (chosen, then rejected) + `margin` [B], `users` [B], `tasks` [B];
pointwise → B rows + `labels` [B] (binary) or `targets`/`target_mask` [B, m] (rated).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pluralign.data.records import Binary, Pairwise, Rated
from pluralign.errors import ConfigError, DataError, Problem


def pair_items(records: Sequence[Pairwise], *, user_ids: Sequence[str] = (), objectives: Sequence[str] = (),
               source: str = "<data>") -> list[dict]:
    """Pairwise records → items; `user` is the index in `user_ids` of the record's user as text, as PAL's
    list holds them (−1 when not given: an int id found nothing and trained the last user's row), `task` the index
    of the record's objective in `objectives` (0 when there is one objective)."""
    users = {u: i for i, u in enumerate(user_ids)}
    tasks = {o: i for i, o in enumerate(objectives)}
    problems = [Problem(source, n, None, f"expected a pairwise record, got {type(r).__name__}")
                for n, r in enumerate(records, start=1) if not isinstance(r, Pairwise)]
    if problems := problems or record_problems(records, source, objectives=objectives):
        raise DataError(problems)
    return [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "margin": float(r.margin or 0.0),
             "user": users.get(str(r.user), -1) if r.user is not None else -1,
             "task": tasks[r.objective] if len(objectives) > 1 else 0} for r in records]


def record_problems(records: Sequence[Any], source: str, lines: Sequence[int] | None = None, *,
                    objectives: Sequence[str] = (), need_user: bool = False) -> list[Problem]:
    """What a reward model cannot train on in pairs (or the lists they come from), at each record's line
    (`lines`; without them its place in `records`): an objective not among several `objectives` (each
    pair trains one objective's head), and with `need_user` (PAL) a record without its user."""
    problems = []
    for n, r in zip(range(1, len(records) + 1) if lines is None else lines, records, strict=True):
        if need_user and getattr(r, "user", None) is None:
            problems.append(Problem(source, n, "user", "PAL needs the user of every pair"))
        if len(objectives) > 1 and not isinstance(r, Rated) and r.objective not in objectives:
            problems.append(Problem(source, n, "objective", f"{r.objective!r} is not one of {list(objectives)}"))
    return problems


def binary_items(records: Sequence[Binary]) -> list[dict]:
    return [{"prompt": r.prompt, "response": r.response, "label": float(bool(r.label))} for r in records]


def rated_items(records: Sequence[Rated], objectives: Sequence[str]) -> list[dict]:
    """Rated records → items with a target per objective and a mask of which ones were rated."""
    out = []
    for r in records:
        t = [float(r.ratings.get(o, 0.0)) for o in objectives]
        m = [1.0 if o in r.ratings and r.ratings[o] is not None else 0.0 for o in objectives]
        out.append({"prompt": r.prompt, "response": r.response, "targets": t, "mask": m})
    return out


@torch.no_grad()
def precompute_features(items: list[dict], encoder: Any, *, needs_prompt: bool = False, batch_size: int = 64) -> list[dict]:
    """Replace texts by frozen-encoder features (each distinct text encoded once)."""
    was = encoder.training
    encoder.eval()
    try:
        pair = "chosen" in items[0] if items else False
        responses = ("chosen", "rejected") if pair else ("response",)
        keys = sorted({(_key(i["prompt"]), _key(i[f])) for i in items for f in responses})
        texts = {(_key(i["prompt"]), _key(i[f])): (i["prompt"], i[f]) for i in items for f in responses}
        feats = encoder.embed([texts[k][0] for k in keys], [texts[k][1] for k in keys], batch_size).cpu()
        lookup = dict(zip(keys, feats, strict=True))
        plook = {}
        if needs_prompt:
            pkeys = sorted({_key(i["prompt"]) for i in items})
            prompts = {_key(i["prompt"]): i["prompt"] for i in items}
            plook = dict(zip(pkeys, encoder.embed([prompts[k] for k in pkeys], None, batch_size).cpu(), strict=True))
    finally:
        encoder.train(was)
    out = []
    for i in items:
        new = {k: v for k, v in i.items() if k not in ("prompt", *responses)}
        for f in responses:
            new["f_" + f] = lookup[(_key(i["prompt"]), _key(i[f]))]
        if needs_prompt:
            new["f_prompt"] = plook[_key(i["prompt"])]
        out.append(new)
    return out


def _key(text: Any) -> str:
    return text if isinstance(text, str) else repr(text)


def _texts(encoder: Any, prompts: list, responses: list | None, prefix: str = "") -> dict[str, torch.Tensor]:
    if encoder is None:
        raise ConfigError("text items need a model with a text encoder (or precomputed features)")
    return {prefix + k: v for k, v in encoder.tokenize(prompts, responses).items()}


def pair_collate(encoder: Any = None, *, needs_prompt: bool = False):
    """Collate pair items (texts or precomputed features) into a 2B-row batch."""

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        if "f_chosen" in items[0]:
            batch = {"features": torch.stack([i["f_chosen"] for i in items] + [i["f_rejected"] for i in items])}
            if needs_prompt:
                batch["prompt_features"] = torch.stack([i["f_prompt"] for i in items])
        else:
            prompts = [i["prompt"] for i in items]
            batch = _texts(encoder, prompts * 2, [i["chosen"] for i in items] + [i["rejected"] for i in items])
            if needs_prompt:
                batch |= _texts(encoder, prompts, None, "prompt_")
        batch["margin"] = torch.tensor([i["margin"] for i in items])
        batch["users"] = torch.tensor([i["user"] for i in items], dtype=torch.long)
        batch["tasks"] = torch.tensor([i["task"] for i in items], dtype=torch.long)
        return batch

    return collate


def point_collate(encoder: Any = None):
    """Collate binary or rated items into a B-row batch."""

    def collate(items: list[dict]) -> dict[str, torch.Tensor]:
        if "f_response" in items[0]:
            batch = {"features": torch.stack([i["f_response"] for i in items])}
        else:
            batch = _texts(encoder, [i["prompt"] for i in items], [i["response"] for i in items])
        if "label" in items[0]:
            batch["labels"] = torch.tensor([i["label"] for i in items])
        if "targets" in items[0]:
            batch["targets"] = torch.tensor([i["targets"] for i in items])
            batch["target_mask"] = torch.tensor([i["mask"] for i in items])
        return batch

    return collate
