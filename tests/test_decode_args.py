"""ARGS: w = 0 is greedy decoding; the KV-cached reward model gives the same candidate rewards as
re-scoring every candidate sequence from scratch; log-softmax vs raw logits choose the same tokens;
per-request weights steer towards the request's own objective."""

import pytest
import torch

from pluralign.decode.api import Controls, decode
from pluralign.decode.kv import encode_prompts, left_pad
from pluralign.decode.rewards import CachedReward
from pluralign.decode.sampler import sample
from pluralign.decode.toy import toy_lm, toy_reward_model, toy_tokenizer

PROMPTS = ["the cat sat on", "a big dog", "bird"]


@pytest.fixture(scope="module")
def setup():
    tok = toy_tokenizer()
    return tok, toy_lm(tok, seed=0, scale=3.0), toy_reward_model(tok, seed=1, num_labels=2)


def word_counter(word):
    return lambda prompts, responses: torch.tensor([float(r.split().count(word)) for r in responses])


def test_w0_equals_greedy(setup):
    tok, lm, rm = setup
    greedy = sample(lm, tok, PROMPTS, n=1, max_new_tokens=10, temperature=0)
    out = decode("args", lm, tok, PROMPTS, reward=word_counter("cat"),
                 controls=Controls(w=0.0, max_new_tokens=10, extra={"mode": "greedy", "k": 5}))
    assert [g[0] for g in greedy.texts] == out.texts
    out2 = decode("args", lm, tok, PROMPTS, reward_model=rm,
                  controls=Controls(w=0.0, max_new_tokens=10, extra={"mode": "greedy"}))
    assert out2.texts == out.texts


def test_cached_rm_matches_full_rescoring(setup):
    tok, lm, rm = setup
    ids = encode_prompts(tok, PROMPTS)
    cached = CachedReward.from_sequence_classifier(rm, pad_id=tok.pad_token_id)
    cached.start(ids)
    cand = torch.tensor([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    got = cached.candidates(cand)
    full = [seq + [z] for seq, row in zip(ids, cand.tolist(), strict=True) for z in row]
    x, m = left_pad(full, tok.pad_token_id)
    with torch.no_grad():
        ref = rm(input_ids=x, attention_mask=m).logits.view(3, 3, -1)
    assert torch.allclose(got, ref, atol=1e-4)
    cached.commit(torch.tensor([2, 0, 1]))  # continue from the chosen branch and step again
    got2 = cached.candidates(cand)
    chosen = [ids[0] + [7], ids[1] + [8], ids[2] + [12]]
    full2 = [seq + [z] for seq, row in zip(chosen, cand.tolist(), strict=True) for z in row]
    x2, m2 = left_pad(full2, tok.pad_token_id)
    with torch.no_grad():
        ref2 = rm(input_ids=x2, attention_mask=m2).logits.view(3, 3, -1)
    assert torch.allclose(got2, ref2, atol=1e-4)


def test_logsoftmax_invariance(setup):
    tok, lm, _ = setup
    from pluralign.decode.tokenwise import top_k_candidates

    logits = lm(torch.tensor([encode_prompts(tok, ["the cat"])[0]])).logits[:, -1].detach()
    top, cand = top_k_candidates(logits, 5)
    top2, cand2 = top_k_candidates(torch.log_softmax(logits, -1), 5)
    r = torch.randn(1, 5)
    assert torch.equal(cand, cand2)
    assert torch.allclose(torch.softmax(top + r, -1), torch.softmax(top2 + r, -1), atol=1e-6)


def test_per_request_weights_steer(setup):
    tok, lm, _ = setup
    # per-request objective weights: each request gets more of its own word
    reward = lambda p, r: torch.tensor([[float(x.split().count("cat")), float(x.split().count("dog"))] for x in r])
    ctls = [Controls(w=5.0, max_new_tokens=8, weights=[1, 0], extra={"mode": "greedy"}),
            Controls(w=5.0, max_new_tokens=8, weights=[0, 1], extra={"mode": "greedy"})]
    out = decode("args", lm, tok, ["the", "the"], reward=reward, controls=ctls)
    assert out.scores[0, 0] > out.scores[1, 0] and out.scores[1, 1] > out.scores[0, 1]


def test_pluralign_reward_model_is_cached_like_its_encoder(setup):
    tok, lm, _ = setup
    from pluralign.decode.args import as_cached
    from pluralign.reward import BTRewardModel, TextEncoder

    backbone = toy_lm(tok, seed=7)
    rm = BTRewardModel(TextEncoder(backbone, tok), seed=0).eval()
    cached = as_cached(rm, tok)
    ids = encode_prompts(tok, PROMPTS)
    cached.start(ids)
    cand = torch.tensor([[5, 6], [7, 8], [9, 10]])
    got = cached.candidates(cand)
    with torch.no_grad():
        for b, row in enumerate(cand.tolist()):
            for j, z in enumerate(row):
                x = torch.tensor([ids[b] + [z]])
                want = rm.rewards(rm.encoder(x, torch.ones_like(x)))
                assert torch.allclose(got[b, j], want[0], atol=1e-4)
    out = decode("args", lm, tok, PROMPTS, reward=rm, reward_model=rm,
                 controls=Controls(w=1.0, max_new_tokens=6, extra={"mode": "greedy", "k": 4}))
    assert out.scores.shape == (3, 1) and out.objectives == ["reward"]
