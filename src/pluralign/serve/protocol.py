"""Request bodies in, OpenAI-shaped responses out.

OpenAI's fields keep their meaning: `n` is the number of choices, `max_tokens`, `temperature`, `top_p`,
`stop`, `seed` are sampling settings and `user` is the end user (which per-user reward sources such as
PAL score for). The alignment controls are an extension the `openai` client sends with `extra_body`:

- `method`: "none" (plain sampling, the default) or any registered decoder (bon, soft_bon, args, mod,
  genarm, ...: `pluralign.decode.api.names()`);
- `best_of`: the alignment candidate count (`Controls.n`: BoN's N, ARGS's k, ...), OpenAI's name for it;
- `reward`: which served reward source guides the method (default: the first);
- every other field of `pluralign.decode.api.Controls` (weights, direction, group, beta, w, constraints,
  chat_template, extra, and any field added later) under its own name, or all of them in a nested
  `controls` object, which may also set `n`;
- `ignore_eos` (as vLLM): plain sampling runs to `max_tokens` (fixed-length load tests).

Token log-probs (chat's `logprobs` / `top_logprobs`, legacy completions' `logprobs`) are returned for plain
sampling (a conditioned model's too), streamed or not: a streamed chunk carries those of the tokens its text
completes (`pluralign.serve.logprobs`).

`/v1/completions` takes the prompt as given (`chat_template` "never" unless the request sets it);
`/v1/chat/completions` renders the messages with the tokenizer's chat template. Choices carry a
`pluralign` object with the chosen text's per-objective `scores` and `utility` when a reward was used.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import sys
import time
import uuid
from typing import Any

from pluralign.data.field_checks import check_prompt
from pluralign.decode.api import Controls
from pluralign.errors import ConfigError
from pluralign.serve.config import ServeConfig
from pluralign.serve.errors import APIError

# Controls fields that OpenAI's own parameters set (or that name something else in OpenAI's API).
FROM_OPENAI = {"n": "best_of", "max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p",
               "stop": "stop", "seed": "seed", "user": "user"}


def _json_int(text: str) -> int | float:
    """A JSON integer; one beyond every float (10**400) as ±inf, which each number check refuses by name,
    where converting it to compare with a limit raised OverflowError (a 500)."""
    value = int(text)
    return value if abs(value) <= sys.float_info.max else math.inf if value > 0 else -math.inf


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw, parse_int=_json_int)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON ({e})", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    return body


def _number(body: dict, name: str, kind: type, default: Any, lo: float | None = None, hi: float | None = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or float(value).is_integer())
    if not ok:
        raise APIError(400, f"'{name}' must be {'an integer' if kind is int else 'a number'}", param=name,
                       code="invalid_type")
    given, value = value, kind(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):  # as sent: int(1e300) has 301 digits
        raise APIError(400, f"'{name}' must be between {lo} and {hi} (got {given})", param=name,
                       code="invalid_value")
    return value


def _check_field(name: str, default: Any, value: Any) -> Any:
    """Type-check a Controls field passed through from the request by its default's type."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = type(default)(value) if ok and (isinstance(default, float) or float(value).is_integer()) else value
        ok = ok and isinstance(value, type(default))
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = True
    if not ok:
        raise APIError(400, f"'{name}' has the wrong type ({type(value).__name__})", param=name, code="invalid_type")
    return value


