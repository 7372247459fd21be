"""The loss registry: the one dispatch from a loss name to its function.

Each loss is a small pure function registered with `@register(name, kind=...)`. Its signature is the single
source of truth: parameters named like the kind's canonical inputs (below) or listed in `extra_inputs` are
data; every other keyword-only parameter is a hyper-parameter and its default is the documented default.
`needs_reference` / `needs_lengths` are read off the signature too, so they cannot drift from the code.

Some methods are a registered loss plus something the training recipe does around it (WPO weights the
pairs, LD-DPO mixes token log-probs) or are another paper's name for a registered loss (LN-DPO is
``sigmoid_norm``): `alias` gives them their own name, resolved by `get` and `describe`, and listed by
`aliases` (and `pluralign losses`) with the recipe options the name implies.

`get(name)` returns a `Loss`, a callable with the kind's canonical calling convention: it accepts every
canonical input (passing on only those the function reads, so a recipe can call any loss of a kind the same
way), rejects unknown hyper-parameters and missing inputs with a `ConfigError`, and applies the optional
per-example `weights` (e.g. WPO weights, BCO's UDM weights) after the function. `mixture` sums registered
losses of one kind with weights (DPO + NLL = RPO).

Every loss returns `(per_example_loss [B], metrics)`. Metrics are detached tensors: per-example [B] where the
quantity is per example (implicit rewards, margins, accuracies), 0-d for batch-level statistics (KTO's KL
baseline, per-label reward means).
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from pluralign.errors import ConfigError

KINDS = ("pairwise", "unpaired", "listwise", "reward")
LossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]


def _pairwise(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, *,
              chosen_lengths=None, rejected_lengths=None, weights=None):  # fmt: skip
    """Canonical inputs of a pairwise loss (sequence log-prob sums [B], completion token counts [B])."""


def _unpaired(policy_logps, ref_logps, labels, *, kl_policy_logps=None, kl_ref_logps=None, reward_shift=0.0,
              weights=None):  # fmt: skip
    """Canonical inputs of an unpaired loss (labels [B] bool: True = desirable)."""


def _listwise(policy_logps, ref_logps, scores, *, mask=None, weights=None):
    """Canonical inputs of a listwise loss ([B, K] each; higher score = better; mask marks real items)."""


# Reward losses differ in their inputs (pairs of rewards vs logits and labels): their own
# parameters without defaults are their inputs.
_CANONICAL = {
    "pairwise": inspect.signature(_pairwise),
    "unpaired": inspect.signature(_unpaired),
    "listwise": inspect.signature(_listwise),
    "reward": None,
}


@dataclass(frozen=True)
class LossInfo:
    """What a registered loss reads and which hyper-parameters (with defaults) it takes."""

    name: str
    kind: str
    needs_reference: bool
    needs_lengths: bool  # reads completion lengths (IPO only in its default, length-normalised form)
    hyperparams: dict[str, Any]
    doc: str
    inputs: tuple[str, ...] = ()  # data inputs the function reads
    required: tuple[str, ...] = ()  # those it cannot do without
    weighted: bool = True  # whether per-example `weights` make sense (False when the loss sorts the batch)
    extra_inputs: tuple[str, ...] = field(default=(), repr=False)


class Loss:
    """A registered loss bound to its calling convention (what `get` returns)."""

    def __init__(self, fn: LossFn, info: LossInfo, signature: inspect.Signature,
                 bound_hyperparams: Mapping[str, Any] | None = None):  # fmt: skip
        self.fn, self.info, self.signature = fn, info, signature
        self.bound_hyperparams = dict(bound_hyperparams or {})
        self.__doc__ = fn.__doc__ or info.doc

    def __repr__(self) -> str:
        return f"Loss({self.info.name!r}, kind={self.info.kind!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
        hyperparams = {k: kwargs.pop(k) for k in list(kwargs) if k not in self.signature.parameters}
        check_hyperparams(self.info, hyperparams)
        try:
            inputs = self.signature.bind(*args, **kwargs).arguments
        except TypeError as e:  # e.g. a sixth positional tensor: "too many positional arguments", no loss named
            raise ConfigError(f"loss '{self.info.name}': {e}; its inputs: {', '.join(self.signature.parameters)}") from None
        weights = inputs.pop("weights", None)
        missing = [n for n in self.info.required if inputs.get(n) is None]
        if missing:
            raise ConfigError(f"loss '{self.info.name}' needs {', '.join(missing)}")
        if weights is not None and not self.info.weighted:
            raise ConfigError(f"loss '{self.info.name}' sorts the batch, so per-example weights cannot apply")
        used = {k: v for k, v in inputs.items() if k in self.info.inputs and v is not None}
        check_batch_sizes(self.info.name, used | ({"weights": weights} if weights is not None else {}))
        loss, metrics = self.fn(**used, **(self.bound_hyperparams | hyperparams))
        return (loss if weights is None else loss * weights), metrics


_LOSSES: dict[str, Loss] = {}
# Inputs whose size is not the batch's: KTO's KL batch (its mean is taken) and BCO's running reward shift.
_NOT_PER_EXAMPLE = frozenset({"kl_policy_logps", "kl_ref_logps", "reward_shift"})


def check_batch_sizes(loss: str, inputs: Mapping[str, Any]) -> None:
    """A `ConfigError` naming the inputs of `loss` whose first dimension (the batch) differs: torch would
    broadcast a batch of 1 against the others and return a loss of the wrong pairs without a word."""
    sizes = {k: v.shape[0] for k, v in inputs.items()
             if isinstance(v, Tensor) and v.dim() > 0 and k not in _NOT_PER_EXAMPLE}
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{k} {n}" for k, n in sizes.items())
        raise ConfigError(f"loss '{loss}': inputs of different batch sizes ({shown}); give one value per example "
                          "in each")


@dataclass(frozen=True)
class Alias:
    """Another name for a registered loss; `recipe` holds the preference-recipe options the name implies."""

    name: str
    target: str
    recipe: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""


_ALIASES: dict[str, Alias] = {}


def alias(name: str, target: str, *, recipe: Mapping[str, Any] | None = None, doc: str = "") -> None:
    """Make registered loss `target` reachable as `name` (with recipe options `recipe`, if any)."""
    if name in _LOSSES or name in _ALIASES:
        raise ValueError(f"loss name {name!r} registered twice")
    if target not in _LOSSES:
        raise ValueError(f"alias {name!r} of unknown loss {target!r}")
    _ALIASES[name] = Alias(name, target, dict(recipe or {}), doc)


def aliases() -> dict[str, Alias]:
    """Every alias by name."""
    return dict(_ALIASES)


def register(name: str, *, kind: str, extra_inputs: tuple[str, ...] = (), weighted: bool = True,
             doc: str | None = None) -> Callable[[LossFn], LossFn]:  # fmt: skip
    """Register a loss function under `name`; hyper-parameters and inputs are read from its signature."""
    if kind not in KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {KINDS}")

    def decorator(fn: LossFn) -> LossFn:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        info = _info_from_signature(name, kind, fn, extra_inputs, weighted, doc)
        _LOSSES[name] = Loss(fn, info, _input_signature(kind, fn, extra_inputs))
        return fn

    return decorator


def names() -> list[str]:
    """All registered loss names, sorted."""
    return sorted(_LOSSES)


def get(name: str) -> Loss:
    """The loss registered as `name`; a string like "dpo:1,nll:0.5" builds a `mixture`."""
    if not isinstance(name, str):  # None was "argument of type 'NoneType' is not iterable"
        raise ConfigError(f"a loss name must be a string (see losses.names()), got {type(name).__name__}",
                          field="loss")
    if name in _LOSSES:
        return _LOSSES[name]
    if name in _ALIASES:
        return _LOSSES[_ALIASES[name].target]
    if ":" in name or "," in name:
        return mixture(name)
    known = {**_LOSSES, **_ALIASES}
    raise ConfigError(f"unknown loss {name!r}{_suggest(name, known)}; valid losses: {', '.join(sorted(known))}")


def describe(name: str) -> LossInfo:
    """Kind, inputs, hyper-parameters (with defaults) and a one-paragraph description of a loss."""
    return get(name).info


def mixture(weights: Mapping[str, float] | str,
            hyperparams: Mapping[str, Mapping[str, Any]] | None = None) -> Loss:  # fmt: skip
    """Weighted sum of registered losses of one kind, e.g. {"dpo": 1.0, "nll": 0.5} or "dpo:1,nll:0.5".

    The result is a `Loss` of the same kind. Call-time hyper-parameters go to every component that takes them
    (`beta` reaches both DPO and, say, IPO); `hyperparams={"ipo": {"beta": 0.5}}` fixes per-component values.
    Metrics come back prefixed by the component's name ("dpo/rewards/margins"), with each component's
    per-example loss as "<name>/loss".
    """
    parsed = (
        _parse_weights(weights) if isinstance(weights, str) else {k: float(v) for k, v in weights.items()}
    )
    if not parsed:
        raise ConfigError("a loss mixture needs at least one component")
    for comp in hyperparams or {}:
        if comp not in parsed:
            raise ConfigError(
                f"hyper-parameters given for '{comp}', which is not in the mixture {sorted(parsed)}"
            )
    parts = {n: get(n) for n in parsed}
    parts = {n: Loss(p.fn, p.info, p.signature, (hyperparams or {}).get(n)) for n, p in parts.items()}
    for n, part in parts.items():
        if not (math.isfinite(parsed[n]) and parsed[n] >= 0):  # a negative NLL weight unlearns the chosen answers
            raise ConfigError(f"loss mixture weight of '{n}' must be finite and >= 0, got {parsed[n]}")
        check_hyperparams(part.info, part.bound_hyperparams)
    infos = [p.info for p in parts.values()]
    if len({i.kind for i in infos}) > 1:
        raise ConfigError(
            f"a loss mixture must combine losses of one kind, got {sorted({i.kind for i in infos})}"
        )

    def union(attr: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(x for i in infos for x in getattr(i, attr)))

    spec = ",".join(f"{n}:{w:g}" for n, w in parsed.items())
    info = LossInfo(
        name=spec, kind=infos[0].kind, needs_reference=any(i.needs_reference for i in infos),
        needs_lengths=any(i.needs_lengths for i in infos),
        hyperparams={k: v for i in reversed(infos) for k, v in i.hyperparams.items()},
        doc=f"Weighted sum {spec} of registered losses.", inputs=union("inputs"), required=union("required"),
        weighted=all(i.weighted for i in infos), extra_inputs=union("extra_inputs"),
    )  # fmt: skip

    def mixed(**kwargs: Any) -> tuple[Tensor, dict[str, Tensor]]:
        total, metrics = 0.0, {}
        for n, part in parts.items():
            # Per-component hyper-parameters fixed at construction win over call-time ones.
            hyper = set(part.info.hyperparams) - set(part.bound_hyperparams)
            own = {k: v for k, v in kwargs.items() if k in part.signature.parameters or k in hyper}
            loss, part_metrics = part(**own)
            total = total + parsed[n] * loss
            metrics |= {f"{n}/{k}": v for k, v in part_metrics.items()} | {f"{n}/loss": loss.detach()}
        return total, metrics

    params = dict(next(iter(parts.values())).signature.parameters)
    for part in parts.values():
        for n, p in part.signature.parameters.items():
            params.setdefault(n, p.replace(kind=inspect.Parameter.KEYWORD_ONLY, default=None))
    return Loss(mixed, info, inspect.Signature(list(params.values())))


def _input_signature(kind: str, fn: LossFn, extra_inputs: tuple[str, ...]) -> inspect.Signature:
    """The calling convention of a loss: the kind's canonical inputs plus its extra (keyword) inputs."""
    canonical = _CANONICAL[kind]
    own = inspect.signature(fn).parameters
    if canonical is None:
        params = [p for p in own.values() if p.default is inspect.Parameter.empty]
    else:
        params = list(canonical.parameters.values())
    params += [own[n].replace(kind=inspect.Parameter.KEYWORD_ONLY) for n in extra_inputs]
    return inspect.Signature(params)


