"""Token log-probs from `pluralign serve` in OpenAI's formats, read with the real `openai` client: each
token's log-prob equals the model's own (teacher-forced) log-prob, the alternatives are the most likely
tokens in order, the pieces join into the text, a stream carries the same log-probs chunk by chunk, a model
with a conditioning scheme answers them too, and an LLM judge in AlpacaEval's weighted mode reads them."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch

from pluralign.data.prompts import prompt_ids
from pluralign.decode.steer import load_policy
from pluralign.judges.llm import reply_parts
from pluralign.models import token_logps
from pluralign.sandbox import build_base
from pluralign.serve import Background, ServeConfig

PROMPT = "question: can you talk about weather? answer:"
MESSAGES = [{"role": "user", "content": "can you talk about weather?"}]


@pytest.fixture(scope="module")
def served():
    path = build_base()
    model, tok = load_policy(path)
    with Background(ServeConfig(model=str(path), rewards=["gold"], served_name="sandbox", port=0), keys=[]) as url:
        yield url, model, tok


def model_logps(model, prompt: list[int], completion: list[int]) -> list[float]:
    ids = torch.tensor([prompt + completion])
    mask = torch.zeros_like(ids)
    mask[0, len(prompt):] = 1
    return token_logps(model, ids, torch.ones_like(ids), mask)[0, len(prompt):].tolist()


def test_chat_logprobs_are_the_models_own_and_join_into_the_text(served):
    url, model, tok = served
    c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    got = c.chat.completions.create(model="sandbox", messages=MESSAGES, max_tokens=10, temperature=0,
                                    logprobs=True, top_logprobs=3).choices[0]
    content = got.logprobs.content
    assert content and "".join(t.token for t in content) == got.message.content
    ids = [tok.convert_tokens_to_ids(t.token.strip()) for t in content]  # the sandbox's word vocabulary
    want = model_logps(model, prompt_ids(tok, MESSAGES), ids)
    assert [t.logprob for t in content] == pytest.approx(want, abs=1e-4)
    for t in content:
        tops = [a.logprob for a in t.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert t.top_logprobs[0].token == t.token and tops[0] == pytest.approx(t.logprob, abs=1e-5)  # greedy
        assert bytes(t.bytes).decode() == t.token
    sampled = c.chat.completions.create(model="sandbox", messages=MESSAGES, max_tokens=6, seed=3, logprobs=True)
    assert all(t.top_logprobs == [] and t.logprob <= 0 for t in sampled.choices[0].logprobs.content)


def test_legacy_completion_logprobs(served):
    url, _, _ = served
    c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    choice = c.completions.create(model="sandbox", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2).choices[0]
    lp = choice.logprobs
    assert "".join(lp.tokens) == choice.text and len(lp.token_logprobs) == len(lp.tokens)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    assert all(len(top) <= 2 and max(top.values()) == pytest.approx(x, abs=1e-5)
               for top, x in zip(lp.top_logprobs, lp.token_logprobs, strict=True))
    plain = c.completions.create(model="sandbox", prompt=PROMPT, max_tokens=4, temperature=0).choices[0]
    assert plain.logprobs is None


def test_a_weighted_llm_judge_reads_the_servers_top_logprobs(served):
    url, _, _ = served
    body = {"model": "sandbox", "messages": MESSAGES, "max_tokens": 1, "temperature": 0, "logprobs": True,
            "top_logprobs": 5}
    text, top = reply_parts(httpx.post(url + "/v1/chat/completions", json=body).json(), weighted=True)
    assert len(top) == 5 and all(math.isfinite(e["logprob"]) and e["logprob"] <= 0 for e in top)
    assert top[0]["token"] == text


@pytest.mark.parametrize("body, message", [
    ({"messages": MESSAGES, "top_logprobs": 2}, "needs 'logprobs': true"),
    ({"messages": MESSAGES, "logprobs": True, "top_logprobs": 21}, "between 0 and 20"),
    ({"messages": MESSAGES, "logprobs": "yes"}, "true or false"),
    ({"messages": MESSAGES, "logprobs": True, "method": "bon", "reward": "gold"}, "plain sampling"),
])
def test_logprobs_requests_the_server_cannot_answer_are_refused(served, body, message):
    url, _, _ = served
    resp = httpx.post(url + "/v1/chat/completions", json={"model": "sandbox", "max_tokens": 2, **body})
    assert resp.status_code == 400 and message in resp.json()["error"]["message"]


def test_streamed_logprobs_are_the_unstreamed_ones_chunk_by_chunk(served):
    """Each chunk carries the log-probs of the tokens its text completes: joined, the chunks' tokens are the
    streamed text, and their log-probs and alternatives those of the same request answered at once."""
    url, _, _ = served
    c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    ask = dict(model="sandbox", messages=MESSAGES, max_tokens=12, seed=5, logprobs=True, top_logprobs=2)
    whole = c.chat.completions.create(**ask).choices[0]
    text, entries, chunks = "", [], 0
    for event in c.chat.completions.create(**ask, stream=True):
        for choice in event.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None:
                chunks += 1
                entries += choice.logprobs.content
                assert "".join(e.token for e in entries) == text  # no chunk's log-probs run ahead of its text
    assert text == whole.message.content and chunks > 1
    assert [(e.token, e.logprob) for e in entries] == [(e.token, e.logprob) for e in whole.logprobs.content]
    assert [[a.token for a in e.top_logprobs] for e in entries] == [[a.token for a in e.top_logprobs]
                                                                   for e in whole.logprobs.content]
    legacy = dict(model="sandbox", prompt=PROMPT, max_tokens=10, seed=2, logprobs=1)
    once = c.completions.create(**legacy).choices[0].logprobs
    tokens, offsets = [], []
    for event in c.completions.create(**legacy, stream=True):
        if event.choices[0].logprobs is not None:
            tokens += event.choices[0].logprobs.tokens
            offsets += event.choices[0].logprobs.text_offset
    assert tokens == once.tokens and offsets == once.text_offset


def test_a_conditioned_model_streams_token_by_token_with_logprobs(tmp_path):
    """A model saved with a conditioning scheme (DPA-style statements) is sampled as a plain one: streamed
    in many chunks, with log-probs, and its answer is the plain sampler's on the prompt its scheme states."""
    import shutil

    from pluralign import conditioning
    from pluralign.decode.sampler import sample
    from pluralign.sandbox.attributes import ATTRIBUTES

    model_dir = tmp_path / "conditioned"
    shutil.copytree(build_base(), model_dir)
    for name, text in conditioning.save_state(conditioning.get("system_message", list(ATTRIBUTES))).items():
        (model_dir / name).write_text(text)
    model, tok = load_policy(model_dir)
    scheme = conditioning.attached(model).bind(tok)
    weights = {"positivity": 1.0}
    shown = scheme.prompt(MESSAGES, scheme.condition(weights=weights))
    want = sample(model, tok, [shown], max_new_tokens=10, temperature=0)
    with Background(ServeConfig(model=str(model_dir), served_name="cond", port=0), keys=[]) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        ask = dict(model="cond", messages=MESSAGES, max_tokens=10, temperature=0, logprobs=True,
                   extra_body={"weights": weights})
        whole = c.chat.completions.create(**ask).choices[0]
        deltas = [ch.delta.content for event in c.chat.completions.create(**ask, stream=True)
                  for ch in event.choices if ch.delta.content]
    assert whole.message.content == want.texts[0][0] == "".join(deltas) and len(deltas) > 1
    n = len(whole.logprobs.content)
    assert n and [e.logprob for e in whole.logprobs.content] == pytest.approx(want.token_logps[0][0][:n].tolist(), abs=1e-5)


