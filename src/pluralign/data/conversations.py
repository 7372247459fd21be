"""Whole conversations in public data, read as a prompt and its reply.

Hub data sets often store a chat as one list of messages instead of a prompt and a reply:

- SFT rows ``{"messages": [...]}`` (TRL's conversational form): the last message, the assistant's, is the
  response; the turns before it are the prompt (earlier assistant turns stay in it as history). A `prompt`
  beside it that repeats how the conversation opens (UltraChat, No Robots) adds nothing; one that does not
  is an error of the row.
- Preference rows whose `chosen` / `rejected` hold the whole conversation, prompt turns included
  (UltraFeedback-binarized, which also has a `prompt`; Anthropic HH in TRL's form, which has none): the
  prompt's turns are cut from the start of each reply (and of each of a ranked list's `responses`).
  Without a `prompt`, the turns that chosen and rejected share, up to the last non-assistant one, are the
  prompt (TRL's "implicit prompt").
- Anthropic HH as published (``Anthropic/hh-rlhf``): `chosen` / `rejected` are each one text, the turns
  marked ``"\n\nHuman: "`` and ``"\n\nAssistant: "``, and no `prompt`; they are read as those messages,
  then as above. Beside a `prompt` column (text, or the same turns ending in ``"\n\nAssistant:"``) they
  are read alike, and lose the prompt's turns.

Read as they are, such rows would train on the user's turn as if it were the reply. A reply that still
holds a non-assistant turn afterwards is an error of its row (`reply_role_issues`), never trained on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

REPLY_FIELDS = ("chosen", "rejected", "response")
_HAS_REPLIES = (*REPLY_FIELDS, "responses")  # a row with its own replies is no `messages` conversation


def list_of(value: Any) -> list | None:
    """`value` as a list: itself, or the list its JSON text holds (how a table's cell stores one), else None."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # not JSON (or unusable JSON): plain text
            return None
    return value if isinstance(value, list) else None


def messages_of(value: Any) -> list[dict] | None:
    """`value` as a list of chat messages (a tabular cell holds them as JSON text), else None."""
    value = list_of(value)
    if value and all(isinstance(m, Mapping) for m in value):
        return value
    return None


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def transcript_messages(value: Any) -> list[dict] | None:
    """A dialogue stored as one text in Anthropic HH's form ("\n\nHuman: ...\n\nAssistant: ...") as chat
    messages, else None. Read as plain text it would be one reply holding both sides of the conversation."""
    if not isinstance(value, str) or not value.lstrip().startswith("Human:"):
        return None
    parts = _HH_TURN.split("\n\n" + value.lstrip())
    return [{"role": _HH_ROLES[role], "content": text} for role, text in zip(parts[1::2], parts[2::2], strict=True)]


def _transcript_prompt(value: Any) -> list[dict] | None:
    """A prompt in HH's form as chat messages, without the empty "Assistant:" turn it ends on (the cue for
    the reply, which the chat template's generation prompt stands for), else None."""
    messages = transcript_messages(value)
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"].strip():
        messages = messages[:-1]
    return messages or None


def _turn(message: Mapping) -> tuple[Any, Any]:
    return message.get("role"), message.get("content")


def _prompt_turns(prompt: Any) -> list[dict] | None:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return messages_of(prompt)


def _opens_with_prompt(row: Mapping[str, Any]) -> bool:
    """Whether a `messages` row's `prompt`, if it has one, is how the conversation opens (after its system
    turns): UltraChat and No Robots repeat the first user turn as `prompt`, which says nothing more."""
    if row.get("prompt") is None:
        return True
    messages, turns = messages_of(row["messages"]), _prompt_turns(row["prompt"])
    if not messages or not turns:
        return False
    start = 0
    while turns[0].get("role") != "system" and start < len(messages) and messages[start].get("role") == "system":
        start += 1
    return [_turn(m) for m in messages[start:start + len(turns)]] == [_turn(m) for m in turns]


def shared_turns(a: list[dict], b: list[dict]) -> int:
    """How many turns two conversations open with alike."""
    n = 0
    while n < min(len(a), len(b)) and _turn(a[n]) == _turn(b[n]):
        n += 1
    return n


def shared_prompt(chosen: list[dict], rejected: list[dict]) -> list[dict]:
    """The turns chosen and rejected share, cut after the last non-assistant one (the reply starts there)."""
    n = shared_turns(chosen, rejected)
    while n and chosen[n - 1].get("role") == "assistant":
        n -= 1
    return chosen[:n]


def split_conversations(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """`row` with a `messages` conversation split into prompt and response, and the prompt's turns cut
    from the start of replies that repeat them; any other row unchanged."""
    if "messages" in row and not any(k in row for k in _HAS_REPLIES) and _opens_with_prompt(row):
        messages = messages_of(row["messages"])
        if messages and messages[-1].get("role") == "assistant" and len(messages) > 1:
            rest = {k: v for k, v in row.items() if k not in ("messages", "prompt")}
            return {**rest, "prompt": messages[:-1], "response": [messages[-1]]}
        return row
    transcripts = {f: transcript_messages(row.get(f)) for f in ("chosen", "rejected")}
    if all(transcripts.values()):  # beside a prompt too: read as text, each reply held the prompt's turns
        row = {**row, **transcripts}
        if prompt_turns := _transcript_prompt(row.get("prompt")):
            row["prompt"] = prompt_turns
    replies = {f: messages_of(row.get(f)) for f in REPLY_FIELDS}
    listed = [messages_of(r) for r in list_of(row.get("responses")) or []]  # a ranked list's replies
    if not any(m and m[0].get("role") != "assistant" for m in [*replies.values(), *listed]):
        return row  # replies are text or assistant turns only: the usual form
    out = dict(row)
    prompt = _prompt_turns(row.get("prompt"))
    if row.get("prompt") is None and replies["chosen"] and replies["rejected"]:
        prompt = shared_prompt(replies["chosen"], replies["rejected"]) or None
        if prompt:
            out["prompt"] = prompt
    if prompt:
        for name, reply in replies.items():
            if _repeats(reply, prompt):
                out[name] = reply[len(prompt):]
        if any(_repeats(reply, prompt) for reply in listed):
            given = list_of(row["responses"])
            out["responses"] = [m[len(prompt):] if _repeats(m, prompt) else r for r, m in zip(given, listed, strict=True)]
    return out


def _repeats(reply: list[dict] | None, prompt: list[dict]) -> bool:
    """Whether a reply given as messages starts with the prompt's turns, and goes on after them."""
    return bool(reply) and len(reply) > len(prompt) and [_turn(m) for m in reply[:len(prompt)]] == [_turn(m) for m in prompt]


def conversation_issues(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Why a `messages` row was left unsplit (`split_conversations`), at its own field: otherwise it is
    refused for the `prompt` and `response` it never had, which says nothing of what to change."""
    if "messages" not in row or any(k in row for k in _HAS_REPLIES):
        return []
    messages = messages_of(row["messages"])
    if messages is None:
        return [("messages", "expected a list of chat messages, each an object with 'role' and 'content'")]
    if not _opens_with_prompt(row):
        return [("prompt", "the conversation in messages does not open with this prompt: give the conversation "
                           "alone, or a prompt and its reply")]
    if len(messages) < 2:
        return [("messages", f"a conversation needs the turns before the reply and the reply, got {len(messages)} "
                             "message(s)")]
    last = len(messages) - 1
    return [(f"messages[{last}].role", f"a conversation ends with the assistant's reply, this one with a "
                                       f"{messages[last].get('role')!r} turn")]


def reply_role_issues(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A reply given as messages (a ranked list's too) holds the assistant's turns only; name any other turn."""
    issues = []
    named = [(name, values.get(name)) for name in REPLY_FIELDS]
    named += [(f"responses[{i}]", reply) for i, reply in enumerate(values.get("responses") or [])]
    for name, reply in named:
        if not isinstance(reply, list):
            continue
        for i, message in enumerate(reply):
            if message.get("role") != "assistant":
                issues.append((f"{name}[{i}].role", f"a reply holds the assistant's turns only, this one a "
                                                    f"{message.get('role')!r} turn: give the turns before the "
                                                    "reply as the prompt"))
                break
    return issues