def controls_from(body: dict, cfg: ServeConfig) -> Controls:
    """The request's Controls: OpenAI sampling fields, then every Controls field given by name (top level
    or in `controls`), checked by type; unknown names inside `controls` are an error."""
    nested = body.get("controls") or {}
    if not isinstance(nested, dict):
        raise APIError(400, "'controls' must be an object", param="controls", code="invalid_type")
    fields = {f.name: f for f in dataclasses.fields(Controls)}
    unknown = set(nested) - set(fields)
    if unknown:
        raise APIError(400, f"unknown controls {sorted(unknown)}; known: {sorted(fields)}", param="controls",
                       code="unknown_control")
    defaults = Controls()
    values: dict[str, Any] = {
        "max_new_tokens": _number(body, "max_completion_tokens", int, None, 1, cfg.max_tokens)
        or _number(body, "max_tokens", int, cfg.default_max_tokens, 1, cfg.max_tokens),
        "temperature": _number(body, "temperature", float, 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", float, 1.0, 1e-6, 1.0),
        "seed": _number(body, "seed", int, None),
        "n": _number(body, "best_of", int, defaults.n, 1, cfg.max_best_of),
    }
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
            raise APIError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
        values["stop"] = stop
    if body.get("user") is not None:
        values["user"] = body["user"]
    for name, f in fields.items():
        given = nested.get(name, body.get(name) if name not in FROM_OPENAI else None)
        if name in nested or (name not in FROM_OPENAI and name in body and given is not None):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            values[name] = _check_field(name, default, given)
    if values["n"] > cfg.max_best_of:
        raise APIError(400, f"alignment candidates n={values['n']} above the limit {cfg.max_best_of}", param="n")
    if not 1 <= values["max_new_tokens"] <= cfg.max_tokens:
        raise APIError(400, f"max_tokens must be in [1, {cfg.max_tokens}]", param="max_tokens")
    return checked_controls(**values)


def checked_controls(**values: Any) -> Controls:
    """`Controls(**values)`, a value of the right type out of its range (e.g. beta <= 0) a 400 naming it."""
    try:
        return Controls(**values)
    except ConfigError as e:
        raise APIError(400, str(e), param=e.field, code="invalid_value") from None


# OpenAI (and vLLM) parameters this server does not implement, with the values that ask nothing of it. Any
# other value is refused: ignored, it would return an answer the client did not ask for (no penalty applied,
# the prompt not echoed, free text where JSON was required) as if it had been honoured.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0,), "presence_penalty": (0,), "repetition_penalty": (1,),
    "logit_bias": ({},), "echo": (False,), "suffix": ("",), "min_tokens": (0,),
    "tools": ([],), "functions": ([],), "tool_choice": ("none", "auto"), "function_call": ("none", "auto"),
    "response_format": ({"type": "text"},), "guided_json": (), "guided_regex": (), "guided_choice": (),
    "guided_grammar": (), "stop_token_ids": ([],), "min_p": (0,), "use_beam_search": (False,),
    "include_stop_str_in_output": (False,), "skip_special_tokens": (True,),
}


# The top-level fields each endpoint reads, besides the Controls fields named directly (`controls_from`) and
# `UNSUPPORTED`'s. OpenAI's request metadata that asks nothing of the answer (metadata, store, ...) is taken.
# Any other field is refused: a misspelt control (`wieghts`) or one under another server's name
# (`max_new_tokens`) was dropped, and the answer came back unsteered as if the request had been honoured.
COMMON = {"model", "n", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed", "user",
          "stream", "stream_options", "method", "best_of", "reward", "controls", "ignore_eos", "metadata", "store",
          "service_tier", "parallel_tool_calls", "safety_identifier", "prompt_cache_key"}
REWARDS = "/v1/rewards"
FIELDS = {"/v1/chat/completions": COMMON | {"messages", "logprobs", "top_logprobs"},
          "/v1/completions": COMMON | {"prompt", "logprobs"},
          REWARDS: {"model", "reward", "input", "prompts", "responses", "user", "users", "weights"}}


