"""Incremental decoding state for any Hugging Face causal LM: left-padded prompts, a KV cache, and
row selection (expand one prompt's cache to N samples, or keep the rows of chosen branches).

Every decoder in `pluralign.decode` is built on `LMState`, so the prompt is prefilled once and each
further step feeds exactly one token per row.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from pluralign.data.prompts import encode_prompts  # noqa: F401  (decoders import it from here)


@dataclass
class Compute:
    """Compute spent. `forward` counts sequence forward passes (one row through the model once, with its
    KV cache, as in the spec's "FP"); `tokens` counts tokens fed through a model (prefill + decode);
    `calls` counts batched model calls."""

    forward: int = 0
    tokens: int = 0
    calls: int = 0

    def add(self, other: Compute) -> Compute:
        self.forward += other.forward
        self.tokens += other.tokens
        self.calls += other.calls
        return self


def left_pad(seqs: list[list[int]], pad_id: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences left-padded: (input_ids [B, T], attention_mask [B, T])."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def pad_id_of(tokenizer: Any, model: Any = None) -> int:
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "pad_token_id", None) or 0)


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def context_window(model: Any) -> int | None:
    """The longest sequence the model's positions cover (max_position_embeddings, GPT-2's n_positions): past a
    learned position table the forward fails with an IndexError, past a rotary model's it answers badly."""
    cfg = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def window_problem(prompt_tokens: int, max_new_tokens: int, window: int | None) -> str | None:
    """Why a prompt of `prompt_tokens` cannot be answered with `max_new_tokens` within the model's context
    `window` (`context_window`), or None: one check for the decode CLI, `decode()` and the server."""
    if window is None or prompt_tokens + max_new_tokens <= window:
        return None
    return (f"{prompt_tokens} prompt tokens + max_new_tokens {max_new_tokens} exceed the model's context window "
            f"of {window} tokens")


def _accepts(model: Any, name: str) -> bool:
    """Whether the model's own forward (inside a PEFT wrapper, whose forward passes keywords through)
    takes `name`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return name in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


class LMState:
    """A batch of left-padded sequences and their KV cache.

    `logits` holds the raw next-token logits [B, V] of each row (or `hidden` the last hidden state
    [B, H] when `output="hidden"`, for reward/value models). `advance(tokens)` feeds one token per row;
    `select(index)` reorders/duplicates rows (index_select on the cache), which is how N samples share
    one prefill and how search keeps the cache of the branch it chose.
    """

    def __init__(self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                 output: str = "logits", compute: Compute | None = None):
        self.model = model
        self.output = output
        self.compute = compute if compute is not None else Compute()
        self.mask = attention_mask
        self.positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        self.next_pos = self.positions[:, -1] + 1
        self.cache = None
        # what the model's forward takes, looked up once rather than at every decoding step; transformers 5
        # renamed `past_key_values` to `cache` (the old name warns, then goes in 5.40)
        self._cache_name = "cache" if _accepts(model, "cache") else "past_key_values"
        self._keep_last_logits = output != "hidden" and _accepts(model, "logits_to_keep")
        self._run(input_ids, self.mask, self.positions)

    @classmethod
    def from_ids(cls, model: Any, seqs: list[list[int]], pad_id: int, **kw: Any) -> LMState:
        ids, mask = left_pad(seqs, pad_id, model_device(model))
        return cls(model, ids, mask, **kw)

    @property
    def batch_size(self) -> int:
        return int(self.mask.shape[0])

    @torch.no_grad()
    def _run(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> None:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": positions,
                                  self._cache_name: self.cache, "use_cache": True}
        if self.output == "hidden":
            kwargs["output_hidden_states"] = True
        elif self._keep_last_logits:
            kwargs["logits_to_keep"] = 1  # never materialise [B, T, V] logits for the prompt
        out = self.model(**kwargs)
        self.cache = getattr(out, self._cache_name)
        if self.output == "hidden":
            last = getattr(out, "last_hidden_state", None)
            self.hidden = (last if last is not None else out.hidden_states[-1])[:, -1, :]
        else:
            self.logits = out.logits[:, -1, :].float()
        n_real = int(mask[:, -ids.shape[1]:].sum())
        self.compute.add(Compute(forward=ids.shape[0], tokens=n_real, calls=1))

    def advance(self, tokens: torch.Tensor) -> None:
        """Feed one token per row ([B] long)."""
        tokens = tokens.to(self.mask.device).view(-1, 1)
        self.mask = torch.cat([self.mask, torch.ones_like(tokens)], dim=1)
        pos = self.next_pos.view(-1, 1)
        self.next_pos = self.next_pos + 1
        self._run(tokens, self.mask, pos)

    def reserve(self, tokens: int) -> None:
        """Make room in the KV cache for `tokens` more positions per row, so that each later step writes
        its keys and values in place instead of concatenating (copying) the whole cache. Layers of other
        kinds than the plain growing one (sliding windows, quantised, …) are left as they are."""
        from pluralign.decode.cache import DynamicLayer, ReservedLayer

        for layer in getattr(self.cache, "layers", []):
            if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
                ReservedLayer.convert(layer, tokens)

    def select(self, index: torch.Tensor | list[int]) -> None:
        """Keep rows `index` (in that order; repeats duplicate a row and its cache)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        self.next_pos = self.next_pos.index_select(0, index)
        self.cache.reorder_cache(index)
        if self.output == "hidden":
            self.hidden = self.hidden.index_select(0, index)
        else:
            self.logits = self.logits.index_select(0, index)

    def fork(self, index: torch.Tensor | list[int]) -> LMState:
        """A new state with rows `index`, leaving this one untouched (copies the selected cache rows)."""
        import copy

        other = copy.copy(self)
        index = torch.as_tensor(index, dtype=torch.long, device=self.mask.device)
        other.cache = _shallow_cache_copy(self.cache)
        other.select(index)
        return other


def _shallow_cache_copy(cache: Any) -> Any:
    """Copy a cache's containers but not its tensors: `reorder_cache` replaces tensors instead of
    writing into them, so the original keeps its rows."""
    import copy

    layers = getattr(cache, "layers", None)
    if layers is None:
        return copy.deepcopy(cache)
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in layers]
    return new
