"""`pluralign serve` end to end on 127.0.0.1 with the real `openai` client: completions and chat (plain and
streamed) equal to the sampler called directly, alignment controls through `extra_body` that move the
sandbox's gold attributes the way the weights say, /v1/rewards equal to the reward models called directly,
and the OpenAI error format for every refusal."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch

from pluralign.decode.sampler import sample
from pluralign.decode.steer import load_policy
from pluralign.sandbox import ATTRIBUTES, build_base, score_batch
from pluralign.sandbox.gold import eval_prompts
from pluralign.serve import Background, Loaded, ServeConfig

KEY = "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "question: can you talk about weather? answer:"


@pytest.fixture(scope="module")
def sandbox():
    path = build_base()
    model, tok = load_policy(path)
    return path, model, tok


@pytest.fixture(scope="module")
def pal_dir(tmp_path_factory, tiny_llama_dir):
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.reward import PALRewardModel, TextEncoder

    enc = TextEncoder(load_model(str(tiny_llama_dir)), load_tokenizer(str(tiny_llama_dir)))
    out = tmp_path_factory.mktemp("pal")
    PALRewardModel(enc, n_prototypes=2, dim=4, user_ids=["alice", "bob"], seed=0).save(out)
    return out


@pytest.fixture(scope="module")
def server(sandbox, pal_dir):
    """Loaded the way the CLI loads: from the model directory, with PAL and gold reward sources."""
    path, _, _ = sandbox
    cfg = ServeConfig(model=str(path), rewards=[f"pal={pal_dir}", "gold"], served_name="sandbox", port=0)
    with Background(cfg, keys=[KEY]) as url:
        yield url


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_health_models_and_metrics(server):
    assert httpx.get(server + "/health").json()["status"] == "ready"
    ids = {m.id for m in client(server).models.list().data}
    assert ids == {"sandbox", "gold", "pal"}
    text = httpx.get(server + "/metrics", headers=AUTH).text
    assert "pluralign_model_ready 1" in text and "pluralign_queue_depth" in text


def test_completion_and_chat_equal_the_sampler(server, sandbox):
    _, model, tok = sandbox
    c = client(server)
    got = c.completions.create(model="sandbox", prompt=PROMPT, max_tokens=12, temperature=0)
    want = sample(model, tok, [PROMPT], max_new_tokens=12, temperature=0)
    assert got.choices[0].text == want.texts[0][0] and got.usage.completion_tokens == len(want.token_ids[0][0])
    assert got.usage.prompt_tokens == len(want.prompt_ids[0])
    messages = [{"role": "user", "content": "can you talk about weather?"}]
    chat = c.chat.completions.create(model="sandbox", messages=messages, max_tokens=12, temperature=0)
    want_chat = sample(model, tok, [messages], max_new_tokens=12, temperature=0)  # rendered by the chat template
    assert chat.choices[0].message.content == want_chat.texts[0][0]
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].finish_reason in ("stop", "length")
    many = c.completions.create(model="sandbox", prompt=[PROMPT, PROMPT], n=3, max_tokens=6, seed=1)
    assert sorted(ch.index for ch in many.choices) == list(range(6))


def test_streaming_sends_the_same_text_in_pieces(server):
    c = client(server)
    full = c.completions.create(model="sandbox", prompt=PROMPT, max_tokens=16, temperature=0).choices[0].text
    pieces = [ch.choices[0].text for ch in c.completions.create(model="sandbox", prompt=PROMPT, max_tokens=16,
                                                                  temperature=0, stream=True)]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == full
    for stop in ([" is"], ["ky", "."]):  # held back until no stop string can start in the unsent tail
        cut = c.completions.create(model="sandbox", prompt=PROMPT, max_tokens=16, temperature=0, stop=stop)
        parts = c.completions.create(model="sandbox", prompt=PROMPT, max_tokens=16, temperature=0, stop=stop,
                                     stream=True)
        assert "".join(ch.choices[0].text for ch in parts) == cut.choices[0].text
        assert not any(s in cut.choices[0].text for s in stop) and len(cut.choices[0].text) < len(full)
    messages = [{"role": "user", "content": "can you talk about weather?"}]
    whole = c.chat.completions.create(model="sandbox", messages=messages, max_tokens=16, temperature=0)
    chunks = list(c.chat.completions.create(model="sandbox", messages=messages, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


@pytest.mark.parametrize("attribute", ["positivity", "formality"])
def test_extra_body_weights_move_gold_attributes(server, attribute):
    """Best-of-8 under +1 vs -1 weight on one gold attribute, same prompts: the attribute of the answers
    moves with the sign, by more than a 95% confidence interval's half-width (paired over prompts)."""
    prompts = eval_prompts(24, seed=7)
    got = {}
    for sign in (1.0, -1.0):
        r = client(server).completions.create(
            model="sandbox", prompt=prompts, max_tokens=32, seed=3,
            extra_body={"method": "bon", "best_of": 8, "reward": "gold", "weights": {attribute: sign}})
        texts = [ch.text for ch in sorted(r.choices, key=lambda ch: ch.index)]
        got[sign] = torch.tensor(score_batch(prompts, texts))[:, ATTRIBUTES.index(attribute)]
        assert all(ch.model_extra["pluralign"]["utility"] == pytest.approx(sign * ch.model_extra["pluralign"]["scores"][attribute])
                   for ch in r.choices)
    diff = got[1.0] - got[-1.0]
    low = diff.mean() - 1.96 * diff.std() / math.sqrt(len(diff))
    assert low > 0, f"{attribute}: mean change {diff.mean():.3f}, CI low {low:.3f}"


