"""Conversions between kinds, checked with hand-computed pairs, margins and labels."""

from __future__ import annotations

import pytest

from pluralign.data import (
    Binary,
    Pairwise,
    Ranked,
    Rated,
    convert,
    pairwise_to_binary,
    ranked_to_pairwise,
    rated_to_binary,
    rated_to_pairwise,
    rated_to_ranked,
)
from pluralign.errors import PluralignError


def _triples(pairs: list[Pairwise]) -> set[tuple]:
    return {(p.chosen, p.rejected, p.margin) for p in pairs}


def test_ranked_scores_give_every_ordered_pair_with_score_differences():
    ranked = Ranked(
        "p", ["a", "b", "c"], scores=[0.5, 2.0, -1.0], user="u", group="g", objective="o", section="s"
    )
    pairs = ranked_to_pairwise([ranked])
    assert _triples(pairs) == {("b", "a", 1.5), ("a", "c", 1.5), ("b", "c", 3.0)}
    assert all(
        (p.prompt, p.user, p.group, p.objective, p.section) == ("p", "u", "g", "o", "s") for p in pairs
    )


def test_ranked_ties_and_duplicate_responses_give_no_pair():
    pairs = ranked_to_pairwise([Ranked("p", ["a", "b", "c", "a"], scores=[1.0, 1.0, 3.0, 0.0])])
    # a~b tie and a vs its duplicate are skipped; the duplicate still pairs with the others.
    assert len(pairs) == 4
    assert _triples(pairs) == {("c", "a", 2.0), ("c", "b", 2.0), ("b", "a", 1.0), ("c", "a", 3.0)}


def test_ranks_order_pairs_without_a_margin():
    # rank 1 is best; ranks are ordinal, so no margin is invented.
    pairs = ranked_to_pairwise([Ranked("p", ["a", "b", "c"], ranks=[2, 1, 3])])
    assert _triples(pairs) == {("b", "a", None), ("a", "c", None), ("b", "c", None)}


def test_scores_win_over_ranks_when_both_are_given():
    pairs = ranked_to_pairwise([Ranked("p", ["a", "b"], scores=[0.0, 4.0], ranks=[2, 1])])
    assert _triples(pairs) == {("b", "a", 4.0)}


RATED = [
    Rated("p", "r1", {"help": 1.0, "safe": 5.0}, user="u1"),
    Rated("p", "r2", {"help": 3.0, "safe": 1.0}, user="u1"),
    Rated("p", "r3", {"help": 3.0, "safe": 2.0}, user="u1"),
    Rated("p", "r4", {"help": 9.0, "safe": 9.0}, user="u2"),  # another user: never paired with u1's
    Rated("q", "r5", {"help": 0.0, "safe": 0.0}, user="u1"),  # another prompt
]


def test_rated_to_pairwise_by_one_objective():
    pairs = rated_to_pairwise(RATED, objective="help")
    assert _triples(pairs) == {("r2", "r1", 2.0), ("r3", "r1", 2.0)}  # r2 vs r3 tie skipped
    assert {(p.user, p.objective) for p in pairs} == {("u1", "help")}


def test_rated_to_pairwise_by_weighted_sum():
    # utilities 0.5*help + 0.5*safe: r1 3.0, r2 2.0, r3 2.5
    pairs = rated_to_pairwise(RATED, weights={"help": 0.5, "safe": 0.5})
    assert _triples(pairs) == {("r1", "r2", 1.0), ("r1", "r3", 0.5), ("r3", "r2", 0.5)}
    assert {p.objective for p in pairs} == {None}


def test_single_objective_is_used_without_being_named():
    rated = [Rated("p", "a", {"x": 2.0}), Rated("p", "b", {"x": -1.0})]
    (pair,) = rated_to_pairwise(rated)
    assert (pair.chosen, pair.rejected, pair.margin, pair.objective) == ("a", "b", 3.0, "x")


def test_rated_to_binary_thresholds_inclusively():
    labels = [b.label for b in rated_to_binary(RATED, threshold=3.0, objective="help")]
    assert labels == [False, True, True, True, False]
    weighted = rated_to_binary(RATED, threshold=2.5, weights={"help": 0.5, "safe": 0.5})
    assert [b.label for b in weighted] == [True, False, True, True, False]
    assert [b.user for b in weighted] == ["u1", "u1", "u1", "u2", "u1"]


def test_pairwise_to_binary_gives_one_up_and_one_down_per_pair():
    pairs = [Pairwise("p", "a", "b", 1.0, "u", "g", "o", "s", {"m": 1}), Pairwise("q", "c", "d")]
    out = pairwise_to_binary(pairs)
    assert [(b.prompt, b.response, b.label) for b in out] == [
        ("p", "a", True),
        ("p", "b", False),
        ("q", "c", True),
        ("q", "d", False),
    ]
    assert out[1] == Binary("p", "b", False, "u", "g", "o", "s", {"m": 1})


