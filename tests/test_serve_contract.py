"""The server's request contract with the real `openai` client on 127.0.0.1: a field the server does not read
is refused naming it, never dropped (an unsteered answer that looks steered), and so are weights given by
position where the policy and the reward name their objectives in different orders."""

from __future__ import annotations

import httpx
import openai
import pytest
import torch

from pluralign.decode.api import Controls, decode
from pluralign.decode.rewards import FunctionReward
from pluralign.decode.steer import load_policy
from pluralign.errors import ConfigError
from pluralign.models import tiny
from pluralign.models.load import save_model
from pluralign.models.soup import save_soup
from pluralign.serve import Background, Loaded, ServeConfig

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


# ---------------------------------------------------------------- weights by position, read in two orders


def reward_in(order: list[str]) -> FunctionReward:
    """Scores 'a' = the answer's length in characters, 'b' = minus it, as columns in `order`."""
    return FunctionReward(lambda p, y: [[{"a": len(t), "b": -len(t)}[o] for o in order] for t in y], order)


@pytest.fixture(scope="module")
def soup(tmp_path_factory, chat_tokenizer):
    """A rewarded soup over objectives (a, b) of two tiny chat models."""
    out = tmp_path_factory.mktemp("soup")
    members = []
    for k in range(2):
        torch.manual_seed(k)
        model = tiny.tiny_llama(len(chat_tokenizer), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
        members.append(save_model(model, chat_tokenizer, out / f"member{k}"))
    return save_soup(members, ["a", "b"], out / "soup")


def test_positional_weights_read_in_two_orders_are_refused(soup):
    model, tok = load_policy(soup)
    controls = Controls(weights=[0.3, 0.7], n=2, max_new_tokens=3)
    decode("bon", model, tok, [MESSAGES], reward=reward_in(["a", "b"]), controls=controls)  # one order: taken
    with pytest.raises(ConfigError, match="by position") as e:
        decode("bon", model, tok, [MESSAGES], reward=reward_in(["b", "a"]), controls=controls)
    assert e.value.field == "weights" and "['a', 'b']" in str(e.value) and "['b', 'a']" in str(e.value)
    loaded = Loaded(model=model, tokenizer=tok, name="soup", rewards={"ba": reward_in(["b", "a"])})
    with Background(ServeConfig(model=str(soup), port=0), loaded=loaded) as url:
        c = client(url)
        steer = {"method": "bon", "best_of": 2, "reward": "ba"}
        with pytest.raises(openai.UnprocessableEntityError, match="by position") as e:
            c.chat.completions.create(model="soup", messages=MESSAGES, max_tokens=3,
                                      extra_body=steer | {"weights": [0.3, 0.7]})
        assert e.value.body["param"] == "weights"
        reply = c.chat.completions.create(model="soup", messages=MESSAGES, max_tokens=3,
                                          extra_body=steer | {"weights": {"a": 0.3, "b": 0.7}})
        ext = reply.choices[0].model_extra["pluralign"]
        assert ext["utility"] == pytest.approx(0.3 * ext["scores"]["a"] + 0.7 * ext["scores"]["b"])
        # plain sampling: only the soup reads the weights, in its own order
        c.chat.completions.create(model="soup", messages=MESSAGES, max_tokens=3, extra_body={"weights": [0.3, 0.7]})
