"""The LLM judge against hostile or sloppy servers on 127.0.0.1: a redirect to another port (the API key
must not follow), a slow drip (the deadline holds for the whole call), a 10 MB body (capped), and every
malformed reply variant (a JudgeError, never cached), plus the variants OpenAI-compatible servers really
send (message as a string, content as a list of parts), which must be read."""

from __future__ import annotations

import json
import math
import time
from http.server import BaseHTTPRequestHandler

import pytest
from local_http import LocalServer

from pluralign.errors import ConfigError
from pluralign.judges import JudgeError, JudgeRequestError, LLMJudge


class Server(LocalServer):
    """`handle(handler, n)` writes the whole reply of the n-th request (0-based) itself."""

    def __init__(self, handle):
        self.handle, self.requests = handle, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                try:
                    outer.handle(self, len(outer.requests) - 1)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        super().__init__(Handler)



@pytest.fixture
def serve():
    servers = []

    def start(handle):
        servers.append(Server(handle))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def send(handler, code, data: bytes, headers=()):
    handler.send_response(code)
    for k, v in headers:
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def reply(content="[[A]]", **choice):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}, **choice}]}


def ok(obj):
    return lambda h, n: send(h, 200, json.dumps(obj).encode(), [("Content-Type", "application/json")])


def judge(server, **kw):
    kw = dict(api_key_env=None, backoff=0.01, order="original", max_retries=0) | kw
    return LLMJudge(server.url, "m", **kw)


# ---------------------------------------------------------------- redirects


def test_redirect_to_another_port_is_not_followed_and_gets_no_credentials(serve, monkeypatch):
    elsewhere = serve(ok(reply()))
    server = serve(lambda h, n: send(h, 307, b"", [("Location", f"{elsewhere.url}/chat/completions")]))
    monkeypatch.setenv("JUDGE_KEY", "sk-secret")
    with pytest.raises(JudgeError, match="another origin"):
        judge(server, api_key_env="JUDGE_KEY").pairwise(["q"], ["a"], ["b"])
    assert server.requests[0]["auth"] == "Bearer sk-secret"
    assert elsewhere.requests == []  # not even contacted, so no key sent


def test_same_origin_redirect_is_followed(serve, monkeypatch):
    def handle(h, n):
        if h.path.startswith("/v1/"):
            send(h, 308, b"", [("Location", "/v2/chat/completions")])
        else:
            ok(reply("[[B]]"))(h, n)

    server = serve(handle)
    monkeypatch.setenv("JUDGE_KEY", "sk-secret")
    assert judge(server, api_key_env="JUDGE_KEY").pairwise(["q"], ["a"], ["b"]).tolist() == [2.0]
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions", "/v2/chat/completions"]
    assert server.requests[1]["auth"] == "Bearer sk-secret" and server.requests[1]["body"]


# ---------------------------------------------------------------- deadlines and size


@pytest.mark.parametrize("how", ["drip", "stall after headers"])
def test_a_slow_server_cannot_hold_a_call_past_its_deadline(serve, how):
    body = json.dumps(reply()).encode() + b" " * 1000

    def handle(h, n):
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.flush()
        for i, byte in enumerate(body):
            if how == "drip" or i == 1:
                time.sleep(0.05 if how == "drip" else 30)
            h.wfile.write(bytes([byte]))
            h.wfile.flush()

    server = serve(handle)
    start = time.monotonic()
    with pytest.raises(JudgeRequestError, match="deadline"):
        judge(server, timeout=2.0).pairwise(["q"], ["a"], ["b"])
    assert abs(time.monotonic() - start - 2.0) < 1.0


@pytest.mark.parametrize("declared", [True, False])
def test_a_10_mb_reply_is_refused(serve, declared):
    big = json.dumps(reply("x" * 10_000_000)).encode()

    def handle(h, n):
        h.send_response(200)
        if declared:
            h.send_header("Content-Length", str(len(big)))
        else:
            h.send_header("Connection", "close")  # no length: the body runs until the connection closes
        h.end_headers()
        h.wfile.write(big)

    server = serve(handle)
    start = time.monotonic()
    with pytest.raises(JudgeError, match="max_response_bytes"):
        judge(server, max_response_bytes=1_000_000).pairwise(["q"], ["a"], ["b"])
    assert time.monotonic() - start < 5


# ---------------------------------------------------------------- reply variants

MALFORMED = {
    "no choices": {"id": "x"},
    "empty choices": {"choices": []},
    "choice not an object": {"choices": ["[[A]]"]},
    "message null": {"choices": [{"index": 0, "message": None}]},
    "content a number": reply(5),
    "content a list of numbers": reply([1, 2]),
    "a JSON list": [reply()],
}
MALFORMED_WEIGHTED = {
    "non-numeric logprob": reply("M", logprobs={"content": [{"token": "M", "top_logprobs": [{"token": "M", "logprob": "high"}]}]}),
    "nan logprob": reply("M", logprobs={"content": [{"token": "M", "top_logprobs": [{"token": "M", "logprob": math.nan}]}]}),
    "no logprobs": reply("M"),
    "logprobs null": reply("M", logprobs=None),
}


