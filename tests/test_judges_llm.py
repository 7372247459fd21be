"""The LLM judge against a real HTTP server on 127.0.0.1 that speaks the chat-completions protocol and
returns scripted answers (no mocked client objects)."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler

import numpy as np
import pytest
from local_http import LocalServer

from pluralign.errors import ConfigError
from pluralign.evaluate.winrate import win_rate
from pluralign.judges import JudgeRequestError, LLMJudge, unswap
from pluralign.judges.templates import parse_pairwise, parse_rating, weighted_preference


class ScriptedServer(LocalServer):
    """A chat-completions server. `script(user_text, n_seen)` returns ("ok", content[, top_logprobs]),
    ("status", code), or ("sleep", seconds, content); n_seen counts earlier requests with the same text."""

    def __init__(self, script):
        self.script, self.requests, self.seen = script, [], {}
        self.lock, self.in_flight, self.max_in_flight = threading.Lock(), 0, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"body": body, "auth": self.headers.get("Authorization"),
                                           "path": self.path})
                    user = body["messages"][-1]["content"]
                    n = outer.seen.get(user, 0)
                    outer.seen[user] = n + 1
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    action = outer.script(user, n)
                    if action[0] == "sleep":
                        time.sleep(action[1])
                        action = ("ok", action[2])
                finally:
                    # done before the reply is sent: once the client has it, it may send its next request,
                    # which must not find this one still counted (CI saw 4 in flight with 3 workers)
                    with outer.lock:
                        outer.in_flight -= 1
                try:
                    if action[0] == "status":
                        self._send(action[1], {"error": {"message": "scripted failure", "type": "server_error"}})
                    else:
                        self._send(200, outer.completion(body, *action[1:]))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)

    @staticmethod
    def completion(body, content, top_logprobs=None):
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        if top_logprobs is not None:
            choice["logprobs"] = {"content": [{"token": content, "logprob": 0.0, "top_logprobs": top_logprobs}]}
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [choice], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}



@pytest.fixture
def serve():
    servers = []

    def start(script):
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def answers_a(user):
    """Section of the user message showing assistant A's answer."""
    return user.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0]


def quality_judge(user, n):
    """Prefers the answer containing 'good'; says 'tie' when both or neither do."""
    a_good = "good" in answers_a(user)
    b_good = "good" in user.split("[The Start of Assistant B's Answer]")[1]
    verdict = "C" if a_good == b_good else ("A" if a_good else "B")
    return ("ok", f"Both answers are fine, but ... Final verdict: [[{verdict}]]")


def make(server, **kw):
    kw.setdefault("api_key_env", None)
    kw.setdefault("backoff", 0.01)
    return LLMJudge(server.url, "judge-model", **kw)


PROMPTS = ["q1", "q2", "q3", "q4"]
A = ["good answer", "meh", "good", "meh"]
B = ["meh", "good answer", "good too", "meh too"]


def test_pairwise_both_orders_and_protocol(serve, monkeypatch):
    server = serve(quality_judge)
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    judge = make(server, api_key_env="JUDGE_KEY", concurrency=3)
    p = judge.pairwise(PROMPTS, A, B)
    np.testing.assert_array_equal(p, [1.0, 2.0, 1.5, 1.5])
    assert len(server.requests) == 8  # every pair in both orders
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge-model" and req["body"]["messages"][0]["role"] == "system"


def test_position_biased_judge_is_cancelled_by_unswap(serve):
    server = serve(lambda user, n: ("ok", "[[A]]"))
    judge = make(server)
    first, second = judge.pairwise_both(PROMPTS, A, B)
    np.testing.assert_array_equal(first, 1.0)
    np.testing.assert_array_equal(second, 2.0)  # "A" on the swapped pair means b, un-swapped to 2
    np.testing.assert_array_equal(judge.pairwise(PROMPTS, A, B), 1.5)


def test_order_swap_plus_unswap_gives_same_win_rate(serve):
    server = serve(quality_judge)
    for order in ("both", "random", "original"):
        judge = make(server, order=order, seed=3)
        forward = judge.pairwise(PROMPTS, A, B)
        backward = judge.pairwise(PROMPTS, B, A)
        np.testing.assert_array_equal(unswap(backward), forward)
        assert win_rate(unswap(backward))["win_rate"] == win_rate(forward)["win_rate"]


def test_malformed_verdict_is_nan_and_counted(serve):
    server = serve(lambda user, n: ("ok", "I cannot decide, sorry.") if "q2" in user else quality_judge(user, n))
    judge = make(server, order="original")
    p = judge.pairwise(PROMPTS, A, B)
    assert math.isnan(p[1]) and p[0] == 1.0 and p[3] == 1.5
    assert judge.stats["malformed"] == 1
    wr = win_rate(p)
    assert wr["n_invalid"] == 1 and wr["n_total"] == 3


def test_timeout_is_retried_then_succeeds(serve):
    server = serve(lambda user, n: ("sleep", 1.0, "[[B]]") if n == 0 else ("ok", "[[B]]"))
    judge = make(server, order="original", timeout=0.3, max_retries=2, concurrency=1)
    p = judge.pairwise(["q"], ["x"], ["y"])
    assert p.tolist() == [2.0] and judge.stats["retries"] == 1


