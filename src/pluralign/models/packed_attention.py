"""Attention for packed (padding-free) batches: a varlen kernel, or causal SDPA run per packed sequence.

A packed row lays several sequences end to end, their position ids restarting at 0. transformers handles
such a row under SDPA or eager attention by building a [T, T] block-diagonal mask over the whole row, so
attention costs O(T²) time and memory for a row of total length T where the sequences alone need
O(Σ Lᵢ²) — and the masked kernel is the slow one. `use_packed_attention(model, kernel)` switches a model
that runs SDPA or eager attention to one of three kernels that only ever attend within a sequence:

* ``flash``: flash-attn's varlen kernel (Dao, 2023, "FlashAttention-2"), one call over the whole row with
  the cumulative sequence lengths. CUDA only, 16-bit compute (q/k/v are cast to the autocast dtype, or
  bf16), installed with the ``pluralign[flash]`` extra.
* ``flex``: PyTorch FlexAttention with a document-causal block mask (Dong et al., 2024, "Flex Attention").
  Compiled on CUDA; on CPU torch 2.13 has no FlexAttention backward and its eager forward materialises the
  full score matrix, so there it is only good for inference and tests.
* ``sdpa``: unmasked causal SDPA on each sequence's slice of the row, a Python loop of one call per
  sequence and layer.

``auto`` picks flash on CUDA when flash-attn is installed, else sdpa. Measured on CPU (2 shared cores,
8 sequences, 1160 tokens, 6 heads of 64, fp32): the sdpa loop 10.7 ms per layer forward; eager flex
211 ms; compiled flex 12.7 ms after a 31 s compile, forward only. Flex on GPU is unmeasured here (no
GPU was available), so auto does not pick it; `bench/gpu_checks.sh` times it against the loop.

The sequence boundaries are computed once per batch (`packed_kwargs`, one host sync) and reach every
layer as keyword arguments of the forward: no layer reads a device tensor back to the host. Batches that
are not packed (no boundaries) go to transformers' own SDPA unchanged, with its usual mask.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from pluralign.errors import ConfigError

Kernel = Literal["auto", "flash", "flex", "sdpa"]
KERNELS = ("flash", "flex", "sdpa")
PREFIX = "pluralign_packed_"
NAME = PREFIX + "sdpa"  # the default kernel's implementation name


@dataclass(frozen=True)
class Segments:
    """The sequences of one packed row, computed once per batch: host-side bounds for the SDPA loop, the
    device-side cumulative lengths for flash-attn, and FlexAttention's block mask when that kernel runs."""

    bounds: tuple[int, ...]
    cu_seqlens: torch.Tensor
    max_length: int
    block_mask: Any = None


def flash_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


_FLEX_ON_CPU = ("attention_kernel=flex cannot train on CPU (torch has no FlexAttention backward there); "
                "use attention_kernel=sdpa")


