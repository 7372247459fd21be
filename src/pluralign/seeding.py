"""Seeded draws that leave the caller's random generators as they were."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draws inside (a reward head's, LoRA's or a value head's initial weights, a tiny model's) come from
    `seed`; torch's CPU generator and every CUDA device's are given back as they were after. `torch.manual_seed`
    seeds the CUDA generators too, so forking the CPU generator alone (``fork_rng(devices=[])``) left a GPU
    caller's CUDA draws reseeded by every model built."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
