"""Online recipes through the one loop: acceptance invariants (zero advantages → zero gradient, PPO at
ratio 1 = REINFORCE, online DPO on fixed pairs = the offline recipe, exact resume), every algorithm
end to end, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from online_toys import PROMPTS, cat_reward, make_model_dir, online_config, write_prompts
from online_toys import weights as params

from pluralign.cli import main
from pluralign.errors import ConfigError, DataError, PluralignError
from pluralign.models.load import load_model, load_tokenizer
from pluralign.online.methods import PolicyGradient
from pluralign.online.rollout import Rollout, generate
from pluralign.online.selected import Pairs
from pluralign.train.recipes.online import build_method, run

LOOP = {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 3, "progress": False, "log_every": 1,
        "scheduler": "constant"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("online") / "base")


def config(base, tmp_path, **kw):
    return online_config(base, tmp_path, LOOP, **kw)


def rollout_of(base, n=4, prompts=("the cat", "a dog")):
    tok, model = load_tokenizer(base), load_model(base)
    return tok, model, generate(model, tok, list(prompts), n, max_new_tokens=6, seed=3)


def with_scale(batch, denominator, n_prompts):
    return batch | {"scale": torch.tensor(n_prompts / denominator)}


def grads(model, fn):
    model.zero_grad()
    fn().backward()
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def test_grpo_group_of_one_gives_zero_advantages_and_zero_gradient(base, tmp_path):
    tok, model, ro = rollout_of(base, n=1)
    cfg = config(base, tmp_path, algorithm="grpo", group_size=1).resolved()
    method, _, _ = build_method(cfg, tok, model)
    batch, d = method.build(model, ro, torch.tensor([0.3, -1.0]))
    assert torch.equal(batch["advantages"], torch.zeros_like(batch["advantages"]))
    g = grads(model, lambda: method.step(model, with_scale(batch, d, 2))[0].sum())
    assert all(torch.equal(v, torch.zeros_like(v)) for v in g.values())
    # The same batch with rewards that vary within a group does move the weights (the test can fail).
    _, _, ro4 = rollout_of(base, n=4)
    batch, d = method.build(model, ro4, torch.tensor([0.3, -1.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.5]))
    g = grads(model, lambda: method.step(model, with_scale(batch, d, 2))[0].sum())
    assert any(v.abs().sum() > 0 for v in g.values())


def test_ppo_one_epoch_at_ratio_one_is_reinforce_with_the_same_advantages(base, tmp_path):
    """The clipped surrogate at u = 1 has gradient −A·∇ℓ: the REINFORCE loss −Σ A·ℓ / tokens."""
    tok, model, ro = rollout_of(base)
    cfg = config(base, tmp_path, algorithm="ppo", beta=0.0).resolved()
    method, _, trainee = build_method(cfg, tok, model)
    rewards = torch.tensor([0.3, -1.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.5])
    batch, d = method.build(trainee, ro, rewards)
    batch = with_scale(batch, d, 2)
    surrogate = PolicyGradient(tokenizer=tok, estimator="gae", estimator_params={}, loss="clip", loss_params={},
                               aggregation="token_mean", max_len=6, beta=0.0, kl_estimator="k1", kl_in="reward",
                               kl_bias_correction=False, reference=None, vf_coef=0.0)
    from pluralign.online.methods import policy_outputs

    def reinforce():
        logps, _ = policy_outputs(trainee, batch)
        return -(batch["advantages"] * logps * batch["loss_mask"]).sum() / batch["loss_mask"].sum()

    a = grads(trainee, lambda: surrogate.step(trainee, batch)[0].mean())
    b = grads(trainee, reinforce)
    moved = 0
    for k in a:
        if k.startswith("policy."):
            torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
            moved += int(a[k].abs().sum() > 0)
    assert moved > 0


def test_online_dpo_on_a_fixed_pair_set_equals_the_offline_recipe(base, tmp_path):
    """Pairs made online (best vs worst of each prompt, reference = initial policy) give the offline
    preference recipe's DPO loss and gradient on the same pairs."""
    from pluralign import losses
    from pluralign.data.collate import PairwiseCollator
    from pluralign.data.records import Pairwise
    from pluralign.online.engine import Reference
    from pluralign.train.recipes.preference import KINDS, make_step

    tok, model = load_tokenizer(base), load_model(base)
    records = [Pairwise(prompt="the cat", chosen="the cat sat on the mat", rejected="no"),
               Pairwise(prompt="a dog", chosen="the dog ran", rejected="bad dog")]
    collator = PairwiseCollator(tok, max_length=64)
    offline_batch = collator(records)
    ids, cm = offline_batch["input_ids"], offline_batch["completion_mask"]
    seqs = [ids[i][offline_batch["attention_mask"][i].bool()].tolist() for i in range(4)]
    cut = [int(cm[i].nonzero()[0]) for i in range(4)]
    # A rollout of G = 2 per prompt holding the rejected then the chosen response; the reward picks them.
    order = [2, 0, 3, 1]
    ro = Rollout(prompts=["the cat"] * 2 + ["a dog"] * 2, prompt_ids=[seqs[i][:cut[i]] for i in order],
                 completion_ids=[seqs[i][cut[i]:] for i in order], sampler_logps=[], finish=["eos"] * 4,
                 texts=[""] * 4, group_size=2)
    frozen = load_model(base)
    method = Pairs(tokenizer=tok, loss="dpo", loss_params={"beta": 0.1},
                   reference=Reference(model, model=frozen, mode="initial"))
    with torch.no_grad():
        model.model.embed_tokens.weight.add_(0.05 * torch.randn_like(model.model.embed_tokens.weight))  # policy ≠ ref
    batch, d = method.build(model, ro, torch.tensor([-1.0, 2.0, 0.0, 0.5]))
    online_loss = method.step(model, with_scale(batch, d, 2))[0]

    from pluralign.models.logprobs import sequence_logps

    with torch.no_grad():
        sums, _ = sequence_logps(frozen, offline_batch)
    offline = make_step(KINDS["pairwise"], losses.get("dpo"), {"beta": 0.1}, None, None, update_shift=False)
    offline_loss, _ = offline(model, offline_batch | {"ref_chosen": sums[:2], "ref_rejected": sums[2:]})
    torch.testing.assert_close(online_loss, offline_loss, atol=1e-6, rtol=0)
    assert abs(float(offline_loss.detach().mean()) - 0.6931) > 1e-4  # the policy moved away from the reference

    # A third prompt whose samples tie (a flat group) adds a zero and is not forwarded: the same two pairs'
    # rows only, the same loss on them.
    flat = Rollout(prompts=ro.prompts + ["a dog"] * 2, prompt_ids=ro.prompt_ids + ro.prompt_ids[2:],
                   completion_ids=ro.completion_ids + ro.completion_ids[2:], sampler_logps=[], finish=["eos"] * 6,
                   texts=[""] * 6, group_size=2)
    batch, d = method.build(model, flat, torch.tensor([-1.0, 2.0, 0.0, 0.5, 1.0, 1.0]))
    assert len(batch["input_ids"]) == 4 and d == 2
    with_flat = method.step(model, with_scale(batch, d, 3))[0]
    torch.testing.assert_close(with_flat, torch.cat([offline_loss * 3 / 2, torch.zeros(1)]), atol=1e-6, rtol=0)