def test_rewards_equal_the_reward_models_called_directly(server, pal_dir):
    from pluralign.reward import load_reward_model

    prompts = eval_prompts(5, seed=1)
    responses = ["the sky is wide.", "i hate rain.", "weather is good, thank you.", "no.", "chemistry is neat."]
    body = {"input": [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]}
    gold = httpx.post(server + "/v1/rewards", json=body | {"reward": "gold", "weights": {"positivity": 2.0}},
                      headers=AUTH).json()
    want = torch.tensor(score_batch(prompts, responses))
    for i, row in enumerate(gold["data"]):
        assert [row["scores"][a] for a in ATTRIBUTES] == pytest.approx(want[i].tolist(), abs=1e-6)
        assert row["reward"] == pytest.approx(2.0 * float(want[i, ATTRIBUTES.index("positivity")]), abs=1e-6)
    pal = load_reward_model(pal_dir)
    got = httpx.post(server + "/v1/rewards", json=body | {"reward": "pal", "users": ["alice", "bob"]}, headers=AUTH).json()
    for user in ("alice", "bob"):
        direct = pal.score(prompts, responses, user=user)[:, 0]
        served = torch.tensor([row["per_user"][user]["scores"]["reward"] for row in got["data"]])
        assert torch.allclose(served, direct, atol=1e-6)
    assert not torch.allclose(pal.score(prompts, responses, user="alice"), pal.score(prompts, responses, user="bob"))
    one = httpx.post(server + "/v1/rewards", json=body | {"reward": "pal", "user": "bob"}, headers=AUTH).json()
    assert [r["scores"]["reward"] for r in one["data"]] == pytest.approx(direct.tolist(), abs=1e-6)
    bad = httpx.post(server + "/v1/rewards", json=body | {"reward": "pal", "user": "carol"}, headers=AUTH)
    assert bad.status_code == 422 and "carol" in bad.json()["error"]["message"]
    # an integer user is an id (the request contract: "a text or an integer id"), never PAL's row index: user 0
    # was scored as alice, the first row, without a word
    for extra in ({"user": 0}, {"users": [0]}):
        bad = httpx.post(server + "/v1/rewards", json=body | {"reward": "pal"} | extra, headers=AUTH)
        assert bad.status_code == 422 and "unknown user '0'" in bad.json()["error"]["message"], bad.text


def _error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and "Traceback" not in resp.text
    return err


