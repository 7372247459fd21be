"""Prompts are data: message-list prompts reach every consumer as conversations, rendered with the
consumer's own chat template (`pluralign.data.prompts`), never as ``str(prompt)``.

The references are computed by hand here: the conversation rendered with ``apply_chat_template`` and
tokenized, then the reward model's backbone and head applied to those ids one sequence at a time (no
padding), so a wrong rendering anywhere in the library shows up as a score mismatch."""

from __future__ import annotations

import warnings

import pytest
import torch

from pluralign.data import prompts as P
from pluralign.data.collate import ListwiseCollator, PairwiseCollator, SFTCollator, UnpairedCollator
from pluralign.data.records import Binary, Pairwise, Ranked
from pluralign.decode import api
from pluralign.decode.api import Controls, decode
from pluralign.decode.args import as_cached
from pluralign.decode.controlled import ValueModel
from pluralign.decode.rewards import FunctionReward, GoldReward
from pluralign.decode.sampler import sample
from pluralign.errors import ConfigError
from pluralign.models import tiny
from pluralign.reward import BinaryRewardModel, BTRewardModel, Ensemble, MultiObjectiveRewardModel
from pluralign.reward.base import TextEncoder
from pluralign.reward.implicit import ImplicitRewardModel
from pluralign.reward.pal import PALRewardModel

MSGS = [
    [{"role": "system", "content": "answer yes or no ."}, {"role": "user", "content": "is the cat big ?"}],
    [{"role": "user", "content": "what is the dog doing ?"}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hello there ."},
     {"role": "user", "content": "why is the rug red ?"}],
]
RESPONSES = ["yes , the cat is big .", "the dog ran under the mat", "no"]
ATOL = 1e-6


def conversation_ids(tok, prompt, response=None):
    """Hand reference: the template's rendering of the conversation (with the reply, or with the
    generation prompt), tokenized without extra special tokens."""
    if response is None:
        text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    else:
        text = tok.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
    return tok.encode(text, add_special_tokens=False)


def reference_rewards(rm, prompts, responses, user=None):
    """rm's head on its backbone's features of the templated conversations, one unpadded sequence at a time."""
    tok, rows = rm.encoder.tokenizer, []
    with torch.no_grad():
        for p, r in zip(prompts, responses, strict=True):
            ids = torch.tensor([conversation_ids(tok, p, r)])
            feats = rm.encoder(ids, torch.ones_like(ids))
            prompt_feats = None
            if rm.needs_prompt:
                pids = torch.tensor([conversation_ids(tok, p)])
                prompt_feats = rm.encoder(pids, torch.ones_like(pids))
            rows.append(rm.rewards(feats, prompt_feats, user=user).float())
    return torch.cat(rows)


@pytest.fixture(scope="module")
def backbone(chat_tokenizer):
    return tiny.tiny_llama(len(chat_tokenizer), hidden_size=32, num_heads=2, seed=3).eval()


@pytest.fixture(scope="module")
def encoder(backbone, chat_tokenizer):
    return TextEncoder(backbone, chat_tokenizer, trainable=False)


@pytest.fixture(scope="module")
def multi_rm(encoder):
    return MultiObjectiveRewardModel(encoder, objectives=("helpful", "brief"), seed=1).eval()


@pytest.fixture(scope="module")
def policy(chat_tokenizer):
    return tiny.tiny_llama(len(chat_tokenizer), hidden_size=32, num_heads=2, seed=7).eval()


# ------------------------------------------------------------------------------------------ rendering


