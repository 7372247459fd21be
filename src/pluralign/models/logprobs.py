"""Per-token log-probabilities of completions, computed without the batch's full-vocabulary logits.

A causal LM's head turns every position's final hidden state into V logits. Preference losses need only
log p(y_t | y_<t) at completion positions, so we take the decoder's final hidden states, pick those that
predict completion tokens, and push them through the head in chunks of ``chunk_size`` positions: each
chunk's [chunk, V] logits are cast to float32 (under mixed precision the head's matmul itself runs in 16
bits, as in the model's own forward), reduced to one log-prob per position, and freed. Under
autograd each chunk is checkpointed (`torch.utils.checkpoint`), so its logits are recomputed in backward
instead of stored: peak extra memory is O(chunk_size · V) whatever the batch, and prompt and padding
positions never reach the head at all. The cost is one extra head matmul per chunk in backward.

Works for `transformers` causal LMs whose ``get_decoder()`` output feeds ``get_output_embeddings()`` and
whose forward takes ``logits_to_keep`` (Llama-, GPT-2-, Mistral-, Qwen-style, …), also wrapped by peft
(adapters injected into modules, e.g. LoRA; not prompt-tuning, which adds positions), DDP or FSDP.
The logit transforms of the model's forward are applied: Gemma's final soft-capping, Granite's
``logits_scaling`` and Cohere's ``logit_scale``; a model whose logits differ from its head's in another
way is refused at its first forward (`_check_head`) rather than scored wrong.

Batches come from `pluralign.data.collate`: padded (either side) or packed (``position_ids`` restarting
per sequence, no attention mask, ``seq_lengths``).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from pluralign.errors import PluralignError
from pluralign.models.packed_attention import PREFIX as PACKED_ATTENTION
from pluralign.models.packed_attention import Kernel, packed_kwargs, use_packed_attention

CHUNK_ELEMENTS = 1 << 22  # default chunk: 4M fp32 logits (16 MiB), i.e. 4M / vocab_size positions


class PairwiseLogps(NamedTuple):
    """Sequence log-prob sums and completion lengths of a pairwise batch (chosen rows first)."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor


def token_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                completion_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                *, chunk_size: int | None = None) -> torch.Tensor:
    """[N, T] float32: at t, log p(input_ids[t] | input_ids[<t]) where ``completion_mask[t] == 1``, else 0.

    ``completion_mask`` defaults to ``attention_mask`` (every real token after the first). Without
    ``position_ids``, positions are counted over attended tokens, so left and right padding agree. Packed
    batches pass ``position_ids`` and no ``attention_mask``. ``chunk_size`` (positions per head call)
    defaults to ``CHUNK_ELEMENTS // vocab_size``.
    """
    return _scored_logps(model, input_ids, attention_mask, completion_mask, position_ids, chunk_size)[0]


