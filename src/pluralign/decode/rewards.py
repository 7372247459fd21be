"""Pluggable reward sources for decoding.

A reward source is anything with `score(prompts, responses, user=None) -> Tensor[N, m]` (m objectives,
named by an optional `objectives` attribute), or a plain callable `(prompts, responses) -> [N] | [N, m]`.
Per-request objective weights turn the m scores into one scalar per candidate. `CachedReward` wraps a
transformer reward model so that k candidate next tokens are scored from one cached prefix (ARGS).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pluralign.decode.kv import Compute, LMState, model_device
from pluralign.errors import ConfigError, PluralignError


class FunctionReward:
    """A Python callable `(prompts, responses) -> array [N] or [N, m]` as a reward source; its columns are
    named by `objectives`, else r0, r1, ... It is the user's code: what it raises is reported as a user
    error naming it (`name`, as the user gave it)."""

    def __init__(self, fn: Callable, objectives: Sequence[str] | None = None, name: str | None = None):
        self.fn = fn
        self.objectives = list(objectives) if objectives else None
        self.name = name or getattr(fn, "__qualname__", None) or type(fn).__name__

    def score(self, prompts: list[str], responses: list[str], user: Any = None) -> torch.Tensor:
        try:
            out = self.fn(list(prompts), list(responses))
        except PluralignError:
            raise
        except Exception as e:
            raise PluralignError(f"reward '{self.name}' raised {type(e).__name__}: {e}") from e
        return checked_scores(out, len(responses), self.name)


class GoldReward:
    """The sandbox's gold attributes (`pluralign.sandbox.attributes.score_batch`), imported lazily so
    decoding works without the sandbox."""

    def __init__(self) -> None:
        self._attrs = importlib.import_module("pluralign.sandbox.attributes")
        self.objectives = list(self._attrs.ATTRIBUTES)

    def score(self, prompts: list[str], responses: list[str], user: Any = None) -> torch.Tensor:
        return torch.as_tensor(self._attrs.score_batch(list(prompts), list(responses)), dtype=torch.float)


class Counted:
    """Counts how many (prompt, response) pairs a reward source scored, and in how many calls."""

    def __init__(self, source: Any):
        self.source = source
        self.objectives = getattr(source, "objectives", None)
        self.name = reward_name(source)
        self.compute = Compute()

    def score(self, prompts: list[str], responses: list[str], user: Any = None) -> torch.Tensor:
        self.compute.add(Compute(forward=len(responses), calls=1))
        return self.source.score(prompts, responses, user=user)


def as_reward(obj: Any) -> Any:
    """Any accepted reward form -> an object with `.score(prompts, responses, user)`."""
    if obj is None:
        return None
    if isinstance(obj, str):
        return load_reward(obj)
    if hasattr(obj, "score") and callable(obj.score) and not isinstance(obj, torch.nn.Linear):
        return obj
    if callable(obj):  # a function may name its columns: `fn.objectives = ["detail", "brevity"]`
        return FunctionReward(obj, getattr(obj, "objectives", None))
    raise ConfigError(f"not a reward source: {type(obj).__name__} (need .score(prompts, responses, user) or a callable)")


def import_user_module(module: str) -> Any:
    """Import a user's module as `python -m` would find it: the `pluralign` console script's sys.path lacks
    the working directory, where a user's reward module next to their data lives. It is appended, so a
    local file never shadows an installed module."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    return importlib.import_module(module)


def load_reward(spec: str, field: str = "--reward") -> Any:
    """"gold" (sandbox attributes), "module:function", or a reward-model directory (pluralign.reward);
    errors name `field`, where the user gave `spec`."""
    if spec == "gold":
        return GoldReward()
    if ":" in spec and not Path(spec).exists():
        module, _, name = spec.partition(":")
        try:
            fn = getattr(import_user_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"{field} {spec}: cannot import {name} from {module} ({e})") from e
        if not callable(fn):
            raise ConfigError(f"{field} {spec}: {name} is a {type(fn).__name__}, not a function (prompts, responses) -> "
                              "scores or an object with .score")
        if hasattr(fn, "score") and callable(fn.score):
            return fn
        return FunctionReward(fn, getattr(fn, "objectives", None), name=spec)
    if Path(spec).is_dir():
        try:
            reward_mod = importlib.import_module("pluralign.reward")
        except ImportError as e:
            raise ConfigError(f"{field} {spec}: loading reward-model directories needs pluralign.reward ({e})") from e
        loader = getattr(reward_mod, "load_reward_model", None) or getattr(reward_mod, "load", None)
        if loader is None:
            raise ConfigError("pluralign.reward has no load_reward_model(dir)")
        try:
            return loader(spec)
        except PluralignError as e:  # e.g. a policy's directory given as a reward model: say where it was given
            raise ConfigError(f"{field} {spec}: {e}") from None
    raise ConfigError(f"{field} {spec!r}: expected 'gold', 'module:function' or an existing directory")


