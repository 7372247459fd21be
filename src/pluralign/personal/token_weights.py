"""NextQuill-style token weighting: each response token counts by how much the user's history raises it.

NextQuill (Zhao et al. 2025, "NextQuill: Causal Preference Modeling for Enhancing LLM Personalization")
measures the causal effect of a user's history on each token the model predicts, the difference of its
log-probability with and without the history in context, and aligns on the tokens that carry the user's
preference rather than on every token alike. Here, before training, the initial policy (the reference)
scores every response token twice, with the prompt alone and with the user's history (a few of the user's
other chosen responses) before it: Δ_t = log p(y_t | history, x, y_<t) − log p(y_t | x, y_<t). A response's
token weights are w_t = n·softmax_t(Δ_t / τ) (mean 1 over its n tokens; τ → ∞ is uniform), and the
sequence log-probabilities of policy and reference become Σ_t w_t log p(y_t | …), fed to the loss as usual.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from pluralign.conditioning import with_statement
from pluralign.data.records import text_content
from pluralign.errors import ConfigError
from pluralign.models.logprobs import predicted_mask, token_logps


def history_weights(delta: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """[N, T] weights n·softmax(Δ/τ) over each row's masked tokens (0 elsewhere; a row's weights sum to
    its number of tokens)."""
    if temperature <= 0:
        raise ConfigError(f"token weighting temperature must be > 0, got {temperature}")
    mask = mask.bool()
    scaled = torch.where(mask, delta / temperature, torch.finfo(delta.dtype).min)
    soft = torch.softmax(scaled, -1) * mask
    return soft * mask.sum(-1, keepdim=True)


def histories(records: Sequence[Any], size: int) -> list[str | None]:
    """Each record's user history: up to `size` of the same user's other chosen responses, the ones after it
    in data order (cyclically); None without a user or other records."""
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if getattr(r, "user", None) is not None:
            by_user[str(r.user)].append(i)
    out: list[str | None] = [None] * len(records)
    for idx in by_user.values():
        for j, i in enumerate(idx):
            others = [idx[(j + k) % len(idx)] for k in range(1, min(size, len(idx) - 1) + 1)]
            if others:
                out[i] = " ".join(text_content(records[o].chosen) for o in others)  # chat replies: their words
    return out


@torch.no_grad()
def precompute(model: Any, collator: Any, records: Sequence[Any], *, size: int, temperature: float,
               batch_size: int = 32) -> dict[str, Tensor]:
    """Per-example token weights of chosen and rejected responses ([N, L] each, the scored tokens in order,
    0-padded) and the reference's weighted sequence log-probs (`ref_chosen`/`ref_rejected`)."""
    hist = histories(records, size)
    if all(h is None for h in hist):
        raise ConfigError("token weighting needs users with at least 2 records each (their history)")
    device = next(model.parameters()).device
    weights, ref = {"chosen": [], "rejected": []}, {"chosen": [], "rejected": []}
    for start in range(0, len(records), batch_size):
        part = list(records[start:start + batch_size])
        with_h = [r if h is None else dataclasses.replace(r, prompt=with_statement(r.prompt, h))
                  for r, h in zip(part, hist[start:start + batch_size], strict=True)]
        (lp0, m0), (lp1, m1) = (_scored(model, collator(p), device) for p in (part, with_h))
        if not torch.equal(m0.sum(-1), m1.sum(-1)):
            raise ConfigError("token weighting: the responses tokenize differently after the user's history")
        d0, d1 = _compact(lp0, m0), _compact(lp1, m1)
        n = m0.sum(-1)
        lmask = torch.arange(d0.shape[1], device=device)[None] < n[:, None]
        w = history_weights(d1 - d0, lmask, temperature)
        b = len(part)
        for key, rows in (("chosen", slice(0, b)), ("rejected", slice(b, 2 * b))):
            weights[key].append(w[rows].cpu())
            ref[key].append((w[rows] * d0[rows]).sum(-1).cpu())
    width = max(t.shape[1] for ts in weights.values() for t in ts)
    pad = {k: torch.cat([torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in ts]) for k, ts in weights.items()}
    return {"token_weights_chosen": pad["chosen"], "token_weights_rejected": pad["rejected"],
            "ref_chosen": torch.cat(ref["chosen"]), "ref_rejected": torch.cat(ref["rejected"])}


def _scored(model: Any, batch: dict, device: Any) -> tuple[Tensor, Tensor]:
    batch = {k: v.to(device) for k, v in batch.items()}
    if "seq_lengths" in batch:
        raise ConfigError("token weighting precomputes on padded batches; the collator must not pack")
    lp = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    return lp, predicted_mask(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])


def _compact(values: Tensor, mask: Tensor) -> Tensor:
    """[N, T] values at masked positions → [N, max tokens], each row's masked values first, in order."""
    n = mask.sum(-1)
    out = values.new_zeros(len(values), int(n.max()) if len(n) else 0)
    keep = torch.arange(out.shape[1], device=values.device)[None] < n[:, None]
    return out.masked_scatter(keep, values[mask])


def weighted_pairwise_logps(model: Any, batch: dict, info: Any) -> dict[str, Tensor]:
    """The pairwise kind's log-probs with each token weighted by the batch's `token_weights_*`."""
    ids, attn = batch["input_ids"], batch.get("attention_mask")
    pos, comp = batch.get("position_ids"), batch["completion_mask"]
    per_token = token_logps(model, ids, attn, comp, pos)
    scored = predicted_mask(ids, attn, comp, pos)
    w = torch.cat([batch["token_weights_chosen"], batch["token_weights_rejected"]]).to(per_token)
    if "seq_lengths" in batch:
        lengths = batch["seq_lengths"].to(ids.device).long()
        row = torch.repeat_interleave(torch.arange(len(lengths), device=ids.device), lengths)[None]
    else:
        row = torch.arange(len(ids), device=ids.device)[:, None].expand_as(ids)
    rank = scored.long().flatten().cumsum(0).view_as(scored) - 1  # global index of each scored token
    start = torch.zeros(len(w), dtype=torch.long, device=ids.device)
    counts = torch.zeros(len(w), dtype=torch.long, device=ids.device).index_add_(0, row[scored], torch.ones_like(row[scored]))
    start[1:] = counts.cumsum(0)[:-1]
    within = rank - start[row]
    weights = torch.zeros_like(per_token)
    weights[scored] = w[row[scored], within[scored].clamp(max=w.shape[1] - 1)]
    sums = torch.zeros(len(w), dtype=per_token.dtype, device=ids.device).index_add_(0, row[scored],
                                                                                  (per_token * weights)[scored])
    b = len(w) // 2
    return {"chosen": sums[:b], "rejected": sums[b:], "chosen_lengths": counts[:b], "rejected_lengths": counts[b:]}
