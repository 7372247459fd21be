"""`Snapshot`: the policy at one moment (a moving reference, MNPO's past policies). Under LoRA it keeps the
trainable weights alone and swaps them in for a forward; it must compute what a full frozen copy computes and
leave the policy exactly as it was."""

from __future__ import annotations

import pytest
import torch

from pluralign.models import tiny
from pluralign.models.logprobs import token_logps
from pluralign.train.reference import Snapshot, frozen_copy

peft = pytest.importorskip("peft")


def lora_policy():
    torch.manual_seed(0)
    base = tiny.tiny_llama(40, hidden_size=32, num_heads=2)
    config = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return peft.get_peft_model(base, config)


def batch():
    ids = torch.randint(0, 40, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    completion = torch.zeros_like(ids)
    completion[:, 4:] = 1
    return ids, mask, completion


def logps(model):
    with torch.no_grad():
        return token_logps(model.eval(), *batch())


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_a_lora_snapshot_computes_what_a_frozen_copy_does_and_leaves_the_policy_as_it_was():
    policy = lora_policy()
    snap, copy = Snapshot(policy), frozen_copy(policy)
    with torch.no_grad():  # training moves the adapters on
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    moved = trainable(policy)
    assert not torch.allclose(logps(policy), logps(copy))
    with snap.model() as m:
        torch.testing.assert_close(logps(m), logps(copy), rtol=0, atol=1e-6)
    for n, p in trainable(policy).items():
        assert torch.equal(p, moved[n]), n
    # only the adapters are held: a small fraction of the model, no second copy of the base
    assert snap.copy is None and set(snap.weights) == set(moved)
    assert sum(v.numel() for v in snap.weights.values()) < sum(p.numel() for p in policy.parameters()) / 4


def test_snapshot_state_round_trips_and_reads_a_full_state_dict():
    policy = lora_policy()
    copy = frozen_copy(policy)
    expected = logps(copy)
    state = Snapshot(policy).state_dict()
    with torch.no_grad():
        next(p for p in policy.parameters() if p.requires_grad).add_(1.0)
    for saved in (state, copy.state_dict()):  # its own state; an older checkpoint's full state dict
        snap = Snapshot(policy)
        snap.load_state_dict(saved)
        with snap.model() as m:
            torch.testing.assert_close(logps(m), expected, rtol=0, atol=1e-6)


def test_a_snapshot_without_adapters_is_a_frozen_copy_that_take_refreshes():
    torch.manual_seed(0)
    policy = tiny.tiny_llama(40, hidden_size=32, num_heads=2)
    snap = Snapshot(policy)
    before = logps(policy)
    with torch.no_grad():
        policy.lm_head.weight.add_(0.5)
    with snap.model() as m:
        assert m is not policy
        torch.testing.assert_close(logps(m), before, rtol=0, atol=0)
    snap.take()
    with snap.model() as m:
        torch.testing.assert_close(logps(m), logps(policy), rtol=0, atol=0)


def test_a_live_reference_with_adapters_off_runs_without_dropout_and_keeps_the_training_mode():
    # with disable_dropout false the base's dropout made every live reference draw differ from the cached one
    from pluralign.train.reference import live_reference

    policy = lora_policy()
    for layer in policy.get_base_model().model.layers:
        layer.self_attn.attention_dropout = 0.5
    with torch.no_grad(), policy.disable_adapter():
        expected = token_logps(policy.eval(), *batch())
    policy.train()
    reference = live_reference(None, lambda m, b: token_logps(m, *b))
    with torch.no_grad():
        first, second = reference(policy, batch()), reference(policy, batch())
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    assert policy.training and policy.get_base_model().model.layers[0].training