def test_timeout_fails_cleanly_after_retries(serve):
    server = serve(lambda user, n: ("sleep", 1.0, "[[B]]"))
    judge = make(server, order="original", timeout=0.2, max_retries=1)
    with pytest.raises(JudgeRequestError, match="giving up after 2 attempt"):
        judge.pairwise(["q"], ["x"], ["y"])
    lenient = make(server, order="original", timeout=0.2, max_retries=0, on_error="nan")
    assert math.isnan(lenient.pairwise(["q"], ["x"], ["y"])[0]) and lenient.stats["failed"] == 1


def test_http_500_retried_then_succeeds(serve):
    server = serve(lambda user, n: ("status", 500) if n < 2 else ("ok", "Rating: [[8]]"))
    judge = make(server, max_retries=3)
    assert judge.single(["q"], ["r"]).tolist() == [8.0]
    assert len(server.requests) == 3 and judge.stats["retries"] == 2


def test_http_500_fails_cleanly(serve):
    server = serve(lambda user, n: ("status", 500))
    judge = make(server, max_retries=2)
    with pytest.raises(JudgeRequestError, match="HTTP 500"):
        judge.single(["q"], ["r"])
    assert len(server.requests) == 3


def test_http_400_is_not_retried(serve):
    server = serve(lambda user, n: ("status", 400))
    with pytest.raises(JudgeRequestError, match="HTTP 400"):
        make(server, max_retries=3).single(["q"], ["r"])
    assert len(server.requests) == 1


def test_disk_cache(serve, tmp_path):
    server = serve(quality_judge)
    first = make(server, cache_dir=tmp_path).pairwise(PROMPTS, A, B)
    assert len(server.requests) == 8
    again = make(server, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.pairwise(PROMPTS, A, B), first)
    assert len(server.requests) == 8 and again.stats["cache_hits"] == 8
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 8 and all("response" in json.loads(f.read_text()) for f in files)
    assert not list(tmp_path.rglob("*.tmp"))
    make(server, cache_dir=tmp_path, temperature=0.5).pairwise(PROMPTS[:1], A[:1], B[:1])
    assert len(server.requests) == 10  # a different request is a different key


def test_concurrency_limit(serve):
    server = serve(lambda user, n: ("sleep", 0.05, "Rating: 5"))
    judge = make(server, concurrency=3)
    assert judge.single([f"q{i}" for i in range(12)], ["r"] * 12).tolist() == [5.0] * 12
    assert 1 < server.max_in_flight <= 3


def test_weighted_mode_reads_logprobs(serve):
    import math as m

    top = [{"token": "m", "logprob": m.log(0.25)}, {"token": "M", "logprob": m.log(0.75)}]
    server = serve(lambda user, n: ("ok", "M", top))
    judge = make(server, mode="weighted", order="original")
    assert judge.pairwise(["q"], ["x"], ["y"])[0] == pytest.approx(1.75)
    assert server.requests[0]["body"]["max_tokens"] == 1 and server.requests[0]["body"]["logprobs"] is True


def test_missing_api_key_is_a_config_error(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_KEY_VAR"):
        LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env="NO_SUCH_KEY_VAR")


@pytest.mark.parametrize("text,expected", [
    ("blah [[A]]", 1.0), ("first I say [[B]] format... final: [[A]]", 1.0), ("[[ c ]]", 1.5),
    ("Final verdict: B", 2.0), ("**Verdict**: tie", 1.5), ("Assistant B is better overall.", 2.0),
    (" A. ", 1.0), ("no idea", math.nan), ("", math.nan), (None, math.nan),
])
def test_parse_pairwise(text, expected):
    got = parse_pairwise(text)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


@pytest.mark.parametrize("text,expected", [
    ("My final verdict is a tie.", 1.5), ("Final verdict: a tie", 1.5), ("a tie", 1.5),
    ("The verdict is a clear win for B.", 2.0), ("a clear win for B", 2.0), ("verdict: A", 1.0),
    ("Assistant A is better", 1.0), ("[[B]]", 2.0), ("Verdict: Assistant B", 2.0), ("Verdict: TIE", 1.5),
    ("my verdict is a draw", math.nan), ("a", math.nan), ("assistant a is better", math.nan),
])
def test_parse_pairwise_never_reads_the_article_a_as_a_verdict(text, expected):
    """Outside [[…]] only capital letters are verdicts: "a tie" was read as "A wins" (1.0)."""
    got = parse_pairwise(text)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


