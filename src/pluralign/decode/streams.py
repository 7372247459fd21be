"""Per-sample random streams: every sample draws from its own stream, seeded by the request's seed, what it is
drawn for (its prompt) and which of that prompt's samples it is. A seeded prompt's answer is then the same
whatever else is decoded beside it (other prompts, their order, the batch size), while rows still share one
batched draw (`pluralign.decode.sampler.draw`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch


def row_seed(seed: int, key: Any, index: int = 0) -> int:
    """The seed of one row's random stream: a hash of the request's `seed`, what the row is drawn for (`key`:
    its prompt's token ids, or the prompt itself) and which of that prompt's samples it is. Equal for the same
    request whatever is decoded beside it; unrelated for two prompts or two samples of one prompt."""
    text = json.dumps([int(seed), int(index), key], sort_keys=True, default=str, separators=(",", ":"))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def occurrences(keys: Sequence[Any]) -> list[int]:
    """For each key, how many earlier entries equal it: a prompt repeated in one call (a file, a request)
    takes its next draws (`row_seed`'s index), so repeating a prompt still gives independent samples, while
    no other prompt changes what it draws."""
    seen: dict[Any, int] = {}
    out = []
    for k in keys:
        out.append(seen.get(k, 0))
        seen[k] = out[-1] + 1
    return out


def repeat_seeds(seeds: Sequence[int | None], keys: Sequence[Any]) -> list[int | None]:
    """The seed of each row for a decoder that decodes a call's rows one at a time (a `sample` call each, so
    `sample` cannot see that a prompt repeats): a prompt's first occurrence keeps its request's seed (its
    answer alone), each repeat gets one derived from it (`row_seed`, its `occurrences` index), so a prompt
    repeated in one call still gets independent answers, as from `sample`; None stays None."""
    occ = occurrences([(s, k) for s, k in zip(seeds, keys, strict=True)])
    return [s if s is None or k == 0 else row_seed(s, ["repeat", key], k)
            for s, key, k in zip(seeds, keys, occ, strict=True)]


def seeded_generator(seed: int | None, key: Any, index: int = 0) -> torch.Generator | None:
    """A CPU generator for one request's own draws besides its samples' (a selection, an acceptance test), or
    None (the global one) for no seed. Seeded apart from the samples' streams (`row_seed` of a tagged key): with
    the key a prompt given as token ids, it was sample 0's stream, and soft best-of-n chose candidate 0 more
    often where that candidate's first token came early in the vocabulary."""
    return None if seed is None else torch.Generator().manual_seed(row_seed(seed, ["generator", key], index))


class RowStreams:
    """Uniforms in [0, 1), one stream per row of a batch (`seeds[r]`: `row_seed`, or None for the global
    generator): a seeded request draws the same answer whatever other prompts, positions or batch sizes it
    is decoded with, while the rows still share one batched draw (`draw`). Each call of `uniforms(rows)`
    takes the next number of each listed row's own stream; they are made on the CPU (the same numbers on any
    device) a block at a time."""

    BLOCK = 64

    def __init__(self, seeds: Sequence[int | None]):
        self.gens = [None if s is None else torch.Generator().manual_seed(s) for s in seeds]
        self.buf = torch.empty(len(seeds), self.BLOCK, dtype=torch.float64)
        self.pos = torch.zeros(len(seeds), dtype=torch.long)

    def uniforms(self, rows: Sequence[int], device: Any = None) -> torch.Tensor:
        """The next uniform of each row in `rows` [len(rows)], on `device`."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        at = self.pos[idx] % self.BLOCK
        for r in idx[at == 0].tolist():  # a row whose block is used up draws its next one
            self.buf[r] = torch.rand(self.BLOCK, generator=self.gens[r], dtype=torch.float64)
        self.pos[idx] += 1
        return self.buf[idx, at].to(device)
