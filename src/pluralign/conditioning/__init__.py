"""Conditioning schemes: what one model is conditioned on, so that it can serve many preferences.

A multi-objective or personal model is steered per request. *What* steers it is a small registered part,
a `Scheme`, applied the same way in training (to each example, from its record's fields) and at
inference (from each request's controls):

===================  ========================================================================================
scheme               the model sees
===================  ========================================================================================
``none``             nothing: a plain model (single-objective training, linear-scalarised sweeps, MODPO)
``system_message``   a statement of the request's weights or preference direction before the prompt (a
                     system message for chat prompts, a leading sentence for plain text): DPA (Wang et al.,
                     ACL 2024) states a unit direction v, weight-conditioned training states w
``reward_tokens``    target scores per objective in the prompt: RiC (Yang et al., ICML 2024), z-scores fitted
                     on the training data, preference weights mapped to scores at inference
``heads``            (model level) K LM heads on a shared trunk, logits mixed by the request's weights:
                     MAH-DPO; see `pluralign.models.multihead`
``soup``             (model level) one model per objective, parameters interpolated by the request's
                     weights: rewarded soups (Ramé et al., NeurIPS 2023); see `pluralign.models.soup`
``joint_soup``       (training only) a soup whose members train in one run, mixed by weights drawn at
                     every step (CLP, Wang et al. 2024); saved as a ``soup``; `pluralign.models.joint_soup`
``persona_message``  the user's or group's preferences stated before the prompt (Janus); `personal.janus`
``control_tokens``   k learned virtual tokens per user or group before the prompt, only their embeddings
                     trained (MEET-style, prompt tuning); see `pluralign.conditioning.control_tokens`
===================  ========================================================================================

Every request or example is reduced to a `Condition` (weights, direction, user, group, target scores),
validated here once (`weights_of`, `direction_of`): negative, NaN, all-zero or wrongly sized weights and
zero directions are `ConfigError`s naming the field. A scheme then

- ``condition_of(record)`` → the Condition of a training example (``objective`` → one-hot weights,
  ``user``/``group`` as given, ``meta["weights"|"direction"|"scores"]`` when the data states them);
- ``prompt(prompt, condition)`` → the prompt the model sees (text-level schemes);
- ``steer(model, condition)`` → a context in which the model is steered (model-level schemes);
- ``state()`` → what must be saved with the model (``conditioning.json``) to rebuild it (`load`).

Adding a scheme (e.g. a personal system message, a user embedding) is one subclass::

    @register("user_system_message")
    class UserSystemMessage(Scheme):
        def prompt(self, prompt, condition):
            return self.with_statement(prompt, f"you answer user {condition.user} .")

`decode.api.decode` applies the scheme saved with a model to every request, so `weights=`, `direction=`,
`user=` and `group=` reach every conditioned method through the decode request contract and CLI.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pluralign.data.field_checks import person_id
from pluralign.errors import ConfigError, Problem
from pluralign.registry import Registry

FILE = "conditioning.json"
Text = str | list[dict[str, Any]]


@dataclass(frozen=True)
class Condition:
    """What one request or training example asks for. Vectors are in the scheme's objective order."""

    weights: tuple[float, ...] | None = None  # ≥ 0, sum 1
    direction: tuple[float, ...] | None = None  # unit norm
    user: str | None = None
    group: str | None = None
    scores: tuple[float, ...] | None = None  # target scores (RiC)

    def person(self) -> str | None:
        """Who the condition names: "user 'u'", else "group 'g'", else None."""
        return f"user '{self.user}'" if self.user is not None else f"group '{self.group}'" if self.group is not None else None


# ---------------------------------------------------------------- validation


def weights_of(value: Any, objectives: Sequence[str], field: str = "weights") -> np.ndarray:
    """Objective weights as a float64 vector on the simplex, from a sequence in objective order or a
    {objective: weight} mapping (missing objectives weigh 0). Raises `ConfigError` naming `field`."""
    vec = vector_of(value, objectives, field)
    if np.any(vec < 0):
        raise ConfigError(f"{field}: weights must be non-negative, got {_show(vec, objectives)}")
    total = float(vec.sum())
    if total <= 0:
        raise ConfigError(f"{field}: weights are all zero; give at least one positive weight over {list(objectives)}")
    return vec / total


