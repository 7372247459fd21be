"""The LLM judge's disk cache keeps only replies that read as a verdict or a grade: an unreadable one is asked
for again on the next run (a judge that was overloaded, or a template since fixed), not replayed as NaN."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_judges_llm import PROMPTS, A, B, ScriptedServer, make, quality_judge


@pytest.fixture
def server():
    s = ScriptedServer(lambda user, n: ("ok", "I cannot decide, sorry.") if n == 0 else
                       ("ok", "Rating: [[7]]") if "[Question]" in user else quality_judge(user, n))
    yield s
    s.close()


def test_an_unreadable_verdict_is_not_cached_and_is_asked_again(server, tmp_path):
    first = make(server, cache_dir=tmp_path).pairwise(PROMPTS, A, B)
    assert np.isnan(first).all() and len(server.requests) == 8
    assert not list(tmp_path.rglob("*.json"))  # nothing readable to keep
    again = make(server, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.pairwise(PROMPTS, A, B), [1.0, 2.0, 1.5, 1.5])
    assert len(server.requests) == 16 and again.stats["cache_hits"] == 0 and len(list(tmp_path.rglob("*.json"))) == 8
    third = make(server, cache_dir=tmp_path)
    third.pairwise(PROMPTS, A, B)
    assert len(server.requests) == 16 and third.stats["cache_hits"] == 8


def test_an_unreadable_grade_is_not_cached_and_is_asked_again(server, tmp_path):
    assert math.isnan(make(server, cache_dir=tmp_path).single(["q"], ["r"])[0])
    judge = make(server, cache_dir=tmp_path)
    assert judge.single(["q"], ["r"]).tolist() == [7.0] and judge.stats["cache_hits"] == 0
    assert make(server, cache_dir=tmp_path).single(["q"], ["r"]).tolist() == [7.0] and len(server.requests) == 2


def test_an_unreadable_reply_cached_by_an_earlier_version_is_asked_again(server, tmp_path):
    judge = make(server, cache_dir=tmp_path)
    body = judge._body(judge.single_system, judge.single_template.format(prompt="q", response="r"))
    path = judge._cache_path(body)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"request": body, "response": ScriptedServer.completion(body, "no grade here")}))
    server.seen[body["messages"][-1]["content"]] = 1  # the server now answers with a grade
    assert judge.single(["q"], ["r"]).tolist() == [7.0] and judge.stats["cache_hits"] == 0
    assert json.loads(path.read_text())["response"]["choices"][0]["message"]["content"] == "Rating: [[7]]"
