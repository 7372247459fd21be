"""Rewarded soups as they load: LoRA members saved as adapter directories (merge_lora=false) mix their merged
deltas, Σ λ_i B_i A_i, not the factors apart, (Σ λ_i B_i)(Σ λ_i A_i); members of different models are refused."""

from __future__ import annotations

import torch

from pluralign import conditioning
from pluralign.decode.steer import load_policy
from pluralign.models import tiny
from pluralign.models.load import LoraSpec, add_lora, load_model, save_model
from pluralign.models.soup import interpolate, save_soup

IDS = torch.tensor([[1, 4, 5, 6, 2]])


def adapter_soup(tmp_path):
    """A soup of two LoRA members with different random A and B, each saved as an adapter directory."""
    tok = tiny.word_tokenizer("the a cat dog sat on mat yes no".split())
    base = save_model(tiny.tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                      tok, tmp_path / "base")
    members = []
    for k in range(2):
        model = add_lora(load_model(str(base)), LoraSpec(r=4, alpha=8))
        gen = torch.Generator().manual_seed(10 + k)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:  # B is zero at init: a member must move it to differ from the base
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        members.append(save_model(model, tok, tmp_path / f"member{k}", merge_lora=False))
    return base, members, save_soup(members, ["a", "b"], tmp_path / "soup")


def logits_of(model):
    with torch.no_grad():
        return model(IDS).logits


def test_an_adapter_soup_mixes_the_merged_deltas(tmp_path):
    base, members, soup = adapter_soup(tmp_path)
    model, _ = load_policy(soup)
    scheme = conditioning.attached(model)
    merged = [load_model(str(m)).merge_and_unload().state_dict() for m in members]
    for weights in ([0.3, 0.7], [1.0, 0.0], [0.0, 1.0]):
        with scheme.steer(model, scheme.condition(weights=weights)):
            got = logits_of(model)
        want = load_model(str(base))
        want.load_state_dict(interpolate(merged, weights))  # θ_0 + Σ λ_i B_i A_i (scaled), as Σ λ_i = 1
        assert torch.allclose(got, logits_of(want), atol=1e-5), weights
    assert torch.equal(logits_of(model), logits_of(load_model(str(members[0])).merge_and_unload()))  # restored


def test_members_of_different_models_are_refused_when_the_soup_loads(tmp_path, capsys):
    from pluralign.cli import main

    tok = tiny.word_tokenizer("the a cat dog sat on mat yes no".split())
    members = [save_model(tiny.tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=size),
                          tok, tmp_path / f"m{size}") for size in (32, 64)]
    soup = save_soup(members, ["a", "b"], tmp_path / "soup")
    (tmp_path / "p.txt").write_text("the cat\n")
    assert main(["decode", "--method", "sample", "--model", str(soup), "--weights", "a=0.5,b=0.5", "--prompts",
                 str(tmp_path / "p.txt"), "--out", str(tmp_path / "o.jsonl"), "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert "soup member 1 (../m64): parameter model.layers.0.mlp.gate_proj.weight has shape (64, 16)" in err
