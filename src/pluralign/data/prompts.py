"""Prompts are data: plain text or a list of chat messages, rendered for a model in exactly one place.

A prompt is either a string or a list of messages ``[{"role": "system"|"user"|"assistant", "content":
str}, ...]``. Every consumer — training (`data.tokenize.encode_pair`), decoding (`decode.kv.encode_prompts`),
reward models (their own tokenizer, via `encode_pair`), judges (`transcript`) — turns it into text or
tokens through the functions here, never with ``str(prompt)``.

``chat_template`` (the option on the training and decoding configs and CLIs) decides whether the
tokenizer's chat template renders the prompt:

* ``"always"``: every prompt goes through the template; plain text becomes one user message. A tokenizer
  without a template is a `ConfigError`.
* ``"never"``: plain text is tokenized as is; message lists are a `ConfigError` (they need a template).
* ``"auto"`` (default): message lists go through the template (a tokenizer without one is an error);
  plain text goes through it too, as one user message, when the tokenizer has a template — an instruct
  model fed raw text answers badly or not at all — with a warning, once per process. Plain text that
  already starts with what the template puts before a user message (e.g. the sandbox's
  ``"question: … answer:"`` prompts, or a string rendered earlier, with or without its own system message) is
  taken as rendered and used as is,
  and so is the empty string (no prompt: plain language-model text, e.g. pretraining documents).
  Without a template, plain text is used as is.

Templated text already holds the special tokens the model expects, so it is tokenized with
``add_special_tokens=False`` (as ``apply_chat_template(tokenize=True)`` does).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pluralign.errors import ConfigError, DataError, PluralignError, Problem

Prompt = str | list[dict[str, Any]]
ChatTemplate = Literal["auto", "always", "never"]
CHAT_TEMPLATE_MODES: tuple[str, ...] = ("auto", "always", "never")
CHAT_TEMPLATE_HELP = ("render prompts with the tokenizer's chat template: auto (message lists, and plain text "
                      "as a user message when the tokenizer has a template, unless already rendered), always, "
                      "or never (plain text as is)")

_SENTINEL = "\x00pluralign-content\x00"
_prefix_cache: dict[tuple[int, str], str] = {}
_warned = False


def is_messages(prompt: Any) -> bool:
    """A list of chat messages (dicts with a role), as opposed to plain text or token ids."""
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(isinstance(m, dict) for m in prompt)


def check_mode(mode: str) -> str:
    if mode not in CHAT_TEMPLATE_MODES:
        raise ConfigError(f"chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}, got {mode!r}")
    return mode


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def as_messages(prompt: Prompt, system: str | None = None) -> list[dict[str, Any]]:
    """The prompt as chat messages (plain text = one user message); `system` replaces any system message."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if system is not None:
        msgs = [{"role": "system", "content": system}] + [m for m in msgs if m.get("role") != "system"]
    return msgs


def transcript(x: Prompt) -> str:
    """Readable text of a prompt or response for models that have no chat template (LLM-judge templates,
    BERT-like encoders, logs): plain text unchanged, messages as ``role: content`` lines."""
    if isinstance(x, str):
        return x
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in x)


def user_prefix(tokenizer: Any) -> str:
    """What the chat template writes before the content of a first user message (no system message)."""
    return _prefix(tokenizer, [{"role": "user", "content": _SENTINEL}])


def system_prefix(tokenizer: Any) -> str:
    """What the chat template writes before the content of a system message ('' if it drops or refuses them).
    A template that adds a default system message (SmolLM2's, Qwen2's) writes it into `user_prefix`, so text
    rendered with the prompt's own system message starts with this markup instead."""
    try:
        return _prefix(tokenizer, [{"role": "system", "content": _SENTINEL}, {"role": "user", "content": "x"}])
    except Exception:  # a template that refuses a system role: no such markup
        return ""


def _prefix(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    key = (id(tokenizer), str(tokenizer.chat_template), messages[0]["role"])
    if key not in _prefix_cache:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        _prefix_cache[key] = text.split(_SENTINEL)[0] if _SENTINEL in text else ""
    return _prefix_cache[key]


def uses_template(tokenizer: Any, prompt: Prompt, chat_template: str = "auto") -> bool:
    """Whether `prompt` goes through the tokenizer's chat template under `chat_template` (module doc)."""
    check_mode(chat_template)
    messages = not isinstance(prompt, str)
    if messages and not is_messages(prompt):
        raise PluralignError(f"a prompt must be text or a list of chat messages (dicts with role and content), "
                             f"got {type(prompt).__name__}")
    if chat_template == "never":
        if messages:
            raise ConfigError("the prompt is a list of chat messages but chat_template=never; "
                              "give plain-text prompts or use chat_template=auto")
        return False
    if not has_template(tokenizer):
        if messages or chat_template == "always":
            raise ConfigError(("the prompt is a list of chat messages" if messages else "chat_template=always")
                              + " but the tokenizer has no chat template; use plain-text prompts with "
                                "chat_template=never/auto, or set tokenizer.chat_template")
        return False
    if messages or chat_template == "always":
        return True
    if not prompt or any(prefix.strip() and prompt.startswith(prefix)
                         for prefix in (user_prefix(tokenizer), system_prefix(tokenizer))):
        return False  # already rendered with this template
    _warn_plain_once()
    return True


def _warn_plain_once() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn("plain-text prompts meet a tokenizer with a chat template: rendering each as one user "
                      "message (chat_template=auto). Give prompts as message lists to say so explicitly, or set "
                      "chat_template=never to feed the text unchanged.", UserWarning, stacklevel=3)


def render_prompt(tokenizer: Any, prompt: Prompt, chat_template: str = "auto") -> tuple[str, bool]:
    """``(text, templated)``: the prompt as the model sees it before its reply (generation prompt added)."""
    if not uses_template(tokenizer, prompt, chat_template):
        return prompt, False
    return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True), True


