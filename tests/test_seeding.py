"""`seeding.seeded`: seeded draws that give every generator back, CUDA's too."""

from __future__ import annotations

import torch

from pluralign import seeding
from pluralign.seeding import seeded


def test_draws_come_from_the_seed_and_the_callers_generator_is_given_back():
    torch.manual_seed(123)
    expected_after = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7):
        first = torch.rand(2)
    with seeded(7):
        again = torch.rand(2)
    torch.testing.assert_close(first, again)
    torch.testing.assert_close(torch.rand(3), expected_after)  # as if nothing had been drawn


def test_every_cuda_device_is_forked(monkeypatch):
    # torch.manual_seed seeds the CUDA generators too: forking only the CPU's (devices=[]) reseeded a GPU
    # caller's CUDA draws whenever a reward head, LoRA or a value head was built
    forked = []

    class Fork:
        def __init__(self, devices):
            forked.append(list(devices))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(seeding.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(seeding.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(seeding.torch.random, "fork_rng", lambda devices: Fork(devices))
    monkeypatch.setattr(seeding.torch, "manual_seed", lambda seed: None)
    with seeded(0):
        pass
    assert forked == [[0, 1]]
