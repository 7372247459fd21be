"""Conversions between kinds of feedback.

Lists and ratings become pairs (the form most preference losses take), ratings become lists (the listwise
losses'), ratings and pairs become thumbs up/down (the form KTO-style losses take). Who gave the feedback (`user`, `group`) and what it is
about (`objective`, `section`) are kept, so per-user and per-objective methods still see them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import combinations

from pluralign.data.records import (
    Binary,
    Demonstration,
    Judged,
    Pairwise,
    Ranked,
    Rated,
    Record,
    kind_of,
    text_key,
)
from pluralign.errors import PluralignError


def ranked_to_pairwise(records: Iterable[Ranked]) -> list[Pairwise]:
    """Every pair of responses whose scores (or ranks) differ, the better one as `chosen`.

    With scores the margin is the score difference. Ranks are ordinal — rank 1 vs 2 says nothing about
    how much better — so pairs from ranks alone carry no margin.
    """
    pairs = []
    for r in records:
        # Higher is better for both orderings; negating ranks turns "1 = best" into that order.
        values = r.scores if r.scores is not None else [-rank for rank in r.ranks]
        for i, j in combinations(range(len(r.responses)), 2):
            if values[i] == values[j] or r.responses[i] == r.responses[j]:
                continue
            better, worse = (i, j) if values[i] > values[j] else (j, i)
            margin = values[better] - values[worse] if r.scores is not None else None
            pairs.append(
                Pairwise(
                    r.prompt,
                    r.responses[better],
                    r.responses[worse],
                    margin,
                    r.user,
                    r.group,
                    r.objective,
                    r.section,
                    r.meta,
                )
            )
    return pairs


def pairs_of_lists(records: Sequence[Ranked], source: str, use: str) -> list[Pairwise]:
    """`ranked_to_pairwise` for a consumer of pairs (`use`: "train on", "evaluate"): a source whose every list
    ties gives no pair, which is its error, not an empty result (an accuracy of nan, an empty training set)."""
    pairs = ranked_to_pairwise(records)
    if records and not pairs:
        raise PluralignError(f"{source}: its ranked lists give no pairs to {use} (the responses of each tie)")
    return pairs


def rated_to_pairwise(
    records: Iterable[Rated], objective: str | None = None, weights: Mapping[str, float] | None = None
) -> list[Pairwise]:
    """Pairs of rated responses to the same prompt from the same user (and group), ordered by one
    objective or by a weighted sum of objectives; margin = the utility difference. Ties are skipped, and so
    are records that do not rate the one objective (masked ratings say nothing of it)."""
    records = list(records)
    if not records:
        return []
    weights, objective = rating_weights(records, objective, weights)
    records = rated_on(records, weights)
    pairs = []
    for same_prompt in _by_prompt_and_user(records).values():
        for a, b in combinations(same_prompt, 2):
            ua, ub = _utility(a, weights), _utility(b, weights)
            if ua == ub or a.response == b.response:
                continue
            better, worse = (a, b) if ua > ub else (b, a)
            pairs.append(
                Pairwise(
                    a.prompt,
                    better.response,
                    worse.response,
                    abs(ua - ub),
                    a.user,
                    a.group,
                    objective,
                    a.section,
                )
            )
    return pairs


def rated_to_ranked(
    records: Iterable[Rated], objective: str | None = None, weights: Mapping[str, float] | None = None
) -> list[Ranked]:
    """One list per prompt and user (and group): the rated responses to it, scored by one objective or a
    weighted sum (the listwise losses' data, e.g. LiPO's, from UltraFeedback's four rated completions). A
    prompt with a single distinct response says nothing about order and gives no list (nor does a response
    whose record does not rate the one objective)."""
    records = list(records)
    if not records:
        return []
    weights, objective = rating_weights(records, objective, weights)
    records = rated_on(records, weights)
    lists = []
    for same in _by_prompt_and_user(records).values():
        first: dict[str, Rated] = {}
        for r in same:  # a response rated twice counts once (its first rating), as pairs skip identical responses
            first.setdefault(text_key(r.response), r)
        if len(first) < 2:
            continue
        kept = list(first.values())
        a = kept[0]
        lists.append(Ranked(a.prompt, [r.response for r in kept], [_utility(r, weights) for r in kept], None,
                            a.user, a.group, objective, a.section))
    return lists


def rated_to_binary(
    records: Iterable[Rated],
    threshold: float,
    objective: str | None = None,
    weights: Mapping[str, float] | None = None,
) -> list[Binary]:
    """Thumbs up when the rating (one objective, or a weighted sum) is at least `threshold`; a response not
    rated on the one objective gets no thumb."""
    records = list(records)
    if not records:
        return []
    weights, objective = rating_weights(records, objective, weights)
    return [
        Binary(
            r.prompt,
            r.response,
            _utility(r, weights) >= threshold,
            r.user,
            r.group,
            objective,
            r.section,
            r.meta,
        )
        for r in rated_on(records, weights)
    ]


def pairwise_to_binary(records: Iterable[Pairwise]) -> list[Binary]:
    """Each pair gives a thumbs up to `chosen` and a thumbs down to `rejected` (the margin is dropped)."""
    out = []
    for p in records:
        for response, label in ((p.chosen, True), (p.rejected, False)):
            out.append(Binary(p.prompt, response, label, p.user, p.group, p.objective, p.section, p.meta))
    return out


def rating_weights(
    records: Sequence[Rated], objective: str | None = None, weights: Mapping[str, float] | None = None
) -> tuple[dict[str, float], str | None]:
    """The weights scoring a rated record, and the objective they stand for (None for a mix).

    One objective is the weights ``{objective: 1}``. With neither given, records that rate a single
    objective use it; otherwise the choice is the user's.
    """
    if objective is not None and weights is not None:
        raise PluralignError("give an objective or weights, not both")
    rated = sorted({k for r in records for k in r.ratings})
    if weights is None:
        if objective is None and len(rated) != 1:
            raise PluralignError(f"the ratings cover objectives {rated}; choose one or give weights")
        objective = objective or rated[0]
        weights = {objective: 1.0}
    bad = {k: w for k, w in weights.items() if not (isinstance(w, int | float) and math.isfinite(w))}
    if bad:
        raise PluralignError(f"weights must be finite numbers, got {bad}")
    missing = sorted(set(weights) - set(rated))
    if missing:
        raise PluralignError(
            f"no ratings for objective(s) {', '.join(missing)}; the ratings cover {', '.join(rated)}"
        )
    return dict(weights), objective


def rated_on(records: Sequence[Rated], weights: Mapping[str, float]) -> list[Rated]:
    """The records that rate the one objective `weights` score by (all of them for a weighted sum: a record
    missing one of its objectives cannot be scored, and `_utility` says so). With masked ratings, pairing,
    listing or thumbing a record that does not rate the objective failed the whole conversion."""
    if len(weights) != 1:
        return list(records)
    (name,) = weights
    return [r for r in records if name in r.ratings]


def _utility(record: Rated, weights: Mapping[str, float]) -> float:
    try:
        value = sum(w * record.ratings[k] for k, w in weights.items())
    except KeyError as e:
        raise PluralignError(f"a rated record has no rating for {e.args[0]!r}: {record.ratings}") from None
    if not math.isfinite(value):  # finite ratings and weights whose weighted sum overflows
        raise PluralignError(f"the weighted rating {value} of {record.ratings} with weights {dict(weights)} "
                             "is not finite; scale the weights down")
    return value


def _by_prompt_and_user(records: Iterable[Rated]) -> dict[tuple, list[Rated]]:
    groups: dict[tuple, list[Rated]] = {}
    for r in records:
        key = (text_key(r.prompt), r.user, r.group)
        groups.setdefault(key, []).append(r)
    return groups


# (from kind, to kind) -> converter taking (records, objective, weights, threshold).
def judged_to_binary(records: Iterable[Judged]) -> list[Binary]:
    """A written judgment's polarity as a thumbs-up or -down (the judgment's text kept in ``meta``)."""
    return [Binary(r.prompt, r.response, r.polarity == "positive", r.user, r.group, r.objective, r.section,
                   {**(r.meta or {}), "judgment": r.judgment}) for r in records]


def to_demonstrations(records: Iterable[Pairwise | Binary | Ranked]) -> list[Demonstration]:
    """The responses feedback prefers, as supervised fine-tuning data (an SFT step on the preferred answers
    before preference training): each pair's `chosen`, each thumbs-up response, each ranked list's best
    (a list whose responses all tie has none). A response preferred in several records is kept once."""
    out, seen = [], set()
    for r in records:
        if isinstance(r, Pairwise):
            best = [r.chosen]
        elif isinstance(r, Binary):
            best = [r.response] if r.label else []
        else:
            values = r.scores if r.scores is not None else [-rank for rank in r.ranks]
            top = max(values)
            best = [] if min(values) == top else [r.responses[values.index(top)]]
        for response in best:
            key = (repr(r.prompt), repr(response), r.user, r.group)
            if key not in seen:
                seen.add(key)
                out.append(Demonstration(r.prompt, response, r.user, r.group, r.objective, r.section, r.meta))
    return out


_CONVERSIONS: dict[tuple[str, str], Callable[..., list[Record]]] = {
    ("ranked", "pairwise"): lambda rs, o, w, t: ranked_to_pairwise(rs),
    ("rated", "pairwise"): lambda rs, o, w, t: rated_to_pairwise(rs, o, w),
    ("rated", "ranked"): lambda rs, o, w, t: rated_to_ranked(rs, o, w),
    ("rated", "binary"): lambda rs, o, w, t: rated_to_binary(rs, _required(t, "threshold"), o, w),
    ("pairwise", "binary"): lambda rs, o, w, t: pairwise_to_binary(rs),
    ("judged", "binary"): lambda rs, o, w, t: judged_to_binary(rs),
    ("judged", "demonstration"): lambda rs, o, w, t: to_demonstrations(judged_to_binary(rs)),
    ("pairwise", "demonstration"): lambda rs, o, w, t: to_demonstrations(rs),
    ("binary", "demonstration"): lambda rs, o, w, t: to_demonstrations(rs),
    ("ranked", "demonstration"): lambda rs, o, w, t: to_demonstrations(rs),
    ("rated", "demonstration"): lambda rs, o, w, t: to_demonstrations(rated_to_ranked(rs, o, w)),
}


# The options each conversion reads; any other one given would be dropped without a word.
_RATED_OPTIONS = {"objective", "weights"}
_OPTIONS: dict[tuple[str, str], set[str]] = {
    ("rated", "pairwise"): _RATED_OPTIONS,
    ("rated", "ranked"): _RATED_OPTIONS,
    ("rated", "binary"): _RATED_OPTIONS | {"threshold"},
    ("rated", "demonstration"): _RATED_OPTIONS,
}


def _unread_options(source: str, to: str, given: Mapping[str, object]) -> str | None:
    """Why options were given that converting `source` to `to` does not read, or None."""
    reads = sorted(_OPTIONS.get((source, to), ()))
    unread = sorted(name for name, value in given.items() if value is not None and name not in reads)
    if not unread:
        return None
    what = f"keeping {source} records as they are" if source == to else f"converting {source} to {to}"
    if source == to:
        why = "nothing is converted; name the kind to convert to"
    elif reads:
        why = f"it reads only {' and '.join(reads)}"
    else:
        why = "only rated records are ordered by an objective, weights or a threshold"
    return f"{what} reads no {' or '.join(unread)}: {why}"


def _required(value: float | None, name: str) -> float:
    if value is None:
        raise PluralignError(f"this conversion needs a {name}")
    if not math.isfinite(value):
        raise PluralignError(f"the {name} must be a finite number, got {value}")
    return value


def convert(
    records: Sequence[Record],
    to: str,
    *,
    objective: str | None = None,
    weights: Mapping[str, float] | None = None,
    threshold: float | None = None,
) -> list[Record]:
    """Convert records of one kind to kind `to` (records already of that kind are returned as they are)."""
    kinds = {kind_of(r) for r in records}
    if len(kinds) > 1:
        raise PluralignError(f"cannot convert records of several kinds at once ({', '.join(sorted(kinds))})")
    source = kinds.pop() if kinds else to
    if why := _unread_options(source, to, {"objective": objective, "weights": weights, "threshold": threshold}):
        raise PluralignError(why)
    if source == to:
        return list(records)
    if source == "demonstration":
        raise PluralignError(f"demonstrations (prompt and reply, no verdict) cannot become {to} feedback: "
                             "imitate them with `pluralign train sft`, or add chosen/rejected, a label, or ratings (a "
                             "`ratings` object or one `ratings.<objective>` column per objective)")
    if (source, to) not in _CONVERSIONS:
        known = ", ".join(f"{a} -> {b}" for a, b in _CONVERSIONS)
        raise PluralignError(f"cannot convert {source} to {to}; supported: {known}")
    return _CONVERSIONS[(source, to)](records, objective, weights, threshold)
