"""The judge interface and AlpacaEval's preference encoding.

Every judge answers two questions:

* ``pairwise(prompts, a, b)`` → an array of preferences in AlpacaEval's encoding
  (Dubois et al. 2023, ``alpaca_eval/metrics/winrate.py``): **1 = `a` is better, 2 = `b` is better,
  1.5 = a draw**. Values in between are allowed (a *weighted* judge: ``p − 1`` is the probability that
  `b` wins). ``NaN`` marks a verdict that could not be obtained (e.g. an unparseable LLM answer).
  With `a` the baseline and `b` the model, ``100·mean(p − 1)`` is the model's win rate.
* ``single(prompts, responses)`` → an array of scores, higher is better.

Swapping the order of `a` and `b` maps a preference p to ``3 − p`` (:func:`unswap`), so a verdict given
on the swapped pair is brought back to the original order by the same map.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pluralign.errors import ConfigError

A_WINS, B_WINS, DRAW = 1.0, 2.0, 1.5


@runtime_checkable
class Judge(Protocol):
    """Anything that can compare two responses and grade one."""

    def pairwise(self, prompts: Sequence[Any], a: Sequence[Any], b: Sequence[Any]) -> np.ndarray:
        """Preferences in [1, 2] (1 = a, 2 = b, 1.5 = draw; NaN = no verdict), one per prompt."""
        ...

    def single(self, prompts: Sequence[Any], responses: Sequence[Any]) -> np.ndarray:
        """One score per response; higher is better."""
        ...


def normalize_preferences(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Float array of preferences; AlpacaEval's legacy draw code 0 becomes 1.5. Values outside [1, 2]
    (other than 0 and NaN) are an error, because they would silently bias a win rate."""
    p = np.asarray(p, dtype=float).copy()
    p[p == 0] = DRAW
    bad = ~np.isnan(p) & ((p < 1) | (p > 2))
    if bad.any():
        raise ValueError(f"preferences must lie in [1, 2] (or be 0/NaN); got {p[bad][:5].tolist()}")
    return p


def unswap(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Map a preference given on the swapped pair (b shown first) back to the original order: p ↦ 3 − p."""
    return 3.0 - np.asarray(p, dtype=float)


def combine_orders(p_original: np.ndarray, p_swapped_unswapped: np.ndarray) -> np.ndarray:
    """Average the verdicts from both presentation orders (both already in the original order). Where
    one order has no verdict, the other is used alone; where both are missing, NaN."""
    stacked = np.stack([np.asarray(p_original, float), np.asarray(p_swapped_unswapped, float)])
    count = (~np.isnan(stacked)).sum(0)
    total = np.nansum(stacked, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def check_temperature(temperature: Any) -> float:
    """A Bradley–Terry judge's temperature: a positive finite number, else a `ConfigError`."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not 0 < temperature < float("inf"):
        raise ConfigError(f"temperature must be a positive number (or absent: hard verdicts), got {temperature!r}",
                          field="temperature")
    return float(temperature)


def check_tie_tolerance(tie_tolerance: Any) -> float:
    """A hard judge's tie tolerance: a finite number >= 0, else a `ConfigError`. A negative one gave b every
    tie and every pair that a won by less than |tie_tolerance|, silently biasing the win rate."""
    if isinstance(tie_tolerance, bool) or not isinstance(tie_tolerance, numbers.Real) \
            or not 0 <= tie_tolerance < float("inf"):
        raise ConfigError(f"tie_tolerance must be a number >= 0 (the score gap still called a draw), got "
                          f"{tie_tolerance!r}", field="tie_tolerance")
    return float(tie_tolerance)


def preferences_from_scores(score_a: np.ndarray, score_b: np.ndarray, *, temperature: float | None = None,
                            tie_tolerance: float = 0.0) -> np.ndarray:
    """Turn two score arrays into preferences. Hard by default (1, 2, or 1.5 when |Δ| ≤ tie_tolerance);
    with a temperature T, the Bradley–Terry probability ``1 + σ((s_b − s_a)/T)`` (a weighted judge)."""
    sa, sb = np.asarray(score_a, float), np.asarray(score_b, float)
    diff = sb - sa
    if temperature is not None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}", field="temperature")
        return 1.0 + 1.0 / (1.0 + np.exp(-diff / temperature))
    out = np.where(diff > tie_tolerance, B_WINS, np.where(diff < -tie_tolerance, A_WINS, DRAW))
    return np.where(np.isnan(diff), np.nan, out)