@pytest.mark.parametrize(
    ("records", "to", "options", "message"),
    [
        (RATED, "pairwise", {}, "cover objectives \\['help', 'safe'\\]; choose one or give weights"),
        (RATED, "pairwise", {"objective": "help", "weights": {"help": 1.0}}, "not both"),
        (RATED, "pairwise", {"objective": "fun"}, "no ratings for objective\\(s\\) fun"),
        (RATED, "binary", {"objective": "help"}, "needs a threshold"),
        (
            [Binary("p", "r", True)],
            "pairwise",
            {},
            "cannot convert binary to pairwise; supported: ranked -> pairwise",
        ),
        ([Binary("p", "r", True), Pairwise("p", "a", "b")], "binary", {}, "several kinds"),
    ],
)
def test_convert_refuses_what_it_cannot_do(records, to, options, message):
    with pytest.raises(PluralignError, match=message):
        convert(records, to, **options)


def test_convert_dispatches_and_keeps_same_kind():
    assert convert(RATED, "rated") == RATED
    assert convert(RATED, "binary", objective="safe", threshold=5.0)[0].label is True
    assert len(convert([Ranked("p", ["a", "b"], ranks=[1, 2])], "pairwise")) == 1


def test_rated_to_ranked_lists_each_prompt_and_users_responses_by_their_score():
    lists = rated_to_ranked(RATED, weights={"help": 1.0, "safe": 0.5})
    assert [(r.prompt, r.user, r.responses, r.scores) for r in lists] == [("p", "u1", ["r1", "r2", "r3"], [3.5, 3.5, 4.0])]
    assert lists[0].objective is None  # a mix of objectives
    by_help = rated_to_ranked(RATED + [Rated("p", "r1", {"help": 7.0, "safe": 0.0}, user="u1")], objective="help")
    assert [(r.responses, r.scores, r.objective) for r in by_help] == [(["r1", "r2", "r3"], [1.0, 3.0, 3.0], "help")]
    pairs = convert(by_help, "pairwise")  # the list's pairs are rated_to_pairwise's
    assert _triples(pairs) == _triples(rated_to_pairwise(RATED, objective="help"))


def test_feedback_becomes_the_demonstrations_it_prefers():
    # `data convert --to demonstration` was offered and refused for every kind: SFT on the preferred answers
    from pluralign.data.records import Demonstration

    pairs = [Pairwise("p", "a", "b", user="u"), Pairwise("p", "a", "c", user="u"), Pairwise("p", "a", "b", user="v")]
    assert convert(pairs, "demonstration") == [Demonstration("p", "a", "u"), Demonstration("p", "a", "v")]
    assert convert([Binary("p", "x", True), Binary("p", "y", False)], "demonstration") == [Demonstration("p", "x")]
    ranked = [Ranked("p", ["a", "b", "c"], ranks=[2, 1, 3]), Ranked("q", ["d", "e"], scores=[1.0, 5.0]),
              Ranked("t", ["f", "g"], scores=[2.0, 2.0])]  # a tie throughout: nothing preferred
    assert [(d.prompt, d.response) for d in convert(ranked, "demonstration")] == [("p", "b"), ("q", "e")]
    best = convert(RATED, "demonstration", weights={"help": 1.0, "safe": 0.5})
    assert [(d.prompt, d.response, d.user) for d in best] == [("p", "r3", "u1")]  # 4.0 of 3.5, 3.5, 4.0


@pytest.mark.parametrize("to, options, message", [
    ("binary", {"threshold": 0.5}, "converting pairwise to binary reads no threshold"),
    ("pairwise", {"objective": "help"}, "keeping pairwise records as they are reads no objective"),
    ("demonstration", {"weights": {"help": 1.0}}, "converting pairwise to demonstration reads no weights"),
])
def test_options_a_conversion_does_not_read_are_refused(to, options, message):
    # were dropped without a word: `data convert pairs.jsonl out.jsonl --to binary --threshold 0.5` ran as without it
    with pytest.raises(PluralignError, match=message):
        convert([Pairwise("p", "a", "b")], to, **options)
    with pytest.raises(PluralignError, match="converting rated to pairwise reads no threshold: it reads only"):
        convert(RATED, "pairwise", objective="help", threshold=2.0)


def test_masked_ratings_pair_and_list_on_the_responses_that_rate_the_objective():
    """Masked ratings (a response rated on some objectives only), as a multi-objective reward model trains on:
    pairing them on one objective stopped with "a rated record has no rating for 'safe'" (also the held-out
    evaluation of such a model). A record silent on the objective says nothing of it; a weighted sum still needs
    every objective it weighs."""
    rated = [Rated("p", "a", {"help": 3.0, "safe": 1.0}), Rated("p", "b", {"help": 1.0}),
             Rated("p", "c", {"help": 2.0, "safe": 4.0})]
    assert _triples(rated_to_pairwise(rated, objective="safe")) == {("c", "a", 3.0)}
    assert _triples(rated_to_pairwise(rated, weights={"safe": 2.0})) == {("c", "a", 6.0)}
    assert len(rated_to_pairwise(rated, objective="help")) == 3
    assert [r.responses for r in rated_to_ranked(rated, objective="safe")] == [["a", "c"]]
    with pytest.raises(PluralignError, match="a rated record has no rating for 'safe'"):
        rated_to_pairwise(rated, weights={"help": 1.0, "safe": 1.0})


def test_masked_ratings_give_thumbs_to_the_responses_rated_on_the_objective():
    rated = [Rated("p", "a", {"help": 3.0, "safe": 1.0}), Rated("p", "b", {"help": 1.0}),
             Rated("p", "c", {"help": 2.0, "safe": 4.0})]
    assert [(b.response, b.label) for b in rated_to_binary(rated, 2.0, objective="safe")] == [("a", False), ("c", True)]