def test_refusals_in_openai_error_format(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, key="sk-wrong").completions.create(model="sandbox", prompt=PROMPT)
    no_key = _error(httpx.post(server + "/v1/completions", json={"prompt": PROMPT}), 401)
    assert KEY not in str(no_key)
    with pytest.raises(openai.BadRequestError, match="unknown method"):
        client(server).completions.create(model="sandbox", prompt=PROMPT, extra_body={"method": "magic"})
    with pytest.raises(openai.NotFoundError):
        client(server).completions.create(model="gpt-9", prompt=PROMPT)
    with pytest.raises(openai.UnprocessableEntityError):
        client(server).completions.create(model="sandbox", prompt=PROMPT,
                                          extra_body={"method": "bon", "weights": {"kindness": 1}})
    with pytest.raises(openai.UnprocessableEntityError, match="not an option of decoding method 'bon'"):
        client(server).completions.create(model="sandbox", prompt=PROMPT,
                                          extra_body={"method": "bon", "controls": {"extra": {"tie": "first"}}})
    _error(httpx.post(server + "/v1/completions", content=b'{"prompt": ', headers=AUTH), 400)
    _error(httpx.post(server + "/v1/completions", json={"prompt": "x " * 600_000}, headers=AUTH), 413)
    _error(httpx.post(server + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 10**6}, headers=AUTH), 400)
    huge = _error(httpx.post(server + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 1e300}, headers=AUTH), 400)
    assert huge["message"].endswith("(got 1e+300)"), huge  # was the 301 digits of int(1e300)
    _error(httpx.post(server + "/v1/completions", json={"prompt": PROMPT, "n": 99}, headers=AUTH), 400)
    _error(httpx.post(server + "/v1/completions", json={"prompt": "question " * 3000}, headers=AUTH), 400)
    window = _error(httpx.post(server + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 500}, headers=AUTH), 400)
    assert window["code"] == "context_length_exceeded"  # the sandbox model's 128 positions
    _error(httpx.post(server + "/v1/completions", json={"prompt": PROMPT, "controls": {"bogus": 1}}, headers=AUTH), 400)
    _error(httpx.post(server + "/v1/completions", json={"prompt": PROMPT, "beta": "hot"}, headers=AUTH), 400)
    negative = _error(httpx.post(server + "/v1/completions", json={"prompt": PROMPT, "controls": {"beta": -1.0}},
                                 headers=AUTH), 400)  # the right type out of range: named, not a 500
    assert negative["param"] == "beta" and "controls.beta must be > 0" in negative["message"]
    for field, value in (("echo", True), ("presence_penalty", 0.5), ("logit_bias", {"5": -100}),  # were ignored
                         ("response_format", {"type": "json_object"}), ("min_p", 0.1)):
        unsupported = _error(httpx.post(server + "/v1/completions", headers=AUTH,
                                        json={"prompt": PROMPT, field: value}), 400)
        assert unsupported["param"] == field and "not supported" in unsupported["message"]
    assert client(server).completions.create(model="sandbox", prompt=PROMPT, max_tokens=2, echo=False,
                                             frequency_penalty=0.0, logit_bias={}).choices[0].text is not None
    for body in ({"prompt": [1, 2, 10 ** 8]}, {"prompt": [[5], [-1]]}, {"prompt": PROMPT, "seed": 2 ** 70}):  # a 500
        bad = _error(httpx.post(server + "/v1/completions", headers=AUTH, json=body | {"max_tokens": 2}), 400)
        assert bad["param"] == ("seed" if "seed" in body else "prompt"), bad
    for field, value in (("user", {"id": 1}), ("constraints", "cat"), ("chat_template", "sometimes"),  # a 500 or
                         ("weights", {"positivity": 1e300}), ("beta", 1e300)):  # finite in JSON, inf in float32
        bad = _error(httpx.post(server + "/v1/completions", headers=AUTH, json={  # a message naming no field
            "prompt": PROMPT, "method": "bon", "best_of": 2, "reward": "gold", field: value}), 400)
        assert bad["param"] == field, bad
    big = [3e38] * len(ATTRIBUTES)  # each finite in float32, their weighted sum not: a 500 (inf in the JSON)
    for method in ("bon", "soft_bon"):
        bad = _error(httpx.post(server + "/v1/completions", headers=AUTH, json={
            "prompt": PROMPT, "max_tokens": 2, "method": method, "best_of": 2, "reward": "gold", "weights": big}), 422)
        assert bad["param"] == "weights" and "overflow float32" in bad["message"], bad
    bad = _error(httpx.post(server + "/v1/rewards", headers=AUTH, json={
        "reward": "gold", "input": [{"prompt": PROMPT, "response": "yes, the weather is nice"}], "weights": big}), 422)
    assert bad["param"] == "weights" and "overflow float32" in bad["message"], bad
    big = "1" + "0" * 400  # a JSON integer beyond every float: converting it to compare was an OverflowError (500)
    for field, value in (("n", big), ("seed", big), ("top_k", big), ("temperature", big), ("weights", f"[{big}, 1]")):
        raw = f'{{"prompt": "hi", "method": "bon", "best_of": 2, "reward": "gold", "{field}": {value}}}'.encode()
        bad = _error(httpx.post(server + "/v1/completions", headers=AUTH | {"Content-Type": "application/json"},
                                content=raw), 400)
        assert bad["param"] == field, bad
    for options, stream in (("yes", True), ({"include_usage": "yes"}, True), ({"include_usage": True}, False)):
        bad = _error(httpx.post(server + "/v1/chat/completions", headers=AUTH, json={  # the first was a 500
            "messages": [{"role": "user", "content": "hi"}], "stream": stream, "stream_options": options}), 400)
        assert bad["param"] == "stream_options", bad
    _error(httpx.post(server + "/v1/completions", json={"prompt": PROMPT, "best_of": 4}, headers=AUTH), 400)
    _error(httpx.get(server + "/v1/nothing", headers=AUTH), 404)


