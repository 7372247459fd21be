"""Token log-probabilities in OpenAI's reply formats.

A choice reports one entry per token of its text: the token as the text it adds, its log-prob under the
model (log-softmax of the raw logits, before temperature or top-p, as vLLM reports them by default) and,
when asked, the most likely alternatives at that step. Chat completions use ``logprobs.content``
(``token``, ``logprob``, ``bytes``, ``top_logprobs``); legacy completions ``tokens`` / ``token_logprobs`` /
``top_logprobs`` / ``text_offset``.

A token's text is what it adds to the decoded text of the tokens generated before it, so the pieces join
into the choice's text (an alternative's, what it would add after the few tokens before it). Tokens past
the text — the end-of-sequence token, a matched stop string — are not reported.
"""

from __future__ import annotations

from typing import Any

CONTEXT = 4  # generated tokens of left context an alternative's text is decoded after


def token_text(tokenizer: Any, context: list[int], before: str, token: int) -> str:
    """The text `token` adds after `context` (whose decoded text is `before`)."""
    after = tokenizer.decode([*context, token], skip_special_tokens=True)
    return after[len(before):] if after.startswith(before) else tokenizer.decode([token], skip_special_tokens=True)


def reported_tokens(tokenizer: Any, ids: list[int], text: str, start: int = 0, before: str = "") -> list[tuple[int, str]]:
    """(position, text piece) of the generated tokens that make up `text`, in order: each piece is what
    the token adds to the decoded text of the tokens before it, so the pieces join into `text`. From
    position `start` on, when the tokens before it decode to `before` (how a stream goes on)."""
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    out = []
    for t in range(start, len(ids)):
        if ids[t] in special:
            break
        after = tokenizer.decode(ids[:t + 1], skip_special_tokens=True)
        if not text.startswith(after):
            # A token holding only some bytes of a character decodes to U+FFFD, which the text does not
            # have once a later token completes the character: it adds nothing, and the completing token
            # adds the whole character (without this the pieces stopped at the first CJK or emoji
            # character, one of them a stray U+FFFD). The last token waits: its character may still come.
            after = after.rstrip("\ufffd")
            if t == len(ids) - 1 or not text.startswith(after):
                break
        if not after.startswith(before):
            break
        out.append((t, after[len(before):]))
        before = after
    return out


Row = tuple[str, float, list[tuple[str, float]]]  # a token's text, its log-prob, its alternatives'


def token_rows(tokenizer: Any, ids: list[int], logps: list[float], tops: list[list[tuple[int, float]]] | None,
               text: str, k: int, start: int = 0, before: str = "") -> list[Row]:
    """The reported tokens of `text` (see `reported_tokens`) with their log-probs and `k` alternatives:
    `ids` / `logps` are the generated tokens and their model log-probs, `tops[t]` the (token id,
    log-prob) alternatives at step t."""
    rows = []
    for t, piece in reported_tokens(tokenizer, ids, text, start, before):
        context = list(ids[max(0, t - CONTEXT):t])
        prior = tokenizer.decode(context, skip_special_tokens=True)
        alternatives = [(token_text(tokenizer, context, prior, alt), lp) for alt, lp in (tops[t][:k] if tops else [])]
        rows.append((piece, float(logps[t]), alternatives))
    return rows


def _entry(piece: str, logprob: float) -> dict:
    return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8"))}


def formatted(rows: list[Row], k: int, chat: bool, offset: int = 0) -> dict:
    """The ``logprobs`` object of a choice (or of a streamed chunk of it, whose text starts `offset`
    characters into the completion)."""
    if chat:
        return {"content": [{**_entry(piece, lp), "top_logprobs": [_entry(a, alp) for a, alp in alts]}
                            for piece, lp, alts in rows], "refusal": None}
    offsets, at = [], offset
    for piece, _, _ in rows:
        offsets.append(at)
        at += len(piece)
    return {"tokens": [piece for piece, _, _ in rows], "token_logprobs": [lp for _, lp, _ in rows],
            "top_logprobs": [dict(alts) for _, _, alts in rows] if k else None, "text_offset": offsets}


def choice_logprobs(tokenizer: Any, ids: list[int], logps: list[float], tops: list[list[tuple[int, float]]] | None,
                    text: str, k: int, chat: bool) -> dict:
    """The ``logprobs`` object of one choice (see `token_rows`); `k` alternatives per token."""
    return formatted(token_rows(tokenizer, ids, logps, tops, text, k), k, chat)