def _info_from_signature(name: str, kind: str, fn: LossFn, extra_inputs: tuple[str, ...], weighted: bool,
                         doc: str | None) -> LossInfo:  # fmt: skip
    params = inspect.signature(fn).parameters
    data = set(_input_signature(kind, fn, extra_inputs).parameters)
    inputs = tuple(n for n in params if n in data)
    required = tuple(n for n in inputs if params[n].default is inspect.Parameter.empty)
    hyper = {n: p.default for n, p in params.items() if n not in data}
    for n in hyper:
        if (
            params[n].kind is not inspect.Parameter.KEYWORD_ONLY
            or params[n].default is inspect.Parameter.empty
        ):
            raise TypeError(f"loss {name!r}: hyper-parameter {n!r} must be keyword-only with a default")
    summary = doc or (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
    return LossInfo(
        name=name, kind=kind, needs_reference=any(n.startswith("ref_") for n in required),
        needs_lengths=any(n.endswith("lengths") for n in inputs), hyperparams=hyper, doc=summary,
        inputs=inputs, required=required, weighted=weighted, extra_inputs=tuple(extra_inputs),
    )  # fmt: skip


def _f_divergences() -> tuple[str, ...]:
    from pluralign.losses.pairwise import F_DIVERGENCES  # registers losses, so not at import time

    return tuple(F_DIVERGENCES)


# A hyper-parameter's name means the same in every loss that takes it: its valid values, checked when the
# config is read (a negative β trains the preference backwards; β = 0 gives no gradient at all).
_VALID: dict[str, tuple[Callable[[Any], bool], str]] = {
    "beta": (lambda v: v > 0, "> 0"),
    "label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "desirable_weight": (lambda v: v >= 0, ">= 0"),
    "undesirable_weight": (lambda v: v >= 0, ">= 0"),
    "alpha": (lambda v: v >= 0, ">= 0"),
    "tau": (lambda v: v > 0, "> 0"),
    "eta": (lambda v: v > 0, "> 0"),
    "ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "w0": (lambda v: v > 0, "> 0"),
    "center_coef": (lambda v: v >= 0, ">= 0"),
    "pos_weight": (lambda v: v is None or v > 0, "> 0 (or null)"),
    "f_divergence": (lambda v: v in _f_divergences(), "one of the f-divergences"),
}
_VALID_IN = {("orpo", "beta"): (lambda v: v >= 0, ">= 0")}  # ORPO's β is the odds-ratio term's weight λ


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _value_problem(loss: str, key: str, value: Any, default: Any) -> str | None:
    """Why `value` cannot be hyper-parameter `key` of `loss` (whose default is `default`), or None."""
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int | float):
        ok, want = _is_number(value), "a finite number"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    elif isinstance(default, tuple | list) or key == "history_weights":
        ok = value is None or (isinstance(value, list | tuple) and all(_is_number(x) and x >= 0 for x in value))
        want = "a list of numbers >= 0"
    else:  # a default of None: optional, a number when given
        ok, want = value is None or _is_number(value), "a finite number or null"
    if not ok:
        return f"must be {want}, got {value!r}"
    rule = _VALID_IN.get((loss, key)) or _VALID.get(key)
    if rule is not None and value is not None and not rule[0](value):
        choices = f" ({', '.join(_f_divergences())})" if key == "f_divergence" else ""
        return f"must be {rule[1]}{choices}, got {value!r}"
    return None


