"""Per-person activation offsets: one vector per user (or group) added to a model's hidden states.

Two methods share this mechanism. User-conditioned DPO learns the vectors (a user embedding that feeds
the policy, in the spirit of PAL's per-user weights, Chen et al. ICLR 2025, and of prompt tuning); PAS
(Zhu et al. ICLR 2025) computes them training-free from the user's chosen/rejected answers. Either way
the offset is added to the output of one module (the token embeddings, or one decoder layer's residual
stream) at every position through a forward hook, so it works for any Hugging Face causal LM, in
training batches (padded or packed) and while decoding with a KV cache.

Row 0 of a `PersonVectors` table is the population: fixed at zero, so "no person" is exactly the
unconditioned model, and an unknown person falls back to it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from pluralign.errors import ConfigError

POPULATION = "<population>"


def site(model: Any, layer: str | int) -> torch.nn.Module:
    """The module whose output gets the offset: "embeddings" (the input token embeddings) or a decoder
    layer index (its output is the residual stream after that layer; negative counts from the end)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if layer == "embeddings":
        return base.get_input_embeddings()
    try:
        index = int(layer)
    except (TypeError, ValueError):
        raise ConfigError(f"conditioning layer {layer!r}: expected 'embeddings' or a decoder layer index") from None
    layers = base.get_decoder().layers
    if not -len(layers) <= index < len(layers):
        raise ConfigError(f"conditioning layer {index}: the model has {len(layers)} decoder layers")
    return layers[index]


def hidden_size(model: Any) -> int:
    return int(model.get_input_embeddings().weight.shape[1])


@contextlib.contextmanager
def offset(module: torch.nn.Module, value: torch.Tensor | None) -> Iterator[None]:
    """Add `value` (broadcastable to the module's output [N, T, d], e.g. [d], [N, 1, d] or [1, T, d]) to
    the output of `module` while the context is open. None or an all-zero constant adds nothing."""
    if value is None:
        yield
        return

    def hook(_module, _inputs, output):  # on the output's device: a scheme's vectors stay where they were loaded
        if isinstance(output, tuple):  # older decoder layers return (hidden, ...)
            return (output[0] + value.to(output[0].device, output[0].dtype),) + output[1:]
        return output + value.to(output.device, output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def n_rows(batch: dict) -> int:
    """Sequences in a collated batch (padded: rows of input_ids; packed: entries of seq_lengths)."""
    return len(batch["seq_lengths"]) if "seq_lengths" in batch else int(batch["input_ids"].shape[0])


def per_row(vectors: torch.Tensor, batch: dict) -> torch.Tensor:
    """Offsets for a collated batch: `vectors` [N, d] holds sequence i's vector; padded batches get
    [N, 1, d], packed ones (`seq_lengths`, all sequences in one row) a per-token [1, T, d]."""
    if "seq_lengths" in batch:
        lengths = batch["seq_lengths"].to(vectors.device).long()
        return vectors.repeat_interleave(lengths, dim=0)[None]
    return vectors[:, None, :]


class PersonVectors(torch.nn.Module):
    """A table of named vectors [len(names) + 1, d], row 0 the population (always zero).

    The stored parameter is divided by `scale`: Adam moves each entry by about the learning rate per
    step whatever the gradient's size, so `scale` multiplies the vectors' effective learning rate (a
    vector in embedding space needs far larger steps than a fine-tuned weight)."""

    def __init__(self, names: Sequence[str], dim: int, *, scale: float = 1.0, frozen: Sequence[str] = (),
                 basis: torch.Tensor | None = None, values: Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        names = list(names)
        if len(set(names)) != len(names) or POPULATION in names:
            raise ConfigError("person vectors: names must be distinct and not the population's")
        self.names, self.scale = names, float(scale)
        self.index = {n: i + 1 for i, n in enumerate(names)}
        start = torch.zeros(len(names), dim)  # `values`: rows as stored (divided by scale), by name
        for name, row in (values or {}).items():
            start[self.index[name] - 1] = row.detach()
        self.raw = torch.nn.Parameter(start)
        # Rows that must not move (a new user's fit trains only the new rows). They are read from a copy:
        # AdamW's weight decay shrinks every entry of a parameter it holds, with or without gradient.
        self.register_buffer("trainable", torch.tensor([n not in set(frozen) for n in names], dtype=torch.bool),
                             persistent=False)
        self.register_buffer("fixed", start.clone(), persistent=False)
        # PAL-style new users (Chen et al. 2025: a new user is a softmax mixture of learned prototypes): the
        # trainable rows are softmax(logits) @ basis, a convex combination of the trained vectors, so a few
        # pairs choose among known preferences instead of searching the whole activation space.
        self.register_buffer("basis", None if basis is None else basis.detach().clone(), persistent=False)
        if basis is not None:
            self.mix = torch.nn.Parameter(torch.zeros(int(self.trainable.sum()), len(basis)))
            self.raw.requires_grad_(False)  # every trainable row is a mixture: `raw` trains nothing

    def table(self) -> torch.Tensor:
        raw = torch.where(self.trainable[:, None], self.raw, self.fixed) * self.scale
        if self.basis is not None:  # in fp32: under the loop's 16-bit autocast the matmul would come out bf16
            with torch.autocast(self.mix.device.type, enabled=False):
                mixed = torch.softmax(self.mix, -1) @ self.basis
            raw = raw.masked_scatter(self.trainable[:, None].expand_as(raw), mixed)
        return torch.cat([raw.new_zeros(1, raw.shape[1]), raw])

    def lookup(self, names: Sequence[str | None]) -> torch.Tensor:
        """Row indices of `names` (None or an unknown name: 0, the population)."""
        return torch.tensor([self.index.get(n, 0) if n is not None else 0 for n in names], dtype=torch.long)

    def vectors(self, index: torch.Tensor) -> torch.Tensor:
        return self.table()[index.to(self.raw.device)]

    def get(self, name: str) -> torch.Tensor:
        return self.table()[self.index[name]].detach()

    def stored(self) -> torch.Tensor:
        """The rows as saved (divided by `scale`), mixtures resolved."""
        return (self.table()[1:] / self.scale).detach()
