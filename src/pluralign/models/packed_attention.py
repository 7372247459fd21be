"""Attention for packed (padding-free) batches without flash-attn: causal SDPA run per packed sequence.

A packed row lays several sequences end to end, their position ids restarting at 0. transformers handles
such a row under SDPA or eager attention by building a [T, T] block-diagonal mask over the whole row, so
attention costs O(T²) time and memory for a row of total length T where the sequences alone need
O(Σ Lᵢ²) — and the masked kernel is the slow one. With flash-attn, varlen kernels avoid this; on CPUs and
GPUs without it, `packed_sdpa` slices the row at the sequence boundaries (`cu_seq_lens_q`, the same keyword
flash-attn's varlen path reads) and runs unmasked causal SDPA on each slice.

`use_packed_attention(model)` switches a model that uses SDPA or eager attention to it; batches that are
not packed (no `cu_seq_lens_q`) go to transformers' own SDPA unchanged, with its usual mask.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NAME = "pluralign_packed_sdpa"


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: q [1, H, T, D], k/v [1, H_kv, T, D] → ([1, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    bounds = bounds.tolist()
    p = dropout if module.training else 0.0
    parts = [F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], dropout_p=p,
                                            is_causal=True, scale=scaling)
             for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def _mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """No mask for a batch without padding (packed rows are sliced instead); SDPA's mask otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(NAME, packed_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, _mask)


def use_packed_attention(model: Any) -> str | None:
    """Switch `model` (a transformers model, possibly wrapped by peft) to `packed_sdpa` when it runs SDPA or
    eager attention with full causal attention; return the implementation it replaced, or None when it
    left the model alone. Sliding-window and other non-causal masks keep transformers' own implementation
    (which handles packing through its mask)."""
    config = getattr(model, "config", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if config is None or not hasattr(base, "set_attn_implementation"):
        return None
    before = config._attn_implementation
    if before not in ("sdpa", "eager") or getattr(config, "sliding_window", None) \
            or not getattr(config, "is_causal", True) or not getattr(base, "_supports_attention_backend", False):
        return None
    _register()
    base.set_attn_implementation(NAME)
    return before


def packed_kwargs(position_ids: torch.Tensor) -> dict[str, Any]:
    """The flash-attn varlen keywords of a packed row [1, T] (sequences start where the position id is 0)."""
    starts = (position_ids[0] == 0).nonzero().flatten()
    bounds = torch.cat([starts, starts.new_tensor([position_ids.shape[1]])]).to(torch.int32)
    longest = int((bounds[1:] - bounds[:-1]).max())
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}