def test_resume_equals_an_uninterrupted_run(base, tmp_path):
    """Stopped after 2 steps and resumed (rollout seeds, the running reward statistics and the
    optimizer restored), GRPO with a KL to a frozen reference ends with the same weights."""
    # save_every past the end: a resumable checkpoint after the last step only.
    kw = dict(algorithm="grpo", beta=0.05, reward_norm="running", loop={"max_steps": 4, "save_every": 100})
    straight = run(config(base, tmp_path / "a", **kw), prompts=PROMPTS, reward_objects=[cat_reward])
    run(config(base, tmp_path / "b", **(kw | {"loop": {"max_steps": 2, "save_every": 100}})), prompts=PROMPTS,
        reward_objects=[cat_reward])
    resumed = run(config(base, tmp_path / "b", **kw), prompts=PROMPTS, reward_objects=[cat_reward])
    assert resumed.train.resumed_from.name == "step-2"
    a, b = params(load_model(straight.model_dir)), params(load_model(resumed.model_dir))
    assert any(not torch.equal(a[k], v) for k, v in params(load_model(base)).items())
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kw", [dict(algorithm="ppo"), dict(algorithm="rloo", use_lora=True)])
def test_the_same_seed_is_the_same_run(base, tmp_path, kw):
    """The weights drawn before the loop seeds its RNG (PPO's value head, LoRA's A matrices) come from the
    run's seed: run twice, the same weights (with a random draw, neither an uninterrupted run nor a fresh
    one could be reproduced)."""
    torch.manual_seed(1)
    first = run(config(base, tmp_path / "a", **kw), prompts=PROMPTS, reward_objects=[cat_reward])
    torch.manual_seed(2)  # whatever ran before in this process
    second = run(config(base, tmp_path / "b", **kw), prompts=PROMPTS, reward_objects=[cat_reward])
    a, b = (params(load_model(r.model_dir)) for r in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)
    if kw["algorithm"] == "ppo":
        heads = [torch.load(r.run_dir / "value_head.pt") for r in (first, second)]
        assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])


