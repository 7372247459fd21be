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
    assert error["param"] == named and error["code"] == "unknown_parameter"
    assert f"unknown parameter '{named}' for /v1/chat/completions" in error["message"]
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


# ---------------------------------------------------------------- users a personalised model does not know


def persona_model(chat_model, out):
    """The chat model saved with Janus-style statements for user alice and group g1."""
    import shutil

    from pluralign import conditioning

    shutil.copytree(chat_model, out)
    scheme = conditioning.get("persona_message", statements={"alice": "the cat is happy", "g1": "the dog is sad"})
    for name, text in conditioning.save_state(scheme).items():
        (out / name).write_text(text)
    return out


def test_a_user_the_model_has_no_condition_for_is_refused_unless_the_server_falls_back(chat_model, tmp_path):
    model_dir = persona_model(chat_model, tmp_path / "persona")
    with Background(ServeConfig(model=str(model_dir), served_name="p", port=0)) as url:
        c = client(url)
        for known in ({"user": "alice"}, {"extra_body": {"group": "g1"}}, {"user": "bob", "extra_body": {"group": "g1"}}):
            c.chat.completions.create(model="p", messages=MESSAGES, max_tokens=2, **known)
        for unknown, param, named in (({"user": "mallory"}, "user", "mallory"),
                                      ({"extra_body": {"group": "g9"}}, "group", "g9")):
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model="p", messages=MESSAGES, max_tokens=2, **unknown)
            assert e.value.body["param"] == param and e.value.body["code"] == "unknown_user"
            assert f"'{named}'" in e.value.body["message"] and "--unknown-users population" in e.value.body["message"]
    with Background(ServeConfig(model=str(model_dir), served_name="p", port=0, unknown_users="population")) as url:
        reply = client(url).chat.completions.create(model="p", messages=MESSAGES, max_tokens=2, user="mallory")
        assert reply.usage.completion_tokens >= 1


def test_every_person_scheme_says_whom_it_has_nothing_for():
    from pluralign.conditioning import Condition, get
    from pluralign.personal.conditioned import PersonVectorScheme

    tokens = get("control_tokens", names=["alice", "g1"], user_groups={"bob": "g1"})
    vectors = PersonVectorScheme()
    vectors.index = {"names": ["alice", "g1"], "user_groups": {"bob": "g1"}}
    statements = get("persona_message", statements={"alice": "x", "g1": "y"}, user_groups={"bob": "g1"})
    for scheme in (tokens, vectors, statements):
        for known in (Condition(user="alice"), Condition(user="bob"), Condition(user="carol", group="g1"), Condition()):
            assert scheme.unmatched(known) is None, (scheme, known)  # bob: his training group's
        assert scheme.unmatched(Condition(user="mallory")) == "user 'mallory'"
        assert scheme.unmatched(Condition(group="g9")) == "group 'g9'"
    assert get("system_message", ["a", "b"]).unmatched(Condition(user="mallory")) is None  # reads no user


def test_cli_refuses_an_unknown_users_setting_it_does_not_have(chat_model, capsys):
    from pluralign.cli import main

    assert main(["serve", "--model", str(chat_model), "--unknown-users", "ignore"]) == 2
    assert "'unknown_users' must be 'refuse' or 'population'" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "named"), [({"direction": [1, 0, 0, 0, 0, 0, 0]}, "direction"),
                                              ({"group": "g1"}, "group")])
def test_steering_a_reward_does_not_read_is_refused_with_a_method_too(server, extra, named):
    """A reward reads weights (and a per-user one, user); direction and group only a conditioning scheme."""
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3,
                                               extra_body={"method": "bon", "best_of": 2, "reward": "gold"} | extra)
    assert e.value.body["param"] == named and "nothing reads" in e.value.body["message"]
    assert "the reward reads only weights and user" in e.value.body["message"]


def test_decoder_options_are_refused_for_plain_sampling(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError) as e:  # plain sampling reads no decoder option
        c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3, extra_body={"extra": {"ties": "random"}})
    assert e.value.body["param"] == "extra" and "['ties']" in e.value.body["message"]
    c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3, extra_body={
        "method": "bon", "best_of": 2, "reward": "gold", "extra": {"ties": "random"}})


def test_plain_sampling_advises_a_method_only_for_what_a_reward_reads(server):
    c = client(server)
    for extra, advised in (({"weights": {"positivity": 1}}, True), ({"direction": [1, 0, 0, 0, 0, 0, 0]}, False)):
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=3, extra_body=extra)
        assert ("use an alignment method" in e.value.body["message"]) == advised, e.value.body["message"]