def direction_of(value: Any, objectives: Sequence[str], field: str = "direction") -> np.ndarray:
    """A preference direction (DPA) as a unit vector; any sign is allowed, norm 0 is an error."""
    vec = vector_of(value, objectives, field)
    norm = float(np.linalg.norm(vec))
    if norm == 0:
        raise ConfigError(f"{field}: the direction has norm 0; give a non-zero vector over {list(objectives)}")
    return vec / norm


def vector_of(value: Any, objectives: Sequence[str], field: str) -> np.ndarray:
    """One finite number per objective, any sign, from a sequence in objective order, a {objective: value}
    mapping (missing objectives 0) or text ('0.7,0.3', 'a=0.7'). Raises `ConfigError` naming `field`."""
    if not objectives:
        raise ConfigError(f"{field}: this model has no objectives to weigh")
    if isinstance(value, str):
        value = parse_vector(value, field)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(objectives))
        if unknown:
            raise ConfigError(f"{field}: unknown objective(s) {unknown}; known: {list(objectives)}")
        value = [value.get(k, 0.0) for k in objectives]
    try:
        vec = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{field}: expected numbers, got {value!r}") from None
    if vec.shape != (len(objectives),):
        raise ConfigError(f"{field}: {vec.size} value(s) given for {len(objectives)} objectives {list(objectives)}")
    if not np.all(np.isfinite(vec)):
        raise ConfigError(f"{field}: values must be finite, got {_show(vec, objectives)}")
    return vec


