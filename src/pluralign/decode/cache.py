"""A KV-cache layer that decodes without copying the cache at every step (`LMState.reserve`).

transformers' `DynamicLayer` appends each step's keys and values with `torch.cat`, which copies the whole
cache: for small models decoding many rows that copy costs about as much as the step's matrix products.
`ReservedLayer` keeps them in buffers with room to spare and hands the model views of the filled part.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

__all__ = ["DynamicLayer", "ReservedLayer"]


class ReservedLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of the first `length` positions of larger
    buffers: `update` writes the new positions into the buffers (growing them by doubling when full), so a
    decoding step costs no copy of the cache; row selection copies the buffers once. The model sees the
    same [B, heads, length, dim] keys and values as with the plain layer."""

    @classmethod
    def convert(cls, layer: DynamicLayer, extra: int) -> None:
        n = layer.keys.shape[-2]
        layer.__class__ = cls
        layer._kbuf, layer._vbuf = (cls._room(t, n + extra) for t in (layer.keys, layer.values))
        layer._view(n)

    @staticmethod
    def _room(t: torch.Tensor, capacity: int) -> torch.Tensor:
        buf = t.new_empty((*t.shape[:-2], capacity, t.shape[-1]))
        buf.narrow(-2, 0, t.shape[-2]).copy_(t)
        return buf

    def _view(self, n: int) -> None:
        self.keys, self.values = self._kbuf.narrow(-2, 0, n), self._vbuf.narrow(-2, 0, n)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        n, k = self.keys.shape[-2], key_states.shape[-2]
        if n + k > self._kbuf.shape[-2]:
            self._kbuf, self._vbuf = (self._room(t, 2 * (n + k)) for t in (self.keys, self.values))
        self._kbuf.narrow(-2, n, k).copy_(key_states)
        self._vbuf.narrow(-2, n, k).copy_(value_states)
        self._view(n + k)
        return self.keys, self.values

    def _rows(self, index: torch.Tensor) -> None:
        n = self.keys.shape[-2]
        self._kbuf, self._vbuf = self._kbuf.index_select(0, index), self._vbuf.index_select(0, index)
        self._view(n)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._rows(beam_idx.to(self._kbuf.device))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rows(torch.as_tensor(indices, device=self._kbuf.device).flatten())

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rows(torch.arange(self._kbuf.shape[0], device=self._kbuf.device).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0:
            self._view(self.keys.shape[-2] + tokens_to_remove)
        else:
            super().crop(tokens_to_remove)

    def reset(self) -> None:
        del self._kbuf, self._vbuf
        self.__class__ = DynamicLayer
        self.reset()
