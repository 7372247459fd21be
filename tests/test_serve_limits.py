"""`pluralign serve` under pressure: rate and concurrency limits (429), a client that disconnects mid-stream
frees its slot and its rows, a full queue answers 503, shutdown drains in-flight requests; the sampler's
per-step hook that makes cancellation possible; controls passed through generically."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from pluralign.decode.api import Controls
from pluralign.decode.sampler import sample
from pluralign.decode.steer import load_policy
from pluralign.serve import Background, Loaded, ServeConfig
from pluralign.serve.errors import APIError
from pluralign.serve.protocol import controls_from


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_word_tokenizer):
    """A tiny Llama whose (rotary) positions allow very long generations: requests that outlast the test."""
    from pluralign.models import tiny as tiny_models

    path = tmp_path_factory.mktemp("tiny_long")
    tiny_models.tiny_llama(len(tiny_word_tokenizer), hidden_size=32, num_heads=2,
                           max_position_embeddings=1 << 20).save_pretrained(path)
    tiny_word_tokenizer.save_pretrained(path)
    model, tok = load_policy(path)
    return path, model, tok


def serve(tiny, **limits):
    path, model, tok = tiny
    return Background(ServeConfig(model=str(path), port=0, **limits), Loaded(model=model, tokenizer=tok, name="tiny"),
                      keys=["k1", "k2"])


def post(url, key="k1", **body):
    return httpx.post(url + "/v1/completions", json={"prompt": "the cat", "max_tokens": 4} | body,
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)


def metric(url, name):
    for line in httpx.get(url + "/metrics", headers={"Authorization": "Bearer k2"}).text.splitlines():
        if line.startswith(f"pluralign_{name} "):
            return float(line.split()[1])
    return 0.0


def test_rate_limit_is_per_key(tiny):
    with serve(tiny, rate_limit=3) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0)
        for _ in range(3):
            c.completions.create(model="tiny", prompt="the cat", max_tokens=2)
        with pytest.raises(openai.RateLimitError) as err:
            c.completions.create(model="tiny", prompt="the cat", max_tokens=2)
        assert err.value.response.headers["Retry-After"]
        assert post(url, key="k2").status_code == 200  # another key has its own budget


def test_disconnect_mid_stream_frees_the_slot_and_the_rows(tiny):
    with serve(tiny, max_concurrent=1, max_tokens=4096) as url:
        body = {"prompt": "the cat", "max_tokens": 4000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, headers={"Authorization": "Bearer k1"}) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))
            assert post(url).status_code == 429  # the stream holds the key's only slot
        end = time.monotonic() + 20
        while (status := post(url).status_code) == 429 and time.monotonic() < end:
            time.sleep(0.05)
        assert status == 200
        while metric(url, "cancelled_total") < 1 and time.monotonic() < end:
            time.sleep(0.05)
        assert metric(url, "cancelled_total") == 1
        # the cancelled rows left the batch early: far fewer than 4000 tokens were ever generated
        assert metric(url, "generated_tokens_total") < 100


def test_full_queue_answers_503_and_nothing_is_lost(tiny):
    with serve(tiny, queue_size=1, batching=False, max_tokens=4096) as url:
        results = []

        def one():
            results.append(post(url, max_tokens=200, ignore_eos=True).status_code)

        threads = [threading.Thread(target=one) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 5 and 503 in results and 200 in results and set(results) <= {200, 503}


def test_shutdown_drains_in_flight_requests(tiny):
    bg = serve(tiny, max_tokens=4096)
    url = bg.__enter__()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", post(url, max_tokens=300, ignore_eos=True)))
    t.start()
    end = time.monotonic() + 10
    while metric(url, "batches_total") < 1 and time.monotonic() < end:
        time.sleep(0.01)
    bg.stop()
    t.join()
    assert out["r"].status_code == 200 and out["r"].json()["usage"]["completion_tokens"] == 300


def test_health_reflects_readiness(tiny_llama_dir, tmp_path):
    bad = ServeConfig(model=str(tmp_path / "missing"), port=0)
    with Background(bad, keys=[], ready_timeout=10) as url:
        h = httpx.get(url + "/health")
        assert h.status_code == 503 and h.json()["status"] == "failed"
        assert httpx.post(url + "/v1/completions", json={"prompt": "x"}).status_code == 503


def test_sampler_hook_ends_rows_early(tiny):
    _, model, tok = tiny
    seen = []

    def hook(gen, first):
        seen.append(len(gen.tokens[0]))
        if len(gen.tokens[0]) == 3:
            gen.reason[0] = "cancelled"

    out = sample(model, tok, ["the cat", "the dog"], max_new_tokens=20, eos=[], seed=0, on_step=hook)
    assert out.finish[0] == ["cancelled"] and len(out.token_ids[0][0]) == 3
    assert out.finish[1] == ["length"] and len(out.token_ids[1][0]) == 20


def test_controls_pass_through_by_field_name():
    cfg = ServeConfig()
    c = controls_from({"weights": {"a": 1}, "beta": 2, "w": 0.5, "best_of": 4, "max_tokens": 7, "temperature": 0,
                       "user": "alice", "extra": {"k": 3}, "controls": {"top_k": 5}}, cfg)
    assert c == Controls(weights={"a": 1}, beta=2.0, w=0.5, n=4, max_new_tokens=7, temperature=0.0, user="alice",
                         extra={"k": 3}, top_k=5, seed=None)
    assert controls_from({"controls": {"n": 2}}, cfg).n == 2  # OpenAI's n stays the number of choices
    for bad in ({"top_k": 1.5}, {"controls": {"nope": 1}}, {"extra": [1]}, {"best_of": 10**6}, {"stop": [1]},
                {"weights": "a=1"}, {"weights": {"a": "x"}}, {"direction": [1, float("nan")]}):
        with pytest.raises(APIError) as e:
            controls_from(bad, cfg)
        assert e.value.status == 400


def test_cli_refuses_a_missing_model(capsys):
    from pluralign.cli import main

    assert main(["serve", "--model", "/no/such/dir"]) == 2
    assert "model directory not found" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--port", "-5"], "'port' must be in [0, 65535]"),  # was a traceback from the socket layer
    (["--host", "", "--port", "0"], "'host' must be an address to bind"),  # '' bound every interface
    (["--max-tokens", "16", "--default-max-tokens", "64"], "'default_max_tokens' must be in [1, max_tokens=16]"),
    (["--reward", "no_such_module:fn"], "--reward no_such_module:fn: cannot import fn"),  # was: a server up, every request 503
    (["--models", "/no/such/dir", "--port", "0"], "--models /no/such/dir: model directory not found"),  # was: 503s forever
    # was: the banner, the weights loaded, then torch's traceback from model.to(device)
    (["--device", "cdua", "--port", "0"], "bad device 'cdua'"),
    pytest.param(["--device", "cuda", "--port", "0"], "device 'cuda' asked for, but CUDA is not available here",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="CUDA is available here")),
])
@pytest.mark.timeout(120)
def test_cli_refuses_bad_settings_before_serving(tiny, capsys, flags, message):
    from pluralign.cli import main

    assert main(["serve", "--model", str(tiny[0]), *flags]) == 2
    out, err = capsys.readouterr()
    assert message in err and "on http://" not in out


def test_cli_refuses_a_port_in_use_before_the_banner(tiny, capsys):
    """Was: the banner, uvicorn's "[Errno 98] address already in use" and exit code 3."""
    import socket

    from pluralign.cli import main

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(tiny[0]), "--port", str(port)]) == 2
    out, err = capsys.readouterr()
    assert f"--port {port}: already in use" in err and out == ""