def parse_vector(text: str, field: str) -> list[float] | dict[str, float]:
    """'0.7,0.3' → [0.7, 0.3]; 'a=0.7,b=0.3' → {'a': 0.7, 'b': 0.3}."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if parts and all("=" in p for p in parts):
            return {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        return [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{field}: expected numbers as w1,w2 or name=w,name=w, got {text!r}") from None


def _show(vec: np.ndarray, objectives: Sequence[str]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in zip(objectives, vec, strict=True)) + "}"


# ---------------------------------------------------------------- schemes


class Scheme:
    """Base scheme: conditions on nothing. Subclasses override `prompt` (text) or `steer` (model)."""

    name: ClassVar[str] = "none"
    model_level: ClassVar[bool] = False  # requests with different conditions cannot share one forward
    saved_keys: ClassVar[tuple[str, ...]] = ()  # weights in the model's safetensors that only the scheme reads
    reads: ClassVar[tuple[str, ...]] = ()  # the request controls it steers by (weights, direction, user, group)

    def __init__(self, objectives: Sequence[str] = (), **params: Any):
        self.objectives = list(objectives)
        if len(set(self.objectives)) != len(self.objectives):
            raise ConfigError(f"objectives must be distinct, got {self.objectives}")
        self.params = dict(params)
        self.prefix, self.suffix, self.system_ok = "", "", True  # set by `bind`

    def bind(self, tokenizer: Any) -> Scheme:
        """Fit statements to the tokenizer's chat template: plain-text prompts already in its user-turn
        format get the statement at the end of the turn (before the generation prompt, where RiC puts its
        scores), and templates that drop system messages (e.g. the sandbox's) get it in the user's message."""
        from pluralign.data.prompts import has_template

        if not has_template(tokenizer):
            self.prefix, self.suffix, self.system_ok = "", "", True
            return self
        probe = "pluralign-system-probe"
        turn = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False,
                                             add_generation_prompt=True)
        self.prefix, _, self.suffix = turn.partition(probe) if probe in turn else ("", "", "")
        try:
            text = tokenizer.apply_chat_template([{"role": "system", "content": probe}, {"role": "user", "content": "x"}],
                                                 tokenize=False, add_generation_prompt=True)
            self.system_ok = probe in text
        except Exception:  # templates that refuse a system role
            self.system_ok = False
        return self

    # --- conditions
    def condition(self, *, weights: Any = None, direction: Any = None, user: Any = None, group: Any = None,
                  scores: Any = None, field: str = "") -> Condition:
        """A validated Condition from raw values (`field` prefixes error messages, e.g. 'request 3: ')."""
        w = tuple(weights_of(weights, self.objectives, field + "weights")) if weights is not None else None
        d = tuple(direction_of(direction, self.objectives, field + "direction")) if direction is not None else None
        s = tuple(vector_of(scores, self.objectives, field + "scores")) if scores is not None else None
        # ids as the training data's are read (`person_id`): 3 is "3", " alice" is "alice"
        return Condition(w, d, None if user is None else person_id(user), None if group is None else person_id(group), s)

    def condition_of(self, record: Any) -> Condition:
        """A training example's condition: its record's ``meta`` weights/direction/scores when given, else
        its ``objective`` as one-hot weights; ``user`` and ``group`` as recorded."""
        meta = getattr(record, "meta", None) or {}
        weights = meta.get("weights")
        objective = getattr(record, "objective", None)
        if weights is None and objective is not None and objective in self.objectives:
            weights = {objective: 1.0}
        return self.condition(weights=weights, direction=meta.get("direction"), scores=meta.get("scores"),
                              user=getattr(record, "user", None), group=getattr(record, "group", None))

    def condition_of_request(self, controls: Any, index: int | None = None) -> Condition:
        """A request's condition from its `decode.api.Controls` (weights, direction, user, group, and
        target scores in ``extra["scores"]``)."""
        where = f"request {index}: " if index is not None else ""
        direction = getattr(controls, "direction", None)
        # A scheme that states a direction steers by it alone: the request's weights then only weigh its
        # reward (DPA's best of n by vᵀr, which may weigh an objective negatively), not simplex weights.
        stated = direction is not None and "direction" in self.reads
        if stated and controls.weights is not None:  # still one finite number per objective
            vector_of(controls.weights, self.objectives, where + "weights")
        return self.condition(weights=None if stated else controls.weights, direction=direction,
                              user=controls.user, group=getattr(controls, "group", None),
                              scores=(controls.extra or {}).get("scores"), field=where)

    def unmatched(self, condition: Condition) -> str | None:
        """Who `condition` names (`Condition.person`) that the scheme holds nothing for, or None: such a
        request gets the population model. A scheme that reads no user or group matches everyone."""
        return None

    # --- applying them
    def prompt(self, prompt: Text, condition: Condition) -> Text:
        return prompt

    def with_statement(self, prompt: Text, statement: str) -> Text:
        """`prompt` with `statement` placed as the bound tokenizer's template allows (see `with_statement`)."""
        from pluralign.conditioning.text import with_statement

        return with_statement(prompt, statement, self.prefix, self.system_ok, self.suffix)

    @contextlib.contextmanager
    def steer(self, model: Any, condition: Condition) -> Iterator[Any]:
        yield model

    def record_problems(self, records: Sequence[Any], source: str, lines: Sequence[int]) -> list[Problem]:
        """Problems of the record fields the scheme reads, in one file's records (`lines`: each one's line):
        checked file by file, since `fit` and conditioning see the files' records joined, with no file or
        line to name."""
        return []

    def fit(self, records: Sequence[Any]) -> None:
        """Learn what the scheme needs from the training data (e.g. RiC's score statistics)."""

    def attach(self, model: Any, model_dir: Path) -> Any:
        """Rebuild model-level parts after the base model was loaded from `model_dir`."""
        return model

    # --- training-time parts (learned control tokens): no-ops for the other schemes
    def prepare(self, tokenizer: Any, model: Any) -> None:
        """Add what the scheme needs to the tokenizer and the model before the data is tokenized."""

    def install(self, model: Any) -> None:
        """Put trainable parts on the model, after the reference pass (MAH-DPO heads, control tokens)."""

    def detach(self, model: Any) -> None:
        """Take trainable parts off the model before it is saved."""

    def save(self, model_dir: str | Path) -> None:
        """Write the scheme's own weights next to a saved model (beside ``conditioning.json``)."""

    def before_step(self, step: int) -> None:
        """Called before each optimizer step (a jointly trained soup draws its mixing weights here)."""

    def wrap_step(self, step: Any, *, training: bool) -> Any:
        """The training or evaluation step as the scheme runs it (default: unchanged)."""
        return step

    def vocabulary(self) -> list[str]:
        """Example statements, so a word-level tokenizer can learn their words (`ensure_vocabulary`)."""
        return []

    def state(self) -> dict[str, Any]:
        return {"scheme": self.name, "objectives": self.objectives, "params": _jsonable(self.params)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(objectives={self.objectives})"


# Model-level and personal schemes register themselves in their own modules, imported on first lookup.
_SCHEMES = Registry("conditioning scheme", modules=("pluralign.models.multihead", "pluralign.models.soup",
                                                    "pluralign.models.joint_soup",
                                                    "pluralign.personal.conditioned", "pluralign.personal.janus",
                                                    "pluralign.conditioning.control_tokens"))


def register(name: str):
    """Class decorator registering a `Scheme` subclass under `name`."""
    def deco(cls: type[Scheme]) -> type[Scheme]:
        cls.name = name
        return _SCHEMES.register(name)(cls)

    return deco


names = _SCHEMES.names


def get(name: str, objectives: Sequence[str] = (), **params: Any) -> Scheme:
    """A new scheme `name` over `objectives` (a parameter it does not take is a `ConfigError`)."""
    _SCHEMES.check_params(name, params)
    cls = _SCHEMES.get(name)
    if not objectives and ("weights" in cls.reads or "direction" in cls.reads):
        # without them a statement of weights divided by zero, RiC trained on "scores : ." and heads failed
        # after the reference pass
        raise ConfigError(f"conditioning '{name}' is steered by weights over objectives, and none are given: name "
                          "them (objectives.names in the preference recipes, objectives in train sft)")
    return cls(objectives, **params)


def from_state(state: Mapping[str, Any]) -> Scheme:
    return get(state["scheme"], state.get("objectives", ()), **state.get("params", {}))


def save_state(scheme: Scheme | None) -> dict[str, str]:
    """The files to write next to a saved model: {FILE: json} (nothing for `none`)."""
    if scheme is None or scheme.name == "none":
        return {}
    return {FILE: json.dumps(scheme.state(), indent=1)}


def load(model_dir: str | Path) -> Scheme | None:
    """The scheme saved with a model directory, or None."""
    path = Path(model_dir) / FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e.msg})") from None
    return from_state(state)


