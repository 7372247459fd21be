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
import dataclasses
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pluralign.errors import ConfigError

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


# ---------------------------------------------------------------- validation


def weights_of(value: Any, objectives: Sequence[str], field: str = "weights") -> np.ndarray:
    """Objective weights as a float64 vector on the simplex, from a sequence in objective order or a
    {objective: weight} mapping (missing objectives weigh 0). Raises `ConfigError` naming `field`."""
    vec = _vector(value, objectives, field)
    if np.any(vec < 0):
        raise ConfigError(f"{field}: weights must be non-negative, got {_show(vec, objectives)}")
    total = float(vec.sum())
    if total <= 0:
        raise ConfigError(f"{field}: weights are all zero; give at least one positive weight over {list(objectives)}")
    return vec / total


def direction_of(value: Any, objectives: Sequence[str], field: str = "direction") -> np.ndarray:
    """A preference direction (DPA) as a unit vector; any sign is allowed, norm 0 is an error."""
    vec = _vector(value, objectives, field)
    norm = float(np.linalg.norm(vec))
    if norm == 0:
        raise ConfigError(f"{field}: the direction has norm 0; give a non-zero vector over {list(objectives)}")
    return vec / norm


def _vector(value: Any, objectives: Sequence[str], field: str) -> np.ndarray:
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
        s = tuple(_vector(scores, self.objectives, field + "scores")) if scores is not None else None
        return Condition(w, d, None if user is None else str(user), None if group is None else str(group), s)

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
        return self.condition(weights=controls.weights, direction=getattr(controls, "direction", None),
                              user=controls.user, group=getattr(controls, "group", None),
                              scores=(controls.extra or {}).get("scores"), field=where)

    # --- applying them
    def prompt(self, prompt: Text, condition: Condition) -> Text:
        return prompt

    def with_statement(self, prompt: Text, statement: str) -> Text:
        """`prompt` with `statement` placed as the bound tokenizer's template allows (see `with_statement`)."""
        return with_statement(prompt, statement, self.prefix, self.system_ok, self.suffix)

    @contextlib.contextmanager
    def steer(self, model: Any, condition: Condition) -> Iterator[Any]:
        yield model

    def fit(self, records: Sequence[Any]) -> None:
        """Learn what the scheme needs from the training data (e.g. RiC's score statistics)."""

    def attach(self, model: Any, model_dir: Path) -> Any:
        """Rebuild model-level parts after the base model was loaded from `model_dir`."""
        return model

    def vocabulary(self) -> list[str]:
        """Example statements, so a word-level tokenizer can learn their words (`ensure_vocabulary`)."""
        return []

    def state(self) -> dict[str, Any]:
        return {"scheme": self.name, "objectives": self.objectives, "params": _jsonable(self.params)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(objectives={self.objectives})"


_SCHEMES: dict[str, type[Scheme]] = {}


def register(name: str):
    """Class decorator registering a `Scheme` subclass under `name`."""
    def deco(cls: type[Scheme]) -> type[Scheme]:
        if name in _SCHEMES:
            raise ValueError(f"conditioning scheme {name!r} registered twice")
        cls.name = name
        _SCHEMES[name] = cls
        return cls

    return deco


def _load_all() -> None:
    import importlib

    for mod in ("pluralign.models.multihead", "pluralign.models.soup", "pluralign.personal.conditioned",
                "pluralign.personal.janus"):
        importlib.import_module(mod)


def names() -> list[str]:
    _load_all()
    return sorted(_SCHEMES)


def get(name: str, objectives: Sequence[str] = (), **params: Any) -> Scheme:
    """A new scheme `name` over `objectives`."""
    _load_all()
    if name not in _SCHEMES:
        raise ConfigError(f"unknown conditioning scheme {name!r}; known: {', '.join(sorted(_SCHEMES))}")
    return _SCHEMES[name](objectives, **params)


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


def attach_to(model: Any, model_dir: str | Path) -> Any:
    """Load `model_dir`'s scheme (if any), rebuild its model-level parts and mark the model with it."""
    scheme = load(model_dir)
    if scheme is None:
        return model
    model = scheme.attach(model, Path(model_dir))
    model.pluralign_conditioning = scheme
    return model


def condition_records(scheme: Scheme, records: Sequence[Any]) -> list[Any]:
    """Training records with their prompts conditioned on their own condition (text-level schemes)."""
    if type(scheme).prompt is Scheme.prompt:
        return list(records)
    return [condition_record(scheme, r) for r in records]


# ---------------------------------------------------------------- text-level schemes


def with_statement(prompt: Text, statement: str, prefix: str = "", system: bool = True, suffix: str = "") -> Text:
    """The statement with the prompt: a system message for chat prompts (merged into an existing one), or
    the end of the first user message when `system` is false (a template that drops system messages);
    for plain text in a template's user-turn format (`prefix` … `suffix`) or to be rendered as the user's
    message, the end of the turn; plain text for a model without a template gets it as a leading sentence."""
    if isinstance(prompt, str):
        body, tail = prompt.rstrip(), suffix.strip()
        if prefix.strip() and prompt.startswith(prefix) and tail and body.endswith(tail):
            return f"{body[:-len(tail)].rstrip()} {statement} {tail}{prompt[len(body):]}"
        if prefix or suffix:  # the template will render this text as the user's message: end of the turn
            return f"{prompt} {statement}"
        return f"{statement} {prompt}"
    messages = [dict(m) for m in prompt]
    if not system:
        user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), None)
        if user is None:
            return [{"role": "user", "content": statement}, *messages]
        messages[user]["content"] = f"{messages[user].get('content', '')} {statement}".strip()
        return messages
    if messages and messages[0].get("role") == "system":
        messages[0]["content"] = f"{statement} {messages[0].get('content', '')}".strip()
        return messages
    return [{"role": "system", "content": statement}, *messages]


