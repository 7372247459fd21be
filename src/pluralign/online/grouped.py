"""Training forward with each prompt computed once for its whole group of completions.

A group's G completions share their prompt. Rows laid out as [prompt, completion_1, …, completion_G], with
an attention mask in which each completion sees the prompt and its own earlier tokens only and position
ids that continue the prompt's for every completion, give each completion token the log-prob it has in a
row of its own (up to float rounding) in one forward, for the prompt's cost once instead of G times and
with no padding between completions. The mask is a 4D one, which transformers hands to the attention as
given: eager and SDPA attention honour it (others, e.g. flash-attn's varlen kernels, do not: `works`
checks a model once and the caller falls back to one row per completion). The given mask replaces the
model's own, so a sliding window or local attention would be lost past its width, and ALiBi models
(BLOOM, MPT, Falcon with alibi) build their bias from a 2D mask: neither is grouped.

A row's attention grows with the square of its length, so long groups are split into several rows per
prompt (the prompt repeated in each), as many as a FLOP count says is cheapest (`rows_per_prompt`): for 8
completions of 32 tokens one row is about as cheap as two, for 8 of 128 tokens four rows train ~25% faster
than one on CPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch

from pluralign.data.collate import pad_rows
from pluralign.data.tokenize import Encoded
from pluralign.models.logprobs import final_hidden_states, gathered_logps, token_logps, unwrap

MASKED_IMPLEMENTATIONS = ("sdpa", "eager")


def grouped_rows(prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]], group_size: int,
                 pad_id: int, rows_per_prompt: int = 1) -> dict[str, torch.Tensor]:
    """Each prompt's `group_size` completions (row j·G + g of `completion_ids` is completion g of prompt j)
    in `rows_per_prompt` consecutive near-equal chunks, one row per chunk: the prompt's tokens, then the
    chunk's completions each without its last token, right-padded. A completion's last token is only ever a
    target: no later token of its own completion exists to attend to it, and the other completions never
    see it, so feeding it would cost a position of every layer and change no log-prob. Returns
    `group_input_ids`, `group_position_ids`, `group_segments` [R, S] (0 prompt, g+1 completion g, −1
    padding) and, per completion token in completion-major order, the token (`group_labels`), its row
    (`group_row`) and the position of the state that predicts it (`group_source`: the prompt's last token
    for a completion's first token, else the position of the token before it)."""
    chunks = _chunks(group_size, rows_per_prompt)
    rows, positions, segments, row, labels, source = [], [], [], [], [], []
    for j, prompt in enumerate(prompt_ids):
        for chunk in chunks:
            if not any(completion_ids[j * group_size + g] for g in chunk):
                continue  # nothing of this chunk is trained
            ids, pos, seg = list(prompt), list(range(len(prompt))), [0] * len(prompt)
            for g in chunk:
                completion = completion_ids[j * group_size + g]
                if not completion:
                    continue
                start, fed = len(ids), completion[:-1]
                ids += fed
                pos += range(len(prompt), len(prompt) + len(fed))
                seg += [g + 1] * len(fed)
                row += [len(rows)] * len(completion)
                labels += completion
                source += [len(prompt) - 1, *range(start, start + len(fed))]
            rows.append(ids)
            positions.append(pos)
            segments.append(seg)
    if not rows:  # no completion at all: the first prompt alone, so the batch has a row
        rows, positions, segments = [list(prompt_ids[0])], [list(range(len(prompt_ids[0])))], [[0] * len(prompt_ids[0])]
    width = max(len(r) for r in rows)

    def pad(xs: list[list[int]], value: int) -> torch.Tensor:
        return torch.tensor([x + [value] * (width - len(x)) for x in xs], dtype=torch.long)

    return {"group_input_ids": pad(rows, pad_id), "group_position_ids": pad(positions, 0),
            "group_segments": pad(segments, -1), "group_row": torch.tensor(row, dtype=torch.long),
            "group_labels": torch.tensor(labels, dtype=torch.long), "group_source": torch.tensor(source, dtype=torch.long)}


def _chunks(group_size: int, k: int) -> list[list[int]]:
    return [c.tolist() for c in torch.arange(group_size).tensor_split(max(1, min(k, group_size)))]


def pair_cost(model: Any) -> float:
    """The cost of one query-key pair of attention relative to one position through a layer's weights, by
    FLOPs: QKᵀ and AV take 4·hidden per pair, the layer's matrix products 2 per weight per position.
    0 when the model's config does not say its size (then one row per prompt)."""
    inner = unwrap(model)
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    hidden, layers = getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None)
    if not hidden or not layers:
        return 0.0
    embeddings = {id(m.weight): m.weight.numel() for m in (inner.get_input_embeddings(), inner.get_output_embeddings())
                  if m is not None and getattr(m, "weight", None) is not None}
    per_layer = (sum(p.numel() for p in inner.parameters()) - sum(embeddings.values())) / layers
    return 2 * hidden / per_layer if per_layer > 0 else 0.0


