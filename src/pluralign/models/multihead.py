"""A causal LM with K output heads on one trunk: MAH-DPO (multi-action-head DPO; pearls-lab/multiobj-align,
`MultiHeadCausalLM`; shared/specs/training.md §4.1).

`MultiHead` replaces the model's LM head. Head 0 is the original head's weight (kept as ``weight``, so a
saved model still loads as a plain causal LM whose head is head 0) and heads 1..K−1 are extra weights
(``extra`` [K−1, V, H], saved alongside as ``lm_head.extra``). In training each example's log-probs go
through its objective's head (`pluralign.models.logprobs.sequence_logps` with ``heads``), so head k
learns only from objective k's pairs while the trunk learns from all. At inference the logits are mixed
by the request's weights, Σ_k w_k·W_k h = (Σ_k w_k W_k) h: one matmul with the mixed weight.

Initialisation as MAH-DPO's ``equal_init``: every head is the original head plus 0.001·N(0, I), seeded
42 + 100·k; the reference is the unperturbed original (so cached reference log-probs of the base apply).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pluralign.conditioning import Condition, Scheme, register
from pluralign.errors import ConfigError
from pluralign.models.logprobs import unwrap


class MultiHead(nn.Linear):
    """K bias-free LM heads; `forward` applies the mixture set by `mix` (default: uniform)."""

    def __init__(self, base: nn.Linear, k: int, *, noise: float = 1e-3, seed: int = 42):
        if base.bias is not None:
            raise ConfigError("MAH-DPO heads: the LM head has a bias, which multi-head mixing does not support")
        if k < 1:
            raise ConfigError(f"MAH-DPO needs at least one head, got {k}")
        super().__init__(base.in_features, base.out_features, bias=False, device=base.weight.device,
                         dtype=base.weight.dtype)
        original = base.weight.detach().clone()
        self.weight = nn.Parameter(original + noise * _noise(original, seed))
        self.extra = nn.Parameter(torch.stack([original + noise * _noise(original, seed + 100 * i)
                                               for i in range(1, k)]) if k > 1 else original.new_zeros(0, *original.shape))
        self.register_buffer("mix", torch.full((k,), 1.0 / k, dtype=original.dtype), persistent=False)

    @property
    def k(self) -> int:
        return 1 + self.extra.shape[0]

    def head_weight(self, k: int) -> torch.Tensor:
        return self.weight if k == 0 else self.extra[k - 1]

    def heads(self) -> list[nn.Module]:
        return [_HeadView(self, k) for k in range(self.k)]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        w = self.mix.to(self.weight.dtype)
        mixed = w[0] * self.weight + (torch.einsum("k,kvh->vh", w[1:], self.extra) if self.k > 1 else 0)
        return F.linear(hidden, mixed)


class _HeadView(nn.Module):
    """Head k of a MultiHead as a module of its own (what the chunked log-prob code calls)."""

    def __init__(self, parent: MultiHead, k: int):
        super().__init__()
        self.parent, self.k = [parent], k  # a list: not registered as a submodule
        self.out_features = parent.out_features

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        return self.parent[0].parameters(recurse)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.parent[0].head_weight(self.k))


def _noise(like: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(like.shape, generator=gen, dtype=torch.float32).to(like.device, like.dtype)


def install_heads(model: Any, k: int, *, noise: float = 1e-3, seed: int = 42) -> MultiHead:
    """Replace `model`'s LM head by K heads (untying it from the input embeddings first)."""
    inner = unwrap(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    base = inner.get_output_embeddings()
    if isinstance(base, MultiHead):
        return base
    heads = MultiHead(base, k, noise=noise, seed=seed)
    inner.set_output_embeddings(heads)
    inner.config.tie_word_embeddings = False
    if hasattr(inner.config, "get_text_config"):
        inner.config.get_text_config().tie_word_embeddings = False
    return heads


def multihead_of(model: Any) -> MultiHead | None:
    inner = unwrap(model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    head = inner.get_output_embeddings()
    return head if isinstance(head, MultiHead) else None


@contextlib.contextmanager
def mixed(model: Any, weights: Sequence[float]) -> Iterator[Any]:
    """Within the context the model's logits are Σ_k w_k·logits_k."""
    head = multihead_of(model)
    if head is None:
        raise ConfigError("this model has no MAH-DPO heads")
    w = torch.as_tensor(list(weights), dtype=head.mix.dtype, device=head.mix.device)
    if w.shape != head.mix.shape:
        raise ConfigError(f"weights: {w.numel()} given for {head.k} heads")
    old = head.mix.clone()
    head.mix.copy_(w)
    try:
        yield model
    finally:
        head.mix.copy_(old)


@register("heads")
class Heads(Scheme):
    """MAH-DPO: head k is objective k's; a request's weights mix the heads' logits (uniform by default)."""

    reads = ("weights",)
    model_level = True
    saved_keys = ("lm_head.extra",)

    def __init__(self, objectives: Sequence[str] = (), *, noise: float = 1e-3, seed: int = 42):
        super().__init__(objectives, noise=float(noise), seed=int(seed))  # `install_heads`' settings

    @contextlib.contextmanager
    def steer(self, model: Any, condition: Condition) -> Iterator[Any]:
        k = len(self.objectives)
        weights = condition.weights if condition.weights is not None else (1.0 / k,) * k
        with mixed(model, weights):
            yield model

    def attach(self, model: Any, model_dir: Path) -> Any:
        from safetensors import safe_open

        files = sorted(Path(model_dir).glob("*.safetensors"))
        extra = None
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                key = next((k for k in st.keys() if k.endswith("lm_head.extra")), None)
                if key is not None:
                    extra = st.get_tensor(key)
        if extra is None and len(self.objectives) > 1:
            raise ConfigError(f"{model_dir}: conditioning 'heads' but no lm_head.extra weights in its safetensors")
        heads = install_heads(model, len(self.objectives), noise=0.0)
        with torch.no_grad():
            if extra is not None:
                heads.extra.copy_(extra.to(heads.extra.dtype))
        return model