def test_the_largest_seed_is_taken_for_several_choices_of_a_method(server):
    # choice k drew with seed + k: 2**63 - 1 was refused (422) as "controls.seed ... got 9223372036854775808"
    body = {"prompt": PROMPT, "max_tokens": 3, "n": 2, "method": "bon", "best_of": 2, "reward": "gold"}
    for seed in (2 ** 63 - 1, -(2 ** 63)):
        r = httpx.post(server + "/v1/completions", headers=AUTH, json=body | {"seed": seed}, timeout=60)
        assert r.status_code == 200 and len(r.json()["choices"]) == 2, r.text
    from pluralign.decode.api import Controls

    assert Controls(seed=5).offset_seed(0).seed == 5 and Controls(seed=None).offset_seed(3).seed is None
    # seed + k: choice 1 of seed 5 drew choice 0 of seed 6's answer (13 seeds for these 40 choices)
    seeds = {Controls(seed=s).offset_seed(k).seed for s in range(10) for k in range(4)}
    assert len(seeds) == 40 and all(-(2 ** 63) <= s < 2 ** 63 for s in seeds)


def test_a_method_without_what_it_steers_by_is_refused_naming_the_flag(server, sandbox):
    # each was a 422 once queued, with advice for Python callers ("genarm needs models=[...]", "value_model=")
    for method, message in (("genarm", "method 'genarm' needs models: start the server with --models"),
                            ("cd", "method 'cd' needs value_model: this server cannot give it")):
        bad = _error(httpx.post(server + "/v1/completions", headers=AUTH, json={
            "prompt": PROMPT, "max_tokens": 2, "method": method, "best_of": 2}), 422)
        assert bad["param"] == "method" and message in bad["message"], bad
    path, _, _ = sandbox
    with Background(ServeConfig(model=str(path), port=0), keys=[]) as url:  # no reward source
        bad = _error(httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "method": "bon"}), 422)
        assert "method 'bon' needs reward: start the server with --reward" in bad["message"], bad
        assert httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 2}).status_code == 200


