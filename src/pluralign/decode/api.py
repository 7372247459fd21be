"""One contract for every decoder: per-request controls in, texts + per-objective scores + compute out.

Decoders register by name (`@register("bon")`) and are called through `decode(method, model, tokenizer,
prompts, reward=..., controls=...)`. `controls` is one `Controls` for all prompts or a list with one
per prompt; decoders group requests whose controls must be equal to share a batch (e.g. the same N)
and apply per-row objective weights vectorised.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from pluralign.decode.controls import Controls, integral
from pluralign.decode.kv import Compute
from pluralign.decode.rewards import (
    AsAsked,
    as_reward,
    objective_names,
    score_groups,
    weight_vector,
    weighted,
)
from pluralign.errors import ConfigError
from pluralign.registry import Registry


@dataclass
class DecodeResult:
    """texts[p]: the output for prompt p; scores [P, m]: its per-objective rewards (objective names in
    `objectives`); utility [P]: the weighted reward under the request's own weights; candidates /
    candidate_scores: everything considered (sequence-level methods); compute: policy (and auxiliary
    model) forward passes and tokens; reward_compute: reward evaluations; info: the decoder's own facts,
    where a list with one entry per prompt is per request (kept, reordered, when results over subsets of
    the requests merge) and those named in `row_info` are also written into each prompt's row. Every
    decoder puts each answer's generated token ids (end-of-sequence included) in `info["token_ids"]`."""

    texts: list[str]
    scores: torch.Tensor | None = None
    objectives: list[str] | None = None
    utility: torch.Tensor | None = None
    candidates: list[list[str]] | None = None
    candidate_scores: list[torch.Tensor] | None = None
    compute: Compute = field(default_factory=Compute)
    reward_compute: Compute = field(default_factory=Compute)
    info: dict = field(default_factory=dict)
    row_info: tuple[str, ...] = ()  # `info` entries holding one value per prompt, written into its row

    def rows(self) -> list[dict]:
        """JSON-ready rows, one per prompt."""
        out = []
        for p, text in enumerate(self.texts):
            row: dict[str, Any] = {"response": text}
            if self.scores is not None:
                row["scores"] = dict(zip(self.objectives or [], self.scores[p].tolist(), strict=True))
            if self.utility is not None:
                row["utility"] = float(self.utility[p])
            if self.candidates is not None:
                row["candidates"] = self.candidates[p]
            row |= {k: self.info[k][p] for k in self.row_info}
            out.append(row)
        return out


Decoder = Callable[..., DecodeResult]
# Decoders register themselves in their own modules, imported on the first lookup.
_DECODERS = Registry("decoding method", modules=[
    f"pluralign.decode.{m}" for m in ("best_of_n", "rejection", "infalign", "map_palette", "rps", "args",
                                      "controlled", "tq_star", "fusion", "search")])
names = _DECODERS.names
get = _DECODERS.get
# `controls.extra` keys: each decoder's own (declared where it registers), those of every token-by-token
# decoder (`pluralign.decode.tokenwise`), and RiC's target scores, which a conditioned model reads whatever
# the decoder. Any other key is an error, not silently ignored: `--set kk=10` is a typo of `k`.
_OPTIONS: dict[str, frozenset[str]] = {}
_BATCH_SHARED: dict[str, tuple[str, ...]] = {}
TOKENWISE_OPTIONS = ("mode", "eos")
# what a token-by-token decoder reads once for its whole batch (`pluralign.decode.tokenwise`); not the seed:
# each row draws from its own request's streams (`streams.RowStreams`)
TOKENWISE_SHARED = ("stop", "eos")
SHARED_OPTIONS = frozenset({"scores"})


# What a decoder cannot steer without, besides the policy: its keyword inputs ("reward", "models",
# "value_model", ...; "a|b": either). A caller that can pass only some of them (`pluralign eval` passes a
# reward) checks an entry with `missing_inputs` when it reads its config, not once earlier entries generated.
_NEEDS: dict[str, tuple[str, ...]] = {}


def register(name: str, options: Sequence[str] = (), batch_shared: Sequence[str] = (),
             needs: Sequence[str] = ()) -> Callable[[Decoder], Decoder]:
    """Register decoder `name`; `options` are the `controls.extra` keys it reads; `batch_shared` the control
    fields (or `extra` keys) it reads once for a whole call, so that `decode` gives requests differing in
    them separate calls (a server batches whatever requests arrive together); `needs` the inputs it cannot
    run without (see `_NEEDS`)."""
    _OPTIONS[name] = frozenset(options)
    _BATCH_SHARED[name] = tuple(batch_shared)
    _NEEDS[name] = tuple(needs)
    return _DECODERS.register(name)


