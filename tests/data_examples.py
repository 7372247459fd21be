"""Example records of every kind, shared by the data tests (not a test module).

The texts are chosen to stress the formats: chat messages, commas, quotes and newlines (CSV), non-ASCII,
and plain text that starts with "[" (which must not be mistaken for JSON-encoded chat messages).
"""

from __future__ import annotations

import json
from pathlib import Path

from pluralign.data.records import Binary, Demonstration, Judged, Pairwise, Ranked, Rated, Record

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour, please."}]
REPLY = [{"role": "assistant", "content": "Blue."}]


def examples() -> dict[str, list[Record]]:
    """Three records per kind, each with plain-text and chat forms and optional fields set and unset."""
    return {
        "pairwise": [
            Pairwise(
                "Say hi", 'Hello, "friend"!', "Go away.", 1.5, "u1", "g1", "polite", "train", {"src": "a"}
            ),
            Pairwise(CHAT, REPLY, "I won't.\nNo.", user="u2"),
            Pairwise("[draft] café ☕", "[1, 2]", "nope", margin=0.0),
        ],
        "ranked": [
            Ranked("Pick one", ["a b", "c", "d e f"], scores=[0.5, 2.0, -1.0], user="u1"),
            Ranked(CHAT, [REPLY, "Red, obviously."], ranks=[2, 1], group="g2", section="test"),
            Ranked(
                "x, y", ["one", "two"], scores=[1.0, 0.0], ranks=[1, 2], objective="fun", meta={"k": [1, 2]}
            ),
        ],
        "binary": [
            Binary("q", "good answer", True, user="u1"),
            Binary(CHAT, REPLY, False, objective="safe", group="g1"),
            Binary("q2", "meh", False, meta={"source": "x"}),
        ],
        "rated": [
            Rated("q", "r1", {"helpful": 4.0, "safe": 5.0}, user="u1"),
            Rated(CHAT, REPLY, {"helpful": 1.0, "safe": 2.5}, group="g1"),
            Rated("q", "r3", {"helpful": -0.5, "safe": 0.0}, meta={"note": 'x, "quoted"\nsecond line'}),
        ],
        "judged": [
            Judged("q", "r", "Clear and kind.", "positive", user="u1"),
            Judged(CHAT, REPLY, "Rude.", "negative", objective="polite"),
            Judged("q3", "r3", "Fine, I guess", "positive", section="dev"),
        ],
        "demonstration": [
            Demonstration("q", "a, \"quoted\"\nanswer", user="u1"),
            Demonstration(CHAT, REPLY, objective="brief", group="g1"),
            Demonstration("[draft] café ☕", "[1, 2]", section="train", meta={"id": 3}),
        ],
    }


def write_jsonl(path: Path, lines: list) -> Path:
    """Write JSON lines; a `str` item is written verbatim (to plant malformed lines)."""
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8"
    )
    return path
