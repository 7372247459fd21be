"""Prompt + completion → token ids with a completion mask, for causal LMs.

The boundary between prompt and completion is found on tokens, not characters. We tokenize the prompt
and the whole text. When the prompt's tokens are a prefix of the whole text's tokens (the usual case),
the rest is the completion and the sequence is the tokenizer's natural one.

When they are not a prefix, the tokenizer merged across the boundary (byte-level BPE does this when the
prompt ends in a space, or when a merge such as ``":"`` + ``"\\n"`` spans it). We then keep the prompt's own
tokens and append the completion tokenized on its own. Why not the longest common prefix instead: the
merged token holds characters of both sides, so it would either score part of the prompt as completion
or drop part of the completion; and a policy is sampled by conditioning on ``tokenize(prompt)`` and
generating the tokens after it, so ``tokenize(prompt) + tokenize(completion)`` is the sequence whose
probability the generation process actually defines. Either way the completion mask covers exactly the
tokens that decode to the completion (plus the EOS we append).

Chat: `pluralign.data.prompts.render_pair` decides (``chat_template``: auto | always | never) whether the
tokenizer's chat template renders the prompt — always for message lists, and under ``auto`` also for
plain text when the tokenizer has a template (as one user message). The template renders the prompt with
``add_generation_prompt=True``; the completion (text, or assistant messages) is rendered as the next turn
and the completion is the rendered difference. The template's end-of-turn marker then ends the reply, so
no EOS is appended to templated completions; plain-text completions get ``eos_token``.

Truncation policy (``truncation``):
  1. a prompt longer than ``max_prompt_length`` is cut to it — ``"keep_end"`` (default) keeps its last
     tokens, where the question and the generation prompt are (a leading BOS the tokenizer itself prepends is
     kept; a chat turn marker named BOS, as SmolLM2's <|im_start|>, is not); ``"keep_start"``
     keeps its first tokens;
  2. a completion that does not fit in ``max_length`` after the prompt is cut at its end (its EOS is lost);
  3. a prompt that leaves no room for a single completion token raises `PluralignError` — an empty
     completion is never produced. Set ``max_prompt_length < max_length`` to avoid it.
  ``"error"`` raises instead of cutting anything. `Encoded.truncated` marks rows that were cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pluralign.data.prompts import render_pair
from pluralign.errors import ConfigError, PluralignError

Text = str | list[dict[str, Any]]
Truncation = Literal["keep_end", "keep_start", "error"]
TRUNCATION_MODES: tuple[str, ...] = ("keep_end", "keep_start", "error")


@dataclass(frozen=True)
class Encoded:
    """One tokenized sequence. ``completion_mask[t] == 1`` where token t belongs to the completion (and
    is therefore predicted from the tokens before it); ``completion_mask[0]`` is always 0."""

    input_ids: list[int]
    completion_mask: list[int]
    truncated: bool = False
    completion_cut: bool = False  # the completion's end (and its EOS / end of turn) did not fit

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_pair(tokenizer: Any, prompt: Text, completion: Text, max_length: int,
                max_prompt_length: int | None = None, truncation: Truncation = "keep_end",
                chat_template: str = "auto") -> Encoded:
    """Tokenize ``prompt`` + ``completion`` with the boundary found on tokens (see the module doc);
    ``chat_template`` (auto | always | never) as in `pluralign.data.prompts`."""
    check_options(max_length, max_prompt_length, truncation)
    prompt_text, completion_text, templated = render_pair(tokenizer, prompt, completion, chat_template)
    prompt_ids, completion_ids = split_on_tokens(tokenizer, prompt_text, completion_text,
                                                 add_special_tokens=not templated)
    if not templated:
        completion_ids = _with_eos(tokenizer, completion_ids)
    if not completion_ids:
        raise PluralignError(f"empty completion for prompt {_preview(prompt_text)}")
    prompt_ids = _with_context(tokenizer, prompt_ids)
    return _truncate(tokenizer, prompt_ids, completion_ids, max_length, max_prompt_length, truncation,
                     prompt_text)


def split_on_tokens(tokenizer: Any, prompt_text: str, completion_text: str, *,
                    add_special_tokens: bool = True) -> tuple[list[int], list[int]]:
    """``(prompt_ids, completion_ids)`` whose concatenation is the sequence to train on."""
    prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=add_special_tokens)
    full_ids = tokenizer.encode(prompt_text + completion_text, add_special_tokens=add_special_tokens)
    n = len(prompt_ids)
    if full_ids[:n] == prompt_ids:
        return prompt_ids, full_ids[n:]
    # A merge spans the boundary: keep the prompt's own tokens (what generation conditions on).
    return prompt_ids, tokenizer.encode(completion_text, add_special_tokens=False)


def pad_token_id(tokenizer: Any) -> int:
    """The id used to fill padding: the pad token, else EOS, else 0. Padded positions are masked out of
    attention and loss, so any valid id works; a tokenizer without a pad token needs no new embedding."""
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return int(tid)
    return 0


def _with_eos(tokenizer: Any, ids: list[int]) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None or (ids and ids[-1] == eos):
        return ids
    return [*ids, eos]


def _with_context(tokenizer: Any, prompt_ids: list[int]) -> list[int]:
    """The first completion token needs a token before it to be predicted from: an empty prompt becomes
    BOS (or EOS, GPT-2's document separator)."""
    if prompt_ids:
        return prompt_ids
    for tid in (getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if tid is not None:
            return [int(tid)]
    raise PluralignError("empty prompt and the tokenizer has neither a BOS nor an EOS token to start from")


def _truncate(tokenizer: Any, prompt_ids: list[int], completion_ids: list[int], max_length: int,
              max_prompt_length: int | None, mode: Truncation, prompt_text: str) -> Encoded:
    cut_prompt = max_prompt_length is not None and len(prompt_ids) > max_prompt_length
    if cut_prompt and mode != "error":
        prompt_ids = _cut_prompt(tokenizer, prompt_ids, max_prompt_length, mode)
    room = max_length - len(prompt_ids)
    if room < 1 and mode != "error":
        raise PluralignError(
            f"prompt {_preview(prompt_text)} has {len(prompt_ids)} tokens, leaving no room for the completion "
            f"within max_length={max_length}; set max_prompt_length below max_length")
    cut_completion = len(completion_ids) > room
    if mode == "error" and (cut_prompt or cut_completion):
        raise PluralignError(
            f"prompt {_preview(prompt_text)} + completion is {len(prompt_ids) + len(completion_ids)} tokens "
            f"(prompt {len(prompt_ids)}), over max_length={max_length} or max_prompt_length={max_prompt_length} "
            "and truncation='error'")
    completion_ids = completion_ids[:room]
    return Encoded(input_ids=prompt_ids + completion_ids,
                   completion_mask=[0] * len(prompt_ids) + [1] * len(completion_ids),
                   truncated=cut_prompt or cut_completion, completion_cut=cut_completion)


def _cut_prompt(tokenizer: Any, ids: list[int], n: int, mode: Truncation) -> list[int]:
    if mode == "keep_start":
        return ids[:n]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids[0] == bos and n > 1 and _prepends_bos(tokenizer):
        return [bos, *ids[len(ids) - (n - 1):]]
    return ids[len(ids) - n:]


def _prepends_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer's BOS is a true start of sequence, one it puts before any text by itself. SmolLM2
    names its turn marker <|im_start|> as BOS: kept before a cut chat prompt's tail, it opened a bogus turn
    whose role was the tail's first word (``<|im_start|> river flows …``)."""
    ids = tokenizer.encode("a", add_special_tokens=True)
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def check_options(max_length: int, max_prompt_length: int | None, truncation: str) -> None:
    """The tokenization settings, whatever the row (a collator checks them when it is made)."""
    if max_length < 2:
        raise ConfigError(f"max_length must be at least 2 (a prompt token and a completion token), got {max_length}",
                          field="max_length")
    if max_prompt_length is not None and not 1 <= max_prompt_length < max_length:
        raise ConfigError(f"max_prompt_length must be in [1, max_length={max_length}), got {max_prompt_length}",
                          field="max_prompt_length")
    if truncation not in TRUNCATION_MODES:
        raise ConfigError(f"truncation must be one of {', '.join(TRUNCATION_MODES)}, got {truncation!r}",
                          field="truncation")


def _preview(text: str, n: int = 40) -> str:
    return repr(text[:n] + ("…" if len(text) > n else ""))
