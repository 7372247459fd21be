"""Simulated feedback from grammar responses: reproducibility, formats, and the Bradley–Terry noise model."""

import hashlib

import numpy as np
import pytest

from pluralign.data.io import read_records
from pluralign.errors import ConfigError
from pluralign.sandbox import feedback as F
from pluralign.sandbox.attributes import ATTRIBUTES, score_batch
from pluralign.sandbox.users import population, utility


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", F.FEEDBACK_KINDS)
def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path, kind):
    a = F.generate_file(tmp_path / "a.jsonl", kind, "diverse", 40, seed=7)
    b = F.generate_file(tmp_path / "b.jsonl", kind, "diverse", 40, seed=7)
    c = F.generate_file(tmp_path / "c.jsonl", kind, "diverse", 40, seed=8)
    assert _sha(a) == _sha(b) != _sha(c)
    records = read_records(a)  # valid for the data layer (no blank text, right fields)
    assert len(records) == 40


def test_parquet_and_csv_are_reproducible_too(tmp_path):
    for ext in ("parquet", "csv"):
        a = F.generate_file(tmp_path / f"a.{ext}", "ranked", "default", 30, seed=1, k=3)
        b = F.generate_file(tmp_path / f"b.{ext}", "ranked", "default", 30, seed=1, k=3)
        assert _sha(a) == _sha(b)
        assert all(len(r.responses) == 3 and sorted(r.ranks) == [1, 2, 3] for r in read_records(a))


def test_who_is_named_on_each_kind():
    pop = population("default")
    ids = {u.id: u.group for u in pop.users()}
    anonymous = F.generate("pairwise", pop, 20, seed=0)
    assert all(r.user is None and r.group is None for r in anonymous)
    for kind in ("user_pairwise", "ranked", "binary", "rated", "judged"):
        for r in F.generate(kind, pop, 20, seed=0):
            assert ids[r.user] == r.group
    assert all(r.chosen != r.rejected for r in F.generate("user_pairwise", pop, 50, seed=0))


def _agreement(records, temperature, chosen_first=True):
    """Observed share of labels that agree with the noiseless preference, its BT expectation, and the
    standard deviation of the observed share."""
    users = {u.id: u for u in population("default").users()}
    if chosen_first:
        a = score_batch([r.prompt for r in records], [r.chosen for r in records])
        b = score_batch([r.prompt for r in records], [r.rejected for r in records])
    else:  # ranked with k = 2: rank 1 plays "chosen"
        a = score_batch([r.prompt for r in records], [r.responses[r.ranks.index(1)] for r in records])
        b = score_batch([r.prompt for r in records], [r.responses[r.ranks.index(2)] for r in records])
    du = np.array([utility(users[r.user].vector(), x - y) for r, x, y in zip(records, a, b, strict=True)])
    du = du[du != 0]
    p = 1 / (1 + np.exp(-np.abs(du) / temperature))
    return float(np.mean(du > 0)), float(p.mean()), float(np.sqrt(np.sum(p * (1 - p))) / len(du))


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_pairwise_labels_follow_the_bradley_terry_model(temperature):
    records = F.generate("user_pairwise", "default", 1500, seed=11, temperature=temperature)
    observed, expected, sd = _agreement(records, temperature)
    assert abs(observed - expected) < 3 * sd
    assert 0.55 < expected < 0.99  # the check has power: neither a coin flip nor noiseless


def test_ranked_with_two_responses_is_bradley_terry():
    records = F.generate("ranked", "default", 1500, seed=12, k=2, temperature=0.3)
    observed, expected, sd = _agreement(records, 0.3, chosen_first=False)
    assert abs(observed - expected) < 3 * sd


def test_lower_temperature_means_more_consistent_labels():
    cold = _agreement(F.generate("user_pairwise", "default", 600, seed=3, temperature=0.02), 0.02)[0]
    hot = _agreement(F.generate("user_pairwise", "default", 600, seed=3, temperature=5.0), 5.0)[0]
    assert cold > 0.95 and 0.4 < hot < 0.6


def test_binary_labels_track_utility_and_split_roughly_in_half():
    pop = population("default")
    users = {u.id: u for u in pop.users()}
    records = F.generate("binary", pop, 1000, seed=4)
    x = score_batch([r.prompt for r in records], [r.response for r in records])
    u = np.array([utility(users[r.user].vector(), xi) for r, xi in zip(records, x, strict=True)])
    labels = np.array([r.label for r in records])
    assert 0.3 < labels.mean() < 0.7
    assert u[labels].mean() > u[~labels].mean() + 0.2


