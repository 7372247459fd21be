"""Judges behind one interface: ``pairwise(prompts, a, b)`` → AlpacaEval preferences (1 = a better,
2 = b better, 1.5 = draw, NaN = no verdict) and ``single(prompts, responses)`` → scores.

* :class:`GoldJudge` — the sandbox's ground-truth utility for a user's attribute weights.
* :class:`RewardModelJudge` — any reward source (``score(prompts, responses, user=None)`` or a callable).
* :class:`LLMJudge` — a chat model behind an OpenAI-compatible HTTP endpoint.
"""

from pluralign.judges.base import (
    A_WINS,
    B_WINS,
    DRAW,
    Judge,
    ScoreJudge,
    call_reward,
    combine_orders,
    normalize_preferences,
    preferences_from_scores,
    unswap,
)
from pluralign.judges.llm import JudgeError, JudgeRequestError, LLMJudge
from pluralign.judges.scored import GoldJudge, RewardModelJudge

__all__ = [
    "A_WINS", "B_WINS", "DRAW", "Judge", "ScoreJudge", "GoldJudge", "RewardModelJudge", "LLMJudge",
    "JudgeError", "JudgeRequestError", "call_reward", "combine_orders", "normalize_preferences", "preferences_from_scores",
    "unswap",
]