def _numbers(values: Sequence[float], objectives: Sequence[str], scale: float, digits: int) -> str:
    out = []
    for k, v in zip(objectives, values, strict=True):
        x = round(v * scale, digits)
        out.append(f"{k} {int(x) if digits == 0 else x}")
    return " ".join(out)


prepend_statement = with_statement  # the earlier name, kept for callers written against it


@register("none")
class NoConditioning(Scheme):
    """The model is conditioned on nothing."""


@register("system_message")
class SystemMessage(Scheme):
    """States the request's preference before the prompt: a direction v as DPA does (Wang et al., ACL 2024,
    "Arithmetic Control of LLMs for Diverse User Preferences": "maximize weighted rating = a*100cosθ +
    b*100sinθ"), else the weights, both in integer percent, e.g. "weights : informativeness 70 conciseness
    30 ." A request without either gets the statement of uniform weights."""

    def statement(self, c: Condition) -> str:
        if c.direction is not None:
            return f"direction : {_numbers(c.direction, self.objectives, 100, 0)} ."
        weights = c.weights if c.weights is not None else (1 / len(self.objectives),) * len(self.objectives)
        return f"weights : {_numbers(weights, self.objectives, 100, 0)} ."

    def prompt(self, prompt: Text, condition: Condition) -> Text:
        return self.with_statement(prompt, self.statement(condition))

    def vocabulary(self) -> list[str]:
        m = len(self.objectives)
        return [self.statement(Condition(weights=(1 / m,) * m)),
                self.statement(Condition(direction=(-0.1234567891,) * m))]


