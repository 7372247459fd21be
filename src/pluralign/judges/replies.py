"""Reading an OpenAI-compatible chat-completions reply as the LLM judge needs it (its text, and the first
token's top log-probs in weighted mode), tolerantly: servers send ``message`` as an object or a string,
``content`` as a string or a list of parts, or a legacy ``text``. Anything the judge cannot use is a
`JudgeError`, never another exception."""

from __future__ import annotations

import math
from typing import Any

from pluralign.errors import PluralignError


class JudgeError(PluralignError):
    """The judge's reply cannot be used (malformed, too large, redirected elsewhere); names URL and cause."""


def _text(content: Any) -> str | None:
    """Message content as text: a string, or a list of parts (strings or ``{"type": "text", "text": …}``)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        # Non-text parts (images, tool calls) are objects without "text" and are skipped.
        parts = [p if isinstance(p, str) else p.get("text") if isinstance(p, dict) else 0 for p in content]
        if all(isinstance(p, str) or p is None for p in parts):
            return "".join(p for p in parts if p is not None)
    raise JudgeError(f"message content is neither text nor a list of text parts: {str(content)[:200]}")


def reply_parts(data: Any, weighted: bool) -> tuple[str | None, list[dict] | None]:
    """(text, first token's top log-probs) of a chat-completions reply, read tolerantly: ``message`` may be
    an object or a plain string, ``content`` a string or a list of parts, and a legacy ``text`` field
    stands in for a missing message. Anything the judge cannot use raises JudgeError."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise JudgeError(f"reply has no choices: {str(data)[:200]}")
    choice = choices[0]
    message = choice.get("message")
    if isinstance(message, dict):
        text = _text(message.get("content"))
    elif isinstance(message, str):
        text = message
    elif isinstance(choice.get("text"), str):
        text = choice["text"]
    else:
        raise JudgeError(f"reply has no message: {str(choice)[:200]}")
    if not weighted:
        return text, None
    try:
        top = choice["logprobs"]["content"][0]["top_logprobs"]
        entries = [(str(e["token"]), e["logprob"]) for e in top]
    except (KeyError, IndexError, TypeError):
        raise JudgeError("reply has no top_logprobs for its first token (mode='weighted' needs a server that "
                         f"returns logprobs): {str(choice)[:200]}") from None
    for token, logprob in entries:
        if isinstance(logprob, bool) or not isinstance(logprob, int | float) or math.isnan(logprob) or logprob > 1e-3:
            raise JudgeError(f"reply has a non-numeric or impossible log-prob {logprob!r} for token {token!r}")
    return text, [{"token": t, "logprob": lp} for t, lp in entries]
