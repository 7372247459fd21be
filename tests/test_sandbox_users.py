"""Sandbox populations: Bradley–Terry probabilities, utilities, users, conflicting groups."""

import math
import re

import numpy as np
import pytest

from pluralign.errors import ConfigError
from pluralign.sandbox import attributes as A
from pluralign.sandbox import users as U
from pluralign.sandbox.world import World


def test_bradley_terry_probability_values():
    assert U.preference_probability(0.3, 0.3, 0.2) == pytest.approx(0.5)
    assert U.preference_probability(1.0, 0.0, 0.5) == pytest.approx(1 / (1 + math.exp(-2.0)))
    p = U.preference_probability(np.array([0.1, 2.0]), np.array([0.4, -1.0]), 0.25)
    assert p + U.preference_probability(np.array([0.4, -1.0]), np.array([0.1, 2.0]), 0.25) == pytest.approx([1, 1])
    assert U.preference_probability(1e6, 0.0, 1e-3) == 1.0  # no overflow warning or NaN at extreme gaps
    with pytest.raises(ConfigError):
        U.preference_probability(1.0, 0.0, 0.0)


def test_utility_is_the_weighted_sum_of_attributes():
    x = np.zeros((2, len(A.ATTRIBUTES)))
    x[0, A.ATTRIBUTES.index("conciseness")] = 0.5
    x[1, A.ATTRIBUTES.index("safety")] = 1.0
    x[1, A.ATTRIBUTES.index("formality")] = -0.5
    w = {"conciseness": 2.0, "safety": 0.5, "formality": 1.0}
    assert U.utility(w, x).tolist() == pytest.approx([1.0, 0.0])
    with pytest.raises(ConfigError, match="unknown attribute"):
        U.weight_vector({"lenght": 1.0})


def test_users_have_ids_and_scatter_around_their_group():
    pop = U.population("default", users_per_group=200)
    users = pop.users(seed=0)
    assert users == pop.users(seed=0) and users != pop.users(seed=1)
    assert all(re.fullmatch(r"g\d+-u\d+", u.id) for u in users)
    assert users[0].id == "g0-u0" and users[200].id == "g1-u0" and users[200].group == "minority"
    for group in pop.groups:
        mine = np.array([u.vector() for u in users if u.group == group.name])
        assert np.abs(mine.mean(0) - group.vector()).max() < 4 * pop.user_spread / math.sqrt(200)
        assert mine.std(0) == pytest.approx(np.full(len(A.ATTRIBUTES), pop.user_spread), rel=0.25)


def test_draw_users_follows_the_shares():
    pop = U.population("diverse")
    drawn = pop.draw_users(4000, np.random.default_rng(0))
    shares = [sum(u.group == g.name for u in drawn) / 4000 for g in pop.groups]
    assert shares == pytest.approx(list(pop.shares), abs=0.03)


def test_draw_users_can_be_restricted_to_some_groups():
    pop = U.population("default")
    drawn = pop.draw_users(200, np.random.default_rng(0), groups=["minority"])
    assert {u.group for u in drawn} == {"minority"} and all(u.id.startswith("g1-") for u in drawn)
    with pytest.raises(ConfigError, match="no group"):
        pop.draw_users(5, np.random.default_rng(0), groups=["martians"])


def test_minority_conflicts_with_the_majority():
    pop = U.population("default")
    majority, minority = pop.groups
    assert pop.shares[0] > 0.5 > pop.shares[1]
    w = World(0)
    prompts = w.prompts(2000)
    x = A.score_batch(prompts, [r[0] for r in w.responses(prompts)])
    u_maj, u_min = U.utility(majority.weights, x), U.utility(minority.weights, x)
    assert np.corrcoef(u_maj, u_min)[0, 1] < -0.1
    # On random pairs of responses the two groups disagree more often than they agree.
    i, j = np.random.default_rng(0).integers(0, len(x), (2, 5000))
    assert np.mean((u_maj[i] - u_maj[j]) * (u_min[i] - u_min[j]) < 0) > 0.5


def test_named_populations_and_errors():
    assert set(U.population_names()) >= {"default", "two_groups", "diverse", "homogeneous"}
    for name in U.population_names():
        pop = U.population(name)
        assert sum(pop.shares) == pytest.approx(1.0)
        assert pop.group(pop.groups[0].name) is pop.groups[0]
    with pytest.raises(ConfigError, match="unknown population"):
        U.population("everyone")
    with pytest.raises(ConfigError, match="no group"):
        U.population("default").group("nobody")
    with pytest.raises(ConfigError, match="sum to 1"):
        U.Population("bad", (U.MAJORITY,), (0.5,))


def test_a_population_that_cannot_label_is_refused_when_made():
    # a NaN spread or weight labelled every pair for its second response (random() < nan is False);
    # users_per_group 0 and a negative spread were numpy tracebacks at the first draw
    with pytest.raises(ConfigError, match="user_spread must be a finite number >= 0, got nan"):
        U.population("default", user_spread=float("nan"))
    with pytest.raises(ConfigError, match="user_spread must be"):
        U.population("default", user_spread=-0.1)
    with pytest.raises(ConfigError, match="users_per_group must be an integer >= 1, got 0"):
        U.population("default", users_per_group=0)
    with pytest.raises(ConfigError, match="group names must differ"):
        U.Population("twins", (U.MAJORITY, U.MAJORITY), (0.5, 0.5))
    with pytest.raises(ConfigError, match="group 'g': weights must be finite"):
        U.Group("g", {"safety": float("nan")})
    with pytest.raises(ConfigError, match="unknown attribute"):
        U.Group("g", {"kindness": 1.0})
    for t in (0.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="temperature must be a finite number > 0"):
            U.Group("g", {"safety": 1.0}, temperature=t)
    assert U.population("default", user_spread=0.0).users()[0].weights == U.MAJORITY.weights | {
        a: 0.0 for a in A.ATTRIBUTES if a not in U.MAJORITY.weights}


def test_gold_table_keeps_its_columns_aligned_for_long_group_names():
    from pluralign.sandbox.gold import format_table

    stat = {"mean": 0.5, "se": 0.1}
    result = {"n_prompts": 2, "n_samples": 1, "attributes": {"relevance": stat}, "groups": {"professionals": stat},
              "population_utility": stat, "length": stat, "kl": stat,
              "win_rate": {"professionals": stat, "a_rather_long_group_name": stat}}
    rows = format_table(result).splitlines()[2:]
    assert len({len(row) for row in rows}) == 1, rows  # every value ends in the same column