def missing_inputs(method: str, given: Iterable[str]) -> list[str]:
    """The inputs decoder `method` needs (`register(needs=...)`) of which none is among `given`."""
    have = set(given)
    return [need for need in _NEEDS.get(method, ()) if not have & set(need.split("|"))]


# What the options' values must be, checked with their names (`check_options`): `--set k=abc` was a ValueError
# traceback from inside the decoder, `k=0` or `beams=0` an IndexError, `mode=foo` quietly sampled.
_COUNTS = ("k", "block", "lookahead", "init_beams", "beams", "max_iterations", "m", "max_rounds", "rollout")
_NUMBERS = ("reward_max", "reward_weight", "theta_max", "beta_bl", "t", "alpha")
_CHOICES = {"mode": ("greedy", "sample"), "ties": ("first", "random"), "select": ("bon", "soft")}


def _option_problem(key: str, value: Any) -> str | None:
    """What is wrong with option `key`'s value, or None (options not listed are checked by their decoder)."""
    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    if key in _COUNTS and not (integral(value) and value >= 1):
        return "an integer >= 1"
    if key in _NUMBERS and not (number(value) or key == "alpha" and isinstance(value, list | tuple)
                                and value and all(map(number, value))):
        return "a finite number" + (" (or one per further model, GenARM)" if key == "alpha" else "")
    if key in _CHOICES and value not in _CHOICES[key]:
        return " or ".join(repr(x) for x in _CHOICES[key])
    if key == "eos" and not (integral(value) or isinstance(value, list | tuple) and all(map(integral, value))):
        return "a token id or a list of them ([]: no end-of-sequence stop)"
    return None


def check_options(method: str, controls: Sequence[Controls]) -> None:
    """A `ConfigError` naming the first request whose `extra` holds a key decoder `method` does not read, or
    a value of the wrong kind (`_option_problem`)."""
    own = _OPTIONS.get(method, frozenset())
    for i, c in enumerate(controls):
        unknown = sorted(set(c.extra or {}) - own - SHARED_OPTIONS)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(own), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"controls.extra of request {i + 1}: {unknown} not an option of decoding method "
                              f"{method!r}{hint}; its options: {', '.join(sorted(own)) or 'none'}", field="extra")
        for key, value in (c.extra or {}).items():
            if (rule := _option_problem(key, value)) is not None:
                raise ConfigError(f"controls.extra of request {i + 1}: {method} option {key!r} must be {rule}, "
                                  f"got {value!r}", field="extra")


def per_request(controls: Controls | Sequence[Controls] | None, n_prompts: int) -> list[Controls]:
    """One `Controls` per prompt: the defaults, one `Controls` shared by all, or a list with one per prompt
    (a `ConfigError` for anything else or a list of another length)."""
    if controls is None:
        return [Controls()] * n_prompts
    if isinstance(controls, Controls):
        return [controls] * n_prompts
    if isinstance(controls, str | bytes | Mapping) or not isinstance(controls, Sequence):
        raise ConfigError(f"controls: expected a Controls or a list of them, got {type(controls).__name__}",
                          field="controls")
    controls = list(controls)
    if len(controls) != n_prompts:
        raise ConfigError(f"{len(controls)} controls given for {n_prompts} prompts")
    for i, c in enumerate(controls):
        if not isinstance(c, Controls):  # a dict reached the decoder and failed there on `.extra`
            raise ConfigError(f"controls[{i}]: expected a Controls, got {type(c).__name__}", field="controls")
    return controls


def check_prompts(prompts: Any, field: str = "prompts") -> None:
    """A `ConfigError` for a lone prompt where a list of them belongs: a text is a sequence too, and each of
    its characters would be decoded as a prompt."""
    if isinstance(prompts, str | bytes | Mapping) or not isinstance(prompts, Sequence):
        raise ConfigError(f"{field}: expected a list of prompts (texts or chat message lists), got "
                          f"{type(prompts).__name__}; wrap a single prompt in a list", field=field)


def check_call(method: str, model: Any, tokenizer: Any, prompts: Any, kwargs: Mapping[str, Any]) -> None:
    """A `ConfigError` naming the argument a Python caller got wrong, before any decoder runs: a model
    directory where the loaded model belongs, no tokenizer, a lone prompt (`check_prompts`), or a keyword argument no decoder reads (a misspelt
    `reward_model=` would otherwise be ignored, and ARGS would score text instead)."""
    if isinstance(model, str | os.PathLike):
        raise ConfigError(f"model: expected a loaded model, got the path {str(model)!r}; load it with "
                          "pluralign.decode.steer.load_policy(path), which returns (model, tokenizer)", field="model")
    if tokenizer is None or isinstance(tokenizer, str | os.PathLike):
        raise ConfigError(f"tokenizer: expected the model's loaded tokenizer, got {tokenizer!r}", field="tokenizer")
    check_prompts(prompts)
    accepted = {p.name for name in names() for p in inspect.signature(get(name)).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"reward", "controls"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(accepted), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"decode({method!r}): unknown keyword argument(s) {unknown}{hint}; decoders take "
                          f"{', '.join(sorted(accepted))}", field=unknown[0])