def render_pair(tokenizer: Any, prompt: Prompt, completion: Prompt, chat_template: str = "auto"
                ) -> tuple[str, str, bool]:
    """``(prompt_text, completion_text, templated)`` for training and scoring a reply. A templated
    completion (text, or assistant messages) is rendered as the next turn: the completion text is the
    difference between the whole conversation and the prompt with its generation prompt."""
    if not (isinstance(completion, str) or is_messages(completion)):  # `score(["q"], [None])`: a bare TypeError
        raise PluralignError(f"a response must be text or a list of chat messages (dicts with role and content), "
                             f"got {type(completion).__name__}")
    if not uses_template(tokenizer, prompt, chat_template):
        if not isinstance(completion, str):
            raise PluralignError("the completion is a list of chat messages but the prompt is plain text "
                                 "rendered without a template; give both as messages or both as text")
        return prompt, completion, False
    reply = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else list(completion)
    messages = as_messages(prompt)
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(messages + reply, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise PluralignError("the chat template renders the conversation differently once the reply is added, "
                             f"so the reply cannot be separated from the prompt {prompt_text[:40]!r}")
    return prompt_text, full_text[len(prompt_text):], True


def prompt_ids(tokenizer: Any, prompt: Prompt, chat_template: str = "auto") -> list[int]:
    """Token ids of the prompt as generation conditions on it (template and generation prompt included)."""
    text, templated = render_prompt(tokenizer, prompt, chat_template)
    return list(tokenizer.encode(text, add_special_tokens=not templated))


def encode_prompts(tokenizer: Any, prompts: Sequence[Any], chat_template: str | Sequence[str] = "auto"
                   ) -> list[list[int]]:
    """Token ids of each prompt (`prompt_ids`); lists of ints are taken as token ids already. An empty
    prompt becomes the BOS token. `chat_template` is one mode or one per prompt."""
    modes = [chat_template] * len(prompts) if isinstance(chat_template, str) else list(chat_template)
    out = []
    for p, mode in zip(prompts, modes, strict=True):
        if isinstance(p, (list, tuple)) and p and all(isinstance(t, int) for t in p):
            out.append(list(p))
            continue
        ids = prompt_ids(tokenizer, p, mode)
        if not ids:
            bos = getattr(tokenizer, "bos_token_id", None)
            if bos is None:
                raise PluralignError("empty prompt and the tokenizer has no BOS token")
            ids = [bos]
        out.append(ids)
    return out


def rendering_check(tokenizer: Any, chat_template: str, room: Callable[[int], str | None] | None = None
                    ) -> Callable[[Sequence[Any], str, Sequence[int]], None]:
    """A check of prompt rows as they are read (online training's prompts): a `DataError` naming, by file, line
    and field, every row whose prompt `uses_template` refuses (chat messages under `never` or for a tokenizer
    without a template). Found by the first rollout holding one, it stopped training naming no row.
    `room(prompt tokens)`: why a prompt of that many tokens (as the policy sees it) is too long, or None."""
    if chat_template == "always":  # a setting every row would fail alike: said once, as a ConfigError
        uses_template(tokenizer, "", "always")

    def check(records: Sequence[Any], source: str, lines: Sequence[int]) -> None:
        problems = []
        for record, line in zip(records, lines, strict=True):
            try:
                uses_template(tokenizer, record.prompt, chat_template)
                why = room(len(encode_prompts(tokenizer, [record.prompt], chat_template)[0])) if room else None
            except (PluralignError, *template_errors()) as e:
                why = str(e)
            if why:
                problems.append(Problem(source, line, "prompt", why))
        if problems:
            raise DataError(problems)

    return check


def template_errors() -> tuple[type[Exception], ...]:
    """A chat template's own refusals (jinja2's TemplateError, e.g. "roles must alternate")."""
    try:
        from jinja2 import TemplateError
    except ImportError:
        return ()
    return (TemplateError,)
