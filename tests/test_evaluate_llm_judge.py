"""`pluralign eval` with an LLM judge on a scripted chat-completions server on 127.0.0.1: how many of its
replies could not be read is reported, not only the pairs left with no verdict at all."""

from __future__ import annotations

import pytest
from test_judges_llm import ScriptedServer

from pluralign.evaluate.cli import verdict_warnings
from pluralign.evaluate.runner import evaluate_config

PROMPTS = ["first question", "second question", "third question"]


def off_format_on_the_first_prompt(user, n):
    if "first question" in user:
        return ("ok", "Both have merits.")  # no verdict, no grade
    return ("ok", "Rating: [[6]]") if "[Question]" in user else ("ok", "[[B]]")


@pytest.fixture
def server():
    s = ScriptedServer(off_format_on_the_first_prompt)
    yield s
    s.close()


def eval_config(server, **extra):
    return {"prompts": PROMPTS, "models": [{"name": "base", "path": "sandbox"}, {"name": "again", "path": "sandbox"}],
            "metrics": ["reward", "win_rate"], "generation": {"max_new_tokens": 6, "seed": 0}, "bootstrap": 10,
            "judge": {"kind": "llm", "base_url": server.url, "model": "judge", "api_key_env": None, "backoff": 0.01},
            **extra}


def test_unreadable_replies_are_counted_in_the_results_and_warned_of(server):
    results = evaluate_config(eval_config(server))
    # 2 runs x 3 grades, then 3 pairs x 2 orders: the first prompt's 2 grades and 2 verdicts are unreadable
    assert len(server.requests) == 12
    assert results["judge_replies"] == {"read": 8, "unreadable": 4, "failed": 0}
    notes = verdict_warnings(results)
    assert any(n.startswith("the LLM judge could not read 4 of its 12 replies") for n in notes), notes


def test_a_judge_whose_replies_all_read_reports_none_unread(server):
    server.script = lambda user, n: ("ok", "Rating: [[6]]") if "[Question]" in user else ("ok", "[[C]]")
    results = evaluate_config(eval_config(server))
    assert results["judge_replies"] == {"read": 12, "unreadable": 0, "failed": 0}
    assert not [n for n in verdict_warnings(results) if "LLM judge" in n]


def test_a_failed_grading_request_is_counted_as_failed_not_as_unreadable(server):
    from pluralign.judges import LLMJudge

    server.script = lambda user, n: ("status", 500)
    judge = LLMJudge(server.url, "judge", api_key_env=None, max_retries=0, on_error="nan")
    assert judge.single(["q"], ["r"]).tolist() != judge.single(["q"], ["r"]).tolist()  # NaN both times
    assert judge.reply_counts() == {"read": 0, "unreadable": 0, "failed": 2}
