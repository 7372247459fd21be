"""Typed records for every kind of human (or simulated) feedback.

A record is one unit of feedback on one prompt (or, for a `Demonstration`, one reply to imitate). Prompts and responses are `Text`: plain text, or a chat
conversation as a list of ``{"role": ..., "content": ...}`` messages (roles ``system``, ``user``,
``assistant``; a prompt ends with the user's turn, a response is the assistant's reply as text or as
assistant messages). In a JSONL row::

    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}],
     "chosen": "5.", "rejected": "Let me think about that at length..."}

Every consumer renders a prompt through `pluralign.data.prompts` (the model's chat template; the
``chat_template: auto|always|never`` option decides whether plain text goes through it too), and reward
sources and judges receive the conversation itself, never ``str(prompt)``. Every record may name the `user`
who gave the feedback, the user's `group`, the `objective` it speaks to (e.g. "helpfulness"), a free
`section` label (a split or a category) and `meta`, which keeps any extra fields of the source row.

The field names are the JSON field names; `pluralign.data.io` reads and writes them and
`pluralign.data.validate` checks them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Text = str | list[dict[str, Any]]  # plain text, or chat messages [{"role": ..., "content": ...}, ...]


@dataclass
class Pairwise:
    """`chosen` is preferred over `rejected`; `margin` (≥ 0) says by how much, when known."""

    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None
    user: str | None = None
    group: str | None = None
    objective: str | None = None
    section: str | None = None
    meta: dict[str, Any] | None = None


@dataclass
class Ranked:
    """Several responses to one prompt, ordered by `scores` (higher is better) or `ranks` (1 = best)."""

    prompt: Text
    responses: list[Text]
    scores: list[float] | None = None
    ranks: list[int] | None = None
    user: str | None = None
    group: str | None = None
    objective: str | None = None
    section: str | None = None
    meta: dict[str, Any] | None = None


@dataclass
class Binary:
    """A thumbs-up (`label=True`) or thumbs-down (`label=False`) on a single response."""

    prompt: Text
    response: Text
    label: bool
    user: str | None = None
    group: str | None = None
    objective: str | None = None
    section: str | None = None
    meta: dict[str, Any] | None = None


@dataclass
class Rated:
    """Numeric ratings of one response on one or more objectives, e.g. ``{"helpful": 4, "safe": 5}``."""

    prompt: Text
    response: Text
    ratings: dict[str, float]
    user: str | None = None
    group: str | None = None
    section: str | None = None
    meta: dict[str, Any] | None = None


@dataclass
class Judged:
    """A written judgment of one response, with its `polarity` ("positive" or "negative")."""

    prompt: Text
    response: Text
    judgment: str
    polarity: Literal["positive", "negative"]
    user: str | None = None
    group: str | None = None
    objective: str | None = None
    section: str | None = None
    meta: dict[str, Any] | None = None


@dataclass
class Demonstration:
    """A response to imitate (supervised fine-tuning data): a prompt and its reply, with no verdict."""

    prompt: Text
    response: Text
    user: str | None = None
    group: str | None = None
    objective: str | None = None
    section: str | None = None
    meta: dict[str, Any] | None = None


Record = Pairwise | Ranked | Binary | Rated | Judged | Demonstration

KINDS: dict[str, type[Record]] = {
    "pairwise": Pairwise,
    "ranked": Ranked,
    "binary": Binary,
    "rated": Rated,
    "judged": Judged,
    "demonstration": Demonstration,
}


def kind_of(record: Record) -> str:
    """The kind name ("pairwise", …) of a record."""
    for name, cls in KINDS.items():
        if type(record) is cls:
            return name
    raise TypeError(f"not a pluralign record: {type(record).__name__}")


def text_key(text: Text) -> str:
    """A hashable key of a `Text`, equal for equal texts (plain text as it is, messages as sorted JSON)."""
    return text if isinstance(text, str) else json.dumps(text, sort_keys=True)


def text_content(text: Text) -> str:
    """The words of a `Text`: itself when plain, the messages' contents joined by newlines when chat."""
    if isinstance(text, str):
        return text
    return "\n".join(str(m.get("content") or "") for m in text)
