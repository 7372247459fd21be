"""A summary of a feedback set: how much of each kind, from whom, about what, and how long.

Lengths are counted in characters and whitespace-separated words, so the summary needs no tokenizer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from pluralign.data.records import (
    Binary,
    Demonstration,
    Judged,
    Pairwise,
    Ranked,
    Rated,
    Record,
    Text,
    kind_of,
    text_content,
    text_key,
)

PERCENTILES = (50, 90, 99)
TOP = 10  # how many users / groups / objectives the text summary names


def summary(records: Sequence[Record]) -> dict[str, Any]:
    """Counts per kind, user, group and objective; length percentiles; and per-kind details."""
    return {
        "records": len(records),
        "kinds": _counts(kind_of(r) for r in records),
        "users": _counts(r.user for r in records if r.user is not None),
        "groups": _counts(r.group for r in records if r.group is not None),
        "objectives": _counts(o for r in records for o in _objectives(r)),
        "lengths": {
            "prompt": _lengths(r.prompt for r in records),
            "response": _lengths(t for r in records for t in _responses(r)),
        },
        "details": _details(records),
    }


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(Counter(values).most_common())


def _objectives(record: Record) -> list[str]:
    if isinstance(record, Rated):
        return list(record.ratings)
    return [record.objective] if record.objective is not None else []


def _responses(record: Record) -> list[Text]:
    if isinstance(record, Pairwise):
        return [record.chosen, record.rejected]
    if isinstance(record, Ranked):
        return list(record.responses)
    return [record.response]


def _lengths(texts: Iterable[Text]) -> dict[str, dict[str, float]]:
    contents = [text_content(t) for t in texts]
    return {
        "chars": _percentiles([len(c) for c in contents]),
        "words": _percentiles([len(c.split()) for c in contents]),
    }


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    import numpy as np  # here, not at the top: `pluralign data validate` should not pay for numpy

    return {f"p{q}": float(v) for q, v in zip(PERCENTILES, np.percentile(values, PERCENTILES), strict=True)}


def _spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {"mean": sum(values) / len(values), "min": float(min(values)), "max": float(max(values))}


def _details(records: Sequence[Record]) -> dict[str, dict[str, Any]]:
    """Per-kind facts: margins of pairs, list sizes, label and polarity balance, rating spreads, how many
    demonstrations are conversations (and how many of those go on from earlier assistant turns)."""
    details: dict[str, dict[str, Any]] = {}
    pairs = [r for r in records if isinstance(r, Pairwise)]
    if pairs:
        margins = [p.margin for p in pairs if p.margin is not None]
        details["pairwise"] = {"with_margin": len(margins), "margin": _spread(margins), **disagreement(pairs)}
    lists = [r for r in records if isinstance(r, Ranked)]
    if lists:
        details["ranked"] = {
            "responses_per_prompt": _spread([len(r.responses) for r in lists]),
            "by_scores": sum(r.scores is not None for r in lists),
            "by_ranks": sum(r.scores is None for r in lists),
        }
    labels = [r.label for r in records if isinstance(r, Binary)]
    if labels:
        details["binary"] = {"positive": sum(labels), "negative": len(labels) - sum(labels)}
    polarities = [r.polarity for r in records if isinstance(r, Judged)]
    if polarities:
        details["judged"] = {
            "positive": polarities.count("positive"),
            "negative": polarities.count("negative"),
        }
    demos = [r for r in records if isinstance(r, Demonstration)]
    if demos:
        chats = [r.prompt for r in demos if isinstance(r.prompt, list)]
        details["demonstration"] = {
            "chat_prompts": len(chats),
            "multi_turn": sum(any(m.get("role") == "assistant" for m in c) for c in chats),
        }
    rated = [r for r in records if isinstance(r, Rated)]
    if rated:
        objectives = sorted({k for r in rated for k in r.ratings})
        details["rated"] = {
            "ratings": {o: _spread([r.ratings[o] for r in rated if o in r.ratings]) for o in objectives},
            **rater_spread(rated, objectives),
        }
    return details


def disagreement(pairs: Sequence[Pairwise]) -> dict[str, Any]:
    """How much the people behind the pairs disagree, where the data can tell: among the pairs of responses
    judged more than once (the same prompt, the same two responses, the same objective), the share whose
    verdicts are split and the share of verdicts against each pair's majority; and, for pairs judged by
    more than one group, each with a majority (a group split evenly has none, and says nothing of how the
    groups differ; such pairs are counted apart), the share on which the groups' majorities differ. Empty
    when no pair is judged twice."""
    verdicts: dict[tuple, list[tuple[str, str | None]]] = {}
    for p in pairs:
        chosen, rejected = text_key(p.chosen), text_key(p.rejected)
        verdicts.setdefault((text_key(p.prompt), frozenset((chosen, rejected)), p.objective), []).append((chosen, p.group))
    repeated = [v for v in verdicts.values() if len(v) > 1]
    if not repeated:
        return {}
    out: dict[str, Any] = {
        "judged_more_than_once": len(repeated),
        "split_verdicts": sum(len({w for w, _ in v}) > 1 for v in repeated) / len(repeated),
        "verdicts_against_majority": sum(len(v) - Counter(w for w, _ in v).most_common(1)[0][1] for v in repeated)
        / sum(len(v) for v in repeated),
    }
    # each group's majority verdict on each pair judged by several groups
    majorities, tied = [], 0
    for v in repeated:
        by_group: dict[str, Counter] = {}
        for winner, group in v:
            if group is not None:
                by_group.setdefault(group, Counter())[winner] += 1
        if len(by_group) < 2:
            continue
        tops = [c.most_common(2) for c in by_group.values()]
        if any(len(t) > 1 and t[0][1] == t[1][1] for t in tops):
            tied += 1
            continue
        majorities.append(len({t[0][0] for t in tops}) > 1)
    if majorities or tied:
        out["judged_by_several_groups"] = len(majorities) + tied
        out["a_group_split_evenly"] = tied
    if majorities:
        out["group_majorities_differ"] = sum(majorities) / len(majorities)
    return out


def rater_spread(rated: Sequence[Rated], objectives: Sequence[str]) -> dict[str, Any]:
    """Where one response is rated more than once (the same prompt and response), how far its raters
    disagree: per objective, the mean over such responses of their ratings' standard deviation. Empty
    when no response is rated twice."""
    ratings: dict[tuple[str, str], list[Rated]] = {}
    for r in rated:
        ratings.setdefault((text_key(r.prompt), text_key(r.response)), []).append(r)
    repeated = [rs for rs in ratings.values() if len(rs) > 1]
    if not repeated:
        return {}
    import numpy as np

    spread = {o: float(np.mean([np.std([r.ratings[o] for r in rs]) for rs in repeated])) for o in objectives}
    return {"rated_more_than_once": len(repeated), "rater_spread": spread}


def format_summary(stats: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    lines = [f"records: {stats['records']} ({_named(stats['kinds'])})"]
    for name in ("users", "groups", "objectives"):
        counts = stats[name]
        lines.append(f"{name}: {len(counts)} distinct" + (f"; {_named(counts)}" if counts else ""))
    lines.append(f"{'lengths':<16}" + "".join(f"{'p' + str(q):>9}" for q in PERCENTILES))
    for part, by_unit in stats["lengths"].items():
        for unit, values in by_unit.items():
            lines.append(
                f"  {part + ' ' + unit:<14}"
                + "".join(f"{values.get(f'p{q}', float('nan')):>9.1f}" for q in PERCENTILES)
            )
    for kind, facts in stats["details"].items():
        lines.append(f"{kind}: " + ", ".join(f"{k} {_fact(v)}" for k, v in facts.items() if v != {}))  # no margins: none shown
    return "\n".join(lines)


def _named(counts: dict[str, int]) -> str:
    shown = ", ".join(f"{k} {n}" for k, n in list(counts.items())[:TOP])
    return shown + (f", … {len(counts) - TOP} more" if len(counts) > TOP else "")


def _fact(value: Any) -> str:
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k} {_fact(v)}" for k, v in value.items()) + ")"
    return f"{value:.3g}" if isinstance(value, float) else str(value)