def test_chat_without_a_chat_template_is_refused(tiny_llama_dir):
    model, tok = load_policy(tiny_llama_dir)
    cfg = ServeConfig(model=str(tiny_llama_dir), port=0)
    with Background(cfg, Loaded(model=model, tokenizer=tok, name="tiny"), keys=[]) as url:
        with pytest.raises(openai.BadRequestError, match="chat template"):
            client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the cat"}])
        assert client(url).completions.create(model="tiny", prompt="the cat", max_tokens=3).choices[0].text is not None


@pytest.mark.parametrize("messages, param", [
    ([{"role": "wizard", "content": "hi"}], "messages[0].role"),  # was rendered as nothing: prompt_tokens 1
    ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}], "messages[1].role"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "the"}], "messages[1].role"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {}}]}],
     "messages[0].content[1]"),
    ([{"role": "user", "content": None}], "messages[0].content"),
    ([{"content": "hi"}], "messages[0]"),
    ([], "messages"),
])
def test_chat_messages_a_template_would_drop_or_garble_are_refused(server, messages, param):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="sandbox", messages=messages, max_tokens=4)
    assert e.value.param == param and e.value.code == "invalid_messages"


def test_reward_prompts_as_messages_are_checked_as_chat_is(server):
    body = {"reward": "gold", "input": [{"prompt": [{"role": "wizard", "content": "hi"}], "response": "yes"}]}
    err = _error(httpx.post(server + "/v1/rewards", json=body, headers=AUTH), 400)
    assert err["param"] == "input[0].prompt[0].role"


# Renders only the roles every template knows, and refuses two turns of one role in a row, as many
# instruct models' templates do (Mistral's, Gemma's).
STRICT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('unknown role') }}{% endif %}"
    "{% if loop.index0 and m['role'] == messages[loop.index0 - 1]['role'] %}"
    "{{ raise_exception('conversation roles must alternate') }}{% endif %}"
    "{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}assistant :{% endif %}")


def test_chat_developer_role_text_parts_and_template_refusals(chat_model):
    model, tok = load_policy(chat_model)
    tok.chat_template = STRICT_TEMPLATE
    cfg = ServeConfig(model=str(chat_model), port=0)
    with Background(cfg, Loaded(model=model, tokenizer=tok, name="chat"), keys=[]) as url:
        def first_token(messages: list[dict]) -> tuple[int, float]:
            r = client(url).chat.completions.create(model="chat", messages=messages, max_tokens=1, temperature=0,
                                                    logprobs=True)
            return r.usage.prompt_tokens, r.choices[0].logprobs.content[0].logprob

        user = {"role": "user", "content": "what is the cat"}
        # "developer" is OpenAI's newer name for "system" (was passed on, and this template refused it: a 500)
        assert first_token([{"role": "developer", "content": "yes"}, user]) == first_token(
            [{"role": "system", "content": "yes"}, user])
        # text parts are joined as separate lines (were glued into one word: "catsat")
        parts = [{"type": "text", "text": "the cat"}, {"type": "text", "text": "sat"}]
        assert first_token([{"role": "user", "content": parts}]) == first_token(
            [{"role": "user", "content": "the cat\nsat"}])
        # the template's own refusal is the request's fault (was a 500 "internal server error")
        with pytest.raises(openai.BadRequestError, match="roles must alternate") as e:
            client(url).chat.completions.create(model="chat", messages=[user, user], max_tokens=1)
        assert e.value.param == "messages"


def test_requests_arriving_together_share_a_batch_and_keep_their_own_answers(sandbox):
    """Six clients at once, a 300 ms window: fewer batches than requests, and each greedy answer is the one
    the sampler gives that prompt alone (left padding in a shared batch changes nothing)."""
    import threading

    path, model, tok = sandbox
    prompts = eval_prompts(6, seed=5)
    cfg = ServeConfig(model=str(path), port=0, batch_window_ms=300)
    with Background(cfg, Loaded(model=model, tokenizer=tok, name="sandbox"), keys=[]) as url:
        got = {}

        def ask(i):
            got[i] = client(url).completions.create(model="sandbox", prompt=prompts[i], max_tokens=12,
                                                    temperature=0).choices[0].text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        text = httpx.get(url + "/metrics").text
    batches = next(float(line.split()[1]) for line in text.splitlines() if line.startswith("pluralign_batches_total "))
    assert batches < 6
    for i, p in enumerate(prompts):
        assert got[i] == sample(model, tok, [p], max_new_tokens=12, temperature=0).texts[0][0]


