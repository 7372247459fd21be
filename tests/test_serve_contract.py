"""The server's request contract with the real `openai` client on 127.0.0.1: a field the server does not read
is refused naming it, never dropped (an unsteered answer that looks steered)."""

from __future__ import annotations

import httpx
import openai
import pytest

from pluralign.serve import Background, ServeConfig

MESSAGES = [{"role": "user", "content": "what is the cat"}]


@pytest.fixture(scope="module")
def server(chat_model):
    cfg = ServeConfig(model=str(chat_model), rewards=["gold"], served_name="chat", port=0)
    with Background(cfg) as url:
        yield url


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)


@pytest.mark.parametrize(("extra", "named", "hint"), [
    ({"wieghts": {"positivity": 1}}, "wieghts", "weights"),
    ({"method": "bon", "best_of": 2, "reward": "gold", "wieghts": {"positivity": 1}}, "wieghts", "weights"),
    ({"max_new_tokens": 5}, "max_new_tokens", "max_tokens"),
    ({"prompt": "the cat"}, "prompt", None),  # a completions field sent to chat
])
def test_an_unknown_chat_field_is_a_400_naming_it(server, extra, named, hint):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3, extra_body=extra)
    error = e.value.body
    assert error["param"] == named and error["code"] == "unknown_parameter" and named in error["message"]
    if hint:
        assert f"did you mean '{hint}'" in error["message"]


def test_an_unknown_completions_or_rewards_field_is_a_400_naming_it(server):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).completions.create(model="chat", prompt="the cat", max_tokens=3, extra_body={"top_logprobs": 2})
    assert e.value.body["param"] == "top_logprobs" and "did you mean 'logprobs'" in e.value.body["message"]
    r = httpx.post(server + "/v1/rewards", json={"input": [{"prompt": "the cat", "response": "yes"}],
                                                 "wieghts": {"positivity": 1}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "wieghts"


def test_known_fields_and_openai_metadata_are_taken(server):
    c = client(server)
    reply = c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3, seed=1, user="u1",
                                      metadata={"run": "x"}, store=False,
                                      extra_body={"top_k": 5, "chat_template": "auto", "ignore_eos": True})
    assert reply.usage.completion_tokens == 3
    steered = c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3,
                                        extra_body={"method": "bon", "best_of": 2, "reward": "gold",
                                                    "weights": {"positivity": 1}, "beta": 1.0})
    assert "utility" in steered.choices[0].model_extra["pluralign"]
