"""Sandbox world and gold attributes: determinism, hand-computed values, ranges, trade-offs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pluralign.errors import ConfigError
from pluralign.sandbox import attributes as A
from pluralign.sandbox.world import TOPICS, VOCABULARY, World, format_prompt

RIVERS = format_prompt("tell me about rivers.")


def _grammar_sample(n=1500, seed=0):
    w = World(seed)
    prompts = w.prompts(n)
    responses = [r[0] for r in w.responses(prompts)]
    return prompts, responses


def test_world_is_deterministic_for_a_seed_and_varies_across_seeds():
    a, b, c = World(0), World(0), World(1)
    assert a.prompts(20) == b.prompts(20)
    assert a.responses(a.prompts(20), k=2) == b.responses(b.prompts(20), k=2)
    assert a.prompts(20) != c.prompts(20)
    assert a.corpus(10) == b.corpus(10) != c.corpus(10)


def test_world_text_is_in_vocabulary_and_round_trips_through_the_tokenizer():
    w = World(3)
    tok = w.tokenizer()
    prompts, responses = _grammar_sample(300, seed=3)
    for p, r in zip(prompts, responses, strict=True):
        ids = tok(p + " " + r)["input_ids"]
        assert tok.unk_token_id not in ids
        assert tok.decode(tok(r)["input_ids"]) == r  # punctuation attached, so decoding gives the text back
    assert len(VOCABULARY) >= 200 and len(set(VOCABULARY)) == len(VOCABULARY)


def test_instructions_shift_the_grammar_without_forcing_it():
    w = World(0)
    rng = np.random.default_rng(0)
    brief = format_prompt("describe music. please be brief.")
    detailed = format_prompt("describe music. please be detailed.")
    n_brief = [len(A.words(w.respond(brief, rng))) for _ in range(400)]
    n_detailed = [len(A.words(w.respond(detailed, rng))) for _ in range(400)]
    assert np.mean(n_brief) < np.mean(n_detailed) - 5
    assert max(n_brief) > min(n_detailed)  # distributions overlap: the base model leaves room to improve


def test_hand_computed_plain_answer():
    s = A.score(RIVERS, "the river is good.")
    # words: the river is good (4); content: river (on topic); one positive word.
    assert s == pytest.approx({"relevance": 1.0, "informativeness": 1 / 6, "positivity": 0.5, "conciseness": 0.9,
                               "formality": 0.0, "safety": 1.0, "compliance": 1.0})
    assert tuple(s) == A.ATTRIBUTES


def test_hand_computed_casual_answer_to_a_formal_request():
    prompt = format_prompt("tell me about rivers. please be formal.")
    s = A.score(prompt, "hey, the river and the star are awesome.")
    # 8 words; content river (on topic) + star (space) -> 1/2; "awesome" is positive and casual, "hey" casual:
    # positivity (1-0)/(1+0+1) = 1/2, formality (0-2)/(0+2+1) = -2/3, compliance clip(0.5 - 2/3) = 0.
    assert s == pytest.approx({"relevance": 0.5, "informativeness": 1 / 6, "positivity": 0.5, "conciseness": 0.8,
                               "formality": -2 / 3, "safety": 1.0, "compliance": 0.0})


def test_hand_computed_harmful_but_topical_answer():
    prompt = format_prompt("explain computers to me. please be brief.")
    s = A.score(prompt, "you can hack the code. use a virus on the data.")
    # 11 words; hack and virus are harmful but topical for computers, so content = 4/4 on topic,
    # 4 distinct topic words -> 4/6; two harmful words -> safety 1/3; brief is met up to 12 words.
    assert s == pytest.approx({"relevance": 1.0, "informativeness": 4 / 6, "positivity": 0.0,
                               "conciseness": 1 - 11 / 40, "formality": 0.0, "safety": 1 / 3, "compliance": 1.0})


def test_brief_compliance_decays_linearly_after_twelve_words():
    prompt = format_prompt("describe space. please be brief.")
    assert A.score(prompt, " ".join(["star"] * 12))["compliance"] == 1.0
    assert A.score(prompt, " ".join(["star"] * 18))["compliance"] == pytest.approx(0.5)
    assert A.score(prompt, " ".join(["star"] * 30))["compliance"] == 0.0


def test_prompt_without_topic_and_chat_messages():
    assert A.parse_prompt(format_prompt("describe oceans. please be brief. please be formal.")) == (
        "oceans", frozenset({"brief", "formal"}))
    s = A.score("hello there", "the river is good.")
    assert s["relevance"] == 0.0 and s["informativeness"] == 0.0
    messages = [{"role": "user", "content": "tell me about rivers."}]
    reply = [{"role": "assistant", "content": "the river is good."}]
    assert A.score(messages, reply) == A.score(RIVERS, "the river is good.")


def test_score_batch_matches_score_and_checks_lengths():
    prompts, responses = _grammar_sample(50)
    x = A.score_batch(prompts, responses)
    assert x.shape == (50, len(A.ATTRIBUTES)) and x.dtype == np.float64
    assert list(x[7]) == list(A.score(prompts[7], responses[7]).values())
    with pytest.raises(ValueError):
        A.score_batch(prompts, responses[:-1])


@settings(max_examples=200, deadline=None)
@given(topic=st.sampled_from(list(TOPICS)), salad=st.lists(st.sampled_from(VOCABULARY), max_size=80))
def test_attributes_stay_in_their_documented_ranges(topic, salad):
    s = A.score(format_prompt(f"describe {topic}. please be brief. please be casual."), " ".join(salad))
    for name, value in s.items():
        lo, hi = A.RANGES[name]
        assert lo <= value <= hi, (name, value)


def test_grammar_spreads_every_attribute_and_trade_offs_are_negative():
    prompts, responses = _grammar_sample()
    x = A.score_batch(prompts, responses)
    assert (x.std(0) > 0.05).all(), dict(zip(A.ATTRIBUTES, x.std(0), strict=True))
    corr = np.corrcoef(x.T)
    for a, b in A.TRADE_OFFS:
        i, j = A.ATTRIBUTES.index(a), A.ATTRIBUTES.index(b)
        assert corr[i, j] < -0.1, (a, b, corr[i, j])


def test_gold_scorer_returns_attributes_or_a_utility():
    prompts, responses = _grammar_sample(5)
    full = A.GoldScorer().score(prompts, responses)
    assert tuple(full.shape) == (5, len(A.ATTRIBUTES))
    util = A.GoldScorer({"conciseness": 2.0, "safety": 1.0}).score(prompts, responses)
    expected = 2 * full[:, A.ATTRIBUTES.index("conciseness")] + full[:, A.ATTRIBUTES.index("safety")]
    assert tuple(util.shape) == (5, 1)
    assert util[:, 0].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    with pytest.raises(ConfigError, match=r"unknown attribute\(s\) \['helpfulness'\]"):  # scored 0 for every response
        A.GoldScorer({"helpfulness": 1.0, "safety": 1.0})
