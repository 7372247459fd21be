"""A reward model reads its reward at the end of the response: a prompt + response longer than the encoder's
`max_length` loses the prompt's start first, and the response's end only when the response alone is too
long, with a warning (training and scoring share `TextEncoder.tokenize`, so both cut alike)."""

from __future__ import annotations

import warnings

import pytest
import torch

from pluralign.models import tiny
from pluralign.reward import BTRewardModel
from pluralign.reward.base import TextEncoder

LONG_PROMPT = [{"role": "user", "content": " ".join(["the big red cat sat on the mat ."] * 4)}]  # 36 words


@pytest.fixture(scope="module")
def rm(chat_tokenizer):
    backbone = tiny.tiny_llama(len(chat_tokenizer), hidden_size=32, num_heads=2, seed=3).eval()
    encoder = TextEncoder(backbone, chat_tokenizer, trainable=False, pooling="last", max_length=24)
    return BTRewardModel(encoder, seed=0).eval()


def _rows(rm, prompts, responses):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = rm.encoder.tokenize(prompts, responses)
    tok = rm.encoder.tokenizer
    texts = [" ".join(tok.convert_ids_to_tokens(ids[mask.bool()].tolist()))
             for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]
    return texts, [str(w.message) for w in caught]


def test_an_over_long_prompt_is_cut_at_its_start_and_the_response_kept(rm):
    texts, caught = _rows(rm, [LONG_PROMPT], ["yes , the cat is big ."])
    assert texts[0].split()[-10:] == "assistant : yes , the cat is big . </s>".split()
    assert len(texts[0].split()) == 24
    assert any("max_length=24" in w and "prompt" in w for w in caught)


def test_responses_that_differ_at_their_end_are_told_apart(rm):
    prompt = [{"role": "user", "content": "the big red cat sat on the mat . the dog sat on the rug ."}]  # 22 tokens
    a, b = "the dog ran under the rug and was happy", "the dog ran under the rug and was sad"
    texts, _ = _rows(rm, [prompt, prompt], [a, b])
    assert texts[0].split()[-2:] == ["happy", "</s>"] and texts[1].split()[-2:] == ["sad", "</s>"]
    scores = rm.score([prompt, prompt], [a, b])
    assert not torch.equal(scores[0], scores[1])


def test_a_response_longer_than_max_length_keeps_its_start_and_a_fitting_row_is_untouched(rm):
    long_answer = " ".join(["the dog ran"] * 12)
    texts, caught = _rows(rm, [[{"role": "user", "content": "hello"}]], [long_answer])
    assert len(texts[0].split()) == 24 and texts[0].startswith("user : hello </s> assistant : the dog ran")
    assert caught
    texts, caught = _rows(rm, [[{"role": "user", "content": "hello"}]], ["yes"])
    assert texts[0] == "user : hello </s> assistant : yes </s>" and not caught


def test_an_implicit_reward_keeps_the_response_of_an_over_long_pair_too(chat_tokenizer):
    # DPO-as-RM (log π(y|x), or its ratio to the reference) stopped at a prompt over max_length and scored
    # a cut-off response's first tokens only
    from pluralign.reward.implicit import ImplicitRewardModel

    policy = tiny.tiny_llama(len(chat_tokenizer), hidden_size=32, num_heads=2, seed=7).eval()
    implicit = ImplicitRewardModel(policy, chat_tokenizer, form="sum", max_length=24)
    prompt = [{"role": "user", "content": "the big red cat sat on the mat . the dog sat on the rug ."}]
    a, b = "the dog ran under the rug and was happy", "the dog ran under the rug and was sad"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = implicit.score([LONG_PROMPT, prompt, prompt], ["yes", a, b])
    assert torch.isfinite(scores).all() and scores[1] != scores[2]
    assert any("max_length=24" in str(w.message) for w in caught)