def rows_per_prompt(prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]], group_size: int,
                    pair_cost: float) -> int:
    """How many rows to split each prompt's group into: the number whose batch costs least, counting for
    R rows of padded width S, R·S positions through every layer's weights and R·S² query-key pairs through
    its attention (`pair_cost` each). One row holds the prompt once, but its attention grows with the
    square of the group's total length; more rows repeat the prompt and shorten the rows."""
    fed = [max(len(c) - 1, 0) for c in completion_ids]
    best, best_k = None, 1
    for k in range(1, group_size + 1):
        chunks = _chunks(group_size, k)
        if len(chunks) < k:
            break
        width = max(len(p) + sum(fed[j * group_size + g] for g in chunk)
                    for j, p in enumerate(prompt_ids) for chunk in chunks)
        cost = len(prompt_ids) * k * width * (1 + pair_cost * width)
        if best is None or cost < best:
            best, best_k = cost, k
    return best_k


def attention_mask(segments: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """[P, 1, S, S]: query q sees key k ≤ q of the prompt or of q's own completion; padding sees itself.
    Boolean (True: attend) for SDPA, additive (0 / dtype min) for eager attention (`dtype` given)."""
    q, k = segments[:, :, None], segments[:, None, :]
    s = segments.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (k >= 0) & ((k == 0) | (k == q))
    allowed = allowed | (torch.eye(s, dtype=torch.bool, device=segments.device) & (q < 0))
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed, torch.finfo(dtype).min)


def completion_logps(model: Any, batch: dict) -> torch.Tensor:
    """[M] log-probs of every completion token (completion-major order) from a `grouped_rows` batch."""
    implementation = getattr(unwrap(model).config, "_attn_implementation", None)
    dtype = None if implementation == "sdpa" else next(unwrap(model).parameters()).dtype
    segments = batch["group_segments"]
    hidden = final_hidden_states(model, batch["group_input_ids"], attention_mask(segments, dtype),
                                 batch["group_position_ids"])
    states = hidden[batch["group_row"], batch["group_source"]]
    return gathered_logps(model, states, batch["group_labels"])


def token_logps_grouped(model: Any, batch: dict) -> torch.Tensor:
    """The [N, T] per-token log-probs of the batch's padded rows (`completion_mask` layout), computed from
    its grouped layout (of the `live` rows only, when given: the others' are 0)."""
    values = completion_logps(model, batch)
    mask = batch["completion_mask"].bool()
    if "live" in batch:
        mask = mask & batch["live"][:, None]
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def works(model: Any) -> bool:
    """Whether `model` gives grouped rows the log-probs of separate rows (its attention honours a 4D mask):
    checked once per model on two short random groups, in eval mode and without gradients. A windowed
    model is refused without a check: its window (thousands of tokens) is wider than the check's rows, so
    they would pass while longer rows lose the window."""
    inner = unwrap(model)
    if getattr(inner.config, "_attn_implementation", None) not in MASKED_IMPLEMENTATIONS or _windowed(inner.config):
        return False
    if inner not in _CHECKED:
        vocab = inner.get_output_embeddings().weight.shape[0]
        device = next(inner.parameters()).device
        gen = torch.Generator().manual_seed(0)
        draw = lambda n: torch.randint(1, vocab, (n,), generator=gen).tolist()  # noqa: E731
        prompts, completions = [draw(3), draw(5)], [draw(4), draw(2), draw(3), draw(6)]
        rows = pad_rows([Encoded(prompts[i // 2] + c, [0] * len(prompts[i // 2]) + [1] * len(c))
                         for i, c in enumerate(completions)], 0, "right")
        batch = {k: v.to(device) for k, v in (rows | grouped_rows(prompts, completions, 2, 0)).items()}
        was_training = inner.training
        inner.eval()
        try:  # in full precision whatever the caller's autocast: the check is of the mask, not of rounding
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                a = token_logps(inner, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
                b = token_logps_grouped(inner, batch)
        except (ValueError, RuntimeError, IndexError, TypeError):  # a forward that cannot take a 4D mask (ALiBi)
            b = None
        finally:
            inner.train(was_training)
        atol = 1e-4 if inner.get_output_embeddings().weight.dtype == torch.float32 else 5e-2
        _CHECKED[inner] = b is not None and bool(torch.allclose(a, b, atol=atol, rtol=1e-5))
    return _CHECKED[inner]


def _windowed(config: Any) -> bool:
    """Whether some layer of the model attends within a window or chunk only (Mistral, Gemma 2/3, Qwen2
    with its window on, GPT-Neo's local layers, Llama 4's chunks)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = [*(getattr(config, "layer_types", None) or ()), *(getattr(config, "attention_layers", None) or ())]
    return bool(getattr(config, "sliding_window", None) or getattr(config, "attention_chunk_size", None)
                or any(kind not in ("full_attention", "global") for kind in layers))