def test_cors_is_off_unless_asked(sandbox):
    path, model, tok = sandbox
    loaded = Loaded(model=model, tokenizer=tok, name="sandbox")
    pre = {"Origin": "http://example.org", "Access-Control-Request-Method": "POST"}
    with Background(ServeConfig(model=str(path), port=0), loaded, keys=[]) as url:
        assert "access-control-allow-origin" not in httpx.options(url + "/v1/completions", headers=pre).headers
    with Background(ServeConfig(model=str(path), port=0, cors_origins=["http://example.org"]), loaded, keys=[]) as url:
        r = httpx.options(url + "/v1/completions", headers=pre)
        assert r.headers["access-control-allow-origin"] == "http://example.org"


def test_the_request_user_reaches_a_per_user_reward(server, pal_dir):
    from pluralign.reward import load_reward_model

    pal = load_reward_model(pal_dir)
    for user in ("alice", "bob"):
        r = client(server).completions.create(model="sandbox", prompt=PROMPT, max_tokens=16, seed=0, user=user,
                                              extra_body={"method": "bon", "best_of": 4, "reward": "pal"})
        ext = r.choices[0].model_extra["pluralign"]
        assert ext["scores"]["reward"] == pytest.approx(float(pal.score([PROMPT], [r.choices[0].text], user=user)[0, 0]),
                                                        abs=1e-5)


def test_a_conditioned_policy_gets_each_requests_weights_and_direction(sandbox, tmp_path):
    """A model saved with a conditioning scheme (here DPA-style statements) is loaded with it, and each
    request's weights / direction reach it: the served answer is `decode("sample")` under those controls."""
    import shutil

    from pluralign import conditioning
    from pluralign.decode.api import Controls, decode

    path, _, _ = sandbox
    model_dir = tmp_path / "conditioned"
    shutil.copytree(path, model_dir)
    for name, text in conditioning.save_state(conditioning.get("system_message", list(ATTRIBUTES))).items():
        (model_dir / name).write_text(text)
    model, tok = load_policy(model_dir)
    assert conditioning.attached(model) is not None
    plain = sample(model, tok, [PROMPT], max_new_tokens=12, temperature=0).texts[0][0]
    differ = 0
    with Background(ServeConfig(model=str(model_dir), served_name="cond", port=0), keys=[]) as url:
        for ctl in ({"weights": {"positivity": 1.0}}, {"direction": [1, 0, 0, 0, 0, 0, 1]}):
            got = client(url).completions.create(model="cond", prompt=PROMPT, max_tokens=12, temperature=0,
                                                 extra_body=ctl)
            want = decode("sample", model, tok, [PROMPT], controls=Controls(
                max_new_tokens=12, temperature=0, seed=None, chat_template="never", **ctl))
            assert got.choices[0].text == want.texts[0]
            assert got.usage.prompt_tokens > len(tok(PROMPT)["input_ids"])  # the statement is counted
            differ += want.texts[0] != plain
        bad = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "weights": [-1, 0, 0, 0, 0, 0, 2]})
        assert bad.status_code == 422 and "non-negative" in bad.json()["error"]["message"]
    assert differ  # the statement changed the answer: the scheme really was applied


