"""Chunked completion log-probs: equal to the full-logits computation (values and gradients), the same
for left/right padding and packing, never materializing the batch's full-vocabulary logits."""

from __future__ import annotations

import pytest
import torch

from pluralign.data.collate import PairwiseCollator, UnpairedCollator
from pluralign.data.records import Binary, Pairwise
from pluralign.errors import PluralignError
from pluralign.models import LoraSpec, add_lora, pairwise_logps, sequence_logps, tiny, token_logps
from pluralign.models.logprobs import prepare_packing
from pluralign.models.packed_attention import NAME, flash_available, packed_attention, use_packed_attention

PAIRS = [
    Pairwise("what is the cat ?", "the cat sat on the mat .", "no"),
    Pairwise("hello", "hello world", "the big red dog ran under the rug and was happy"),
    Pairwise("why is the dog sad ?", "the dog is sad", "the dog was bad , the dog is sad ."),
]


BUILDERS = {"llama": tiny.tiny_llama, "gpt2": tiny.tiny_gpt2, "qwen2": tiny.tiny_qwen2}
CUDA = torch.cuda.is_available()


def build(arch: str, vocab_size: int, attn: str = "sdpa", device: str = "cpu") -> torch.nn.Module:
    """`attn`: a transformers attention implementation, "packed" for pluralign's per-sequence SDPA, or
    "packed-<kernel>" for another packed-attention kernel."""
    extra = {"num_kv_heads": 1} if arch == "qwen2" else {}  # grouped-query attention: 2 query heads per kv head
    model = BUILDERS[arch](vocab_size, hidden_size=32, num_heads=2, **extra).eval().to(device)  # eval: dropout
    model.config._attn_implementation = "sdpa" if attn.startswith("packed") else attn
    if attn.startswith("packed"):
        assert use_packed_attention(model, attn.partition("-")[2] or "sdpa") == "sdpa"
    return model