def call_reward(source: Any, prompts: Sequence[Any], responses: Sequence[Any], user: Any = None) -> np.ndarray:
    """Score with a reward source: anything with ``score(prompts, responses, user=None)`` (the pluralign
    reward interface) or a plain callable ``f(prompts, responses)``. Returns [N, m] floats, checked as
    decoding checks them (`decode.rewards.checked_scores`: numbers, one row per response, finite); what a
    callable raises is a user error naming it."""
    from pluralign.decode.rewards import as_reward, checked_scores, reward_name

    reward = as_reward(source)
    out = reward.score(list(prompts), list(responses), user=user) if user is not None \
        else reward.score(list(prompts), list(responses))
    return checked_scores(out, len(responses), reward_name(reward)).double().numpy()


def check_judged(prompts: Any, **answers: Any) -> None:
    """A `ConfigError` naming the argument for a lone text where a list belongs (`single("q", "a")` judged
    each character as a prompt) or for lists of different lengths (a callable's scores of the first
    responses came back for all the prompts). Arrays and pandas Series are lists here, as they were."""
    for name, values in {"prompts": prompts, **answers}.items():
        if isinstance(values, str | bytes | Mapping) or not isinstance(values, Sized) or not isinstance(values, Iterable):
            raise ConfigError(f"{name}: expected a list (one entry per pair), got {type(values).__name__}; "
                              "wrap a single text in a list", field=name)
    if any(len(values) != len(prompts) for values in answers.values()):
        sizes = ", ".join(f"{len(values)} {name}" for name, values in answers.items())
        raise ConfigError(f"lengths differ: {len(prompts)} prompts, {sizes}", field=next(iter(answers)))


def reduce_objectives(scores: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """[N] stays as is; [N, m] is combined linearly with `weights` (default: the mean over objectives)."""
    if scores.ndim == 1:
        return scores
    if scores.ndim == 2 and scores.shape[1] == 1 and weights is None:
        return scores[:, 0]
    w = np.full(scores.shape[1], 1.0 / scores.shape[1]) if weights is None else np.asarray(weights, float)
    if w.shape != (scores.shape[1],):
        raise ConfigError(f"weights: {len(w)} weights for {scores.shape[1]} objectives", field="weights")
    return scores @ w


class ScoreJudge:
    """A judge built from a scoring function ``score_fn(prompts, responses) -> [N]``: `single` is the
    score; `pairwise` compares scores (hard, or Bradley–Terry with `temperature`)."""

    def __init__(self, score_fn: Callable[[list, list], np.ndarray], *, temperature: float | None = None,
                 tie_tolerance: float = 0.0):
        if temperature is not None:  # else the first pairwise call refuses it, after every answer was generated
            check_temperature(temperature)
        self._score = score_fn
        self.temperature = temperature
        self.tie_tolerance = check_tie_tolerance(tie_tolerance)

    def single(self, prompts: Sequence[Any], responses: Sequence[Any]) -> np.ndarray:
        """One score per response, higher is better."""
        check_judged(prompts, responses=responses)
        return np.asarray(self._score(list(prompts), list(responses)), dtype=float)

    def single_and_objectives(self, prompts: Sequence[Any], responses: Sequence[Any]
                              ) -> tuple[np.ndarray, tuple[list[str], np.ndarray] | None]:
        """`single`'s scores and, when the judge has several objectives, the per-objective scores ([N, m]
        with the objectives' names; else None), from one scoring of the responses."""
        return self.single(prompts, responses), None

    def pairwise(self, prompts: Sequence[Any], a: Sequence[Any], b: Sequence[Any]) -> np.ndarray:
        """Preferences (1 = a, 2 = b, 1.5 = draw) from the two responses' scores."""
        check_judged(prompts, a=a, b=b)
        sa, sb = self.single(prompts, a), self.single(prompts, b)
        return preferences_from_scores(sa, sb, temperature=self.temperature, tie_tolerance=self.tie_tolerance)