def test_a_model_level_scheme_steers_each_request_of_one_batch_to_its_own_weights(sandbox):
    """Requests with different weights to a model steered at the model level (MAH-DPO heads) share one
    batch; each is answered by the model mixed to its own weights, as the sampler answers under `mixed`."""
    from concurrent.futures import ThreadPoolExecutor

    from pluralign import conditioning
    from pluralign.models.multihead import install_heads, mixed

    path, _, tok = sandbox
    model, _ = load_policy(path)
    install_heads(model, 2, noise=1.0, seed=0)  # two heads far enough apart to answer differently
    model.pluralign_conditioning = conditioning.get("heads", ["a", "b"])
    weights = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    want = []
    for w in weights:
        with mixed(model, w):
            want.append(sample(model, tok, [PROMPT], max_new_tokens=8, temperature=0).texts[0][0])
    cfg = ServeConfig(model=str(path), served_name="heads", port=0, batch_window_ms=300)
    with Background(cfg, Loaded(model=model, tokenizer=tok, name="heads"), keys=[]) as url:
        def ask(w):
            return httpx.post(url + "/v1/completions", timeout=60, json={
                "model": "heads", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "weights": w}).json()

        with ThreadPoolExecutor(len(weights)) as pool:
            got = list(pool.map(ask, weights))
    assert [g["choices"][0]["text"] for g in got] == want
    assert want[0] != want[1]  # the heads really answer differently
    assert max(g["pluralign"]["compute"]["batch_requests"] for g in got) > 1  # some requests shared a batch


def test_best_of_n_reports_its_answers_own_tokens_and_finish(server, sandbox):
    """A sampled decoder's usage and finish reason are its chosen sample's: the generated ids (the end-of-
    sequence token counted, as for plain sampling), and "length" only when the limit, not EOS, ended it."""
    from pluralign.decode.api import Controls, decode
    from pluralign.decode.sampler import eos_ids

    _, model, tok = sandbox
    finishes = set()
    for max_tokens in (3, 40):
        got = client(server).completions.create(model="sandbox", prompt=PROMPT, max_tokens=max_tokens, seed=0,
                                                extra_body={"method": "bon", "best_of": 4, "reward": "gold"})
        want = decode("bon", model, tok, [PROMPT], reward="gold",
                      controls=Controls(n=4, max_new_tokens=max_tokens, seed=0, chat_template="never"))
        ids = want.info["token_ids"][0]
        assert got.choices[0].text == want.texts[0] and got.usage.completion_tokens == len(ids)
        ended = ids[-1] in eos_ids(tok, model) or len(ids) < max_tokens
        assert got.choices[0].finish_reason == ("stop" if ended else "length")
        finishes.add(got.choices[0].finish_reason)
    assert finishes == {"stop", "length"}


def test_a_broken_reward_source_is_a_422_naming_it(sandbox, monkeypatch):
    # a reward function that raised, returned NaN, text or too few scores was a bare 500 (/v1/rewards too),
    # or, too few scores, a 200 whose best-of-N pick was blind
    import sys
    import types

    mod = types.ModuleType("serve_bad_rewards")
    mod.raises = lambda prompts, responses: 1 / 0
    mod.nan = lambda prompts, responses: [float("nan")] * len(responses)
    mod.short = lambda prompts, responses: [1.0] * (len(responses) - 1)
    mod.text = lambda prompts, responses: ["good"] * len(responses)
    monkeypatch.setitem(sys.modules, "serve_bad_rewards", mod)
    path, _, _ = sandbox
    names = ["raises", "nan", "short", "text"]
    cfg = ServeConfig(model=str(path), rewards=[f"{n}=serve_bad_rewards:{n}" for n in names], port=0)
    why = {"raises": "raised ZeroDivisionError", "nan": "non-finite value", "short": "returned shape (1, 1) for 2",
           "text": "not numbers"}
    with Background(cfg, keys=[KEY]) as url:
        for name in names:
            body = {"prompt": PROMPT, "max_tokens": 3, "method": "bon", "best_of": 2, "reward": name}
            err = _error(httpx.post(url + "/v1/completions", json=body, headers=AUTH), 422)
            assert f"serve_bad_rewards:{name}" in err["message"] and why[name] in err["message"], err
            pairs = {"input": [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}], "reward": name}
            err = _error(httpx.post(url + "/v1/rewards", json=pairs, headers=AUTH), 422)
            assert why[name] in err["message"], err
        # weights by name for a reward that names no objectives (its columns are r0, r1, ...): refused before
        # anything is generated (they were found once the candidates had been drawn and scored)
        body = {"prompt": PROMPT, "max_tokens": 3, "method": "bon", "best_of": 2, "reward": "nan", "weights": {"kind": 1}}
        err = _error(httpx.post(url + "/v1/completions", json=body, headers=AUTH), 422)
        assert err["param"] == "weights" and "the reward names none" in err["message"], err
        ok = httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 3}, headers=AUTH)
        assert ok.status_code == 200  # the server goes on serving