def _scored_logps(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  completion_mask: torch.Tensor | None, position_ids: torch.Tensor | None,
                  chunk_size: int | None, heads: Any = None, position_head: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logps` and the [N, T] bool mask of the positions it scored. With `heads` (a list of LM-head
    modules) the position t is scored by ``heads[position_head[n, t]]`` (MAH-DPO's per-objective heads)."""
    if position_ids is None and attention_mask is not None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if attention_mask is None and position_ids is not None:
        _check_packing_support()
    hidden = final_hidden_states(model, input_ids, attention_mask, position_ids)
    scored = predicted_mask(input_ids, attention_mask, completion_mask, position_ids)
    predicted = scored[:, 1:]  # hidden state t-1 predicts token t
    if heads is None:
        values = gathered_logps(model, hidden[:, :-1][predicted], input_ids[:, 1:][predicted], chunk_size)
        out = torch.zeros(predicted.shape, dtype=values.dtype, device=values.device)
        return F.pad(out.masked_scatter(predicted, values), (1, 0)), scored
    out = torch.zeros(predicted.shape, dtype=torch.float32, device=hidden.device)
    for k, head in enumerate(heads):
        mine = predicted & (position_head[:, 1:] == k)
        if mine.any():
            values = gathered_logps(model, hidden[:, :-1][mine], input_ids[:, 1:][mine], chunk_size, head=head)
            out = out.masked_scatter(mine, values)
    return F.pad(out, (1, 0)), scored


def predicted_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   completion_mask: torch.Tensor | None = None,
                   position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[N, T] bool: the tokens that are scored — completion tokens that are attended and have a token of
    their own sequence before them (never column 0, never a packed sequence's first token)."""
    mask = torch.ones_like(input_ids, dtype=torch.bool) if completion_mask is None else completion_mask.bool()
    if attention_mask is not None:
        mask = mask & attention_mask.bool()
    if position_ids is not None:
        mask = mask & (position_ids != 0)
    mask[:, 0] = False
    return mask


def sequence_logps(model: Any, batch: Mapping[str, torch.Tensor], *, prefix: str = "",
                   chunk_size: int | None = None, heads: Any = None,
                   row_head: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_logps [N], n_tokens [N])`` over each sequence's completion tokens, for a padded or packed
    batch. ``prefix`` selects another set of keys in the batch, e.g. ``"kl_"`` for KTO's mismatched rows.
    ``heads`` + ``row_head`` [N]: sequence n is scored by LM head ``heads[row_head[n]]``."""
    input_ids = batch[prefix + "input_ids"]
    seq_lengths = batch.get(prefix + "seq_lengths")
    position_head = None
    if heads is not None:
        if seq_lengths is None:
            position_head = row_head[:, None].expand_as(input_ids)
        else:
            position_head = torch.repeat_interleave(row_head, seq_lengths.to(row_head.device))[None]
    per_token, scored = _scored_logps(model, input_ids, batch.get(prefix + "attention_mask"),
                                      batch[prefix + "completion_mask"], batch.get(prefix + "position_ids"),
                                      chunk_size, heads, position_head)
    counted = scored.long()
    if seq_lengths is None:
        return per_token.sum(-1), counted.sum(-1)
    return _segment_sum(per_token[0], seq_lengths), _segment_sum(counted[0], seq_lengths)


@torch.no_grad()
def completion_sums(model: Any, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                    batch_size: int = 64) -> torch.Tensor:
    """[N] float64: Σ log p(completion | prompt) under `model`, teacher-forced on the exact token ids (no
    re-tokenization), in right-padded batches of `batch_size`."""
    from pluralign.data.collate import pad_rows
    from pluralign.data.tokenize import Encoded

    rows = [Encoded(list(p) + list(c), [0] * len(p) + [1] * len(c)) for p, c in zip(prompts, completions, strict=True)]
    device = next(model.parameters()).device
    out = [torch.zeros(0, dtype=torch.float64)]
    for i in range(0, len(rows), batch_size):
        batch = pad_rows(rows[i:i + batch_size], pad_id=0)
        sums, _ = sequence_logps(model, {k: v.to(device) for k, v in batch.items()})
        out.append(sums.double().cpu())
    return torch.cat(out)


def pairwise_logps(model: Any, batch: Mapping[str, torch.Tensor], *,
                   chunk_size: int | None = None) -> PairwiseLogps:
    """One forward over a `PairwiseCollator` batch (chosen rows, then rejected rows) → per-pair sums and
    lengths."""
    sums, lengths = sequence_logps(model, batch, chunk_size=chunk_size)
    b = sums.shape[0] // 2
    return PairwiseLogps(sums[:b], sums[b:], lengths[:b], lengths[b:])


def final_hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                        position_ids: torch.Tensor | None) -> torch.Tensor:
    """[N, T, H]: the decoder's last hidden state (after its final norm), the input of the LM head.

    The forward goes through ``model`` itself, not its decoder, so that wrappers (DDP, FSDP, DeepSpeed,
    peft) see it; ``logits_to_keep=1`` leaves the model's own head one position to compute, and a hook on
    the decoder picks up its output.
    """
    captured: list[torch.Tensor] = []
    hook = unwrap(model).get_decoder().register_forward_hook(lambda module, args, out: captured.append(out[0]))
    extra = {}
    implementation = _varlen_implementation(unwrap(model))
    if attention_mask is None and position_ids is not None and position_ids.shape[0] == 1 and implementation:
        # The sequence boundaries, computed once for all layers, so attention runs per packed sequence.
        extra = packed_kwargs(position_ids, implementation.removeprefix(PACKED_ATTENTION))
        if not implementation.startswith(PACKED_ATTENTION):  # transformers' flash-attn reads the varlen keywords only
            del extra["pluralign_segments"]
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                    logits_to_keep=1, **extra)
    finally:
        hook.remove()
    _check_head(model, captured[0], getattr(out, "logits", None))
    return captured[0]


def _check_head(model: Any, hidden: torch.Tensor, logits: torch.Tensor | None) -> None:
    """Once per model: the head applied as `gathered_logps` applies it reproduces the model's own last-position
    logits. A model that changes its logits in forward in some other way (a scale under another name, a
    bias, hidden states rescaled after the decoder) would otherwise get log-probs of another distribution."""
    inner = unwrap(model)
    if logits is None or getattr(inner, "_pluralign_head_checked", False):
        return
    head = inner.get_output_embeddings()
    scale, softcap = _logit_transform(inner)
    with torch.no_grad():
        ours = _transformed(head(hidden[:, -1].to(next(head.parameters()).dtype)).float(), scale, softcap)
        theirs = logits[:, -1].detach().float()
    # bf16/fp16 (weights or autocast): the two products may round differently by a few units in the last place
    exact = head.weight.dtype == torch.float32 and not torch.is_autocast_enabled(hidden.device.type)
    tol = 1e-4 if exact else 2e-2
    if not torch.allclose(ours, theirs, atol=tol, rtol=tol):
        raise PluralignError(f"{type(inner).__name__}: its forward changes the LM head's logits in a way pluralign "
                             "does not reproduce, so its log-probs would be wrong; this architecture is not supported")
    inner._pluralign_head_checked = True


def _logit_transform(model: Any) -> tuple[float, float | None]:
    """(scale, soft-cap) that the model's forward applies to its head's output: Cohere multiplies by
    ``logit_scale``, Granite divides by ``logits_scaling``, Gemma caps at ``final_logit_softcapping``."""
    config = model.config.get_text_config()
    scale = float(getattr(config, "logit_scale", None) or 1.0) / float(getattr(config, "logits_scaling", None) or 1.0)
    return scale, getattr(config, "final_logit_softcapping", None)


def _transformed(logits: torch.Tensor, scale: float, softcap: float | None) -> torch.Tensor:
    if scale != 1.0:
        logits = logits * scale
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def _varlen_implementation(model: Any) -> str | None:
    """The attention implementation of `model` when it reads varlen keywords (pluralign's packed
    attention, transformers' flash-attn), else None."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return implementation if implementation.startswith((PACKED_ATTENTION, "flash_attention")) else None


def unwrap(model: Any) -> Any:
    """The model inside distributed / compile wrappers (DDP, FSDP1, DeepSpeed: ``.module``; torch.compile:
    ``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def gathered_logps(model: Any, hidden: torch.Tensor, targets: torch.Tensor,
                   chunk_size: int | None = None, head: torch.nn.Module | None = None) -> torch.Tensor:
    """[M] float32 log-softmax of ``head(hidden)`` at ``targets``, ``chunk_size`` rows at a time (the
    model's own LM head unless `head` is given)."""
    model = unwrap(model)
    head = head if head is not None else model.get_output_embeddings()
    scale, softcap = _logit_transform(model)
    if chunk_size is None:
        vocab_size = getattr(head, "out_features", None) or model.config.get_text_config().vocab_size
        chunk_size = max(1, CHUNK_ELEMENTS // vocab_size)
    # Under autocast the hidden states may be 16-bit while the head's weights are fp32: cast them to the
    # weights' dtype so the head accepts them. An autocast region around this call (the loop's mixed
    # precision) still runs the head's matmul in 16 bits, as the model's own forward and TRL's do; only the
    # log-softmax below is taken in float32.
    hidden = hidden.to(next(head.parameters()).dtype)
    track = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    parts = []
    for start in range(0, hidden.shape[0], chunk_size):
        args = (head, hidden[start:start + chunk_size], targets[start:start + chunk_size], scale, softcap)
        parts.append(checkpoint(_chunk_logps, *args, use_reentrant=False) if track else _chunk_logps(*args))
    if not parts:
        return hidden.new_zeros(0, dtype=torch.float32)
    return torch.cat(parts)


def _chunk_logps(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, scale: float,
                 softcap: float | None) -> torch.Tensor:
    logits = _transformed(head(hidden).float(), scale, softcap)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def prepare_packing(model: Any, wanted: bool = True, kernel: Kernel = "auto", trains: bool = False) -> bool:
    """Whether to run `model` (that `trains`, or only scores) on packed batches: `wanted`, and its packed rows
    give the log-probs of the same sequences padded, after switching it to packed attention with `kernel` (see
    `pluralign.models.packed_attention`) where it can. A model that fails keeps its attention and is told
    to use padded batches (on stderr)."""
    if not wanted:
        return False
    replaced = use_packed_attention(unwrap(model), kernel, trains)
    if packing_works(model):
        return True
    if replaced is not None:
        base = unwrap(model)
        (base.get_base_model() if hasattr(base, "get_base_model") else base).set_attn_implementation(replaced)
    print("packing: this model's attention does not keep packed sequences apart; using padded batches",
          file=sys.stderr)
    return False


def packing_works(model: Any) -> bool:
    """Whether packed rows give `model` the log-probs of the same sequences padded: a model whose attention
    does not isolate packed sequences (remote code, custom masks) fails this and must train on padded
    batches. Call after `use_packed_attention`; costs one forward over 2 short sequences."""
    _check_packing_support()
    inner = unwrap(model)
    vocab = inner.get_output_embeddings().weight.shape[0]
    device = next(inner.parameters()).device
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([7, 5])
    ids = torch.randint(0, vocab, (1, int(lengths.sum())), generator=gen).to(device)
    packed = {"input_ids": ids, "completion_mask": torch.ones_like(ids), "seq_lengths": lengths.to(device),
              "position_ids": torch.cat([torch.arange(int(n)) for n in lengths])[None].to(device)}
    rows = torch.zeros(2, 7, dtype=torch.long, device=device)
    mask = torch.zeros_like(rows)
    rows[0], rows[1, :5], mask[0], mask[1, :5] = ids[0, :7], ids[0, 7:], 1, 1
    was_training = inner.training
    inner.eval()
    try:
        with torch.no_grad():
            a = sequence_logps(inner, packed)[0]
            b = sequence_logps(inner, {"input_ids": rows, "attention_mask": mask, "completion_mask": mask})[0]
    finally:
        inner.train(was_training)
    # fp32 packed and padded sums agree to ~1e-6; a leak between sequences moves them far more, even in a
    # randomly initialised model (~1e-3), and in 16-bit the kernels' rounding differs by up to ~1e-2.
    atol = 1e-4 if inner.get_output_embeddings().weight.dtype == torch.float32 else 5e-2
    return bool(torch.allclose(a, b, atol=atol, rtol=1e-5))


@functools.cache
def _check_packing_support() -> None:
    """Packed rows are isolated by transformers' packed-sequence masks (detected from restarting position
    ids); older versions would let them attend to each other silently."""
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        raise PluralignError("packing needs a transformers version that detects packed sequences from "
                             "position ids (masking_utils.find_packed_sequence_indices); use packing=False") from None


def _segment_sum(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sums of consecutive segments of ``values`` with the given ``lengths``."""
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=values.device), lengths.to(values.device))
    return values.new_zeros(len(lengths)).index_add(0, segment, values)
