"""Loading tiny local models through the same call a user makes with a hub id; LoRA; atomic saving."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from pluralign.errors import ConfigError, PluralignError
from pluralign.models import LoraSpec, is_peft_model, load_model, load_tokenizer, save_model


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_local_dir_loads_and_generates(request, fixture):
    path = request.getfixturevalue(fixture)
    model = load_model(str(path))
    tokenizer = load_tokenizer(path)
    assert not model.training and tokenizer.pad_token is not None
    inputs = tokenizer(["hello world", "the cat"], return_tensors="pt", padding=True)
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 4)


def test_dtype_device_and_encoder_kind(tiny_llama_dir):
    model = load_model(tiny_llama_dir, dtype="bfloat16", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    encoder = load_model(tiny_llama_dir, kind="encoder")
    assert type(encoder).__name__ == "LlamaModel"
    with pytest.raises(ConfigError, match="dtype"):
        load_model(tiny_llama_dir, dtype="fp8")
    with pytest.raises(ConfigError, match="kind"):
        load_model(tiny_llama_dir, kind="seq2seq")
    with pytest.raises(ConfigError, match="device"):
        load_model(tiny_llama_dir, device="gpu0")


def test_user_mistakes_are_clear_errors(tmp_path, tiny_llama_dir, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(PluralignError, match="not found"):
        load_model(tmp_path / "missing")
    with pytest.raises(PluralignError, match="not found"):
        load_model("./runs/missing-model")
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)  # `runs/dpo` looks like a hub id (owner/name), but `runs` is a directory here
    with pytest.raises(PluralignError, match="model directory not found: 'runs/dpo'"):
        load_model("runs/dpo")
    with pytest.raises(PluralignError, match="holds no model"):
        load_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(PluralignError, match="is a file"):
        load_tokenizer(tmp_path / "weights.bin")
    copy_dir = tmp_path / "truncated"
    copy_dir.mkdir()
    for f in tiny_llama_dir.iterdir():
        (copy_dir / f.name).write_bytes(f.read_bytes())
    weights = copy_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short: was safetensors' traceback
    with pytest.raises(PluralignError, match=r"cannot load '.*truncated'.*incomplete metadata"):
        load_model(copy_dir)
    remote = tmp_path / "remote"  # a model that needs its own code: transformers said to pass trust_remote_code=True
    remote.mkdir()
    (remote / "config.json").write_text('{"model_type": "my_custom", "auto_map": {"AutoConfig": "conf.MyConfig", '
                                        '"AutoModelForCausalLM": "model.MyModel"}}')
    (remote / "conf.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(PluralignError, match="needs Python code of its own .* which pluralign does not run"):
        load_model(remote)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PluralignError, match="offline"):
        load_model("no-such-org/no-such-model")


@pytest.mark.parametrize(("lora", "expected"), [
    (LoraSpec(target_modules=["q_proj", "v_porj"]), r"lora.target_modules: 'v_porj' names no module .*did you mean 'v_proj'"),
    (LoraSpec(target_modules="q_projx"), r"lora.target_modules: 'q_projx' names no module .*'q_proj'"),
    (LoraSpec(target_modules="q_proj,v_proj"), r"'q_proj,v_proj' names no module .*several names are a list: \[q_proj,v_proj\]"),
    (LoraSpec(modules_to_save=["lm_haed"]), r"lora.modules_to_save: 'lm_haed' names no module .*'lm_head'"),
    (LoraSpec(target_modules=["q_proj", "input_layernorm"]), r"lora: Target module LlamaRMSNorm.* is not supported"),
])
def test_lora_names_that_do_not_fit_the_model_are_clear_errors(tiny_llama_dir, lora, expected):
    """peft adapted q_proj alone for [q_proj, v_porj] and ignored a misspelt modules_to_save, without a word;
    names matching nothing, or a layer LoRA cannot adapt, were peft's tracebacks."""
    with pytest.raises(ConfigError, match=expected):
        load_model(tiny_llama_dir, lora=lora)


@pytest.mark.parametrize(("override", "expected"), [
    ("lora.r=0", r"'lora.r' must be an integer >= 1, got 0"),
    ("lora.dropout=1.5", r"'lora.dropout' must be in \[0, 1\), got 1.5"),
    ("lora.alpha=0", r"'lora.alpha' must be a finite number > 0, got 0.0"),
    ("lora.target_modules=[]", r"'lora.target_modules' is empty"),
])
def test_lora_values_are_checked_when_the_config_is_made(override, expected):
    """r=0 and dropout=1.5 were peft's tracebacks at load time; alpha=0 trained adapters that stay 0."""
    from pluralign.config import load
    from pluralign.train.recipes.sft import SFTConfig

    with pytest.raises(ConfigError, match=expected):
        load(SFTConfig, None, ["use_lora=true", override])


def test_tokenizer_without_pad_token_gets_eos(tmp_path, tiny_word_tokenizer):
    tokenizer = copy.deepcopy(tiny_word_tokenizer)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path, padding_side="left")
    assert loaded.pad_token == loaded.eos_token == "</s>" and loaded.padding_side == "left"