@pytest.mark.parametrize("algorithm", ["grpo", "gspo", "rloo", "reinforce_pp", "ppo", "online_dpo", "rsft"])
def test_every_algorithm_trains_and_logs(base, tmp_path, algorithm):
    result = run(config(base, tmp_path, algorithm=algorithm), prompts=PROMPTS, reward_objects=[cat_reward])
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("loss", "reward", "response_length", "gen_tokens_per_s", "grad_norm"):
        assert all(torch.isfinite(torch.tensor(r[key])) for r in rows), key
    assert "train_tokens_per_s" in rows[-1]
    if algorithm in ("rloo", "reinforce_pp", "ppo"):
        assert "kl" in rows[-1]
    if algorithm in ("grpo", "ppo"):
        assert "clip_fraction" in rows[-1] and "entropy" in rows[-1]
    after = params(load_model(result.model_dir))
    assert any(not torch.equal(after[k], v) for k, v in params(load_model(base)).items())
    if algorithm == "ppo":
        assert (tmp_path / "out" / "value_head.pt").exists()


def test_a_kill_while_the_value_head_is_written_leaves_no_half_file(base, tmp_path, monkeypatch):
    cfg = config(base, tmp_path, algorithm="ppo", loop={"max_steps": 2, "save_every": 2})
    first = run(cfg, prompts=PROMPTS, reward_objects=[cat_reward])
    before = (first.run_dir / "value_head.pt").read_bytes()

    def dying(obj, f, *args, **kwargs):  # a write cut short: part of the file, then the interrupt
        if hasattr(f, "write"):
            f.write(b"half")
        else:
            open(f, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying)
    with pytest.raises(KeyboardInterrupt):  # the same command again: resumes at the end, saves again
        run(cfg, prompts=PROMPTS, reward_objects=[cat_reward])
    assert (first.run_dir / "value_head.pt").read_bytes() == before
    assert not [p.name for p in first.run_dir.iterdir() if p.name.endswith(".tmp")]


def test_cli_trains_grpo_with_a_python_reward(base, tmp_path, monkeypatch, capsys):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    data = write_prompts(tmp_path / "prompts.jsonl")
    argv = ["train", "grpo", f"model={base}", f"data={data}", f"output_dir={tmp_path / 'cli'}",
            "rewards=[{source: 'online_toys:cat_reward'}]", "max_new_tokens=6", "loop.max_steps=2",
            "loop.batch_size=2", "loop.progress=false"]
    assert main(argv) == 0
    assert (tmp_path / "cli" / "model").is_dir()