@pytest.mark.parametrize("variant", list(MALFORMED) + list(MALFORMED_WEIGHTED))
def test_each_malformed_reply_is_a_judge_error_and_is_not_cached(serve, tmp_path, variant):
    weighted = variant in MALFORMED_WEIGHTED
    bad = (MALFORMED_WEIGHTED if weighted else MALFORMED)[variant]
    good = reply("M" if weighted else "[[A]]",
                 logprobs={"content": [{"token": "M", "top_logprobs": [{"token": "M", "logprob": 0.0}]}]})
    fixed = {"now": False}
    server = serve(lambda h, n: ok(good if fixed["now"] else bad)(h, n))
    kw = dict(cache_dir=tmp_path, mode="weighted" if weighted else "verdict")
    with pytest.raises(JudgeError) as info:
        judge(server, **kw).pairwise(["q"], ["a"], ["b"])
    assert server.url in str(info.value)
    assert not list(tmp_path.rglob("*.json"))  # nothing cached
    lenient = judge(server, on_error="nan", **kw)
    assert math.isnan(lenient.pairwise(["q"], ["a"], ["b"])[0]) and lenient.stats["failed"] == 1
    fixed["now"] = True  # the server is fixed: the same request now succeeds and is cached
    assert judge(server, **kw).pairwise(["q"], ["a"], ["b"]).tolist() == [1.0 if not weighted else 2.0]
    assert len(list(tmp_path.rglob("*.json"))) == 1


def test_not_json_and_deeply_nested_json_are_judge_errors(serve):
    for body in (b"<html>oops</html>", b"[" * 100_000 + b"]" * 100_000):
        server = serve(lambda h, n, body=body: send(h, 200, body))
        with pytest.raises(JudgeError, match="not JSON"):
            judge(server).pairwise(["q"], ["a"], ["b"])


@pytest.mark.parametrize("choice,expected", [
    ({"message": "Final verdict: [[B]]"}, 2.0),  # message as a plain string
    ({"message": {"role": "assistant", "content": [{"type": "text", "text": "Verdict: "},
                                                   {"type": "text", "text": "[[A]]"}]}}, 1.0),  # list of parts
    ({"message": {"role": "assistant", "content": ["[[", "C]]"]}}, 1.5),  # parts as strings
    ({"text": "[[B]]"}, 2.0),  # legacy completions field
    ({"message": {"role": "assistant", "content": None, "refusal": "no"}}, math.nan),  # no verdict: NaN
])
def test_reply_variants_of_compatible_servers_are_read(serve, choice, expected):
    server = serve(ok({"choices": [{"index": 0, **choice}]}))
    got = judge(server).pairwise(["q"], ["a"], ["b"])[0]
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


@pytest.mark.parametrize("kw", [{"timeout": 0}, {"timeout": float("inf")}, {"timeout": float("nan")},
                                {"max_response_bytes": 0}])
def test_limits_must_be_real(kw):
    with pytest.raises(ConfigError, match=next(iter(kw))):
        LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env=None, **kw)


@pytest.mark.parametrize("kw,name", [
    # a negative or NaN backoff was a ValueError traceback from time.sleep at the first retry, after every model
    # had generated; a temperature of "hot" or -5 was sent to the server, refused there (HTTP 400) as late; a
    # seed of "x" was a TypeError once order="random" drew the orders
    ({"backoff": -1}, "backoff"), ({"max_backoff": float("nan")}, "max_backoff"), ({"temperature": "hot"}, "temperature"),
    ({"temperature": -5}, "temperature"), ({"temperature": True}, "temperature"), ({"seed": "x"}, "seed"),
    ({"seed": -1}, "seed"),
])
def test_pacing_temperature_and_seed_are_checked_when_the_judge_is_made(kw, name):
    with pytest.raises(ConfigError, match=f"LLMJudge {name} must be"):
        LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env=None, **kw)


@pytest.mark.parametrize("kw,message", [
    # extra_body=[1] was "cannot convert dictionary update sequence element #0", naming no argument; a system
    # prompt of 3 was sent as the message's content, refused by the server (HTTP 400) once every model had generated
    ({"extra_body": [1]}, "LLMJudge extra_body must be a mapping"), ({"extra_body": "top_p=1"}, "extra_body"),
    ({"pairwise_system": 3}, "LLMJudge pairwise_system must be text"), ({"single_system": None}, "single_system"),
])
def test_extra_body_and_system_prompts_are_checked_when_the_judge_is_made(kw, message):
    with pytest.raises(ConfigError, match=message):
        LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env=None, **kw)
