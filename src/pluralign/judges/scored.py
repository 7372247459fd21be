"""Judges that score responses directly: the sandbox's gold attributes, and any reward model.

Both compare two responses by their scores (see :class:`pluralign.judges.base.ScoreJudge`): a hard
verdict by default, or a Bradley–Terry probability with a temperature (a weighted judge).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pluralign.judges.base import ScoreJudge, call_reward, check_judged, reduce_objectives


class GoldJudge(ScoreJudge):
    """The sandbox's ground truth: a user's utility ``Σ_k w_k·attribute_k(prompt, response)``.

    `weights` is a mapping attribute → weight, or anything with a ``.weights`` mapping (a sandbox
    ``Group``); unknown attribute names raise ``ConfigError``. `pluralign.sandbox` is imported only when
    the judge is used, so this module imports without it.
    """

    def __init__(self, weights: Mapping[str, float] | Any, *, temperature: float | None = None,
                 tie_tolerance: float = 0.0):
        self.weights = dict(getattr(weights, "weights", weights))
        super().__init__(self._utility, temperature=temperature, tie_tolerance=tie_tolerance)

    def attributes(self, prompts: Sequence[Any], responses: Sequence[Any]) -> np.ndarray:
        """The sandbox attribute matrix [N, A] (columns in ``sandbox.attributes.ATTRIBUTES`` order)."""
        from pluralign.sandbox import attributes

        return np.asarray(attributes.score_batch(list(prompts), list(responses)), dtype=float)

    def single_and_objectives(self, prompts: Sequence[Any], responses: Sequence[Any]
                              ) -> tuple[np.ndarray, tuple[list[str], np.ndarray]]:
        from pluralign.sandbox.attributes import ATTRIBUTES

        check_judged(prompts, responses=responses)
        attributes = self.attributes(prompts, responses)
        return self._of_attributes(attributes), (list(ATTRIBUTES), attributes)

    def _of_attributes(self, attributes: np.ndarray) -> np.ndarray:
        from pluralign.sandbox import users

        return np.asarray(users.utility(self.weights, attributes), dtype=float)

    def _utility(self, prompts: list, responses: list) -> np.ndarray:
        return self._of_attributes(self.attributes(prompts, responses))


class RewardModelJudge(ScoreJudge):
    """A judge from any reward source: an object with ``score(prompts, responses, user=None)`` returning
    [N] or [N, m], or a plain callable ``f(prompts, responses)``. Several objectives are combined
    linearly with `weights`, in the source's objective order or by name (default: their mean)."""

    def __init__(self, source: Any, *, weights: Sequence[float] | Mapping[str, float] | None = None,
                 user: Any = None, temperature: float | None = None, tie_tolerance: float = 0.0):
        self.source, self.weights, self.user = source, weights, user
        super().__init__(self._reward, temperature=temperature, tie_tolerance=tie_tolerance)

    def single_and_objectives(self, prompts: Sequence[Any], responses: Sequence[Any]
                              ) -> tuple[np.ndarray, tuple[list[str], np.ndarray] | None]:
        from pluralign.decode.rewards import objective_names

        check_judged(prompts, responses=responses)
        scores = call_reward(self.source, prompts, responses, self.user)
        several = scores.ndim == 2 and scores.shape[1] >= 2
        return self._combined(scores), (objective_names(self.source, scores.shape[1]), scores) if several else None

    def _reward(self, prompts: list, responses: list) -> np.ndarray:
        return self._combined(call_reward(self.source, prompts, responses, self.user))

    def _combined(self, scores: np.ndarray) -> np.ndarray:
        weights = self.weights
        if isinstance(weights, Mapping):
            from pluralign.decode.rewards import objective_names, weight_vector

            weights = weight_vector(weights, objective_names(self.source, scores.shape[-1] if scores.ndim == 2 else 1)).tolist()
        return reduce_objectives(scores, weights)