@pytest.mark.parametrize("reward, message", [
    ("online_toys:raising_reward", "raised ValueError: the grader crashed"),
    ("online_toys:nan_reward", "non-finite value"),
    ("online_toys:short_reward", r"returned shape \(15, 1\) for 16 responses"),
    ("no_such_module:f", r"rewards\[0\]\.source no_such_module:f: cannot import"),
    ("online_toys:PROMPTS", r"rewards\[0\]\.source online_toys:PROMPTS: PROMPTS is a list, not a function"),
    ("/no/such/rm", "not 'gold', 'judge', 'module:function' or an existing"),
])
def test_bad_rewards_exit_2_with_the_cause(base, tmp_path, monkeypatch, capsys, reward, message):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    data = write_prompts(tmp_path / "prompts.jsonl")
    argv = ["train", "rloo", f"model={base}", f"data={data}", f"output_dir={tmp_path / 'x'}",
            f"rewards=[{{source: '{reward}'}}]", "loop.max_steps=1", "loop.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "x" / "model").exists()


def test_an_llm_judge_reward_with_no_server_is_named_before_the_policy_loads(tmp_path, monkeypatch, capsys):
    # it failed at the first rollout's scoring, after loading the policy and generating, with retries
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    data = write_prompts(tmp_path / "prompts.jsonl")
    argv = ["train", "rloo", f"model={tmp_path / 'not_loaded'}", f"data={data}", f"output_dir={tmp_path / 'x'}",
            "rewards=[{source: judge, judge_url: 'http://127.0.0.1:9/v1', judge_model: m}]", "loop.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "rewards[0]: judge_url http://127.0.0.1:9/v1: nothing answers there" in err, err
    assert "correct judge_url" in err and "base_url" not in err, err  # the setting of this config, not LLMJudge's


def test_a_short_reward_is_named_when_the_prompt_rows_carry_users(base, tmp_path, monkeypatch, capsys):
    # scored once per user, a short reward ended in torch's "shape mismatch: value tensor of shape [3, 1]"
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "user": f"u{i % 2}"}) + "\n" for i, p in enumerate(PROMPTS)))
    argv = ["train", "rloo", f"model={base}", f"data={data}", f"output_dir={tmp_path / 'x'}",
            "rewards=[{source: 'online_toys:short_reward'}]", "loop.max_steps=1", "loop.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "reward 'online_toys:short_reward' returned shape (7, 1) for 8 responses" in err, err


@pytest.mark.parametrize("setting, message", [
    ("advantage_params={scal: batch}", "advantage estimator 'grpo' has no parameter ['scal'] (did you mean 'scale'?)"),
    ("loss_params={eps: 0.1}", "policy loss 'clip' has no parameter ['eps']"),
    ("loss_params={dual_clip: 0.5}", "dual_clip must be > 1, got 0.5"),  # was refused at the first step
    ("temperature=0", "'temperature' must be a finite number > 0"),
    ("top_p=2", "'top_p' must be in (0, 1]"),
    ("beta=-0.1", "'beta' (the KL coefficient) must be a finite number >= 0"),
    ("max_new_tokens=600", "max_new_tokens 600 leaves no room for a prompt within max_length 512"),
    ("reward_clip=-1", "'reward_clip' must be > 0 (or null: off), got -1"),  # clamped every reward to -1
    ("reward_clip=0", "'reward_clip' must be > 0 (or null: off), got 0"),  # silently off
    ("overlong_buffer=-4", "'overlong_buffer' must be in [0, max_new_tokens], got -4"),
    ("overlong_buffer=40", "'overlong_buffer' must be in [0, max_new_tokens], got 40"),
    ("calibrate_samples=-1", "'calibrate_samples' must be >= 0"),
    ("rewards=[{source: gold, weight: .nan}]", "rewards[0].weight must be a finite number, got nan"),  # "non-finite loss"
    ("online_dpo round_steps=0", "'round_steps' must be >= 1, got 0"),  # silently 1
    # the fixed model was every round's reference (one-step rounds), or overwritten by the policy (longer rounds)
    ("online_dpo ref_model=some_model", "online_dpo: ref_model is a fixed reference, but ref_policy round_start"),
    ("ref_model=some_model", "ref_model is read only for the KL (beta > 0) or InfAlign's calibration (calibrate_samples "
                             "> 0), neither of which this grpo run uses"),  # it was loaded and never read
    ("rsft ref_model=some_model", "neither of which this rsft run uses"),
    # inherited settings the online recipes do not apply: they were silently dropped
    ("max_prompt_length=8", "the online recipes do not apply max_prompt_length"),
    ("eval_data=[held_out.jsonl]", "the online recipes do not apply eval_data"),
    ("skip_invalid=true", "the online recipes do not apply skip_invalid"),
    # another family's settings: dropped without a word (TRL's OnlineDPOConfig calls DPO's β 'beta')
    ("online_dpo beta=0.5", "online_dpo does not use beta; its DPO beta is preference_params.beta"),
    ("rsft advantage=rloo", "rsft does not use advantage"),
    ("grpo preference_params={beta: 0.5}", "grpo does not use preference_params"),
])
def test_bad_online_settings_exit_2_before_the_model_loads(tmp_path, capsys, setting, message):
    data = write_prompts(tmp_path / "prompts.jsonl")
    algorithm, _, rest = setting.partition(" ")  # "name key=value": another algorithm than grpo
    algorithm, setting = (algorithm, rest) if rest and "=" not in algorithm else ("grpo", setting)
    argv = ["train", algorithm, f"model={tmp_path / 'no_model_here'}", f"data={data}",
            f"output_dir={tmp_path / 'x'}", setting, "loop.max_steps=1", "loop.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_bad_prompts_and_group_sizes(base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "the cat"}\n{"prompt": "  "}\n{"other": 1}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'prompt'.*\n.*bad.jsonl:3: field 'prompt'"):
        run(config(base, tmp_path, data=[str(bad)]), reward_objects=[cat_reward])
    for algorithm in ("grpo", "rloo", "online_dpo"):
        with pytest.raises(ConfigError, match="group_size must be >= 2"):
            run(config(base, tmp_path, algorithm=algorithm, group_size=1), prompts=PROMPTS, reward_objects=[cat_reward])
    with pytest.raises(ConfigError, match="unknown advantage estimator 'grp'"):
        run(config(base, tmp_path, advantage="grp"), prompts=PROMPTS, reward_objects=[cat_reward])
    assert issubclass(DataError, PluralignError)
    # a chat prompt the tokenizer cannot render (chat_template=never) stopped the first rollout naming no row
    chat = tmp_path / "chat.jsonl"
    chat.write_text('{"prompt": "the cat"}\n' * 3 + '{"prompt": [{"role": "user", "content": "the cat"}]}\n')
    with pytest.raises(DataError, match=r"chat.jsonl:4: field 'prompt': the prompt is a list of chat messages but "
                                        "chat_template=never"):
        run(config(base, tmp_path, data=[str(chat)], chat_template="never"), reward_objects=[cat_reward])


def test_prompts_too_long_for_the_model_or_max_length_are_named_before_training(tmp_path, capsys):
    """A prompt past a learned position table (GPT-2's) stopped the first rollout with an IndexError traceback,
    and max_length was silently ignored; both are now refused by file, line and field before training (online
    prompts are generated from whole), and prompts given in Python by their place."""
    from conftest import WORDS

    from pluralign.models import tiny

    model_dir = tmp_path / "gpt2"
    tok = tiny.word_tokenizer(WORDS)
    tiny.tiny_gpt2(len(tok), hidden_size=32, num_heads=2, max_position_embeddings=32).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    long = " ".join(["the cat"] * 15)  # 30 tokens
    data = write_prompts(tmp_path / "p.jsonl", ["the cat", long, "a dog"])
    argv = ["train", "grpo", f"model={model_dir}", f"data={data}", "rewards=[{source: online_toys:cat_reward}]",
            "max_new_tokens=6", f"output_dir={tmp_path / 'out'}", "loop.max_steps=1", "loop.progress=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "p.jsonl:2: field 'prompt': 30 prompt tokens + max_new_tokens 6 exceed the model's context window of 32" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    short = write_prompts(tmp_path / "short.jsonl", ["the cat", " ".join(["the cat"] * 4), "a dog"])  # 8 tokens
    assert main([*argv[:3], f"data={short}", *argv[4:], "max_length=12"]) == 2
    err = capsys.readouterr().err
    assert "short.jsonl:2: field 'prompt': 8 prompt tokens + max_new_tokens 6 exceed max_length 12" in err
    assert "raise max_length or shorten the prompt" in err and not (tmp_path / "out").exists()
    with pytest.raises(DataError, match=r"<prompts given in Python>:2: field 'prompt': 30 prompt tokens"):
        run(config(model_dir, tmp_path, max_new_tokens=6), prompts=["the cat", long], reward_objects=[cat_reward])


def test_vllm_rollouts_leave_room_within_the_length_vllm_plans_for(base, tmp_path):
    from pluralign.train.recipes.online import prompt_room

    model = load_model(base)
    room = prompt_room(config(base, tmp_path, rollout={"backend": "vllm", "max_model_len": 20}), model)
    assert room(14) is None
    assert room(15) == ("15 prompt tokens + max_new_tokens 6 exceed rollout.max_model_len 20; online prompts are not "
                        "truncated: raise rollout.max_model_len or shorten the prompt")
    assert prompt_room(config(base, tmp_path, rollout={"max_model_len": 20}), model)(15) is None  # native: no such plan


def test_chat_prompts_and_lora_reference(tmp_path, chat_tokenizer):
    """Message-list prompts are rendered with the tokenizer's chat template (never str(prompt)); under
    LoRA the reference is the base with adapters off, so the first step's KL is exactly 0."""
    from pluralign.models import tiny
    from pluralign.online.rollout import generate as gen

    base = tmp_path / "chat"
    tiny.tiny_llama(len(chat_tokenizer), hidden_size=32, num_heads=2).save_pretrained(base)
    chat_tokenizer.save_pretrained(base)
    messages = [[{"role": "user", "content": "the cat"}], [{"role": "user", "content": "a dog"}]]
    tok, model = load_tokenizer(base), load_model(base)
    ro = gen(model, tok, messages, 2, max_new_tokens=4, seed=0)
    rendered = tok.apply_chat_template(messages[0], add_generation_prompt=True, tokenize=True)
    rendered = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    assert ro.prompt_ids[0] == list(rendered) and ro.prompt_ids[0][-2:] == tok.convert_tokens_to_ids(["assistant", ":"])
    result = run(config(base, tmp_path, algorithm="rloo", use_lora=True, beta=0.05, loop={"max_steps": 2, "log_every": 1}),
                 prompts=messages * 2, reward_objects=[cat_reward])
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[1]["kl"] != 0.0
    assert result.model_dir.is_dir()


def test_online_dpo_rounds_resume_mid_round(base, tmp_path):
    """Rounds of 2 steps keep the round-start policy as the reference; stopped after step 3 (mid-round)
    and resumed, the restored reference gives the uninterrupted run's weights."""
    kw = dict(algorithm="online_dpo", round_steps=2, preference_params={"beta": 0.5}, loop={"max_steps": 4, "save_every": 1})
    straight = run(config(base, tmp_path / "a", **kw), prompts=PROMPTS, reward_objects=[cat_reward])
    run(config(base, tmp_path / "b", **(kw | {"loop": {"max_steps": 3, "save_every": 1}})), prompts=PROMPTS, reward_objects=[cat_reward])
    resumed = run(config(base, tmp_path / "b", **kw), prompts=PROMPTS, reward_objects=[cat_reward])
    assert resumed.train.resumed_from.name == "step-3"
    a, b = params(load_model(straight.model_dir)), params(load_model(resumed.model_dir))
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    rows = [json.loads(line) for line in (tmp_path / "a" / "out" / "metrics.jsonl").read_text().splitlines()]
    # Each round starts at the reference (loss log 2); its second step is against the round-start policy.
    assert rows[0]["loss"] == pytest.approx(0.693147, abs=1e-5) and rows[2]["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert rows[1]["loss"] != pytest.approx(0.693147, abs=1e-4)


def test_rsft_trains_only_the_selected_samples(base):
    """RAFT's global top fraction: only the chosen samples are forwarded (the others were trained with
    weight 0 before), each prompt's contribution the SFT loss of its chosen samples."""
    from pluralign.online.rollout import training_rows
    from pluralign.online.selected import BestOfN
    from pluralign.train.recipes import sft

    tok, model = load_tokenizer(base), load_model(base)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    completions = [ids(t) for t in ("the cat sat", "no", "a dog ran on the mat", "bad dog")]
    ro = Rollout(prompts=["the cat"] * 2 + ["a dog"] * 2, prompt_ids=[ids("the cat")] * 2 + [ids("a dog")] * 2,
                 completion_ids=completions, sampler_logps=[], finish=["eos"] * 4, texts=[""] * 4, group_size=2)
    method = BestOfN(tokenizer=tok, select="top", fraction=0.5)
    batch, d = method.build(model, ro, torch.tensor([0.9, 0.1, 0.8, 0.2]))  # the top two: both firsts
    assert len(batch["input_ids"]) == 2 and d == 2
    got = method.step(model, with_scale(batch, d, 2))[0]
    want, _ = sft.step(model, training_rows(tok, [ro.prompt_ids[0], ro.prompt_ids[2]], [completions[0], completions[2]]))
    torch.testing.assert_close(got, want * 2 / 2, atol=1e-6, rtol=0)
    batch, d = method.build(model, ro, torch.tensor([0.9, 0.8, 0.1, 0.2]))  # both from the first prompt
    got = method.step(model, with_scale(batch, d, 2))[0]
    want, _ = sft.step(model, training_rows(tok, ro.prompt_ids[:2], completions[:2]))
    torch.testing.assert_close(got, torch.stack([want.sum(), torch.tensor(0.0)]), atol=1e-6, rtol=0)


def cats_and_brevity(prompts, responses):
    """Two objectives: the number of 'cat's, and minus the length in words."""
    return [[float(r.split().count("cat")), -float(len(r.split()))] for r in responses]


cats_and_brevity.objectives = ["cats", "short"]


def test_sources_sharing_a_name_each_log_their_reward(base, tmp_path):
    """One multi-objective reward under two weightings (to log each objective): both were logged as
    reward/<source>, the second overwriting the first."""
    specs = [{"source": "toys:two", "weights": {"cats": 1.0, "short": 0.0}},
             {"source": "toys:two", "weights": {"cats": 0.0, "short": 1.0}, "weight": 0.5}]
    run(config(base, tmp_path, rewards=specs, loop={"max_steps": 1}), prompts=PROMPTS,
        reward_objects=[cats_and_brevity, cats_and_brevity])
    row = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    cats, short = row["reward/toys:two[0]"], row["reward/toys:two[1]"]
    assert short < 0 <= cats
    assert row["reward"] == pytest.approx(cats + 0.5 * short, abs=1e-5)


@pytest.mark.parametrize("algorithm", ["rloo", "mnpo_rounds"])
def test_a_saved_adapter_given_as_model_is_its_own_reference(base, tmp_path, algorithm):
    """Continuing a saved LoRA adapter (an SFT run's, say): the reference is that adapter's policy, not the
    base with adapters off, which is the model before it (first-step KL was -0.24 on SmolLM2)."""
    adapter = run(config(base, tmp_path / "a", use_lora=True, merge_lora=False, loop={"max_steps": 1}),
                  prompts=PROMPTS, reward_objects=[cat_reward]).model_dir
    assert (adapter / "adapter_config.json").exists()
    with pytest.raises(ConfigError, match="is a saved LoRA adapter: set use_lora=true"):  # was: no trainable parameters
        run(config(adapter, tmp_path / "b", algorithm=algorithm, loop={"max_steps": 1}), prompts=PROMPTS,
            reward_objects=[cat_reward])
    cfg = config(adapter, tmp_path, algorithm=algorithm, use_lora=True, beta=0.05, loop={"max_steps": 1})
    tok, policy = load_tokenizer(adapter), load_model(adapter, lora=cfg.lora)
    _, reference, _ = build_method(cfg.resolved(), tok, policy)
    assert reference.model is not None
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "completion_mask": torch.tensor([[0, 0, 1, 1]])}
    with torch.no_grad():
        from pluralign.models.logprobs import token_logps

        assert torch.allclose(reference.token_logps(batch), token_logps(policy, **batch), atol=1e-6)
        with policy.disable_adapter():  # what the reference was: another model
            assert not torch.allclose(token_logps(policy, **batch), reference.token_logps(batch), atol=1e-3)


def test_a_multi_objective_source_logs_each_objective(base, tmp_path):
    """Trained on its weighted sum, a multi-output reward logged only that sum: an objective weighted 0 (or a
    drifting one) could not be watched."""
    run(config(base, tmp_path, rewards=[{"source": "toys:two", "weights": {"cats": 0.0, "short": 1.0}}],
               loop={"max_steps": 1}), prompts=PROMPTS, reward_objects=[cats_and_brevity])
    row = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["reward/toys:two/short"] == pytest.approx(row["reward"]) and row["reward/toys:two/short"] < 0
    assert row["reward/toys:two/cats"] >= 0


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_the_kl_estimator_is_the_one_put_in_the_reward(base, kind):
    """kl_in=reward took k1 whatever kl_estimator said (k3 in the reward, as TRL's PPO allows, was silently k1)."""
    from pluralign.online import advantages as adv
    from pluralign.online import policy_losses as pl
    from pluralign.online.engine import Reference
    from pluralign.online.methods import policy_outputs

    tok, model, ro = rollout_of(base)
    other = load_model(base)
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    method = PolicyGradient(tokenizer=tok, estimator="rloo", estimator_params={}, loss="clip", loss_params={},
                            aggregation="token_mean", max_len=6, beta=0.5, kl_estimator=kind, kl_in="reward",
                            kl_bias_correction=False, reference=Reference(model, model=other), shared_prompt=False)
    rewards = torch.tensor([0.3, -1.0, 2.0, 0.1, 1.0, 1.5, 0.2, 0.5])
    batch, _ = method.build(model, ro, rewards)
    mask = batch["completion_mask"].float()
    with torch.no_grad():
        old, _ = policy_outputs(model, {k: v for k, v in batch.items() if k != "live"})
    penalty = 0.5 * pl.kl_estimate(old, batch["ref_logps"], kind) * mask
    expected, _ = adv.rloo(rewards, mask, group_size=4, kl_penalty=penalty)
    torch.testing.assert_close(batch["advantages"], expected.float(), atol=1e-5, rtol=1e-5)


def test_a_rows_stop_texts_end_its_rollouts(base, tmp_path):
    """A prompt row's `stop` ends its completions, as `pluralign decode` ends them (it was read and dropped,
    so rollouts ran on past it to max_new_tokens); a bad one is named by file, line and field."""
    from pluralign.online.engine import Engine
    from pluralign.online.rewards import RewardSpec, Source
    from pluralign.online.rollout import read_prompts

    rows = [{"prompt": "the cat", "stop": "the"}, {"prompt": "a dog"}, {"prompt": "hello world", "stop": ["cat", "dog"]}]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {"prompt": "why", "stop": [""]}]))
    with pytest.raises(DataError, match="p.jsonl:4: field 'stop': controls.stop must be non-empty texts"):
        read_prompts([str(data)])
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = read_prompts([str(data)])
    assert [p.stop for p in prompts] == [("the",), None, ("cat", "dog")]
    tok, model = load_tokenizer(base), load_model(base)
    engine = Engine(policy=model, tokenizer=tok, prompts=prompts, sources=[Source(RewardSpec(), cat_reward)],
                    source_weights=[1.0], method=None, group_size=8, seed=0,
                    sampling={"max_new_tokens": 12, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "chat_template": "auto"})
    ro = engine._generate([2, 1, 0], seed=3)
    assert ro.prompts[::8] == ["hello world", "a dog", "the cat"]
    stops = {"the cat": ["the"], "a dog": [], "hello world": ["cat", "dog"]}
    for prompt, text, finish in zip(ro.prompts, ro.texts, ro.finish, strict=True):
        assert not any(s in text.split() for s in stops[prompt]) and (finish != "stop" or stops[prompt])
    assert ro.finish[:8].count("stop") > 0 and ro.finish[16:].count("stop") > 0
    assert any("the" in t.split() or "cat" in t.split() for t in ro.texts[8:16])  # the words do come up unstopped
