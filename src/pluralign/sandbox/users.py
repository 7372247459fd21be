"""Simulated populations: groups of users with preference weights over the gold attributes.

A user's utility for a response is the weighted sum of its gold attributes; a user prefers `a` over `b`
with the Bradley–Terry probability σ((u_a − u_b) / T) (Bradley & Terry, 1952), where the temperature T is
the group's (ir)rationality: T → 0 is a perfectly consistent annotator, large T a coin flip. Individual
users scatter around their group's weight vector, so per-user methods have something to personalize.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pluralign.errors import ConfigError
from pluralign.sandbox.attributes import ATTRIBUTES

Weights = Mapping[str, float]


@dataclass(frozen=True)
class Group:
    """A group of users: mean preference weights over `ATTRIBUTES` and a BT temperature."""

    name: str
    weights: dict[str, float]
    temperature: float = 0.2

    def __post_init__(self) -> None:
        # A NaN weight or temperature made every BT draw `random() < nan`, False: each label went to the second
        # response without a word. Unknown attributes and a temperature <= 0 failed only at the first label.
        try:
            self.vector()  # unknown attributes and weights that are not finite numbers
        except ConfigError as e:
            raise ConfigError(f"group '{self.name}': {e}", field="weights") from None
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"group '{self.name}': temperature must be a finite number > 0, got {self.temperature}",
                              field="temperature")

    def vector(self) -> np.ndarray:
        return weight_vector(self.weights)


@dataclass(frozen=True)
class User:
    """One simulated annotator; `id` looks like "g0-u3" (group index, user index within the group)."""

    id: str
    group: str
    weights: dict[str, float]
    temperature: float

    def vector(self) -> np.ndarray:
        return weight_vector(self.weights)


@dataclass(frozen=True)
class Population:
    """Named groups with population shares; `users()` draws the individual annotators reproducibly."""

    name: str
    groups: tuple[Group, ...]
    shares: tuple[float, ...]
    user_spread: float = 0.15  # std of each user's weight around the group's
    users_per_group: int = 8

    def __post_init__(self) -> None:
        if len(self.groups) != len(self.shares) or not self.groups:
            raise ConfigError(f"population '{self.name}': need one share per group")
        if any(s < 0 for s in self.shares) or not np.isclose(sum(self.shares), 1.0):
            raise ConfigError(f"population '{self.name}': shares must be non-negative and sum to 1")
        if len(set(self.group_names)) < len(self.groups):  # users of both were drawn as one group's
            raise ConfigError(f"population '{self.name}': group names must differ, got {self.group_names}")
        # users_per_group 0 was numpy's "high <= 0" at the first draw; a NaN spread gave every user NaN weights.
        if not (isinstance(self.users_per_group, (int, np.integer)) and self.users_per_group >= 1):
            raise ConfigError(f"population '{self.name}': users_per_group must be an integer >= 1, "
                              f"got {self.users_per_group!r}", field="users_per_group")
        if not (np.isfinite(self.user_spread) and self.user_spread >= 0):
            raise ConfigError(f"population '{self.name}': user_spread must be a finite number >= 0, "
                              f"got {self.user_spread}", field="user_spread")

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise ConfigError(f"population '{self.name}' has no group '{name}'; groups: {', '.join(self.group_names)}")

    @property
    def group_names(self) -> list[str]:
        return [g.name for g in self.groups]

    def users(self, seed: int = 0) -> list[User]:
        """`users_per_group` users per group, weights = group weights + N(0, user_spread²) per attribute."""
        rng = np.random.default_rng([seed, zlib.crc32(self.name.encode())])
        out = []
        for gi, g in enumerate(self.groups):
            for ui in range(self.users_per_group):
                noise = rng.normal(0.0, self.user_spread, size=len(ATTRIBUTES))
                w = {a: round(float(g.weights.get(a, 0.0) + e), 4) for a, e in zip(ATTRIBUTES, noise, strict=True)}
                out.append(User(f"g{gi}-u{ui}", g.name, w, g.temperature))
        return out

    def draw_users(self, n: int, rng: np.random.Generator, seed: int = 0,
                   groups: Sequence[str] | None = None) -> list[User]:
        """`n` annotators: a group by `shares` (renormalized over `groups` when given, e.g. to collect
        feedback from the minority alone, user ids unchanged), then a user of that group uniformly."""
        shares = self._shares(groups)
        users = self.users(seed)
        by_group = {g.name: [u for u in users if u.group == g.name] for g in self.groups}
        picked = rng.choice(len(self.groups), size=n, p=shares)
        within = rng.integers(0, self.users_per_group, size=n)
        return [by_group[self.groups[g].name][i] for g, i in zip(picked, within, strict=True)]

    def draw_panels(self, n_items: int, size: int, rng: np.random.Generator, seed: int = 0,
                    groups: Sequence[str] | None = None) -> list[User]:
        """`n_items` panels of `size` different annotators, panel after panel (n_items · size users): each
        member drawn as `draw_users` draws one, someone already on the panel drawn again. Several judges of
        one item are several people: drawn independently, one person judged about a fifth of the default
        population's items twice, their disagreement with themselves counted as people's. A panel of one
        is `draw_users`."""
        if size == 1:
            return self.draw_users(n_items, rng, seed, groups)
        shares = self._shares(groups)
        users = self.users(seed)
        p = np.array([shares[self.group_names.index(u.group)] / self.users_per_group for u in users])
        if np.count_nonzero(p) < size:
            raise ConfigError(f"population '{self.name}': panels of {size} different annotators, but "
                              f"{'groups ' + ', '.join(groups) if groups is not None else 'it'} has "
                              f"{np.count_nonzero(p)} users", field="judges_per_item")
        return [users[i] for _ in range(n_items) for i in rng.choice(len(users), size=size, replace=False, p=p)]

    def _shares(self, groups: Sequence[str] | None) -> np.ndarray:
        """The groups' shares renormalized over `groups` (all by default), others 0."""
        if isinstance(groups, str):  # read as its characters: "minority" was "no group 'm'"
            raise ConfigError(f"groups: expected a list of group names, got the text {groups!r}; write [{groups!r}]",
                              field="groups")
        chosen = list(groups) if groups is not None else self.group_names
        for name in chosen:
            self.group(name)  # raises on an unknown group
        shares = np.array([s if g.name in chosen else 0.0 for g, s in zip(self.groups, self.shares, strict=True)])
        if shares.sum() <= 0:
            raise ConfigError(f"population '{self.name}': groups {chosen} have no share")
        return shares / shares.sum()