def check_known(body: dict, endpoint: str) -> None:
    """A 400 naming the first field `endpoint` (its path) does not read, with the nearest known name."""
    known = FIELDS[endpoint] | (set(UNSUPPORTED) if endpoint != REWARDS else set())
    if endpoint != REWARDS:
        known |= {f.name for f in dataclasses.fields(Controls)} - set(FROM_OPENAI)
    for name in body:
        if name not in known:
            close = difflib.get_close_matches(str(name), sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise APIError(400, f"unknown parameter '{name}' for {endpoint}{hint}", param=str(name),
                           code="unknown_parameter")


def check_unsupported(body: dict) -> None:
    """A 400 naming the first OpenAI parameter the request sets to something this server would ignore."""
    for name, harmless in UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and value not in harmless:
            raise APIError(400, f"'{name}' is not supported by this server (got {json.dumps(value)[:60]}); leave it "
                           "out", param=name, code="unsupported_parameter")


def include_usage(body: dict, stream: bool) -> bool:
    """Whether a streamed answer ends with a usage chunk: OpenAI's `stream_options: {"include_usage": true}`,
    which (as OpenAI and vLLM do) only a streamed request may set. Checked: a text here was a 500."""
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise APIError(400, "'stream_options' is only allowed with 'stream': true", param="stream_options")
    if not (isinstance(options, dict) and isinstance(options.get("include_usage", False), bool)):
        raise APIError(400, "'stream_options' must be an object like {\"include_usage\": true}",
                       param="stream_options", code="invalid_type")
    return options.get("include_usage", False)


MAX_TOP_LOGPROBS = {True: 20, False: 5}  # chat's top_logprobs, legacy completions' logprobs (OpenAI's limits)


def logprobs_request(body: dict, chat: bool) -> int | None:
    """How many alternatives per token a request asks log-probs for (0: the chosen tokens' only), or None
    when it asks none: chat's ``logprobs: true`` with ``top_logprobs``, legacy completions' ``logprobs: k``."""
    if not chat:
        return _number(body, "logprobs", int, None, 0, MAX_TOP_LOGPROBS[False])
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise APIError(400, "'logprobs' must be true or false", param="logprobs", code="invalid_type")
    top = _number(body, "top_logprobs", int, None, 0, MAX_TOP_LOGPROBS[True])
    if top and not wanted:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if wanted else None


# The chat roles a request may use. system, user and assistant are what every chat template renders
# (`data.field_checks.ROLES`). "developer" is what OpenAI's newer clients send for o1-style models in place
# of "system", with the same meaning, so it is taken as "system". "tool" and "function" messages answer a
# tool call, which this server never makes (it has no `tools`), and most templates drop them: refused, as
# is any other role, which a template would silently drop or render as some other turn.
SYNONYMS = {"developer": "system"}
TOOL_ROLES = ("tool", "function")


def chat_prompt(messages: Any, name: str = "messages") -> list[dict]:
    """Chat messages (the request's `name` field) as the tokenizer's chat template takes them, checked as
    every prompt is (`data.field_checks.check_prompt`): known roles, and the user's turn last. A trailing
    assistant message is refused rather than taken as a prefix to continue or as history before a new
    turn: templates disagree on which (some end it with EOS and the model talks past it), and OpenAI's
    API has no way to say which was meant."""
    if not isinstance(messages, list) or not messages:
        raise APIError(400, f"'{name}' must be a non-empty list of messages", param=name, code="invalid_messages")
    out = [_message(m, f"{name}[{i}]") for i, m in enumerate(messages)]
    _, issues = check_prompt(name, out)
    if issues:
        where, what = issues[0]
        raise APIError(400, f"{where}: {what}", param=where, code="invalid_messages")
    return out


def _message(m: Any, where: str) -> dict:
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
        raise APIError(400, f"{where} needs a 'role'", param=where, code="invalid_messages")
    role = SYNONYMS.get(m["role"], m["role"])
    if role in TOOL_ROLES:
        raise APIError(400, f"{where}.role: {role!r} messages answer tool calls, which this server does not make",
                       param=f"{where}.role", code="invalid_messages")
    return {"role": role, "content": _content(m.get("content"), f"{where}.content")}


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of content parts, of which only text parts are taken,
    joined by newlines (as vLLM joins them: parts written apart must not run into one word)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{where} must be a string or a list of text parts", param=where,
                       code="invalid_messages")
    for j, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            kind = part.get("type") if isinstance(part, dict) else None
            raise APIError(400, f"{where}[{j}]: only text parts {{\"type\": \"text\", \"text\": ...}} are "
                           f"supported{f', got type {kind!r}' if kind else ''}", param=f"{where}[{j}]",
                           code="invalid_messages")
    return "\n".join(part["text"] for part in content)


def completion_prompts(body: dict) -> list[Any]:
    """`prompt`: a string, a list of strings, a list of token ids or a list of such lists."""
    p = body.get("prompt")
    if isinstance(p, str):
        return [p]
    if isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) for x in p):
        return [p]
    if isinstance(p, list) and p and all(isinstance(x, str) or (isinstance(x, list) and x and all(
            isinstance(t, int) and not isinstance(t, bool) for t in x)) for x in p):
        return list(p)
    raise APIError(400, "'prompt' must be a string, a list of strings or token-id lists", param="prompt",
                   code="invalid_prompt")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, choices: list[dict]) -> dict:
    done = sum(c["tokens"] for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}


def extension(choice: dict) -> dict | None:
    ext = {k: choice[k] for k in ("scores", "utility") if k in choice}
    return ext or None


def completion_body(rid: str, model: str, choices: list[dict], prompt_tokens: int, info: dict, chat: bool) -> dict:
    out = []
    for i, c in enumerate(choices):
        row: dict[str, Any] = {"index": i, "finish_reason": c["finish_reason"], "logprobs": c.get("logprobs")}
        if chat:
            row["message"] = {"role": "assistant", "content": c["text"]}
        else:
            row["text"] = c["text"]
        if extension(c):
            row["pluralign"] = extension(c)
        out.append(row)
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": out, "usage": usage(prompt_tokens, choices), "pluralign": {"compute": info}}


def chunk(rid: str, model: str, index: int, chat: bool, text: str | None = None, finish: str | None = None,
          role: bool = False, ext: dict | None = None, logprobs: dict | None = None) -> str:
    """One SSE event of a streamed completion."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        row: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
    else:
        row = {"index": index, "text": text or "", "finish_reason": finish, "logprobs": logprobs}
    if ext:
        row["pluralign"] = ext
    body = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [row]}
    return f"data: {json.dumps(body)}\n\n"