def test_characters_split_across_tokens_are_reported_whole(bpe_tokenizer):
    """A byte-level tokenizer splits a CJK character or an emoji into several tokens, whose prefixes decode
    to U+FFFD. Every token is reported and the pieces join into the text: the partial tokens add nothing,
    the completing one the whole character; a stream (the tokens so far, the text held back to what is
    whole) reports the same pieces. The pieces used to stop at the first such character with a stray U+FFFD."""
    from pluralign.serve.logprobs import reported_tokens

    ids = bpe_tokenizer("the cat 我是 hello 😀!", add_special_tokens=False).input_ids
    text = bpe_tokenizer.decode(ids)
    pieces = reported_tokens(bpe_tokenizer, ids, text)
    assert [t for t, _ in pieces] == list(range(len(ids))) and "".join(p for _, p in pieces) == text
    assert "\ufffd" not in text and any(p == "我" for _, p in pieces)
    streamed, before = [], ""
    for end in range(1, len(ids) + 1):
        so_far = bpe_tokenizer.decode(ids[:end]).rstrip("\ufffd")  # what `Job.stream_text` holds back to
        rows = reported_tokens(bpe_tokenizer, ids[:end], so_far, len(streamed), before)
        streamed += rows
        before += "".join(p for _, p in rows)
    assert streamed == pieces
    cut = ids[:next(t for t, p in pieces if p == "我")]  # cut inside 我 (by max_tokens): the text ends with
    cut_text = bpe_tokenizer.decode(cut)  # U+FFFD, which the last piece reports
    assert cut_text.endswith("\ufffd")
    assert "".join(p for _, p in reported_tokens(bpe_tokenizer, cut, cut_text)) == cut_text