def test_ratings_are_gold_attributes_plus_small_noise():
    records = F.generate("rated", "default", 500, seed=5, rating_noise=0.05)
    x = score_batch([r.prompt for r in records], [r.response for r in records])
    ratings = np.array([[r.ratings[a] for a in ATTRIBUTES] for r in records])
    err = np.abs(ratings - x)
    # Clipping to the range only shrinks errors, so the mean |noise| is at most σ·√(2/π) ≈ 0.04.
    assert 0.01 < err.mean() < 0.05 and err.max() < 0.3


def test_an_annotator_may_rate_several_responses_to_one_prompt():
    # one response per annotator gave rated -> pairwise 2 pairs out of 500 ratings (pairs are one person's
    # ratings of one prompt's responses)
    from pluralign.data import convert

    one = F.generate("rated", "default", 40, seed=5)
    assert one == F.generate("rated", "default", 40, seed=5, rated_per_prompt=1)
    four = F.generate("rated", "default", 42, seed=5, rated_per_prompt=4)
    assert len(four) == 42 and len({(r.prompt, r.user) for r in four}) == 11  # 10 annotators of 4, one of 2
    assert len({r.response for r in four[:4]}) > 1
    x = score_batch([r.prompt for r in four], [r.response for r in four])
    assert np.abs(np.array([[r.ratings[a] for a in ATTRIBUTES] for r in four]) - x).max() < 0.3
    assert len(convert(four, "pairwise", objective="relevance")) > 10 * len(convert(one, "pairwise", objective="relevance"))


def test_judgments_name_what_moved_the_annotator_in_the_verdicts_direction():
    pop = population("default")
    users = {u.id: u for u in pop.users()}
    records = F.generate("judged", pop, 400, seed=6)
    ref = F._reference()[1]
    assert {r.polarity for r in records} == {"positive", "negative"}
    consistent = []
    for r in records:
        x = score_batch([r.prompt], [r.response])[0]
        i = ATTRIBUTES.index(r.objective)
        level = "high" if x[i] >= ref[i] else "low"
        assert r.judgment == F.JUDGMENTS[(r.objective, level, r.polarity)]
        push = users[r.user].vector()[i] * (x[i] - ref[i])
        consistent.append(push >= 0 if r.polarity == "positive" else push <= 0)
    # A verdict flipped by BT noise can leave no attribute pushing its way; nearly all others name one.
    assert np.mean(consistent) > 0.9
    assert any(r.judgment == "The response is too long." for r in records)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="unknown feedback kind"):
        F.generate("thumbs", "default", 5)
    with pytest.raises(ConfigError):
        F.generate("ranked", "default", 5, k=1)
    with pytest.raises(ConfigError, match="unknown population"):
        F.generate("pairwise", "nobody", 5)
    # a negative temperature reversed every ranking and NaN gave every verdict to one side, without a word
    for kind in ("ranked", "pairwise", "binary"):
        for t in (-1.0, 0.0, float("nan")):
            with pytest.raises(ConfigError, match="temperature must be > 0"):
                F.generate(kind, "default", 3, temperature=t)
    # a NaN rating noise wrote every rating as null; a negative one was numpy's "scale < 0"
    for noise in (float("nan"), float("inf"), -0.1):
        with pytest.raises(ConfigError, match="rating_noise must be a finite number >= 0"):
            F.generate("rated", "default", 3, rating_noise=noise)


def test_several_judges_per_item_label_the_same_pair_and_disagree_as_their_groups_do():
    """With 3 judges per item, records 3i..3i+2 share prompt and responses; one judge per item is the usual
    data, record for record; the groups of the default population (a conflicting minority) disagree on
    pairs both judge, which `data stats` measures."""
    from pluralign.data.stats import disagreement

    records = F.generate("user_pairwise", "default", 600, judges_per_item=3)
    assert all({r.prompt for r in records[i:i + 3]} == {records[i].prompt} and
               len({frozenset((r.chosen, r.rejected)) for r in records[i:i + 3]}) == 1 for i in range(0, 600, 3))
    assert len({(r.prompt, frozenset((r.chosen, r.rejected))) for r in records}) == 200  # 200 items
    assert F.generate("user_pairwise", "default", 50, judges_per_item=1) == F.generate("user_pairwise", "default", 50)
    d = disagreement(records)
    assert d["judged_more_than_once"] == 200 and d["judged_by_several_groups"] > 50
    assert 0.2 < d["group_majorities_differ"] < 0.8 and 0 < d["verdicts_against_majority"] < 1 / 3
    with pytest.raises(ConfigError, match="judges_per_item >= 1"):
        F.generate("pairwise", n=4, judges_per_item=0)