def check_hyperparams(info: LossInfo, given: Mapping[str, Any]) -> None:
    for key, value in given.items():
        if key not in info.hyperparams:
            valid = ", ".join(sorted(info.hyperparams)) or "none"
            raise ConfigError(
                f"loss '{info.name}' has no hyper-parameter {key!r}{_suggest(key, info.hyperparams)}; "
                f"its hyper-parameters: {valid}"
            )
        if isinstance(value, Tensor):  # a per-call value from the recipe (e.g. a scheduled β): its own affair
            continue
        problem = _value_problem(info.name, key, value, info.hyperparams[key])
        if problem:
            raise ConfigError(f"loss '{info.name}': hyper-parameter {key!r} {problem}")


def _parse_weights(spec: str) -> dict[str, float]:
    """'dpo:1,nll:0.5' (a missing weight means 1) → {'dpo': 1.0, 'nll': 0.5}."""
    parsed: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, weight = item.partition(":")
        name = name.strip()
        if name in parsed:  # the later weight replaced the earlier one without a word
            raise ConfigError(f"loss mixture {spec!r} names '{name}' twice; give each loss once with its weight")
        try:
            parsed[name] = float(weight) if weight.strip() else 1.0
        except ValueError:
            raise ConfigError(
                f"loss mixture {spec!r}: weight of '{name}' is not a number: {weight!r}"
            ) from None
        if name in _ALIASES:
            if _ALIASES[name].recipe:
                raise ConfigError(f"loss mixture {spec!r}: '{name}' needs recipe options "
                                  f"{dict(_ALIASES[name].recipe)}; mix '{_ALIASES[name].target}' and set them")
            name = _ALIASES[name].target
        if name not in _LOSSES:
            get(name)  # raises with the list of valid names
    return parsed


def _suggest(word: str, options: Mapping[str, Any] | list[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