def test_cli_exits_when_the_model_fails_to_load(tmp_path):
    """A directory that passes the checks but holds no loadable model fails while loading, after the server
    has started: the server stops and exits 2 with one line naming --model (was: 503s forever)."""
    import subprocess
    import sys

    (tmp_path / "config.json").write_text("{}")  # no model_type: transformers cannot load it
    r = subprocess.run([sys.executable, "-m", "pluralign.cli", "serve", "--model", str(tmp_path), "--port", "0"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith(f"error: --model {tmp_path}: cannot load")
    assert len(r.stderr.strip().splitlines()) == 1


def test_deadline_and_non_streaming_disconnect_cancel_the_work(tiny):
    with serve(tiny, deadline_s=0.5, max_tokens=100_000) as url:
        r = post(url, max_tokens=100_000, ignore_eos=True)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    with serve(tiny, max_tokens=100_000) as url:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", json={"prompt": "the cat", "max_tokens": 100_000, "ignore_eos": True},
                       headers={"Authorization": "Bearer k1"}, timeout=0.5)
        end = time.monotonic() + 20
        while metric(url, "cancelled_total") < 1 and time.monotonic() < end:
            time.sleep(0.05)
        assert metric(url, "cancelled_total") == 1
        assert metric(url, "requests_in_flight") == 1  # the /metrics request itself
        assert post(url).status_code == 200


def test_cli_server_with_a_key_file_drains_on_sigterm(tiny, tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys

    path, _, _ = tiny
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key per line\nsk-file-key\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pluralign.cli", "serve", "--model", str(path), "--port", str(port),
                             "--api-key-file", str(keys), "--max-tokens", "4096"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert post(url, key="nope").status_code == 401
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("r", post(url, key="sk-file-key", max_tokens=400,
                                                                      ignore_eos=True)))
        t.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
        assert out["r"].status_code == 200 and out["r"].json()["usage"]["completion_tokens"] == 400
    finally:
        if proc.poll() is None:
            proc.kill()
    _, err = proc.communicate()
    assert "sk-file-key" not in err and "Traceback" not in err


def test_without_the_serve_extra_the_cli_still_loads_and_says_what_to_install(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['starlette'] = sys.modules['uvicorn'] = None\n"
            "from pluralign.cli import main\n"
            f"sys.exit(main(['serve', '--model', {str(tmp_path)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "pip install 'pluralign[serve]'" in r.stderr and "Traceback" not in r.stderr


def test_keys_from_file_and_environment(tmp_path, monkeypatch):
    from pluralign.errors import ConfigError
    from pluralign.serve.limits import Keys, Limiter, load_keys

    f = tmp_path / "keys"
    f.write_text("# comment\n\nsk-a\n  sk-b  \n")
    monkeypatch.setenv("PLURALIGN_API_KEYS", "sk-c, sk-d")
    keys = Keys(load_keys(str(f)))
    assert [keys.identify(f"Bearer {k}") for k in ("sk-a", "sk-b", "sk-c", "sk-d")] == ["key0", "key1", "key2", "key3"]
    for bad in (None, "sk-a", "Basic sk-a", "Bearer sk-", "Bearer sk-a2"):
        with pytest.raises(APIError) as e:
            keys.identify(bad)
        assert e.value.status == 401 and "sk-a" not in e.value.message
    assert Keys([]).identify(None) == "anonymous"
    with pytest.raises(ConfigError):
        load_keys(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ConfigError):
        load_keys(str(tmp_path / "empty"))
    now = [0.0]
    lim = Limiter(rate=2, max_concurrent=5, window=60, clock=lambda: now[0])
    lim.admit("k")()
    lim.admit("k")()
    with pytest.raises(APIError):
        lim.admit("k")
    now[0] = 60.5  # the window slid past both
    lim.admit("k")()


def test_the_default_model_id_of_a_directory_a_gguf_file_and_a_hub_id(tmp_path):
    from pluralign.serve.loading import model_name as _model_name

    (tmp_path / "runs" / "dpo").mkdir(parents=True)
    (tmp_path / "SmolLM2.Q4_1.gguf").write_bytes(b"GGUF")
    assert _model_name(str(tmp_path / "runs" / "dpo")) == "dpo"
    assert _model_name(str(tmp_path / "SmolLM2.Q4_1.gguf")) == "SmolLM2.Q4_1"
    assert _model_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_a_seeded_request_answers_the_same_whatever_arrives_with_it(tiny):
    """OpenAI's `seed`: the same request with the same seed gets the same answer. Requests batched together
    share one sampler call; sharing its random stream would make a seeded answer depend on whichever
    other requests arrived in the same batch window."""
    with serve(tiny, batch_window_ms=400) as url:
        body = {"prompt": "the cat", "max_tokens": 12, "temperature": 1.0, "seed": 5}
        alone = post(url, **body).json()["choices"][0]["text"]
        for other in ({"prompt": "a dog", "seed": 5}, {"prompt": "the cat", "seed": 5}, {"prompt": "a dog"}):
            got = {}
            threads = [threading.Thread(target=lambda k=k, b=b, got=got: got.__setitem__(k, post(url, **b).json()))
                       for k, b in (("mine", body), ("other", body | other))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert got["mine"]["choices"][0]["text"] == alone, other


def test_seeded_requests_share_a_batch_and_answer_as_alone(tiny):
    """Seeded requests decoded alone (one call each) under load; each now keeps its draws its own in a shared
    call (`sample`'s owners): the same answers as alone, whatever their seeds, a prompt another request
    repeats, or one repeated within a request (which still takes its next draws)."""
    from concurrent.futures import ThreadPoolExecutor

    asks = [{"prompt": "the cat", "seed": 5, "n": 2}, {"prompt": "the cat", "seed": 5, "n": 2},
            {"prompt": ["the cat", "a dog", "the cat"], "seed": 5, "n": 2}, {"prompt": "a dog", "seed": 9, "n": 2},
            {"prompt": "the cat", "seed": -3, "n": 2}, {"prompt": "a dog", "n": 2}]
    with serve(tiny, batch_window_ms=500) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="k1", max_retries=0)

        def ask(body):
            reply = c.completions.create(model="tiny", max_tokens=10, temperature=1.0, **body)
            texts = [ch.text for ch in sorted(reply.choices, key=lambda ch: ch.index)]
            return texts, reply.model_extra["pluralign"]["compute"]["batch_requests"]

        alone = [ask(body) for body in asks]
        with ThreadPoolExecutor(len(asks)) as pool:
            together = list(pool.map(ask, asks))
    assert all(n == 1 for _, n in alone) and max(n for _, n in together) > 2  # seeded requests shared a batch
    for (want, _), (got, _), body in zip(alone, together, asks, strict=True):
        if "seed" in body:
            assert got == want, body
    assert alone[0][0] == alone[1][0] and len(set(alone[0][0])) == 2  # one request, one answer; two samples
    assert alone[2][0][:2] == alone[0][0] and alone[2][0][4:] != alone[0][0]  # its repeat draws on


def test_steering_fields_nothing_reads_are_refused_not_ignored(tiny):
    """Plain sampling of a model without a conditioning scheme reads no weights, direction or group: such a
    request was answered with an unsteered sample as if it had been steered (`pluralign decode` warns, eval
    refuses). OpenAI's own `user` (an end-user id) stays welcome."""
    with serve(tiny) as url:
        for field, value in (("weights", [1.0, 0.0]), ("direction", {"a": 1}), ("group", "g1")):
            r = post(url, **{field: value})
            assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
            assert "nothing reads" in r.json()["error"]["message"]
        assert post(url, user="alice").status_code == 200


def test_a_fusion_model_of_another_vocabulary_is_refused_at_load(tiny, tmp_path):
    """`pluralign decode` refuses --models whose vocabulary is not the policy's; the server loaded them and
    failed on the first genarm/mod request (an IndexError, a 500) or fused other tokens' log-probs."""
    import subprocess
    import sys

    from pluralign.decode.toy import toy_lm, toy_tokenizer
    from pluralign.errors import ConfigError
    from pluralign.serve.loading import load

    path = tiny[0]
    other = tmp_path / "other"
    tok = toy_tokenizer(("x", "y", "z"))
    toy_lm(tok, seed=1).save_pretrained(other)
    tok.save_pretrained(other)
    with pytest.raises(ConfigError, match=f"--models: {other} has another vocabulary than the policy {path}"):
        load(ServeConfig(model=str(path), models=[str(other)]))
    assert len(load(ServeConfig(model=str(path), models=[str(path)])).models) == 1
    r = subprocess.run([sys.executable, "-m", "pluralign.cli", "serve", "--model", str(path), "--models", str(other),
                        "--port", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "has another vocabulary than the policy" in r.stderr and "Traceback" not in r.stderr


def test_api_key_file_not_utf8_is_a_one_line_error(tmp_path, tiny_llama_dir, capsys):
    """A key file with a byte that is not UTF-8 ended `pluralign serve` in a UnicodeDecodeError traceback."""
    from pluralign.cli import main

    keys = tmp_path / "keys"
    keys.write_bytes(b"sk-a\nsk-caf\xe9\n")
    assert main(["serve", "--model", str(tiny_llama_dir), "--port", "0", "--api-key-file", str(keys)]) == 2
    err = capsys.readouterr().err
    assert f"--api-key-file {keys}:2: not UTF-8 text (byte 0xe9)" in err and "Traceback" not in err


@pytest.mark.parametrize("reward", ["", "empty", "policy"])
def test_a_reward_that_is_no_reward_model_is_refused_before_the_server_starts(tmp_path, tiny_llama_dir, reward, capsys):
    """--reward '' read the current directory, and a directory without a reward model (empty, or a policy's) passed
    the start-up checks: the server announced its URL, loaded, then stopped, the error blamed on --model."""
    from pluralign.cli import main

    (tmp_path / "empty").mkdir()
    spec = {"": "", "empty": str(tmp_path / "empty"), "policy": str(tiny_llama_dir)}[reward]
    assert main(["serve", "--model", str(tiny_llama_dir), "--port", "0", "--reward", spec]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: --reward") and "--model" not in err and "Traceback" not in err
    assert "pluralign serve:" not in out  # refused before it listened