def test_modes_render_messages_and_plain_text(chat_tokenizer, tiny_word_tokenizer, monkeypatch):
    tok = chat_tokenizer
    text, templated = P.render_prompt(tok, MSGS[1])
    assert templated and text == "user : what is the dog doing ? </s> assistant :"
    monkeypatch.setattr(P, "_warned", False)
    with pytest.warns(UserWarning, match="plain-text prompts meet a tokenizer with a chat template"):
        plain = P.render_prompt(tok, "what is the dog doing ?")
    assert plain == (text, True)  # auto: plain text is one user message
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is given once per process
        P.render_prompt(tok, "what is the cat ?")
        assert P.render_prompt(tok, text) == (text, False)  # already rendered: used as is
        assert P.render_prompt(tok, "what is the dog doing ?", "always") == (text, True)
    assert P.render_prompt(tok, "what is the dog doing ?", "never") == ("what is the dog doing ?", False)
    assert P.render_prompt(tiny_word_tokenizer, "the cat") == ("the cat", False)  # no template: as is
    assert P.render_prompt(tok, "") == ("", False)  # no prompt: plain LM text (pretraining documents)
    with pytest.raises(ConfigError, match="chat_template=never"):
        P.render_prompt(tok, MSGS[0], "never")
    with pytest.raises(ConfigError, match="no chat template"):
        P.render_prompt(tiny_word_tokenizer, MSGS[0])
    with pytest.raises(ConfigError, match="no chat template"):
        P.render_prompt(tiny_word_tokenizer, "the cat", "always")
    with pytest.raises(ConfigError, match="chat_template must be one of"):
        P.render_prompt(tok, "the cat", "sometimes")
    assert P.prompt_ids(tok, MSGS[2]) == conversation_ids(tok, MSGS[2])


def test_training_batches_tokenize_exactly_as_the_template_renders(chat_tokenizer):
    tok = chat_tokenizer
    pairs = [Pairwise(prompt=p, chosen=r, rejected="no") for p, r in zip(MSGS, RESPONSES, strict=True)]
    for packing in (False, True):
        batch = PairwiseCollator(tok, max_length=64, packing=packing)(pairs)
        expected = [(p, r) for p, r in zip(MSGS, RESPONSES, strict=True)] + [(p, "no") for p in MSGS]
        ids, mask = batch["input_ids"], batch["completion_mask"]
        if packing:
            rows = torch.split(ids[0], batch["seq_lengths"].tolist())
            masks = torch.split(mask[0], batch["seq_lengths"].tolist())
        else:
            keep = batch["attention_mask"].bool()
            rows = [ids[i][keep[i]] for i in range(len(ids))]
            masks = [mask[i][keep[i]] for i in range(len(ids))]
        for (p, r), row, m in zip(expected, rows, masks, strict=True):
            full, head = conversation_ids(tok, p, r), conversation_ids(tok, p)
            assert row.tolist() == full
            assert m.tolist() == [0] * len(head) + [1] * (len(full) - len(head))
    # the other record kinds share the encoder: SFT, unpaired, listwise
    sft = SFTCollator(tok, max_length=64)([(MSGS[0], RESPONSES[0])])
    assert sft["input_ids"][0][sft["attention_mask"][0].bool()].tolist() == conversation_ids(tok, MSGS[0], RESPONSES[0])
    un = UnpairedCollator(tok, max_length=64)([Binary(prompt=MSGS[1], response=RESPONSES[1], label=True)])
    assert un["input_ids"][0][un["attention_mask"][0].bool()].tolist() == conversation_ids(tok, MSGS[1], RESPONSES[1])
    ranked = ListwiseCollator(tok, max_length=64)([Ranked(prompt=MSGS[2], responses=["no", "yes"], ranks=[1, 0])])
    for i, y in enumerate(["no", "yes"]):
        assert ranked["input_ids"][i][ranked["attention_mask"][i].bool()].tolist() == conversation_ids(tok, MSGS[2], y)
    # plain text on a chat tokenizer under auto: the same tokens as one user message; never: the raw text
    plain = PairwiseCollator(tok, max_length=64)([Pairwise(prompt="hello", chosen="yes", rejected="no")])
    user = [{"role": "user", "content": "hello"}]
    assert plain["input_ids"][0][plain["attention_mask"][0].bool()].tolist() == conversation_ids(tok, user, "yes")
    raw = PairwiseCollator(tok, max_length=64, chat_template="never")([Pairwise(prompt="hello", chosen="yes",
                                                                                rejected="no")])
    assert raw["input_ids"][0][raw["attention_mask"][0].bool()].tolist() == tok.encode("hello yes") + [tok.eos_token_id]


# -------------------------------------------------------------------------------------- reward sources


def _reward_models(encoder):
    bt = BTRewardModel(encoder, seed=2).eval()
    return {
        "bt": bt,
        "multi": MultiObjectiveRewardModel(encoder, objectives=("a", "b", "c"), seed=3).eval(),
        "binary": BinaryRewardModel(encoder, seed=4).eval(),
        "pal": PALRewardModel(encoder, n_prototypes=2, dim=8, user_ids=["u0", "u1"], seed=5).eval(),
    }


