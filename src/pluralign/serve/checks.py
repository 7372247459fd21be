"""Checks of a request against the loaded model, made before it is queued: its prompts as the model will see
them (conditioned, rendered, counted) and what its method needs from the server."""

from __future__ import annotations

from typing import Any

from pluralign.data.prompts import encode_prompts
from pluralign.decode.api import SHARED_OPTIONS, missing_inputs
from pluralign.decode.controls import Controls
from pluralign.errors import PluralignError
from pluralign.serve.engine import PLAIN
from pluralign.serve.errors import APIError

try:
    from jinja2 import TemplateError  # what a chat template raises to refuse a conversation
except ImportError:  # transformers renders chat templates with jinja2: without it no template can refuse
    TemplateError = PluralignError


def prompt_token_ids(tokenizer: Any, prompts: list[Any], chat_template: str) -> list[list[int]]:
    """Token ids of prompts exactly as the decoders will see them (pluralign's one rendering function:
    chat messages through the tokenizer's chat template)."""
    try:
        return encode_prompts(tokenizer, prompts, chat_template)
    except PluralignError as e:
        raise APIError(400, str(e), code="unrenderable_prompt") from None
    except TemplateError as e:  # the template's own refusal (e.g. "roles must alternate"): the request's fault
        raise APIError(400, f"the model's chat template refuses these messages: {e}", param="messages",
                       code="unrenderable_prompt") from None


def conditioned_prompts(model: Any, tokenizer: Any, prompts: list[Any], controls: Any,
                        unknown_users: str = "refuse") -> list[Any]:
    """The prompts as a conditioned policy will see them (`pluralign.conditioning`: a prompt-level scheme
    states the request's preference in the prompt), so that limits count what is decoded; a bad
    condition (e.g. negative weights) is refused here, before the request is queued, and so is a user or
    group the model has nothing for unless the server answers them with the population model
    (`unknown_users`): a warning in the server's log was all anyone heard of it."""
    scheme = getattr(model, "pluralign_conditioning", None)
    if scheme is None or getattr(scheme, "name", "none") == "none":
        return prompts
    scheme.bind(tokenizer)  # as decoding does: unbound, the statement sat elsewhere and the first request's
    condition = scheme.condition_of_request(controls)  # prompt_tokens (and its length check) were wrong
    if unknown_users == "refuse" and (who := scheme.unmatched(condition)):
        raise APIError(400, f"{who} is unknown to this model, which would answer with its population model; give "
                       "a user or group it was trained for, or start the server with --unknown-users population",
                       param="user" if condition.user is not None else "group", code="unknown_user")
    return prompts if scheme.model_level else [scheme.prompt(p, condition) for p in prompts]


# The server's flag for each decoder input it can be started with (`decode.api.missing_inputs`).
SERVED_INPUTS = {"reward": "--reward", "models": "--models"}


def method_inputs_problem(method: str, reward: bool, models: bool) -> str | None:
    """Why `method` cannot run on this server, or None: a decoder without what it steers by (best-of-N and no
    reward source, GenARM and no --models) failed once queued, with advice for Python callers
    ("models=[...]", "value_model=")."""
    if method == PLAIN:
        return None
    given = [name for name, have in (("reward", reward), ("models", models)) if have]
    missing = missing_inputs(method, given)
    if not missing:
        return None
    flags = [SERVED_INPUTS[n] for need in missing for n in need.split("|") if n in SERVED_INPUTS]
    return (f"method {method!r} needs {' and '.join(missing)}: " + (f"start the server with {' and '.join(flags)}"
            if len(flags) == len(missing) else "this server cannot give it; use `pluralign decode` or Python"))


def check_extra(method: str, controls: Controls) -> None:
    """A 400 naming `extra` options given to plain sampling, which reads none (a scheme's target scores
    aside): they were dropped without a word. A decoder checks its own (`decode.api.check_options`, a 422)."""
    if method == PLAIN and (unread := sorted(set(controls.extra or {}) - SHARED_OPTIONS)):
        raise APIError(400, f"extra: {unread} given but plain sampling (method 'none') reads no decoder options; "
                       "set 'method' to the decoder they belong to", param="extra", code="unused_control")