@pytest.mark.parametrize("text,expected", [
    ("Final verdict: A tie.", 1.5), ("Verdict: A tie between the two", 1.5), ("A tie.", 1.5),
    ("My verdict: A TIE", 1.5), ("Verdict: A", 1.0), ("Verdict: A, tied on style only", 1.0),
])
def test_a_tie_written_with_a_capital_article_is_a_tie(text, expected):
    """A sentence starting "A tie" after "verdict:" was read as "A wins" (1.0), moving the win rate."""
    assert parse_pairwise(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("Answer: B", 2.0), ("**Answer:** A", 1.0), ("Reasoning first.\nFinal answer: (B).\n", 2.0), ("answer: C", 1.5),
    ("I prefer A", 1.0), ("I prefer Assistant B's answer.", 2.0), ("I prefer A over B.", 1.0),
    # not verdicts: a capital article after "Answer:", an echoed template, a lowercase "a"
    ("Answer: A helpful reply would name Paris.", math.nan), ("[The End of Assistant A's Answer]\nB", math.nan),
    ("I prefer a shorter answer", math.nan),
])
def test_a_verdict_given_as_an_answer_or_a_preference_is_read(text, expected):
    """A small judge's "Answer: B" or "I prefer A" was unreadable (NaN), dropped from the win rate."""
    got = parse_pairwise(text)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_parse_rating_and_weighted_preference():
    assert parse_rating("Rating: [[7]]") == 7.0 and parse_rating("I give it 6/10.") == 6.0
    assert parse_rating("Rating: 4.5") == 4.5 and math.isnan(parse_rating("Rating: [[42]]"))
    assert math.isnan(parse_rating("great answer"))
    assert weighted_preference([{"token": "m", "logprob": 0.0}]) == 1.0
    assert weighted_preference([{"token": "M", "logprob": -3.0}]) == 2.0
    assert math.isnan(weighted_preference([{"token": "x", "logprob": 0.0}]))


@pytest.mark.parametrize("kwargs,message", [
    ({"pairwise_template": "Which is better? {question} {response_a} {response_b}"}, r"pairwise_template.*\{question\}"),
    ({"pairwise_template": "Which is better, A or B?"}, r"pairwise_template.*lacks \{prompt\}, \{response_a\}, \{response_b\}"),
    ({"single_template": "Grade {prompt}: {answer}"}, r"single_template.*\{answer\}.*lacks \{response\}"),
    ({"pairwise_template": "{prompt} {response_a} {response_b} {"}, r"pairwise_template.*not a str.format"),
    ({"pairwise_template": "{0} {prompt} {response_a} {response_b}"}, r"pairwise_template.*\{0\}"),
])
def test_a_judge_template_without_its_fields_is_refused_at_once(kwargs, message):
    """A template naming an unknown field failed with a KeyError traceback after every model had generated;
    one without {response_b} judged answer A against nothing, without a word."""
    with pytest.raises(ConfigError, match=message):
        LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env=None, **kwargs)


def test_a_judge_template_may_hold_literal_braces():
    judge = LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env=None,
                     pairwise_template='{prompt} {response_a} {response_b} answer as {{"winner": "A"}}')
    body = judge._pair_bodies(["q"], ["x"], ["y"])[0]
    assert body["messages"][1]["content"] == 'q x y answer as {"winner": "A"}'


@pytest.mark.parametrize("rating_range", [(10, 1), (1,), "1-10", (1, float("nan"))])
def test_a_rating_range_that_is_not_low_then_high_is_refused(rating_range):
    # (10, 1) made every grade NaN: parse_rating keeps values with low <= value <= high
    with pytest.raises(ConfigError, match="rating_range"):
        LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env=None, rating_range=rating_range)


@pytest.mark.parametrize("text,expected", [
    # a small judge that echoes the system prompt's format line and stops gave no verdict: it read as a tie
    ('Output your final verdict by strictly following this format: "[[A]]" if assistant A is better, "[[B]]" if '
     'assistant B is better, and "[[C]]" for a tie.', math.nan),
    ('The format is "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie. '
     "Assistant B answers the question. [[B]]", 2.0),
])
def test_a_verdict_is_not_read_from_the_echoed_format_line(text, expected):
    got = parse_pairwise(text)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_a_grade_is_not_read_from_the_echoed_format_line():
    # echoing 'by strictly following this format: "Rating: [[5]]"' graded the answer 5
    assert math.isnan(parse_rating('You must rate the response by strictly following this format: "Rating: [[5]]".'))
    assert parse_rating('Format: "Rating: [[5]]". The answer is correct and brief. Rating: [[9]]') == 9.0


@pytest.mark.parametrize("args,kwargs,message", [
    ((3, "m"), {}, "base_url must be an http"),
    (("127.0.0.1:8000/v1", "m"), {}, "base_url must be an http"),
    (("http://127.0.0.1:9/v1", None), {}, "model must be"),
    (("http://127.0.0.1:9/v1", "m"), {"max_tokens": "a"}, "max_tokens must be an integer >= 1"),
    (("http://127.0.0.1:9/v1", "m"), {"concurrency": "a"}, "concurrency must be an integer >= 1"),
    (("http://127.0.0.1:9/v1", "m"), {"max_retries": -1}, "max_retries must be an integer >= 0"),
])
def test_a_bad_url_model_or_count_is_refused_at_once(args, kwargs, message):
    # base_url=3 was an AttributeError traceback; a URL without a scheme or max_tokens="a" failed only at
    # the first request, after every model had generated
    with pytest.raises(ConfigError, match=message):
        LLMJudge(*args, api_key_env=None, **kwargs)
