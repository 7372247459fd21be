"""The rollout backend is a registered part; the vLLM backend's pieces that need neither CUDA nor vLLM
(LoRA-merged weights under the base checkpoint's names, finish reasons, clear errors) are tested here, and
its rollouts and weight sync on a GPU with vllm installed (skipped elsewhere: pluralign's CI has neither)."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
from online_toys import PROMPTS, cat_reward, make_model_dir

from pluralign.config import from_dict
from pluralign.errors import ConfigError
from pluralign.models import tiny
from pluralign.online.rollout import BACKENDS, NativeBackend, RolloutConfig, make_backend
from pluralign.online.vllm_rollout import allowed_tokens, finish_reason, merged_weights
from pluralign.train.recipes.online import OnlineConfig, run


def test_backends_are_registered_and_a_typo_is_named():
    assert {"native", "vllm"} <= set(BACKENDS.names())
    with pytest.raises(ConfigError, match="unknown rollout backend 'vlm' \\(did you mean 'vllm'\\?\\)"):
        make_backend(RolloutConfig(backend="vlm"), None, None)
    assert isinstance(make_backend(RolloutConfig(), None, None), NativeBackend)


def test_finish_reasons_map_to_the_native_ones():
    assert finish_reason("length", None) == "length"
    assert finish_reason("stop", None) == "eos"  # EOS: vLLM reports no stop reason
    assert finish_reason("stop", "\n\n") == "stop" and finish_reason("stop", 7) == "stop"


def test_tokens_added_for_prompts_only_are_not_sampled():
    # Statement words and control tokens sit above `pluralign_output_vocab`: pluralign's forward masks them
    # with a hook, which vLLM's own copy of the model does not run, so it is told the allowed ids.
    model = tiny.tiny_llama(20, hidden_size=16, num_heads=2)
    assert allowed_tokens(model.config) is None
    model.config.pluralign_output_vocab = 17
    assert allowed_tokens(model.config) == list(range(17))


def test_plain_weights_are_the_named_parameters():
    model = tiny.tiny_llama(20, hidden_size=16, num_heads=2)
    with merged_weights(model) as weights:
        assert dict(weights).keys() == dict(model.named_parameters()).keys()


def test_lora_weights_are_merged_under_the_base_names_and_unmerged_after():
    peft = pytest.importorskip("peft")
    base = tiny.tiny_llama(20, hidden_size=16, num_heads=2)
    names = dict(base.named_parameters()).keys()
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    policy = peft.get_peft_model(base, cfg)
    expected = copy.deepcopy(policy).merge_and_unload().state_dict()
    ids = torch.tensor([[1, 5, 6, 7]])
    before = policy(ids).logits.detach()
    q = "model.layers.0.self_attn.q_proj.weight"
    unmerged_q = policy.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight.detach().clone()
    with merged_weights(policy) as weights:
        got = dict(weights)
        assert got.keys() == names
        for k, v in got.items():
            torch.testing.assert_close(v, expected[k], atol=1e-6, rtol=0)
        assert (got[q] - unmerged_q).abs().max() > 1e-4  # the adapter is in the copy
    torch.testing.assert_close(policy(ids).logits.detach(), before, atol=1e-6, rtol=0)  # adapters unmerged again
    assert not any(m.merged for m in policy.modules() if hasattr(m, "merged") and hasattr(m, "lora_A"))


class _FakeVLLM:
    """vLLM's offline API as the backend uses it (`LLM`, `SamplingParams`, `llm.generate`'s outputs), sampling as
    vLLM does with a seed: a request's seed alone fixes its random stream (child g of n draws from seed + g),
    so two requests of one prompt and one seed get the same completions."""

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class LLM:
        def __init__(self, **kw):
            self.kw = kw

        def generate(self, prompts, sampling_params, use_tqdm=True):
            from types import SimpleNamespace as NS

            self.last_params = sampling_params
            params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
            assert len(params) == len(prompts)
            outs = []
            for sp in params:
                completions = []
                for g in range(sp.n):
                    gen = torch.Generator()
                    gen.manual_seed(sp.seed + g) if sp.seed is not None else gen.seed()
                    ids = torch.randint(0, 10, (3,), generator=gen).tolist()
                    completions.append(NS(token_ids=ids, logprobs=[{t: NS(logprob=-1.0)} for t in ids], text="x",
                                          finish_reason="length", stop_reason=None))
                outs.append(NS(outputs=completions))
            return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    import sys
    import types

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = _FakeVLLM.LLM, _FakeVLLM.SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):  # the backend sets them for vLLM
        monkeypatch.delenv(key, raising=False)


def test_each_prompt_of_a_vllm_rollout_draws_its_own_samples(tmp_path, fake_vllm):
    # One seed for every request made vLLM draw each prompt's samples from the same random stream: a prompt
    # given twice in a rollout (DAPO's re-draws pick prompts with replacement) got the same n completions
    # twice, and different prompts got correlated ones, where the native sampler draws them independently.
    from pluralign.models.load import load_model, load_tokenizer

    path = make_model_dir(tmp_path / "policy")
    backend = make_backend(RolloutConfig(backend="vllm"), load_model(path), load_tokenizer(path))
    ro = backend.generate(["the cat", "the cat"], 4, max_new_tokens=3, seed=7)
    assert ro.completion_ids[:4] != ro.completion_ids[4:]
    again = backend.generate(["the cat", "the cat"], 4, max_new_tokens=3, seed=7)
    assert again.completion_ids == ro.completion_ids  # still a function of the seed
    assert backend.generate(["the cat"], 4, max_new_tokens=3, seed=None).group_size == 4


def test_syncs_leave_a_16_bit_base_exactly_as_it_was():
    # The adapters were merged into the policy's own base weights and unmerged after each sync: in bf16 each
    # round trip rounds W + ΔW - ΔW to another W, so the frozen base drifted sync after sync (after 100, two
    # thirds of a bf16 q_proj's weights had moved) and the adapters trained against a changing base.
    peft = pytest.importorskip("peft")
    base = tiny.tiny_llama(20, hidden_size=64, num_heads=2).to(torch.bfloat16)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    policy = peft.get_peft_model(base, cfg)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    expected = dict(copy.deepcopy(policy).merge_and_unload().state_dict())
    for _ in range(20):
        with merged_weights(policy) as weights:
            got = dict(weights)
    for name, p in policy.named_parameters():
        assert torch.equal(p, before[name]), name
    for name, t in got.items():  # the copy: W + ΔW rounded once, as peft's merge writes it
        torch.testing.assert_close(t, expected[name], atol=0, rtol=0)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_backend_without_vllm_is_a_clear_error(tmp_path):
    base = make_model_dir(tmp_path / "base")
    cfg = from_dict(OnlineConfig, {"model": str(base), "output_dir": str(tmp_path / "out"), "rollout": {"backend": "vllm"},
                                   "loop": {"max_steps": 1, "batch_size": 2, "progress": False}})
    with pytest.raises(ConfigError, match=r"pip install 'pluralign\[vllm\]'"):
        run(cfg, prompts=PROMPTS, reward_objects=[cat_reward])
    assert not (tmp_path / "out" / "model").exists()


# ---- on a GPU with vllm installed
def _gpu_vllm():
    pytest.importorskip("vllm")
    if not torch.cuda.is_available():
        pytest.skip("the vLLM backend needs CUDA")


def _policy_dir(tmp_path):
    from conftest import WORDS

    tok = tiny.word_tokenizer(WORDS)
    # head_dim 64: within every vLLM attention backend's supported head sizes
    tiny.tiny_llama(len(tok), hidden_size=128, num_heads=2).save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    return tmp_path / "policy"


def test_vllm_rollouts_carry_the_policys_log_probs_and_follow_weight_syncs(tmp_path):
    _gpu_vllm()
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.models.logprobs import token_logps
    from pluralign.online.rollout import training_rows

    path = _policy_dir(tmp_path)
    tok, policy = load_tokenizer(path), load_model(path).cuda()
    backend = make_backend(RolloutConfig(backend="vllm", gpu_memory_utilization=0.2, max_model_len=128), policy, tok)

    def check(ro):
        assert len(ro.completion_ids) == 6 and set(ro.finish) <= {"eos", "stop", "length"}
        batch = {k: v.cuda() for k, v in training_rows(tok, ro.prompt_ids, ro.completion_ids).items()}
        with torch.no_grad():
            ours = token_logps(policy, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        for i, lp in enumerate(ro.sampler_logps):
            row = ours[i][batch["completion_mask"][i].bool()].cpu()
            torch.testing.assert_close(lp.float(), row.float(), atol=2e-3, rtol=0)

    backend.sync()
    check(backend.generate(["the cat", "a dog"], 3, max_new_tokens=8, seed=0))
    with torch.no_grad():
        policy.lm_head.weight.mul_(3.0)  # a very different policy: stale weights would fail the check
    backend.sync()
    check(backend.generate(["the cat", "a dog"], 3, max_new_tokens=8, seed=0))


def test_grpo_trains_with_vllm_rollouts(tmp_path):
    _gpu_vllm()
    path = _policy_dir(tmp_path)
    cfg = from_dict(OnlineConfig, {"model": str(path), "output_dir": str(tmp_path / "out"), "group_size": 4,
                                   "max_new_tokens": 6, "rollout": {"backend": "vllm", "gpu_memory_utilization": 0.2,
                                                                    "max_model_len": 128},
                                   "loop": {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-2, "progress": False}})
    result = run(cfg, prompts=PROMPTS, reward_objects=[cat_reward])
    assert result.model_dir.is_dir()


def test_fsdp2_sharded_weights_are_gathered_whole(tmp_path):
    # Under FSDP2 the policy's parameters are DTensor shards: their .data went to vLLM's load_weights, which
    # copies plain tensors into its own (a mixed Tensor/DTensor copy fails; shards alone would be wrong).
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    model = tiny.tiny_llama(20, hidden_size=16, num_heads=2)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        mesh = dist.device_mesh.init_device_mesh("cpu", (1,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert any(isinstance(p, DTensor) for p in model.parameters())
        with merged_weights(model) as weights:
            got = {name: t.clone() for name, t in weights}
    finally:
        dist.destroy_process_group()
    assert not any(isinstance(t, DTensor) for t in got.values())
    assert got.keys() == dict(model.named_parameters()).keys()
    for name, t in got.items():
        torch.testing.assert_close(t, expected[name], atol=0, rtol=0)


def test_vllm_rollouts_end_where_native_ones_do(tmp_path, fake_vllm):
    # vLLM ends a request at the tokenizer's EOS and the checkpoint's generation-config EOS ids only; the native
    # sampler also at the chat template's end-of-turn token (a ChatML fine-tune of a base model keeps the base's
    # <|endoftext|>), so vLLM's completions ran on past the end of the answer, into a next turn, to max_new_tokens.
    from pluralign.decode.sampler import eos_ids
    from pluralign.models.load import load_model, load_tokenizer

    path = make_model_dir(tmp_path / "policy")
    policy, tok = load_model(path), load_tokenizer(path)
    policy.generation_config.eos_token_id = [3, 4]  # e.g. an end-of-turn id the checkpoint's vLLM copy lacks
    backend = make_backend(RolloutConfig(backend="vllm"), policy, tok)
    backend.generate(["the cat", "a dog"], 2, max_new_tokens=3, seed=0)
    eos = eos_ids(tok, policy)
    assert {3, 4} <= eos
    assert all(set(sp.stop_token_ids) == eos for sp in backend.llm.last_params)
    # an end-of-sequence id among the stop ids ends with vLLM's stop_reason = that id: "eos", as natively
    assert finish_reason("stop", 4, eos) == "eos" and finish_reason("stop", "\n\n", eos) == "stop"


def test_a_policy_grown_past_its_checkpoint_is_refused_before_the_engine_starts(tmp_path, fake_vllm):
    # vLLM starts from the checkpoint directory: a policy whose embeddings were grown after it was saved (an
    # adapter trained with added tokens, loaded onto its base) had more rows than the engine's copy, and the
    # first weight sync failed in vLLM's weight loader with a shape assertion, after the engine had started.
    from pluralign.models.load import load_model, load_tokenizer

    path = make_model_dir(tmp_path / "policy")
    policy, tok = load_model(path), load_tokenizer(path)
    rows = policy.get_input_embeddings().weight.shape[0]
    policy.resize_token_embeddings(rows + 2, mean_resizing=False)
    with pytest.raises(ConfigError, match=f"has {rows} token embeddings; the policy has {rows + 2}"):
        make_backend(RolloutConfig(backend="vllm"), policy, tok)