def check_source(spec: str, field: str) -> None:
    """Fail early on a reward source that cannot load: 'gold' and module:function are imported (cheap); a
    reward-model directory has its config.json checked, its model loads where it is used (a server announced
    itself, then stopped on a directory that held no reward model)."""
    if not spec.strip():  # Path("") is the current directory
        raise ConfigError(f"{field}: empty; give 'gold', module:function or a reward-model directory")
    if not Path(spec).is_dir():
        load_reward(spec, field)
        return
    from pluralign.reward.base import read_reward_config

    try:
        read_reward_config(spec)
    except PluralignError as e:
        raise ConfigError(f"{field} {spec}: {e}") from None


def objective_names(reward: Any, m: int) -> list[str]:
    names = getattr(reward, "objectives", None)
    return list(names) if names and len(names) == m else [f"r{i}" for i in range(m)]


def weights_problem(reward: Any, weights: Any) -> str | None:
    """What is wrong with request weights for `reward`, found before anything is generated, or None. A
    reward that names no objectives has columns r0, r1, ... known only once it scores: any other name is
    wrong already."""
    if weights is None:
        return None
    names = getattr(reward, "objectives", None)
    if not names:
        unnamed = [k for k in weights if not re.fullmatch(r"r\d+", str(k))] if isinstance(weights, Mapping) else []
        return (f"weights name objectives {unnamed} but the reward names none (its columns are r0, r1, ...): give "
                "weights in column order, or name them (fn.objectives = [...])") if unnamed else None
    try:
        weight_vector(weights, objective_names(reward, len(names)))
    except (ConfigError, TypeError, ValueError) as e:
        return str(e)
    return None


def weight_vector(weights: Any, names: Sequence[str]) -> torch.Tensor:
    """Objective weights as a tensor [m]: None -> all ones / m (one objective: 1), a mapping by objective
    name (missing names weigh 0), or a sequence in objective order."""
    m = len(names)
    if weights is None:
        return torch.full((m,), 1.0 / m)
    if isinstance(weights, Mapping):
        unknown = set(weights) - set(names)
        if unknown:
            raise ConfigError(f"weights name unknown objectives {sorted(unknown)}; known: {list(names)}")
        values = [weights.get(k, 0.0) for k in names]
    else:
        values = list(weights)
    try:
        w = torch.tensor([float(v) for v in values])
    except (TypeError, ValueError):  # "high" was a ValueError traceback
        raise ConfigError(f"weights must be numbers, got {values}") from None
    if w.numel() != m:
        raise ConfigError(f"{w.numel()} weights given for {m} objectives {list(names)}")
    return w