@register("reward_tokens")
class RewardTokens(Scheme):
    """Rewards-in-Context (Yang et al., ICML 2024): the prompt states a target score per objective, the
    z-score s_i = round((r_i − mean_i) / std_i, 1) of the response's reward on the training data, and the
    model is fine-tuned (SFT) to produce responses with the stated scores. At inference a preference ω on
    the simplex maps to scores ("l2" as RiC's `map_rewards_from_preference`): s_i = low_i + (high_i −
    low_i)·ω_i/‖ω‖₂, with [low, high] the range of training scores; explicit ``scores`` override it.

    Training records give their rewards as ``Rated.ratings`` or ``meta["rewards"]`` ({objective: value})."""

    def __init__(self, objectives: Sequence[str] = (), *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, low: Sequence[float] | None = None,
                 high: Sequence[float] | None = None, mapping: str = "l2"):
        super().__init__(objectives, mean=mean, std=std, low=low, high=high, mapping=mapping)
        if mapping not in ("l2", "linear"):
            raise ConfigError(f"reward_tokens mapping must be 'l2' or 'linear', got {mapping!r}")

    def rewards_of(self, record: Any) -> np.ndarray | None:
        raw = getattr(record, "ratings", None) or (getattr(record, "meta", None) or {}).get("rewards")
        if raw is None:
            return None
        missing = [k for k in self.objectives if k not in raw]
        if missing:
            raise ConfigError(f"reward_tokens: a record has no reward for {missing}: {raw}")
        return np.array([float(raw[k]) for k in self.objectives])

    def fit(self, records: Sequence[Any]) -> None:
        rewards = [r for r in map(self.rewards_of, records) if r is not None]
        if not rewards:
            raise ConfigError("reward_tokens: no training record carries rewards (ratings or meta.rewards)")
        x = np.stack(rewards)
        mean, std = x.mean(0), np.where(x.std(0) > 0, x.std(0), 1.0)
        z = np.round((x - mean) / std, 1)
        self.params.update(mean=mean.tolist(), std=std.tolist(), low=z.min(0).tolist(), high=z.max(0).tolist())

    def scores_for(self, c: Condition, record: Any = None) -> np.ndarray:
        if c.scores is not None:
            return np.asarray(c.scores)
        p = self.params
        if p.get("mean") is None:
            raise ConfigError("reward_tokens: the scheme is not fitted (no score statistics); call fit(records)")
        if record is not None and (r := self.rewards_of(record)) is not None:
            return np.round((r - np.asarray(p["mean"])) / np.asarray(p["std"]), 1)
        w = np.asarray(c.weights if c.weights is not None else [1 / len(self.objectives)] * len(self.objectives))
        low, high = np.asarray(p["low"]), np.asarray(p["high"])
        share = w / np.linalg.norm(w) if p.get("mapping", "l2") == "l2" else w
        return np.round(low + (high - low) * share, 1)

    def statement(self, scores: Sequence[float]) -> str:
        return f"scores : {_numbers(scores, self.objectives, 1, 1)} ."

    def prompt(self, prompt: Text, condition: Condition) -> Text:
        return self.with_statement(prompt, self.statement(self.scores_for(condition)))

    def vocabulary(self) -> list[str]:
        return [self.statement([-1.5] * len(self.objectives))]


def condition_record(scheme: Scheme, record: Any) -> Any:
    """One training record conditioned (RiC reads the record's own rewards)."""
    c = scheme.condition_of(record)
    if isinstance(scheme, RewardTokens) and c.scores is None:
        c = dataclasses.replace(c, scores=tuple(scheme.scores_for(c, record)))
    return dataclasses.replace(record, prompt=scheme.prompt(record.prompt, c))


# ---------------------------------------------------------------- tokenizers


def ensure_vocabulary(tokenizer: Any, model: Any, texts: Sequence[str]) -> list[str]:
    """Teach a tokenizer with an unknown-token (e.g. the sandbox's word-level one) the words of the
    scheme's statements: unknown words become tokens, numbers are spelled with digit tokens, and the
    model's embeddings grow (new rows = the mean embedding). Returns the added tokens; byte-level
    tokenizers have no unknown words and are left alone."""
    unk = getattr(tokenizer, "unk_token_id", None)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if unk is None or backend is None or backend.pre_tokenizer is None:
        return []
    vocab = tokenizer.get_vocab()
    new: dict[str, None] = {}
    for text in texts:
        for word, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)
                                                              if backend.normalizer else text):
            if word in vocab:
                continue
            for piece in (list(word) if word.replace(".", "").replace("-", "").isdigit() else [word]):
                if piece not in vocab:
                    new[piece] = None
    digits = [d for d in "0123456789-" if d not in vocab] if any(any(ch.isdigit() for ch in w) for w in new) else []
    added = list(dict.fromkeys([*new, *digits]))
    if not added:
        return []
    tokenizer.add_tokens(added)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    import torch

    with torch.no_grad():
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is not None and emb.weight.shape[0] > old:
                emb.weight[old:] = emb.weight[:old].mean(0)
    return added


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
