"""Per-request steering: one model, each request decoded under its own objective weights.

`steer` is what the demo and the CLI call: it loads a model directory, turns each request's weights into
`Controls`, runs a registered decoder and returns per-request texts with their gold (or reward) scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pluralign.decode.api import Controls, DecodeResult, check_prompts, decode
from pluralign.errors import ConfigError


def load_policy(model_dir: str | Path, device: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a model directory (or a .gguf file, or a hub id), in eval mode, with its conditioning scheme attached
    (`pluralign.conditioning`: MAH-DPO heads, soups, prompt statements) when it was saved with one, moved
    to `device` ("auto": the best there is) once attached."""
    from pluralign import conditioning
    from pluralign.models.load import expected_extra_keys, load_model, load_tokenizer, resolve, resolve_device

    model_dir = resolve(model_dir)  # a GGUF file: the directory it was converted into
    scheme = conditioning.load(model_dir)
    with expected_extra_keys(scheme.saved_keys if scheme is not None else ()):
        model = conditioning.attach_to(load_model(str(model_dir)), model_dir, scheme)
    if device:
        model = model.to(resolve_device(device))
    model.eval()
    return model, load_tokenizer(str(model_dir))


def steer(model_dir: str | Path | tuple[Any, Any], prompts: list[Any], weights_per_request: list[Any], *,
          reward: Any = "gold", method: str = "bon", n: int = 16, max_new_tokens: int = 32, seed: int = 0,
          users: list[Any] | None = None, **control_fields: Any) -> list[dict]:
    """Decode `prompts[i]` under `weights_per_request[i]` (a {objective: weight} dict or a sequence in
    the reward's objective order). `model_dir` may also be a loaded (model, tokenizer) pair. Returns one
    dict per request: prompt, weights, response, scores ({objective: value}), utility (under its own
    weights) and the compute spent by the whole call."""
    check_prompts(prompts)
    for name, values in (("weights_per_request", weights_per_request), ("users", users)):
        if values is not None and (isinstance(values, Mapping | str) or len(values) != len(prompts)):
            raise ConfigError(f"{name}: expected a list with one entry per prompt ({len(prompts)}), got "
                              f"{values!r}", field=name)
    model, tokenizer = model_dir if isinstance(model_dir, tuple) else load_policy(model_dir)
    users = users or [None] * len(prompts)
    extra = control_fields.pop("extra", {})
    controls = [Controls(weights=w, n=n, max_new_tokens=max_new_tokens, seed=seed, user=u, extra=dict(extra),
                         **control_fields) for w, u in zip(weights_per_request, users, strict=True)]
    result: DecodeResult = decode(method, model, tokenizer, prompts, reward=reward, controls=controls)
    rows = result.rows()
    for row, prompt, w in zip(rows, prompts, weights_per_request, strict=True):
        row.pop("candidates", None)
        row["prompt"] = prompt
        row["weights"] = w
        row["compute"] = {"forward": result.compute.forward, "tokens": result.compute.tokens,
                          "reward_evals": result.reward_compute.forward}
    return rows
