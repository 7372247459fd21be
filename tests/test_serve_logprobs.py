"""Token log-probs from `pluralign serve` in OpenAI's formats, read with the real `openai` client: each
token's log-prob equals the model's own (teacher-forced) log-prob, the alternatives are the most likely
tokens in order, the pieces join into the text, and an LLM judge in AlpacaEval's weighted mode reads them."""

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
    ({"messages": MESSAGES, "logprobs": True, "stream": True}, "not streamed"),
])
def test_logprobs_requests_the_server_cannot_answer_are_refused(served, body, message):
    url, _, _ = served
    resp = httpx.post(url + "/v1/chat/completions", json={"model": "sandbox", "max_tokens": 2, **body})
    assert resp.status_code == 400 and message in resp.json()["error"]["message"]