def test_the_judges_of_one_item_are_different_people_drawn_by_share():
    # drawn independently, one user judged 20% of the items twice (31% with the minority alone)
    for groups in (None, ["minority"]):
        records = F.generate("user_pairwise", "default", 1500, judges_per_item=3, groups=groups)
        assert all(len({r.user for r in records[i:i + 3]}) == 3 for i in range(0, 1500, 3))
    shares = np.mean([r.group == "majority" for r in F.generate("binary", "default", 3000, judges_per_item=2)])
    assert abs(shares - 0.7) < 0.03
    assert len(F.generate("user_pairwise", "default", 7, judges_per_item=3)) == 7  # the last item has one judge
    with pytest.raises(ConfigError, match="panels of 9 different annotators, but groups minority has 8 users"):
        F.generate("user_pairwise", "default", 9, judges_per_item=9, groups=["minority"])


def test_a_lone_prompt_is_refused_by_name_not_split_into_characters():
    # gold_eval("describe rivers.") evaluated 16 one-character prompts; draw_responses drew responses to each
    from pluralign.sandbox import draw_responses, gold_eval

    for call in (lambda: draw_responses("question: what are rivers? answer:", 2),
                 lambda: gold_eval(None, prompts="question: what are rivers? answer:")):
        with pytest.raises(ConfigError, match="prompts: expected a list of prompts") as e:
            call()
        assert e.value.field == "prompts"


def test_a_lone_group_name_is_refused_by_name():
    # groups="minority" was read letter by letter: "population 'default' has no group 'm'"
    with pytest.raises(ConfigError, match=r"groups: expected a list of group names.*\['minority'\]") as e:
        F.generate("user_pairwise", "default", 4, groups="minority")
    assert e.value.field == "groups"
    assert {r.group for r in F.generate("user_pairwise", "default", 4, groups=["minority"])} == {"minority"}


def test_a_negative_seed_is_a_config_error_not_a_numpy_traceback(tmp_path):
    from pluralign.cli import main

    with pytest.raises(ConfigError, match="seed must be a non-negative integer, got -1"):
        F.generate("pairwise", "default", 3, seed=-1)
    with pytest.raises(ConfigError, match="users_seed must be a non-negative integer"):
        F.generate("pairwise", "default", 3, users_seed=-2)
    with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
        F.rated_lists(2, ["conciseness"], seed=-1)
    out = tmp_path / "pairs.jsonl"
    assert main(["sandbox", "feedback", "--kind", "pairwise", "--n", "3", "--seed", "-1", "--out", str(out)]) == 2
    assert not out.exists()
    assert main(["sandbox", "build", "--tiny", "--seed", "-1", "--out", str(tmp_path / "base")]) == 2
    assert not (tmp_path / "base").exists()


def test_temperature_with_rated_feedback_is_refused_not_ignored(tmp_path, capsys):
    # ratings are gold attributes plus noise: no Bradley-Terry choice reads the temperature
    from pluralign.cli import main

    out = tmp_path / "ratings.jsonl"
    assert main(["sandbox", "feedback", "--kind", "rated", "--n", "3", "--temperature", "5", "--out", str(out)]) == 2
    assert "--kind rated draws no choice" in capsys.readouterr().err
    assert not out.exists()
    assert main(["sandbox", "feedback", "--kind", "binary", "--n", "3", "--temperature", "5", "--out", str(out)]) == 0


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    # each was found only once every record was drawn, every prompt sampled and scored, or the model built
    import pluralign.sandbox.base
    import pluralign.sandbox.gold
    from pluralign.cli import main

    def work(*args, **kwargs):
        raise AssertionError("the work ran before its output was checked")

    for module, name in ((pluralign.sandbox.gold, "gold_eval"), (F, "generate_file"),
                         (pluralign.sandbox.base, "build_base")):
        monkeypatch.setattr(module, name, work)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv, message in [
        (["eval", "--model", str(model), "--out", str(afile / "r.json")], "afile is a file, not a directory"),
        (["eval", "--model", str(model), "--out", str(tmp_path)], "is a directory; give a file path"),
        (["feedback", "--kind", "pairwise", "--out", str(tmp_path / "fb.txt")], "unknown format '.txt'"),
        (["feedback", "--kind", "pairwise", "--out", str(afile / "fb.jsonl")], "afile is a file, not a directory"),
        (["build", "--out", str(afile)], "is a file; give a directory"),
    ]:
        assert main(["sandbox", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert "--out" in err and message in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "model"]  # nothing written, no probe left