def naive_token_logps(model, batch):
    """The reference: the model's full logits, log-softmax in fp32, gathered and masked."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    picked = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return torch.nn.functional.pad(picked * batch["completion_mask"][:, 1:], (1, 0))


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_chunked_equals_full_logits_values_and_gradients(tiny_word_tokenizer, arch):
    model = build(arch, len(tiny_word_tokenizer))
    batch = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    weights = torch.linspace(0.5, 1.5, batch["input_ids"].numel()).view_as(batch["input_ids"])

    expected = naive_token_logps(model, batch)
    (expected * weights).sum().backward()
    expected_grads = grads(model)
    model.zero_grad()

    got = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"], chunk_size=7)
    (got * weights).sum().backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    got_grads = grads(model)
    assert got_grads.keys() == expected_grads.keys()
    for name, g in expected_grads.items():
        torch.testing.assert_close(got_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa"), ("llama", "packed"),
                                       ("gpt2", "packed"), ("qwen2", "packed")])
def test_left_right_and_packed_give_the_same_logps(tiny_word_tokenizer, arch, attn):
    model = build(arch, len(tiny_word_tokenizer), attn)
    results = []
    for options in ({"padding_side": "right"}, {"padding_side": "left"}, {"packing": True}):
        batch = PairwiseCollator(tiny_word_tokenizer, **options)(PAIRS)
        model.zero_grad()
        sums, lengths = sequence_logps(model, batch)
        sums.sum().backward()
        results.append((sums.detach(), lengths, grads(model)))
    (right, n_right, g_right), *others = results
    assert n_right.tolist() == [8, 3, 5, 2, 12, 11]  # completion tokens incl. EOS
    for sums, lengths, g in others:
        torch.testing.assert_close(sums, right, atol=1e-5, rtol=1e-5)
        assert lengths.tolist() == n_right.tolist()
        for name, value in g_right.items():
            torch.testing.assert_close(g[name], value, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attn", ["sdpa", "packed"])
def test_packed_sequences_do_not_attend_to_each_other(tiny_word_tokenizer, attn):
    model = build("llama", len(tiny_word_tokenizer), attn)
    collate = PairwiseCollator(tiny_word_tokenizer, packing=True)
    alone, _ = sequence_logps(model, collate(PAIRS[1:2]))
    together, _ = sequence_logps(model, collate(PAIRS))
    torch.testing.assert_close(together[[1, 4]], alone, atol=1e-5, rtol=1e-5)


def test_head_sees_only_completion_positions_in_chunks(tiny_word_tokenizer):
    model = build("llama", len(tiny_word_tokenizer))
    batch = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    calls = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: calls.append(o.shape))
    sums, lengths = sequence_logps(model, batch, chunk_size=8)
    sums.sum().backward()
    hook.remove()
    own = [s for s in calls if len(s) == 3]  # the model's own forward, asked for its last position only
    assert own == [torch.Size([6, 1, len(tiny_word_tokenizer)])]
    # [rows, vocab]: never [batch, time, vocab]; the first is the model's one head check (a row's last position)
    check, *chunks = [s[0] for s in calls if len(s) == 2]
    assert check == 6
    n_predicted = int(lengths.sum())
    forward_rows = chunks[: -(-n_predicted // 8)]
    assert sum(forward_rows) == n_predicted and max(forward_rows) == 8
    assert len(chunks) == 2 * len(forward_rows)  # backward recomputes each chunk once


def test_every_token_is_scored_without_a_completion_mask_but_never_across_packed_rows(tiny_word_tokenizer):
    model = build("gpt2", len(tiny_word_tokenizer))
    padded = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    packed = PairwiseCollator(tiny_word_tokenizer, packing=True)(PAIRS)
    padded["completion_mask"] = padded["attention_mask"].clone()
    packed["completion_mask"] = torch.ones_like(packed["completion_mask"])
    with torch.no_grad():
        padded_sums, padded_n = sequence_logps(model, padded)
        packed_sums, packed_n = sequence_logps(model, packed)
        all_tokens = token_logps(model, padded["input_ids"], padded["attention_mask"])
    assert packed_n.tolist() == padded_n.tolist() == (padded["attention_mask"].sum(-1) - 1).tolist()
    torch.testing.assert_close(packed_sums, padded_sums, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(all_tokens.sum(-1), padded_sums)


def test_pairwise_and_kl_prefix(tiny_word_tokenizer):
    model = build("llama", len(tiny_word_tokenizer))
    batch = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    with torch.no_grad():
        out = pairwise_logps(model, batch)
        sums, lengths = sequence_logps(model, batch)
    assert torch.equal(out.chosen, sums[:3]) and torch.equal(out.rejected, sums[3:])
    assert out.chosen_lengths.tolist() == [8, 3, 5] and (out.chosen < 0).all()

    records = [Binary(p.prompt, p.chosen, True) for p in PAIRS]
    unpaired = UnpairedCollator(tiny_word_tokenizer)(records)
    with torch.no_grad():
        kl, kl_lengths = sequence_logps(model, unpaired, prefix="kl_")
    assert kl_lengths.tolist() == [5, 8, 3]  # prompt i scored with the response of record i-1


def test_lora_model_matches_its_own_logits(tiny_word_tokenizer):
    model = add_lora(build("llama", len(tiny_word_tokenizer)), LoraSpec(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # fresh LoRA B is zero; make the adapters matter
    batch = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    got = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    got.sum().backward()
    torch.testing.assert_close(got, naive_token_logps(model, batch), atol=1e-5, rtol=1e-5)
    with model.disable_adapter(), torch.no_grad():
        base = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    assert (got - base).abs().max() > 1e-3
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(model.get_parameter(n).grad is not None for n in trainable)


def test_final_logit_softcapping_is_applied(tiny_word_tokenizer):
    model = build("llama", len(tiny_word_tokenizer))
    batch = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    with torch.no_grad():
        plain = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        model.config.final_logit_softcapping = 0.05
        capped = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    vocab = len(tiny_word_tokenizer)
    mask = batch["completion_mask"].bool()
    mask[:, 0] = False
    assert (capped[mask] - plain[mask]).abs().max() > 1e-3
    # logits squashed into (-0.05, 0.05): every log-prob is within 0.1 of log(1/V)
    assert ((capped[mask] + torch.log(torch.tensor(float(vocab)))).abs() < 0.1).all()


def _scaled_model(arch: str, vocab_size: int) -> torch.nn.Module:
    """A tiny Granite (logits divided by `logits_scaling`) or Cohere (multiplied by `logit_scale`)."""
    import transformers

    config_class, scale = {"granite": (transformers.GraniteConfig, {"logits_scaling": 4.0}),
                           "cohere": (transformers.CohereConfig, {"logit_scale": 0.25})}[arch]
    config = config_class(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, **scale)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("arch", ["granite", "cohere"])
def test_logit_scales_of_the_forward_are_applied(tiny_word_tokenizer, arch):
    # Both scale their head's logits in forward; without the scale every log-prob was off by ~0.1.
    model = _scaled_model(arch, len(tiny_word_tokenizer))
    batch = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    with torch.no_grad():
        ours = token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        torch.testing.assert_close(ours, naive_token_logps(model, batch), atol=1e-5, rtol=0)


def test_a_model_whose_logits_are_not_its_heads_is_refused(tiny_word_tokenizer):
    model = build("llama", len(tiny_word_tokenizer))
    def unknown_scale(module, args, out):  # a transform of the logits that pluralign cannot know of
        out.logits.mul_(3.0)

    model.register_forward_hook(unknown_scale)
    batch = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    with torch.no_grad(), pytest.raises(PluralignError, match="LlamaForCausalLM: its forward changes the LM head's"):
        token_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])


def test_forward_goes_through_a_ddp_wrapper(tmp_path, tiny_word_tokenizer):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    model = build("llama", len(tiny_word_tokenizer))
    batch = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    expected, _ = sequence_logps(model, batch)
    expected.sum().backward()
    expected_grads = grads(model)
    model.zero_grad()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        entered = []
        # DDP arms its gradient all-reduce in its own forward: calling the inner model would skip it silently
        ddp.register_forward_pre_hook(lambda module, args: entered.append(1))
        for _ in range(2):
            model.zero_grad()
            got, _ = sequence_logps(ddp, batch)
            got.sum().backward()
        assert len(entered) == 2
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(got, expected)
    for name, g in expected_grads.items():
        torch.testing.assert_close(grads(model)[name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_autocast_hidden_states_meet_an_fp32_head(tiny_word_tokenizer):
    model = build("llama", len(tiny_word_tokenizer))
    batch = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    with torch.no_grad():
        exact, _ = sequence_logps(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, _ = sequence_logps(model, batch)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, atol=0.1, rtol=0.02)
    # a model whose first forward runs under autocast (a bf16 run): the head check allows bf16 rounding
    fresh = build("llama", len(tiny_word_tokenizer))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first, _ = sequence_logps(fresh, batch)
    assert torch.isfinite(first).all()


def test_packed_attention_runs_one_sdpa_per_sequence_with_grouped_kv_heads(tiny_word_tokenizer, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_word_tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    padded_batch = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    expected, _ = sequence_logps(model, padded_batch)
    assert use_packed_attention(model) == "sdpa" and model.config._attn_implementation == NAME
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda q, *a, **k: calls.append(q.shape[2]) or sdpa(q, *a, **k))
    packed = PairwiseCollator(tiny_word_tokenizer, packing=True)(PAIRS)
    got, _ = sequence_logps(model, packed)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert calls == 2 * packed["seq_lengths"].tolist()  # each layer: one call per sequence, its own length
    calls.clear()
    torch.testing.assert_close(sequence_logps(model, padded_batch)[0], expected)  # padded: transformers' SDPA
    assert calls == [padded_batch["input_ids"].shape[1]] * 2  # one call per layer over the padded batch


def test_prepare_packing_switches_a_model_that_can_and_refuses_one_that_leaks(tiny_word_tokenizer, tmp_path, capsys):
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    model = build("llama", len(tiny_word_tokenizer))
    assert prepare_packing(model) and model.config._attn_implementation == NAME
    assert not prepare_packing(build("llama", len(tiny_word_tokenizer)), wanted=False)
    model.save_pretrained(tmp_path)  # the implementation is a run-time choice, never written to the config
    assert NAME not in (tmp_path / "config.json").read_text()

    def leaky(module, query, key, value, attention_mask, **kwargs):  # causal over the whole packed row
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True,
                                                               scale=kwargs.get("scaling"))
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("leaky_for_test", leaky)
    ALL_MASK_ATTENTION_FUNCTIONS.register("leaky_for_test", lambda *a, **k: None)
    bad = build("llama", len(tiny_word_tokenizer), "leaky_for_test")
    assert not prepare_packing(bad)
    assert "using padded batches" in capsys.readouterr().err
    assert bad.config._attn_implementation == "leaky_for_test"


def test_packed_attention_hands_unpacked_batches_to_transformers_sdpa():
    q = torch.randn(2, 2, 5, 4)
    out, weights = packed_attention(torch.nn.Identity(), q, q, q, None, scaling=0.5)
    expected = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True, scale=0.5)
    torch.testing.assert_close(out, expected.transpose(1, 2)) and weights is None


KERNELS = ["sdpa", "flex"] + (["sdpa-cuda", "flex-cuda"] if CUDA else []) + (["flash-cuda"] if CUDA and flash_available() else [])


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_packed_kernels_equal_padded_attention(tiny_word_tokenizer, arch, kernel):
    """Every packed-attention kernel gives the completion log-probs of transformers' padded SDPA: to 1e-5 in
    fp32 (flash-attn computes in 16 bits: there the comparison is with padded SDPA under the same bf16
    autocast, to bf16 rounding). On CPU FlexAttention runs forward only (torch has no CPU backward)."""
    name, _, device = kernel.partition("-")
    device = device or "cpu"
    reference = build(arch, len(tiny_word_tokenizer), "sdpa", device)
    model = build(arch, len(tiny_word_tokenizer), f"packed-{name}", device)
    model.load_state_dict(reference.state_dict())
    assert model.config._attn_implementation == f"pluralign_packed_{name}"
    padded = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    packed = PairwiseCollator(tiny_word_tokenizer, packing=True)(PAIRS)
    move = lambda b: {k: v.to(device) for k, v in b.items()}  # noqa: E731
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=name == "flash")
    with torch.no_grad(), autocast:
        expected, n_expected = sequence_logps(reference, move(padded))
        got, n_got = sequence_logps(model, move(packed))
    assert n_got.tolist() == n_expected.tolist()
    tol = 5e-2 if name == "flash" else 1e-5
    torch.testing.assert_close(got.cpu(), expected.cpu(), atol=tol, rtol=tol)
    if name != "flash":  # and it is not the padded path in disguise: packing moves a leaky model's log-probs
        assert not torch.allclose(got.cpu(), sequence_logps(build(arch, len(tiny_word_tokenizer), "sdpa"),
                                                            packed | {"position_ids": None})[0].detach(), atol=1e-3)


def test_packed_boundaries_are_read_back_once_per_batch_not_per_layer(tiny_word_tokenizer, monkeypatch):
    """The per-sequence loop gets host-side bounds from the batch: one device→host read per forward, not
    one per layer."""
    model = build("llama", len(tiny_word_tokenizer), "packed")
    packed = PairwiseCollator(tiny_word_tokenizer, packing=True)(PAIRS)
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(self.shape) or tolist(self))
    with torch.no_grad():
        sequence_logps(model, packed)
    assert len(reads) == 1, reads


def test_kernel_choice_and_its_errors(tiny_word_tokenizer):
    from pluralign.errors import ConfigError
    from pluralign.models.packed_attention import resolve_kernel

    cpu = torch.device("cpu")
    assert resolve_kernel("auto", cpu) == "sdpa" and resolve_kernel("flex", cpu) == "flex"
    with pytest.raises(ConfigError, match="cannot train on CPU"):  # a model that trains: refused when chosen
        resolve_kernel("flex", cpu, trains=True)
    with pytest.raises(ConfigError, match="flash-attn"):
        resolve_kernel("flash", cpu)
    with pytest.raises(ConfigError, match="one of auto"):
        resolve_kernel("fast", cpu)
    # FlexAttention has no CPU backward: training with it there is refused clearly, not mid-backward.
    model = build("llama", len(tiny_word_tokenizer), "packed-flex").train()
    packed = PairwiseCollator(tiny_word_tokenizer, packing=True)(PAIRS)
    with pytest.raises(ConfigError, match="cannot train on CPU"):
        sequence_logps(model, packed)