def weights_order_problem(model: Any, reward: Any, weights: Any) -> str | None:
    """Why `weights` given by position are ambiguous, or None. A model whose conditioning scheme reads weights
    (a soup, heads, RiC) reads a list in its objectives' order, the reward in its own: where the two name
    the objectives differently, [0.3, 0.7] steered the model by one objective and chose by another."""
    from pluralign import conditioning

    if weights is None or isinstance(weights, Mapping) or (isinstance(weights, str) and "=" in weights):
        return None
    scheme = conditioning.attached(model)
    policy = list(scheme.objectives) if scheme is not None and "weights" in scheme.reads else []
    scored = list(getattr(reward, "objectives", None) or [])
    if not policy or not scored or policy == scored:
        return None
    return (f"weights given by position are read in two orders, the model's objectives {policy} and the "
            f"reward's {scored}: give them by name, e.g. {{{', '.join(f'{o!r}: ...' for o in policy)}}}")


def decode(method: str, model: Any, tokenizer: Any, prompts: Sequence[Any], *, reward: Any = None,
           controls: Controls | Sequence[Controls] | None = None, **kwargs: Any) -> DecodeResult:
    """Run decoder `method` (see `names()`) with per-request controls. kwargs go to the decoder (e.g.
    `models=[...]` for fusion, `value_model=` for controlled decoding, `reward_model=` for ARGS)."""
    fn = get(method)
    check_call(method, model, tokenizer, prompts, kwargs)
    prompts, controls, reward = list(prompts), per_request(controls, len(prompts)), as_reward(reward)
    check_options(method, controls)
    for i, c in enumerate(controls):
        if reward is not None and (why := weights_order_problem(model, reward, c.weights)):
            raise ConfigError(f"request {i + 1}: {why}", field="weights")
    shared = _BATCH_SHARED.get(method, ())
    fields = [k for k in shared if k in Controls.__dataclass_fields__]
    parts = []
    for idx, shown, steered in conditioned_groups(model, tokenizer, prompts, controls):
        check_windows(model, tokenizer, shown, [controls[i] for i in idx], idx)
        asked = [prompts[i] for i in idx]
        # the reward scores the prompt as asked, not as a prompt-level scheme restated it for the policy
        judge = AsAsked(reward, shown, asked) if reward is not None and shown != asked else reward
        with steered():
            batches = groups([controls[i] for i in idx], *fields, extra=[k for k in shared if k not in fields])
            for batch, _ in batches:
                ids = [idx[j] for j in batch]
                parts.append((ids, fn(model, tokenizer, [shown[j] for j in batch], reward=judge,
                                      controls=[controls[i] for i in ids], **kwargs)))
    return parts[0][1] if len(parts) == 1 else merge_results(parts, len(prompts))


def check_windows(model: Any, tokenizer: Any, prompts: Sequence[Any], controls: Sequence[Controls],
                  index: Sequence[int]) -> None:
    """A ConfigError naming each request (by its `index`) whose prompt, as the model sees it, plus its
    max_new_tokens exceeds the model's context window: past a learned position table (GPT-2's) the whole batch
    failed with an IndexError traceback, past a rotary model's it answered badly without a word."""
    from pluralign.decode.kv import context_window, encode_prompts, window_problem

    window = context_window(model)
    if window is None:
        return
    problems = [f"request {i}: {why}" for i, p, c in zip(index, prompts, controls, strict=True)
                if (why := window_problem(len(encode_prompts(tokenizer, [p], c.chat_template)[0]),
                                          c.max_new_tokens, window))]
    if problems:
        raise ConfigError("; ".join(problems))