def resolve_kernel(kernel: str, device: torch.device, trains: bool = False) -> str:
    """The kernel `kernel` means for a model on `device` (that `trains`, or only scores); a ConfigError when it
    cannot run there."""
    if kernel not in ("auto", *KERNELS):
        raise ConfigError(f"attention_kernel must be one of auto, {', '.join(KERNELS)}; got {kernel!r}")
    if kernel == "flex" and trains and device.type != "cuda":  # else found at the first backward, after a reference pass
        raise ConfigError(_FLEX_ON_CPU)
    if kernel == "auto":
        return "flash" if device.type == "cuda" and flash_available() else "sdpa"
    if kernel == "flash" and (device.type != "cuda" or not flash_available()):
        raise ConfigError("attention_kernel=flash needs a CUDA device and flash-attn (pip install 'pluralign[flash]')")
    return kernel


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: q [1, H, T, D], k/v [1, H_kv, T, D] → ([1, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments: Segments | None = kwargs.get("pluralign_segments")
    if segments is None or query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    p = dropout if module.training else 0.0
    kernel = module.config._attn_implementation.removeprefix(PREFIX)
    if kernel == "flash":
        return _flash(query, key, value, segments, p, scaling), None
    if kernel == "flex":
        if p:
            raise ConfigError("attention_kernel=flex does not support attention dropout; use sdpa")
        return _flex(query, key, value, segments, scaling), None
    return _sdpa_loop(query, key, value, segments, p, scaling), None


def _sdpa_loop(query, key, value, segments: Segments, p: float, scaling: float | None) -> torch.Tensor:
    from transformers.integrations.sdpa_attention import repeat_kv

    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    b = segments.bounds
    parts = [F.scaled_dot_product_attention(query[:, :, x:y], key[:, :, x:y], value[:, :, x:y], dropout_p=p,
                                            is_causal=True, scale=scaling)
             for x, y in zip(b[:-1], b[1:], strict=True) if y > x]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous()


def _flash(query, key, value, segments: Segments, p: float, scaling: float | None) -> torch.Tensor:
    from flash_attn import flash_attn_varlen_func

    # flash-attn computes in 16 bits only: the autocast dtype when autocast is on, else bf16 for fp32 inputs.
    dtype = query.dtype
    if dtype not in (torch.float16, torch.bfloat16):
        dtype = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
    q, k, v = (t[0].transpose(0, 1).to(dtype) for t in (query, key, value))  # [T, H, D]; GQA is native
    out = flash_attn_varlen_func(q, k, v, segments.cu_seqlens, segments.cu_seqlens, segments.max_length,
                                 segments.max_length, dropout_p=p, softmax_scale=scaling, causal=True)
    return out.unsqueeze(0).to(query.dtype)


@functools.cache
def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if compiled else flex_attention


def _flex(query, key, value, segments: Segments, scaling: float | None) -> torch.Tensor:
    import warnings

    if not query.is_cuda and torch.is_grad_enabled() and query.requires_grad:
        raise ConfigError(_FLEX_ON_CPU)
    with warnings.catch_warnings():  # eager flex on CPU warns that it is unfused: known, see the module doc
        warnings.simplefilter("ignore", UserWarning)
        out = _flex_fn(query.is_cuda)(query, key, value, block_mask=segments.block_mask, scale=scaling,
                                      enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous()


def _document_mask(bounds: tuple[int, ...], device: torch.device) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    lengths = torch.tensor([y - x for x, y in zip(bounds[:-1], bounds[1:], strict=True)], device=device)
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)

    def document_causal(b, h, q, k):
        return (doc[q] == doc[k]) & (q >= k)

    total = bounds[-1]
    return create_block_mask(document_causal, None, None, total, total, device=device, _compile=device.type == "cuda")


def _mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """No mask for a batch without padding (packed rows are split by boundaries instead); SDPA's otherwise."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    for kernel in KERNELS:
        AttentionInterface.register(PREFIX + kernel, packed_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(PREFIX + kernel, _mask)


def use_packed_attention(model: Any, kernel: Kernel = "auto", trains: bool = False) -> str | None:
    """Switch `model` (a transformers model, possibly wrapped by peft) to pluralign's packed attention with
    `kernel` (see the module doc) when it runs SDPA or eager attention with full causal attention; return the
    implementation it replaced, or None when it left the model alone. Sliding-window and other non-causal
    masks keep transformers' own implementation (which handles packing through its mask)."""
    config = getattr(model, "config", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if config is None or not hasattr(base, "set_attn_implementation"):
        return None
    before = config._attn_implementation
    if before.startswith(PREFIX):
        before = "sdpa"
    elif before not in ("sdpa", "eager") or getattr(config, "sliding_window", None) \
            or not getattr(config, "is_causal", True) or not getattr(base, "_supports_attention_backend", False):
        return None
    device = next(base.parameters()).device
    _register()
    base.set_attn_implementation(PREFIX + resolve_kernel(kernel, device, trains))
    return before


def reads_segments(model: Any) -> bool:
    """Whether `model` runs pluralign's packed attention (and so needs `packed_kwargs`)."""
    implementation = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    return implementation.startswith(PREFIX)


def packed_kwargs(position_ids: torch.Tensor, kernel: str = "sdpa") -> dict[str, Any]:
    """The forward keywords of a packed row [1, T] (sequences start where the position id is 0): flash-attn's
    varlen keywords (which transformers' own flash implementations read) and pluralign's `Segments` for
    `kernel`. The one host sync of the batch happens here."""
    row = position_ids[0]
    starts = (row == 0).nonzero().flatten().tolist()
    bounds = (*([0] if not starts or starts[0] else []), *starts, row.shape[0])
    cu = torch.tensor(bounds, dtype=torch.int32).to(row.device, non_blocking=True)
    longest = max(y - x for x, y in zip(bounds[:-1], bounds[1:], strict=True))
    mask = _document_mask(bounds, row.device) if kernel == "flex" else None
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest,
            "pluralign_segments": Segments(bounds, cu, longest, mask)}
