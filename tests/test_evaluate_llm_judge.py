"""`pluralign eval` with an LLM judge on a scripted chat-completions server on 127.0.0.1: how many of its
replies could not be read is reported, not only the pairs left with no verdict at all."""

from __future__ import annotations

import pytest
from conftest import Generated
from test_judges_llm import ScriptedServer

from pluralign.errors import ConfigError
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


def dead_url() -> str:
    """A 127.0.0.1 port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_an_unreachable_judge_fails_before_any_model_generates(server, no_generation, tmp_path):
    # was found only after every model had generated, each request retried with backoff (exit 1 or 2, late)
    cfg = eval_config(server)
    cfg["judge"] |= {"base_url": dead_url()}
    with pytest.raises(ConfigError, match=r"^eval\.yaml: judge: base_url http://127\.0\.0\.1:\d+/v1: nothing answers"):
        evaluate_config(cfg, where="eval.yaml")
    with pytest.raises(Generated):  # a server that answers, even without a /models route, passes
        evaluate_config(eval_config(server), where="eval.yaml")


def test_an_unreachable_judge_with_cached_replies_warns_and_goes_on(server, no_generation, tmp_path):
    # a rerun from the cache needs no server: warned of, not refused
    cfg = eval_config(server)
    cfg["judge"] |= {"base_url": dead_url(), "cache_dir": str(tmp_path / "cache")}
    (tmp_path / "cache" / "ab").mkdir(parents=True)
    (tmp_path / "cache" / "ab" / "ab12.json").write_text("{}")
    with pytest.warns(UserWarning, match="nothing answers"), pytest.raises(Generated):
        evaluate_config(cfg, where="eval.yaml")


def test_the_cli_exits_2_naming_the_judge_setting(server, tmp_path, capsys):
    import yaml

    from pluralign.cli import main

    cfg = eval_config(server)
    cfg["judge"] |= {"base_url": dead_url()}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", "--config", str(tmp_path / "eval.yaml")]) == 2
    err = capsys.readouterr().err
    assert "judge: base_url" in err and "nothing answers" in err and "Traceback" not in err
    assert not (tmp_path / "results.json").exists()


def test_merged_run_directories_add_up_their_judge_s_replies():
    # merging kept the first part's counts: "could not read 1 of its 10 replies" for two evaluations of 10 each
    from pluralign.evaluate.run_dirs import merge_results

    parts = [{"judge": "LLM-judge score (j)", "runs": [{"name": name}], "judge_replies": counts}
             for name, counts in (("a", {"read": 9, "unreadable": 1, "failed": 0}),
                                  ("b", {"read": 6, "unreadable": 4, "failed": 2}))]
    merged = merge_results(parts + [{"runs": [{"name": "c"}], "judge": "LLM-judge score (j)"}])
    assert merged["judge_replies"] == {"read": 15, "unreadable": 5, "failed": 2}


def test_an_unreachable_judge_that_no_metric_asks_for_is_not_an_error(server, no_generation):
    # metrics: [kl] never calls the judge: refusing the evaluation for its server would be a regression
    cfg = eval_config(server, metrics=["kl"])
    cfg["judge"] |= {"base_url": dead_url()}
    with pytest.raises(Generated):
        evaluate_config(cfg, where="eval.yaml")