def conditioned_groups(model: Any, tokenizer: Any, prompts: list[Any], controls: list[Controls]
                       ) -> list[tuple[list[int], list[Any], Callable[[], AbstractContextManager]]]:
    """How a model carrying a conditioning scheme must be run for each request: (indices of the requests
    that can share one call, their prompts as the model must see them, a context that steers the model for
    them). A prompt-level scheme (RiC scores, statements, control tokens) rewrites the prompts and all
    requests share one call; a model-level one (soups, heads, user vectors) groups the requests by
    condition. A model without a scheme: one group, prompts unchanged."""
    from pluralign import conditioning

    everyone = list(range(len(prompts)))
    scheme = conditioning.attached(model)
    if scheme is None or scheme.name == "none":
        return [(everyone, list(prompts), nullcontext)]
    scheme.bind(tokenizer)
    conds = [scheme.condition_of_request(c, i) for i, c in enumerate(controls)]
    shown = [scheme.prompt(p, c) for p, c in zip(prompts, conds, strict=True)]
    if not scheme.model_level:
        return [(everyone, shown, nullcontext)]
    out = []
    for cond in dict.fromkeys(conds):
        idx = [i for i, c in enumerate(conds) if c == cond]
        out.append((idx, [shown[i] for i in idx], lambda cond=cond: scheme.steer(model, cond)))
    return out


def merge_results(parts: list[tuple[list[int], DecodeResult]], n: int) -> DecodeResult:
    """One result from results over disjoint subsets of the requests (indices into the full list)."""
    def gather(name: str, of=getattr) -> list | None:
        if any(of(r, name) is None for _, r in parts):
            return None
        out: list = [None] * n
        for idx, r in parts:
            for j, i in enumerate(idx):
                out[i] = of(r, name)[j]
        return out

    texts = gather("texts")
    # per-request info (lists with one entry per request) that every part has
    shared = set.intersection(*(set(r.info) for _, r in parts)) if parts else set()
    per_request = {k: gather(k, lambda r, k: r.info[k]) for k in sorted(shared)
                   if all(isinstance(r.info[k], list) and len(r.info[k]) == len(idx) for idx, r in parts)}
    row_info = tuple(k for k in parts[0][1].row_info if k in per_request) if parts else ()
    scores, utility = gather("scores"), gather("utility")
    compute, reward_compute = Compute(), Compute()
    for _, r in parts:
        compute.add(r.compute)
        reward_compute.add(r.reward_compute)
    return DecodeResult(texts=texts, scores=torch.stack(scores) if scores else None,
                        objectives=parts[0][1].objectives if parts else None,
                        utility=torch.stack(utility) if utility else None, candidates=gather("candidates"),
                        candidate_scores=gather("candidate_scores"), compute=compute,
                        reward_compute=reward_compute, row_info=row_info,
                        info={"groups": [idx for idx, _ in parts], **per_request})


def groups(controls: list[Controls], *keys: str, extra: Sequence[str] = ()) -> list[tuple[list[int], Controls]]:
    """Indices of requests sharing the given control fields and `extra` options (they can share one batch)."""
    out: dict[tuple, list[int]] = {}
    for i, c in enumerate(controls):
        key = tuple(repr(getattr(c, k)) for k in keys) + tuple(repr(c.extra.get(k)) for k in extra)
        out.setdefault(key, []).append(i)
    return [(idx, controls[idx[0]]) for idx in out.values()]


def weights_matrix(reward: Any, controls: list[Controls], m: int) -> torch.Tensor:
    """Per-request objective weights [P, m]."""
    names = objective_names(reward, m)
    return torch.stack([weight_vector(c.weights, names) for c in controls]) if controls else torch.zeros(0, m)


def score_candidates(reward: Any, prompts: list[Any], cands: list[list[str]], controls: list[Controls]
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Score every candidate: per prompt, objective scores [n_p, m] and weighted utility [n_p]."""
    flat_p = [prompts[p] for p, row in enumerate(cands) for _ in row]
    flat_y = [y for row in cands for y in row]
    users = [controls[p].user for p, row in enumerate(cands) for _ in row]
    s = score_groups(reward, flat_p, flat_y, users)
    w = weights_matrix(reward, controls, s.shape[1])
    per, util, start = [], [], 0
    for p, row in enumerate(cands):
        block = s[start:start + len(row)]
        per.append(block)
        util.append(weighted(block, w[p]))
        start += len(row)
    return per, util


def finish(texts: list[str], prompts: list[Any], reward: Any, controls: list[Controls], *,
           compute: Compute, reward_compute: Compute | None = None, **fields: Any) -> DecodeResult:
    """Score the chosen texts (if a reward is given) and build the result."""
    scores = utility = objectives = None
    if reward is not None:
        per, util = score_candidates(reward, prompts, [[t] for t in texts], controls)
        scores = torch.cat(per)
        utility = torch.cat(util)
        objectives = objective_names(reward, scores.shape[1])
    return DecodeResult(texts=texts, scores=scores, objectives=objectives, utility=utility, compute=compute,
                        reward_compute=reward_compute or Compute(), **fields)