def attached(model: Any) -> Scheme | None:
    """The scheme a loaded model carries (set by `attach_to`)."""
    return getattr(model, "pluralign_conditioning", None)


def attach_to(model: Any, model_dir: str | Path, scheme: Scheme | None) -> Any:
    """Rebuild the model-level parts of `scheme` (`load(model_dir)`'s; None: nothing to attach) on the
    model loaded from `model_dir`, and mark the model with it."""
    if scheme is None:
        return model
    model = scheme.attach(model, Path(model_dir))
    model.pluralign_conditioning = scheme
    return model


def condition_records(scheme: Scheme, records: Sequence[Any]) -> list[Any]:
    """Training records with their prompts conditioned on their own condition (text-level schemes)."""
    from pluralign.conditioning.text import condition_record

    if type(scheme).prompt is Scheme.prompt:
        return list(records)
    return [condition_record(scheme, r) for r in records]


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Mapping):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


from pluralign.conditioning.text import (  # noqa: E402  (registers the text-level schemes)
    NoConditioning,
    RewardTokens,
    SystemMessage,
    condition_record,
    ensure_vocabulary,
    grow_embeddings,
    with_statement,
)

__all__ = [
    "FILE", "Condition", "NoConditioning", "RewardTokens", "Scheme", "SystemMessage", "attach_to", "attached",
    "condition_record", "condition_records", "direction_of", "ensure_vocabulary", "from_state", "get",
    "grow_embeddings", "load",
    "names", "parse_vector", "register", "save_state", "weights_of", "with_statement",
]  # fmt: skip