@pytest.mark.parametrize("extra, status, param", [
    ({"weights": "positivity"}, 400, "weights"),  # these four were a 500
    ({"weights": {"positivity": "much"}}, 400, "weights"),
    ({"user": {"id": 1}}, 400, "user"),
    ({"users": ["alice", {"id": 1}]}, 400, "user"),
    ({"users": []}, 400, "users"),  # scored for nobody: was a 500 (StopIteration in the handler)
    ({"weights": {"kindness": 1}}, 422, "weights"),  # the right kind, but no such objective: named
    ({"reward": {"name": "gold"}}, 400, "reward"),  # these two were a 500 (unhashable)
    ({"reward": None, "model": ["gold"]}, 400, "reward"),
])
def test_reward_requests_with_bad_weights_or_users_are_refused_naming_the_field(server, extra, status, param):
    body = {"reward": "gold", "input": [{"prompt": PROMPT, "response": "yes"}]} | extra
    body = {k: v for k, v in body.items() if v is not None}  # "reward": None: named by "model" instead
    err = _error(httpx.post(server + "/v1/rewards", json=body, headers=AUTH), status)
    assert err["param"] == param, err


def test_a_conditioned_models_first_request_counts_its_prompt_as_decoded(sandbox):
    """A statement scheme is bound to the tokenizer's template when decoding; the server counted the first
    request's prompt before that, with the statement elsewhere (here dropped with a system message the
    sandbox's template does not render): usage.prompt_tokens 7 where the model read 14."""
    from pluralign import conditioning

    path, _, tok = sandbox
    model, _ = load_policy(path)
    model.pluralign_conditioning = conditioning.get("system_message", ["relevance", "positivity"])
    body = {"messages": [{"role": "user", "content": "describe rivers."}], "max_tokens": 2, "weights": [1, 0],
            "temperature": 0}
    with Background(ServeConfig(model=str(path), port=0), Loaded(model=model, tokenizer=tok, name="m"), keys=[]) as url:
        counts = [httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()["usage"]["prompt_tokens"]
                  for _ in range(2)]
    shown = model.pluralign_conditioning.prompt(body["messages"], model.pluralign_conditioning.condition(weights=[1, 0]))
    assert counts == [len(sample(model, tok, [shown], max_new_tokens=1).prompt_ids[0])] * 2


def test_per_user_rewards_of_a_multi_objective_model_are_its_scores(sandbox):
    # the users' ids reached the model's `user`, its objective weights: "user: expected numbers ..., got 'alice'"
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.reward import MultiObjectiveRewardModel, TextEncoder

    path, model, tok = sandbox
    encoder = TextEncoder(load_model(str(path)), load_tokenizer(str(path)), trainable=False)
    multi = MultiObjectiveRewardModel(encoder, ["positivity", "formality"])
    prompts, responses = eval_prompts(2, seed=1), ["the sky is wide.", "i hate rain."]
    body = {"prompts": prompts, "responses": responses, "users": ["alice", "bob"], "weights": {"positivity": 1.0}}
    loaded = Loaded(model=model, tokenizer=tok, name="sandbox", rewards={"multi": multi})
    with Background(ServeConfig(model=str(path), port=0), loaded, keys=[]) as url:
        got = httpx.post(url + "/v1/rewards", json=body)
    assert got.status_code == 200, got.text
    direct = multi.score(prompts, responses)
    for i, row in enumerate(got.json()["data"]):
        for user in ("alice", "bob"):
            assert row["per_user"][user]["scores"]["positivity"] == pytest.approx(float(direct[i, 0]), abs=1e-6)
            assert row["per_user"][user]["reward"] == pytest.approx(float(direct[i, 0]), abs=1e-6)