def weight_vector(weights: Weights) -> np.ndarray:
    """Weights as a vector in `ATTRIBUTES` order (missing attributes weigh 0)."""
    unknown = set(weights) - set(ATTRIBUTES)
    if unknown:
        raise ConfigError(f"unknown attribute(s) {sorted(unknown)}; attributes: {', '.join(ATTRIBUTES)}")
    vector = np.array([float(weights.get(a, 0.0)) for a in ATTRIBUTES])
    if not np.isfinite(vector).all():  # else every utility is NaN: scores null, win rates all invalid, exit 0
        bad = {a: w for a, w in zip(ATTRIBUTES, vector.tolist(), strict=True) if not np.isfinite(w)}
        raise ConfigError(f"weights must be finite numbers, got {bad}")
    return vector


def utility(weights: Weights | np.ndarray, attribute_matrix: np.ndarray) -> np.ndarray:
    """Utility of each row of a gold-attribute matrix [N, A] (or one row [A]) under `weights`."""
    w = weights if isinstance(weights, np.ndarray) else weight_vector(weights)
    return np.asarray(attribute_matrix, dtype=np.float64) @ w


def preference_probability(u_a: np.ndarray | float, u_b: np.ndarray | float, temperature: float) -> np.ndarray:
    """Bradley–Terry P(a ≻ b) = σ((u_a − u_b) / T)."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    z = (np.asarray(u_a, dtype=np.float64) - np.asarray(u_b, dtype=np.float64)) / temperature
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = σ(z), without overflow for large |z|


# --- named populations -------------------------------------------------------------------------------
# The majority wants long, informative, upbeat answers; the minority wants short, formal ones. Their ideals
# sit on opposite ends of the informativeness/conciseness and positivity/formality trade-offs: on grammar
# responses their utilities correlate negatively (about -0.24) and they disagree on ~60% of pairs.
MAJORITY = Group("majority", {"relevance": 0.6, "informativeness": 1.2, "positivity": 0.6, "formality": -0.3,
                              "safety": 0.5, "compliance": 0.3}, temperature=0.2)
MINORITY = Group("minority", {"relevance": 0.6, "conciseness": 1.5, "formality": 1.0, "positivity": -0.3,
                              "informativeness": -0.3, "safety": 1.0, "compliance": 0.3}, temperature=0.2)
VERBOSE = Group("verbose", {"relevance": 0.6, "informativeness": 1.2, "conciseness": -0.5, "positivity": 0.3},
                temperature=0.15)
CONCISE = Group("concise", {"relevance": 0.6, "conciseness": 1.5, "informativeness": -0.4, "formality": 0.4},
                temperature=0.15)


@dataclass(frozen=True)
class _Spec:
    groups: tuple[Group, ...]
    shares: tuple[float, ...]
    extra: dict = field(default_factory=dict)


POPULATIONS: dict[str, _Spec] = {
    "default": _Spec((MAJORITY, MINORITY), (0.7, 0.3)),
    "two_groups": _Spec((VERBOSE, CONCISE), (0.5, 0.5)),
    "homogeneous": _Spec((MAJORITY,), (1.0,), {"user_spread": 0.05}),
    "diverse": _Spec((
        Group("enthusiasts", {"positivity": 1.0, "formality": -0.6, "informativeness": 0.5, "relevance": 0.5}, 0.2),
        Group("professionals", {"formality": 1.0, "informativeness": 1.0, "relevance": 1.0, "compliance": 0.5}, 0.2),
        Group("skimmers", {"conciseness": 1.5, "relevance": 1.0, "compliance": 0.5}, 0.25),
        Group("cautious", {"safety": 2.0, "relevance": 0.8, "positivity": 0.3}, 0.3),
    ), (0.4, 0.3, 0.2, 0.1)),
}


def population(name: str, *, user_spread: float | None = None, users_per_group: int | None = None) -> Population:
    """A named population: "default" (70% majority / 30% conflicting minority), "two_groups" (verbose vs
    concise, 50/50), "homogeneous" (one group), "diverse" (four groups of unequal size)."""
    if name not in POPULATIONS:
        raise ConfigError(f"unknown population '{name}'; choose one of: {', '.join(POPULATIONS)}")
    spec = POPULATIONS[name]
    kwargs = dict(spec.extra)
    if user_spread is not None:
        kwargs["user_spread"] = user_spread
    if users_per_group is not None:
        kwargs["users_per_group"] = users_per_group
    return Population(name, spec.groups, spec.shares, **kwargs)


get_population = population  # for modules whose argument named `population` shadows the function


def population_names() -> list[str]:
    """The names of the built-in populations, for `population(name)`."""
    return list(POPULATIONS)