@pytest.mark.parametrize("kind", ["bt", "multi", "binary", "pal"])
def test_reward_models_score_the_templated_conversation(kind, encoder):
    rm = _reward_models(encoder)[kind]
    user = "u1" if kind == "pal" else None
    got = rm.score(MSGS, RESPONSES, user=user)
    torch.testing.assert_close(got, reference_rewards(rm, MSGS, RESPONSES, user=user), atol=ATOL, rtol=0)
    # a plain-text prompt under auto scores as the same conversation with one user message
    one = [{"role": "user", "content": "is the cat big ?"}]
    torch.testing.assert_close(rm.score(["is the cat big ?"], ["yes"], user=user),
                               rm.score([one], ["yes"], user=user), atol=ATOL, rtol=0)


def test_saved_reward_model_keeps_its_chat_template_mode(tmp_path, backbone, chat_tokenizer):
    from pluralign.reward import load_reward_model

    enc = TextEncoder(backbone, chat_tokenizer, trainable=True, chat_template="never")
    rm = BTRewardModel(enc, seed=2).eval()
    rm.save(tmp_path / "rm")
    again = load_reward_model(tmp_path / "rm")
    assert again.encoder.chat_template == "never"
    torch.testing.assert_close(again.score(["the cat"], ["yes"]), rm.score(["the cat"], ["yes"]), atol=ATOL, rtol=0)


