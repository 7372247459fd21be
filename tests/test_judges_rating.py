"""Reading a single-answer grade from a judge's reply: a stated scale or range is not the grade, a grade on
another scale is not one on the judge's, and a reply without a grade is unreadable (NaN), never a number."""

from __future__ import annotations

import math

import pytest

from pluralign.judges.templates import parse_rating


def same(got: float, expected: float) -> bool:
    return (math.isnan(got) and math.isnan(expected)) or got == expected


@pytest.mark.parametrize("text,expected", [
    # the scale's bounds were read as the grade ("Rating: 1-10 scale, 7" graded 1) or hid it
    ("Rating: 1-10 scale, 7", 7.0), ("Rating (1-10): 7", 7.0), ("Rating on a 1–10 scale: 8", 8.0),
    ("On a 1-10 scale, I give it a 7", 7.0), ("On a scale of 1 to 10, I would rate this response 6.", 6.0),
    ("Rating (10-point scale): 9", 9.0), ("[[1-10]] Rating: 7", 7.0), ("Rating: 6 (scale 1-10)", 6.0),
    # "x out of 10", "x/10", "Rating: x", "score: x"
    ("I give it a 7 out of 10.", 7.0), ("The answer deserves 8 out of 10.", 8.0), ("Rating: 7/10", 7.0),
    ("Overall rating: 8/10. Helpfulness alone would be 3/10.", 8.0), ("Score: 7", 7.0), ("My rating is 7.", 7.0),
    ("Rating: [[7/10]]", 7.0), ("Rating:\n\n7", 7.0), ("Rating: **7**", 7.0), ("Rating: [[ 7.5 ]]", 7.5),
])
def test_a_grade_is_read_past_the_stated_scale(text, expected):
    assert same(parse_rating(text), expected)


@pytest.mark.parametrize("text", [
    "Rating: 3/5", "I rate this 2 out of 5.", "Rating: [[4/5]]",  # a grade on another scale: 3/5 read as 3 of 10
    "Rating: 1e3", "Rating: 7-8",  # a number that is not one grade
    "I would give it a good score.", "Score of 2 answers: fine.", "great answer", "", "Rating: [[42]]", "rating: 0",
])
def test_a_reply_without_a_grade_on_the_scale_is_unreadable(text):
    assert math.isnan(parse_rating(text))


def test_the_scale_top_is_the_rating_range_s_own():
    # "/10" was the only fraction read, whatever the judge's range: 4/5 on a 1-5 judge was unreadable,
    # while 8/10 on it was refused only for exceeding 5
    assert parse_rating("Rating: 4/5", 1, 5) == 4.0 and parse_rating("4 out of 5", 1, 5) == 4.0
    assert math.isnan(parse_rating("Rating: 4/10", 1, 5))


def test_the_default_grading_prompt_asks_for_the_judge_s_own_range():
    # rating_range=(1, 5) still told the judge "rate on a scale of 1 to 10": its 6s to 10s were refused as
    # out of range and the mean rested on its low grades alone
    from pluralign.judges import LLMJudge
    from pluralign.judges.templates import SINGLE_SYSTEM

    def system(**kw):
        judge = LLMJudge("http://127.0.0.1:9/v1", "m", api_key_env=None, **kw)
        return judge._body(judge.single_system, "x")["messages"][0]["content"]

    assert "on a scale of 1 to 5 " in system(rating_range=(1, 5)) and "1 to 10" not in system(rating_range=(1, 5))
    assert "on a scale of 0 to 2.5 " in system(rating_range=(0, 2.5))
    assert system() == SINGLE_SYSTEM  # the default range: the prompt (and the cache keys) as they were
    assert system(rating_range=(1, 5), single_system="Grade it 1-5.") == "Grade it 1-5."  # the user's own prompt