def test_lora_train_merge_save_and_reload(tmp_path, tiny_llama_dir):
    model = load_model(tiny_llama_dir, lora=LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    assert is_peft_model(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.tensor([[4, 5, 6, 7, 8]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    tokenizer = load_tokenizer(tiny_llama_dir)

    merged_dir = save_model(model, tokenizer, tmp_path / "merged")
    assert is_peft_model(model)  # the caller's model keeps its adapters
    merged = load_model(merged_dir)
    assert not is_peft_model(merged)
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)

    adapter_dir = save_model(model, tokenizer, tmp_path / "adapter", merge_lora=False)
    assert (adapter_dir / "adapter_config.json").exists()
    reloaded = load_model(adapter_dir)
    assert is_peft_model(reloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_save_replaces_atomically(tmp_path, tiny_gpt2_dir):
    model = load_model(tiny_gpt2_dir)
    tokenizer = load_tokenizer(tiny_gpt2_dir)
    out = tmp_path / "model"
    save_model(model, tokenizer, out)
    (out / "stale.txt").write_text("from the previous save")
    with torch.no_grad():
        model.lm_head.weight.mul_(2)  # tied to the input embeddings
    save_model(model, tokenizer, out)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary directories left behind
    reloaded = load_model(out)
    torch.testing.assert_close(reloaded.lm_head.weight, model.lm_head.weight)
    # the saved model is as readable as anything `open` writes: the temporary directory was 0700 and
    # transformers' weights file 0600
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [out, *out.iterdir()]}
    assert modes.pop("model") == 0o777 & ~umask and set(modes.values()) == {0o666 & ~umask}, modes


def test_a_save_that_cannot_be_written_is_a_clear_error_and_leaves_nothing(tmp_path, tiny_gpt2_dir, monkeypatch):
    from pluralign.errors import PluralignError
    from pluralign.models import load as load_module

    model, tokenizer = load_model(tiny_gpt2_dir), load_tokenizer(tiny_gpt2_dir)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PluralignError, match=r"cannot write .*a_file/model: file exists"):
        save_model(model, tokenizer, tmp_path / "a_file" / "model")
    out = tmp_path / "model"
    save_model(model, tokenizer, out)

    def busy(src, dst):  # the old model cannot be moved aside (e.g. a mount point: EBUSY)
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(load_module.os, "replace", busy)
    with pytest.raises(PluralignError, match=r"cannot write .*model: device or resource busy"):
        save_model(model, tokenizer, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "model"]


@pytest.mark.parametrize("use_lora", [False, True])
def test_gradient_checkpointing_recomputes_in_backward_with_the_same_gradients(tiny_llama_dir, tiny_word_tokenizer,
                                                                             use_lora):
    from pluralign.data.collate import PairwiseCollator
    from pluralign.data.records import Pairwise
    from pluralign.models.logprobs import prepare_packing, sequence_logps

    pairs = [Pairwise("hello", "hello world", "the cat"), Pairwise("why ?", "the dog is sad", "no")]
    batch = PairwiseCollator(tiny_word_tokenizer, packing=True)(pairs)
    lora = LoraSpec(r=4) if use_lora else None
    runs = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same fresh adapters
        model = load_model(tiny_llama_dir, lora=lora, gradient_checkpointing=checkpointing).train()
        assert prepare_packing(model)
        layer_calls = []
        # the layer's first module: recomputation stops early once the last tensor backward needs exists
        hook = model.get_decoder().layers[0].input_layernorm.register_forward_hook(lambda *a, calls=layer_calls: calls.append(1))
        sums, _ = sequence_logps(model, batch)
        sums.sum().backward()
        hook.remove()
        assert len(layer_calls) == (2 if checkpointing else 1)  # recomputed once in backward
        runs.append((sums.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (checkpointed, ckpt_grads) = runs
    torch.testing.assert_close(checkpointed, plain)
    assert plain_grads.keys() == ckpt_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_lora_wrapping_does_not_print_peft_deprecation_noise(tiny_llama_dir):
    """peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model; that warning
    is filtered where pluralign wraps (it is nothing the user can act on), other warnings are not."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(tiny_llama_dir, lora=LoraSpec(r=2, alpha=4), gradient_checkpointing=True)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_vocabulary_mismatch_names_the_first_token_read_otherwise():
    from pluralign.decode.toy import toy_tokenizer
    from pluralign.models.load import vocabulary_mismatch

    ours = toy_tokenizer(("a", "b", "c"))
    assert vocabulary_mismatch(ours, toy_tokenizer(("a", "b", "c")), ours_may_add=False) is None
    swapped = vocabulary_mismatch(ours, toy_tokenizer(("b", "a", "c")), ours_may_add=True)
    assert swapped is not None and "is id" in swapped and "in the policy's" in swapped
    smaller = toy_tokenizer(("a", "b"))
    assert vocabulary_mismatch(ours, smaller, ours_may_add=True) is not None  # 'c' is no added token
    added = toy_tokenizer(("a", "b"))
    added.add_tokens(["<person-0>"], special_tokens=True)  # a conditioning scheme's token, never sampled
    assert vocabulary_mismatch(added, smaller, ours_may_add=True) is None
    assert vocabulary_mismatch(added, smaller, ours_may_add=False) is not None