def test_ensemble_and_implicit_rewards_score_the_templated_conversation(encoder, policy, chat_tokenizer):
    models = _reward_models(encoder)
    ens = Ensemble([models["bt"], BTRewardModel(encoder, seed=9).eval()])
    ref = torch.stack([reference_rewards(m, MSGS, RESPONSES) for m in ens.members]).mean(0)
    torch.testing.assert_close(ens.score(MSGS, RESPONSES), ref, atol=ATOL, rtol=0)

    reference_lm = tiny.tiny_llama(len(chat_tokenizer), hidden_size=32, num_heads=2, seed=8).eval()
    implicit = ImplicitRewardModel(policy, chat_tokenizer, reference_lm, beta=0.5)
    expected = []
    with torch.no_grad():
        for p, r in zip(MSGS, RESPONSES, strict=True):
            full, head = conversation_ids(chat_tokenizer, p, r), conversation_ids(chat_tokenizer, p)
            ids = torch.tensor([full])
            totals = []
            for lm in (policy, reference_lm):
                logp = torch.log_softmax(lm(ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
                totals.append(logp[len(head) - 1:].sum())
            expected.append(0.5 * (totals[0] - totals[1]))
    torch.testing.assert_close(implicit.score(MSGS, RESPONSES)[:, 0], torch.stack(expected), atol=ATOL, rtol=0)


def test_cached_reward_scores_templated_prefixes(multi_rm, chat_tokenizer):
    """ARGS's incremental path: prompt ids from the template, then candidate tokens, equal the RM's head on
    the same ids."""
    cached = as_cached(multi_rm, chat_tokenizer)
    ids = [P.prompt_ids(chat_tokenizer, p) for p in MSGS[:2]]
    cached.start(ids)
    cand = torch.tensor([[chat_tokenizer.convert_tokens_to_ids("yes"), chat_tokenizer.convert_tokens_to_ids("no")]] * 2)
    got = cached.candidates(cand)
    with torch.no_grad():
        for b, p in enumerate(MSGS[:2]):
            for j in range(2):
                seq = torch.tensor([conversation_ids(chat_tokenizer, p) + [int(cand[b, j])]])
                want = multi_rm.rewards(multi_rm.encoder(seq, torch.ones_like(seq)))[0]
                torch.testing.assert_close(got[b, j], want, atol=ATOL, rtol=0)


def test_gold_function_and_judges_see_the_conversation(multi_rm):
    from pluralign.judges import GoldJudge, RewardModelJudge
    from pluralign.sandbox.world import format_prompt

    requests = ["describe rivers . please be brief .", "tell me about the moon ."]
    chats = [[{"role": "user", "content": q}] for q in requests]
    rendered = [format_prompt(q) for q in requests]  # the sandbox template's rendering of each chat
    answers = ["rivers are long and calm .", "the moon is bright ."]
    gold = GoldReward()
    torch.testing.assert_close(gold.score(chats, answers), gold.score(rendered, answers), atol=0, rtol=0)
    judge = GoldJudge({"relevance": 1.0, "conciseness": 0.5})
    assert judge.single(chats, answers).tolist() == judge.single(rendered, answers).tolist()

    seen = []
    fn = FunctionReward(lambda ps, rs: (seen.extend(ps), [float(len(r)) for r in rs])[1])
    fn.score(chats, answers)
    assert seen == chats  # a Python reward receives the messages themselves

    rm_judge = RewardModelJudge(multi_rm, weights=[1.0, 0.5])
    want = reference_rewards(multi_rm, MSGS, RESPONSES) @ torch.tensor([1.0, 0.5])
    assert rm_judge.single(MSGS, RESPONSES) == pytest.approx(want.tolist(), abs=ATOL)


def test_llm_judge_sends_the_conversation_as_a_transcript():
    from test_judges_llm import ScriptedServer

    from pluralign.judges import LLMJudge

    server = ScriptedServer(lambda user, n: ("ok", "Rating: [[7]]"))
    try:
        judge = LLMJudge(server.url, "judge", api_key_env=None, max_retries=0)
        assert judge.single([MSGS[0]], ["yes"]).tolist() == [7.0]
        sent = server.requests[0]["body"]["messages"][-1]["content"]
        assert "system: answer yes or no .\nuser: is the cat big ?" in sent
        assert "{'role'" not in sent
    finally:
        server.close()


# ------------------------------------------------------------------------------------------- decoders


class Spy:
    """A reward source that records every prompt it is asked to score, then delegates."""

    def __init__(self, source):
        self.source, self.objectives, self.prompts = source, source.objectives, []

    def score(self, prompts, responses, user=None):
        self.prompts.extend(prompts)
        return self.source.score(prompts, responses, user=user)


def _decoder_kwargs(method, policy, chat_tokenizer, multi_rm):
    other = tiny.tiny_llama(len(chat_tokenizer), hidden_size=32, num_heads=2, seed=11).eval()
    extra = {"map": {"targets": [0.0, 0.0]}, "args": {"k": 4}, "tq_star": {"k": 3, "rollout": 3},
             "deal": {"lookahead": 2, "init_beams": 2, "beams": 1, "max_iterations": 2}}.get(method, {})
    kwargs = {"cd": {"value_model": ValueModel.new(policy)}, "tq_star": {"baseline": other},
              "genarm": {"models": [other]}, "mod": {"models": [other]}}.get(method, {})
    controls = Controls(weights=[1.0, 0.5], n=3, max_new_tokens=4, temperature=1.0, seed=0, extra=extra)
    return controls, kwargs


@pytest.mark.parametrize("method", api.names())
def test_every_decoder_scores_chat_prompts_with_the_templated_conversation(method, policy, chat_tokenizer, multi_rm):
    controls, kwargs = _decoder_kwargs(method, policy, chat_tokenizer, multi_rm)
    spy = Spy(multi_rm)
    out = decode(method, policy, chat_tokenizer, MSGS, reward=spy, controls=controls, **kwargs)
    assert spy.prompts and all(p in MSGS for p in spy.prompts)  # the conversations, never their repr
    torch.testing.assert_close(out.scores, reference_rewards(multi_rm, MSGS, out.texts), atol=ATOL, rtol=0)
    for p, (texts, scores) in enumerate(zip(out.candidates or [], out.candidate_scores or [], strict=True)):
        torch.testing.assert_close(scores, reference_rewards(multi_rm, [MSGS[p]] * len(texts), texts),
                                   atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", api.names())
def test_every_decoder_reports_its_answers_generated_ids(method, policy, chat_tokenizer, multi_rm):
    """`info["token_ids"]` are the ids each answer was generated as (what `pluralign serve` counts and
    reads its finish reason from, rather than re-tokenizing the text), within the token limit."""
    from pluralign.decode.sampler import decoded_text

    controls, kwargs = _decoder_kwargs(method, policy, chat_tokenizer, multi_rm)
    out = decode(method, policy, chat_tokenizer, MSGS, reward=multi_rm, controls=controls, **kwargs)
    ids = out.info["token_ids"]
    assert len(ids) == len(MSGS)
    for p, row in enumerate(ids):
        assert 1 <= len(row) <= controls.max_new_tokens
        assert decoded_text(chat_tokenizer, row, None) == out.texts[p]


def test_args_with_the_reward_models_cache_scores_the_templated_conversation(policy, chat_tokenizer, multi_rm):
    controls = Controls(weights=[1.0, 0.5], max_new_tokens=4, temperature=0.0, extra={"k": 4})
    out = decode("args", policy, chat_tokenizer, MSGS, reward=multi_rm, reward_model=multi_rm, controls=controls)
    torch.testing.assert_close(out.scores, reference_rewards(multi_rm, MSGS, out.texts), atol=ATOL, rtol=0)


def test_policy_conditions_on_the_templated_prompt(policy, chat_tokenizer):
    s = sample(policy, chat_tokenizer, MSGS + ["is the cat big ?"], n=1, max_new_tokens=2, seed=0)
    assert s.prompt_ids[:3] == [conversation_ids(chat_tokenizer, p) for p in MSGS]
    assert s.prompt_ids[3] == conversation_ids(chat_tokenizer, [{"role": "user", "content": "is the cat big ?"}])
    raw = sample(policy, chat_tokenizer, ["is the cat big ?"], n=1, max_new_tokens=2, seed=0, chat_template="never")
    assert raw.prompt_ids[0] == chat_tokenizer.encode("is the cat big ?")


def test_online_rollouts_condition_on_the_template_and_keep_the_conversation(policy, chat_tokenizer):
    from pluralign.online.rollout import generate

    roll = generate(policy, chat_tokenizer, MSGS, 2, max_new_tokens=3, seed=0)
    assert roll.prompts == [p for p in MSGS for _ in range(2)]  # reward sources get the conversations
    assert roll.prompt_ids == [conversation_ids(chat_tokenizer, p) for p in MSGS for _ in range(2)]
    raw = generate(policy, chat_tokenizer, ["is the cat big ?"], 1, max_new_tokens=2, seed=0, chat_template="never")
    assert raw.prompt_ids[0] == chat_tokenizer.encode("is the cat big ?")


def test_args_cache_starts_from_the_reward_models_own_rendering(policy, chat_tokenizer, multi_rm, monkeypatch):
    """The policy may see a prompt unrendered (`chat_template=never`, as /v1/completions does) while the reward
    model renders it with its template, as it did in training: ARGS's cached reward model must start from
    its own rendering of the prompt, not from the policy's ids."""
    from pluralign.decode.rewards import CachedReward

    seen = []
    start = CachedReward.start
    monkeypatch.setattr(CachedReward, "start", lambda self, seqs: (seen.extend(seqs), start(self, seqs))[1])
    prompts = ["is the cat big ?", "what is the dog doing ?"]
    controls = Controls(weights=[1.0, 0.5], max_new_tokens=3, temperature=0.0, chat_template="never", extra={"k": 4})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decode("args", policy, chat_tokenizer, prompts, reward=multi_rm, reward_model=multi_rm, controls=controls)
    assert seen == [conversation_ids(chat_tokenizer, [{"role": "user", "content": p}]) for p in prompts]


def test_text_rendered_with_its_own_system_message_is_not_rendered_again():
    """A template that adds a default system message (as SmolLM2's does) puts it in the user-turn prefix, so
    a prompt rendered with its own system message does not start with that prefix; it starts with the
    template's system-turn markup and is rendered already, not wrapped in a second conversation."""
    template = ("{% if messages[0]['role'] != 'system' %}system : be good . </s> {% endif %}"
                "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                "{% if add_generation_prompt %}assistant :{% endif %}")
    tok = tiny.word_tokenizer(["system", "user", "assistant", "be", "good", "."], chat_template=template)
    own = tok.apply_chat_template([{"role": "system", "content": "answer yes or no ."},
                                   {"role": "user", "content": "is the cat big ?"}], tokenize=False,
                                  add_generation_prompt=True)
    default = tok.apply_chat_template([{"role": "user", "content": "is the cat big ?"}], tokenize=False,
                                      add_generation_prompt=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert P.render_prompt(tok, own) == (own, False)
        assert P.render_prompt(tok, default) == (default, False)
        assert P.render_prompt(tok, "is the cat big ?") == (default, True)
