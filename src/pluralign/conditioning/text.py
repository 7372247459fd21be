"""Text-level conditioning: a statement of the request's preference placed in the prompt (DPA's direction,
weights, RiC's target scores), and teaching a word-level tokenizer the statements' words."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pluralign.conditioning import Condition, Scheme, Text, register
from pluralign.data.field_checks import FIELD_CHECKS
from pluralign.errors import ConfigError, Problem
from pluralign.models.load import OUTPUT_VOCAB, mask_added_tokens


def with_statement(prompt: Text, statement: str, prefix: str = "", system: bool = True, suffix: str = "") -> Text:
    """The statement with the prompt: a system message for chat prompts (merged into an existing one), or
    the end of the first user message when `system` is false (a template that drops system messages);
    for plain text in a template's user-turn format (`prefix` … `suffix`) or to be rendered as the user's
    message, the end of the turn; plain text for a model without a template gets it as a leading sentence."""
    if isinstance(prompt, str):
        body, tail = prompt.rstrip(), suffix.strip()
        if prefix.strip() and prompt.startswith(prefix) and tail and body.endswith(tail):
            # what the template puts between the message and its end marker stays (none in SmolLM2's
            # "…<|im_end|>"), so the text is the one the template renders from the plain prompt and statement
            content = body[:-len(tail)].rstrip()
            return f"{content} {statement}{body[len(content):-len(tail)]}{tail}{prompt[len(body):]}"
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



@register("none")
class NoConditioning(Scheme):
    """The model is conditioned on nothing."""


@register("system_message")
class SystemMessage(Scheme):
    """States the request's preference before the prompt: a direction v as DPA does (Wang et al., ACL 2024,
    "Arithmetic Control of LLMs for Diverse User Preferences": "maximize weighted rating = a*100cosθ +
    b*100sinθ"), else the weights, both in integer percent, e.g. "weights : informativeness 70 conciseness
    30 ." A request without either gets the statement of uniform weights."""

    reads = ("weights", "direction")

    def __init__(self, objectives: Sequence[str] = (), *, states: str = "auto"):
        # states="direction": the model learnt direction statements only (DPA's rounds), so a request's
        # weights are stated as the unit direction along them, not in a form it never saw
        if states not in ("auto", "direction"):
            raise ConfigError(f"system_message: 'states' must be 'auto' or 'direction', got {states!r}")
        super().__init__(objectives, **({"states": states} if states != "auto" else {}))

    def statement(self, c: Condition) -> str:
        if c.direction is None and self.params.get("states") == "direction":
            weights = c.weights if c.weights is not None else (1.0,) * len(self.objectives)
            c = dataclasses.replace(c, direction=tuple(np.asarray(weights) / np.linalg.norm(weights)))
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

    reads = ("weights",)  # and target scores, in extra

    def __init__(self, objectives: Sequence[str] = (), *, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, low: Sequence[float] | None = None,
                 high: Sequence[float] | None = None, mapping: str = "l2"):
        super().__init__(objectives, mean=mean, std=std, low=low, high=high, mapping=mapping)
        if mapping not in ("l2", "linear"):
            raise ConfigError(f"reward_tokens mapping must be 'l2' or 'linear', got {mapping!r}")

    def rewards_of(self, record: Any, where: str = "a record") -> np.ndarray | None:
        """The record's rewards in objective order (its `ratings`, else ``meta.rewards``), or None; a
        ConfigError naming `where` and the field when they miss an objective or are not finite numbers."""
        field, raw, issues = self._rewards(record)
        if issues:
            name, message = issues[0]
            raise ConfigError(f"reward_tokens: {where}: field '{name}': {message}")
        return None if raw is None else np.array([raw[k] for k in self.objectives])

    def record_problems(self, records: Sequence[Any], source: str, lines: Sequence[int]) -> list[Problem]:
        return [Problem(source, line, name, message)
                for line, record in zip(lines, records, strict=True) for name, message in self._rewards(record)[2]]

    def _rewards(self, record: Any) -> tuple[str, Any, list[tuple[str, str]]]:
        """(field, its rewards checked as ratings are, what is wrong with them) of one record."""
        field, raw = "ratings", getattr(record, "ratings", None)
        if not raw:
            field, raw = "meta.rewards", (getattr(record, "meta", None) or {}).get("rewards")
        if raw is None:
            return field, None, []
        raw, issues = FIELD_CHECKS["ratings"](field, raw)  # finite numbers, as a rated record's ratings are
        missing = [k for k in self.objectives if k not in raw] if isinstance(raw, Mapping) else []
        if missing:
            issues.append((field, f"no reward for objective(s) {', '.join(missing)}; it covers "
                                  f"{', '.join(map(str, raw)) or 'none'}"))
        return field, raw, issues

    def fit(self, records: Sequence[Any]) -> None:
        rewards = [r for n, rec in enumerate(records, 1) if (r := self.rewards_of(rec, f"training record {n}")) is not None]
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
        # Only text the tokenizer cannot spell has unknown words: a byte-level BPE that names an unknown
        # token (SmolLM2's) spells everything, and its pre-tokenized words ('Ġconciseness') are not tokens
        if unk not in backend.encode(text, add_special_tokens=False).ids:
            continue
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
    grow_embeddings(tokenizer, model)
    return added


def grow_embeddings(tokenizer: Any, model: Any) -> None:
    """Resize the model's embeddings to the tokenizer's length; new rows (input and output) start at the
    mean of the existing rows. The new tokens are for prompts only (`mask_added_tokens`)."""
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    import torch

    with torch.no_grad():
        for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
            if emb is not None and emb.weight.shape[0] > old:
                emb.weight[old:] = emb.weight[:old].mean(0)
    if getattr(model.config, OUTPUT_VOCAB, None) is None:  # saved in config.json: loading masks them again
        setattr(model.config, OUTPUT_VOCAB, old)
    mask_added_tokens(model)