def weighted(scores: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The weighted reward `scores @ w`. Scores and weights are each finite in float32, yet their weighted
    sum can overflow it (weights of 3e38 on several objectives): refused naming the weights, where the inf
    or NaN made a best-of-N pick blind, a soft pick fail to sample, or a JSON answer fail to render."""
    out = scores @ w
    if not bool(torch.isfinite(out).all()):
        raise ConfigError(f"weights {[float(x) for x in w]} overflow float32 once applied to the reward's scores: "
                          "give smaller weights (only their ratios matter to a best-of-N pick)", field="weights")
    return out


def score_groups(reward: Any, prompts: list[str], responses: list[str], users: Sequence[Any] | None = None,
                 name: str | None = None) -> torch.Tensor:
    """Score pairs [N, m], calling the source once per distinct user (per-user reward models). Every
    call's scores are checked (`checked_scores`); errors name the source (`name`, else its own)."""
    name = name or reward_name(reward)
    if not users or all(u is None for u in users) or not takes_user_ids(reward):
        return checked_scores(reward.score(prompts, responses, user=None), len(responses), name)
    out: torch.Tensor | None = None
    for u in dict.fromkeys(users):
        idx = [i for i, v in enumerate(users) if v == u]
        s = checked_scores(reward.score([prompts[i] for i in idx], [responses[i] for i in idx], user=u), len(idx), name)
        if out is None:
            out = torch.zeros(len(prompts), s.shape[1])
        elif s.shape[1] != out.shape[1]:
            raise PluralignError(f"reward '{name}' returned {s.shape[1]} columns for user {u!r} and "
                                 f"{out.shape[1]} for another user")
        out[idx] = s
    return out


def takes_user_ids(reward: Any) -> bool:
    """Whether `reward.score(..., user=...)` reads a user id. A multi-objective reward model's `user` is
    objective weights: the users of a request or of prompt rows (for a user-conditioned policy, a PAL
    reward) stopped it with "user: expected numbers ...". Wrappers (`Counted`, `AsAsked`) and ensembles
    answer as what they hold; any other source gets the ids (a user's own source may score per user)."""
    inner = getattr(reward, "source", None)
    if inner is not None and hasattr(inner, "score"):
        return takes_user_ids(inner)
    members = getattr(reward, "members", None)
    if isinstance(members, list):
        return any(takes_user_ids(m) for m in members)
    return getattr(reward, "model_type", None) != "multi"


def reward_name(reward: Any) -> str:
    return getattr(reward, "name", None) or type(reward).__name__


def checked_scores(raw: Any, n: int, name: str) -> torch.Tensor:
    """A reward source's output for n responses as finite scores [n, m]; anything else (not numbers, another
    length, NaN or ±inf) is a user error naming the source."""
    if isinstance(raw, torch.Tensor):
        x = raw.detach().to("cpu", torch.float)
    else:
        try:
            x = torch.as_tensor(np.asarray(raw, dtype=np.float64), dtype=torch.float)
        except (TypeError, ValueError) as e:
            raise PluralignError(f"reward '{name}' returned something that is not numbers "
                                 f"({type(raw).__name__}: {e})") from None
    x = x[:, None] if x.dim() == 1 else x
    if x.dim() != 2 or x.shape[0] != n:
        raise PluralignError(f"reward '{name}' returned shape {tuple(x.shape)} for {n} responses; "
                             f"expected [{n}] or [{n}, m]")
    bad = (~torch.isfinite(x)).any(1).nonzero().flatten()
    if len(bad):
        raise PluralignError(f"reward '{name}' returned a non-finite value for {len(bad)} of {n} responses "
                             f"(first at response {int(bad[0])}: {x[bad[0]].tolist()})")
    return x


class AsAsked:
    """A reward source behind a policy whose conditioning scheme restated the prompts (a DPA or RiC
    statement, control tokens; `decode.api.conditioned_groups`): the decoder hands it the prompts as the
    policy saw them, and it scores each pair on the prompt as the request asked it, the text the reward
    was trained on and the one `Controls` promises reward sources."""

    def __init__(self, source: Any, shown: Sequence[Any], asked: Sequence[Any]):
        self.source = source
        self.objectives = getattr(source, "objectives", None)
        self.name = reward_name(source)
        self._asked = {_prompt_key(s): a for s, a in zip(shown, asked, strict=True)}

    def originals(self, prompts: Sequence[Any]) -> list[Any]:
        return [self._asked.get(_prompt_key(p), p) for p in prompts]

    def score(self, prompts: list[Any], responses: list[str], user: Any = None) -> torch.Tensor:
        return self.source.score(self.originals(prompts), responses, user=user)


def _prompt_key(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)


class CachedReward:
    """A transformer reward model scored incrementally: the prefix is run once with a KV cache and the
    k candidate next tokens of each row go through the model as one batch of single-token steps
    (Khanov et al. 2024, ARGS, §3: the RM cache is reordered to the chosen branch).

    `backbone` is a causal transformer returning hidden states; `head` maps the last hidden state [.., H]
    to rewards [.., m]. It must share the policy's vocabulary. `render`, when given, turns the prompts into
    the ids the reward model itself sees them as (its own chat template and mode, as in its training), which
    may differ from the policy's rendering (e.g. a raw /v1/completions prompt); without it the policy's
    prompt ids are used.
    """

    def __init__(self, backbone: Any, head: Callable[[torch.Tensor], torch.Tensor], *, pad_id: int = 0,
                 render: Callable[[list[Any]], list[list[int]]] | None = None):
        self.backbone = backbone
        self.head = head
        self.pad_id = pad_id
        self.render = render
        self.compute = Compute()
        self.state: LMState | None = None

    @classmethod
    def from_sequence_classifier(cls, model: Any, pad_id: int = 0) -> CachedReward:
        """Wrap a Hugging Face *ForSequenceClassification model (backbone + `score` linear head)."""
        head = getattr(model, "score", None) or getattr(model, "classifier", None)
        if head is None:
            raise ConfigError(f"{type(model).__name__} has no `score`/`classifier` head")
        return cls(model.base_model, head, pad_id=pad_id)

    @torch.no_grad()
    def start(self, seqs: list[list[int]]) -> torch.Tensor:
        """Prefill the prefixes; returns the rewards of the prefixes themselves [B, m]."""
        self.state = LMState.from_ids(self.backbone, seqs, self.pad_id, output="hidden", compute=self.compute)
        return self._reward(self.state.hidden)

    @torch.no_grad()
    def candidates(self, tokens: torch.Tensor) -> torch.Tensor:
        """Rewards [B, k, m] of each row's prefix extended by each of its k candidate tokens [B, k]."""
        b, k = tokens.shape
        branch = self.state.fork(torch.arange(b, device=model_device(self.backbone)).repeat_interleave(k))
        branch.advance(tokens.reshape(-1))
        self._branch = branch
        return self._reward(branch.hidden).view(b, k, -1)

    def commit(self, choice: torch.Tensor) -> None:
        """Keep, for each row b, the branch of candidate `choice[b]` as the new prefix cache."""
        b = choice.shape[0]
        k = self._branch.batch_size // b
        self._branch.select(torch.arange(b, device=choice.device) * k + choice)
        self.state = self._branch

    def keep_rows(self, rows: list[int]) -> None:
        self.state.select(rows)

    def _reward(self, hidden: torch.Tensor) -> torch.Tensor:
        r = self.head(hidden).float()
        return r if r.dim() == 2 else r[:, None]
