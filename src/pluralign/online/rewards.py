"""Rewards for online training: sources, their combination, and the transforms applied before the
advantage estimator.

A source is anything `pluralign.decode.rewards.as_reward` accepts: "gold" (the sandbox's gold attributes,
turned into one group's utility with `group`), "judge" (an LLM judge's grade of each response),
"module:function" (a Python function
`(prompts, responses) -> [N]` or `[N, m]`, e.g. a verifiable reward), a trained reward-model directory (BT,
multi-objective with `weights`, PAL with `user`), or an object with `.score(prompts, responses, user)`.

Combination of K sources (specs/online.md §7): "sum" weights and sums raw rewards (TRL's default);
"normalize_then_sum" z-scores each source within its group first (GDPO, Liu et al. 2026) so that sources on
different scales, or combinations with equal sums, stay distinguishable. PPO-max (Zheng et al. 2023, "Secrets
of RLHF I") normalises and clips rewards with running statistics; InfAlign (Balashankar et al. 2025) maps
a reward to its CDF under the reference's samples and then to exp(t·C); DAPO (Yu et al. 2025) shapes the
reward of over-long completions and drops groups whose rewards do not vary.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pluralign.config import option
from pluralign.decode.infalign import calibrate, transform
from pluralign.decode.rewards import as_reward, load_reward, objective_names, score_groups, weight_vector
from pluralign.errors import ConfigError, PluralignError
from pluralign.online.advantages import groups


@dataclass
class RewardSpec:
    source: str = option("gold", help="'gold' (sandbox gold attributes), 'module:function' (a Python reward (prompts, responses) -> list of floats), or a reward-model directory.")
    weight: float = option(1.0, help="Weight of this source in the sum.")
    group: str | None = option(None, help="gold: the utility of this sandbox group (e.g. 'minority') instead of the attributes' mean.")
    population: str = option("default", help="gold: the sandbox population the group belongs to.")
    weights: dict[str, float] | None = option(None, help="A multi-output source's objective weights by name (default: equal).")
    user: str | None = option(None, help="PAL reward models: the user whose reward scores every prompt (without it, each prompt row's own `user`).")
    judge_url: str | None = option(None, help="source 'judge': base URL of an OpenAI-compatible server grading each response (pluralign.judges.LLMJudge.single); a reply without a grade gets the lowest grade, with a warning.")
    judge_model: str | None = option(None, help="source 'judge': the model name on that server.")
    judge_api_key_env: str | None = option("OPENAI_API_KEY", help="source 'judge': the environment variable holding the server's API key (null: a server that needs no key).")


class GroupUtility:
    """The sandbox's gold utility of one group: gold attributes · the group's weight vector."""

    def __init__(self, group: str, population: str = "default"):
        from pluralign.sandbox.attributes import score_batch
        from pluralign.sandbox.users import get_population

        self._score = score_batch
        self.vector = get_population(population).group(group).vector()
        self.objectives = [group]

    def score(self, prompts: list, responses: list[str], user: Any = None) -> Tensor:
        return torch.as_tensor(np.asarray(self._score(prompts, responses)) @ self.vector, dtype=torch.float)[:, None]


class JudgeReward:
    """A judge (`pluralign.judges`: anything with `.single(prompts, responses)`) as a reward source."""

    def __init__(self, judge: Any):
        self.judge = judge

    def score(self, prompts: list, responses: list[str], user: Any = None) -> Tensor:
        """The judge's grades; a reply with no grade in it (NaN) gets the lowest grade of the judge's
        `rating_range`, as verl and OpenRLHF score an unparsable generative-RM reply, with a warning: ended
        on, it stopped the run, and a judge at temperature 0 gives the same reply to the rollout a resumed
        run regenerates, so the run could never pass that step. A judge without a range keeps its NaN
        (the run stops, naming the source)."""
        grades = np.asarray(self.judge.single(prompts, responses), dtype=np.float64)
        ungraded = np.isnan(grades)
        low = getattr(self.judge, "rating_range", None)
        if ungraded.any() and low is not None:
            warnings.warn(f"the judge gave no grade for some responses (a reply it could not read, or a request that "
                          f"failed): they get its lowest grade, {low[0]:g}", stacklevel=2)
            grades = np.where(ungraded, float(low[0]), grades)
        return torch.as_tensor(grades, dtype=torch.float)


class Source:
    """One configured source: `.score` → one column [N]."""

    def __init__(self, spec: RewardSpec, reward: Any = None, field: str = "rewards[0].source"):
        self.spec, self.field = spec, field.rsplit(".", 1)[0]  # `field`: where the user gave it, for errors
        if reward is not None and hasattr(reward, "single") and not hasattr(reward, "score"):
            self.reward = JudgeReward(reward)
        elif reward is not None:
            self.reward = as_reward(reward)
        elif spec.source == "judge":
            if not (spec.judge_url and spec.judge_model):
                raise ConfigError("a 'judge' reward needs judge_url and judge_model")
            from pluralign.judges.llm import LLMJudge

            try:
                self.reward = JudgeReward(LLMJudge(spec.judge_url, spec.judge_model, api_key_env=spec.judge_api_key_env))
            except ConfigError as e:  # LLMJudge names its own argument (api_key_env): say the config's field
                raise ConfigError(f"{self.field}: {e}".replace("pass api_key_env=None",
                                                                           "set judge_api_key_env: null")) from None
        elif spec.source == "gold" and spec.group:
            self.reward = GroupUtility(spec.group, spec.population)
        else:
            self.reward = load_reward(spec.source, field)
        self.name = spec.group or spec.source
        if spec.user is not None:  # checked before any rollout: a user the reward cannot score is a config mistake
            where = f"{self.field}.user"
            if hasattr(self.reward, "user_index"):
                try:
                    self.reward.user_index(spec.user)
                except PluralignError as e:
                    raise ConfigError(f"{where}: {e}") from None
            elif reward is None:
                raise ConfigError(f"{where}: reward '{spec.source}' does not score per user (only PAL reward models "
                                  "do); remove it")

    def check_reachable(self) -> None:
        """For an LLM judge, a `ConfigError` naming the source's `judge_url` when no server answers there: found
        before the policy loads, not at the first rollout's scoring, after a model load and a generation."""
        judge = getattr(self.reward, "judge", None)
        if self.spec.source == "judge" and hasattr(judge, "check_reachable"):
            try:
                judge.check_reachable(setting="judge_url")
            except ConfigError as e:
                raise ConfigError(f"{self.field}: {e}", field=f"{self.field}.judge_url") from None

    def __call__(self, prompts: list, responses: list[str], users: Sequence[Any] | None = None,
                 weights: Sequence[Mapping[str, float] | None] | None = None) -> Tensor:
        """One reward per response. The spec's `user` (PAL) scores every response when set, else `users` (per
        response, the prompt rows' `user`: in a feedback file, who gave the feedback) do; `weights` (the rows'
        `weights`) override the spec's objective weights (multi-objective RMs) row by row."""
        return self.scored(prompts, responses, users, weights)[0]

    def scored(self, prompts: list, responses: list[str], users: Sequence[Any] | None = None,
               weights: Sequence[Mapping[str, float] | None] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(`__call__`'s rewards, each objective's mean score by name): a multi-output source is trained on
        its weighted sum, and its objectives are logged apart (empty for a one-output source)."""
        users = [self.spec.user] * len(responses) if self.spec.user is not None else list(users or [None] * len(responses))
        try:
            scores = score_groups(self.reward, prompts, responses, users, name=self.spec.source)
        except PluralignError:
            raise
        except Exception as e:  # a reward source given as an object (its own code): say which one failed and how
            raise PluralignError(f"reward '{self.spec.source}' raised {type(e).__name__}: {e}") from e
        if scores.shape[1] == 1:
            return scores[:, 0], {}
        names = objective_names(self.reward, scores.shape[1])
        default = weight_vector(self.spec.weights, names)
        w = torch.stack([weight_vector(r, names) if r is not None else default for r in (weights or [None] * len(responses))])
        return (scores * w).sum(1), {name: scores[:, k].mean() for k, name in enumerate(names)}


def combine(columns: Tensor, weights: Tensor, group_size: int, mode: str = "sum", eps: float = 1e-4) -> Tensor:
    """K reward columns [B, K] (weights [K], or [B, K] per prompt) → one reward per completion [B].
    "normalize_then_sum" returns S = Σ_k w_k·z_k with z_k the per-group z-score of column k; S has group
    mean 0, so GRPO with batch std scaling on S gives GDPO's advantage."""
    if mode == "sum":
        return (columns * weights).sum(-1)
    if mode == "normalize_then_sum":
        r = columns.T.reshape(columns.shape[1], -1, group_size)  # [K, P, G]
        std = r.std(-1, keepdim=True) if group_size > 1 else torch.zeros_like(r[..., :1])
        z = ((r - r.mean(-1, keepdim=True)) / (std + eps)).reshape(columns.shape[1], -1).T
        return (z * weights).sum(-1)
    raise ConfigError(f"reward combine must be 'sum' or 'normalize_then_sum', got {mode!r}")


class RunningMoments:
    """Running mean and variance of every reward seen (Chan et al.'s parallel update), checkpointed with
    the model; PPO-max normalises with them (std = sqrt(var·n/(n−1)), MOSS-RLHF's convention)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-24

    def update(self, x: Tensor) -> None:
        x = x.double()
        n, mean, var = x.numel(), float(x.mean()), float(x.var(unbiased=False)) if x.numel() > 1 else 0.0
        total = self.count + n
        delta = mean - self.mean
        m2 = self.var * self.count + var * n + delta * delta * self.count * n / total
        self.mean, self.var, self.count = self.mean + delta * n / total, m2 / total, total

    @property
    def std(self) -> float:
        return math.sqrt(self.var * self.count / max(self.count - 1, 1e-12))

    def state_dict(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]


def normalize_running(rewards: Tensor, moments: RunningMoments, *, center: bool = True, clip: float | None = None) -> Tensor:
    """PPO-max reward normalisation: update the running moments with this batch, then (R − mean)/std
    (`center`) or R/std, then clip to ±clip."""
    moments.update(rewards)
    return scaled_by(rewards, moments, center=center, clip=clip)


def scaled_by(rewards: Tensor, moments: RunningMoments, *, center: bool = True, clip: float | None = None) -> Tensor:
    """(R − mean)/std (`center`) or R/std with the moments as they stand, then clip to ±clip."""
    out = (rewards - moments.mean) / moments.std if center else rewards / moments.std
    return out.clamp(-clip, clip) if clip else out


def calibrated(rewards: Tensor, reference_rewards: Tensor, t: float = 1.0, kind: str = "bon") -> Tensor:
    """InfAlign: each reward [P, G] → its mid-rank CDF among the reference's rewards for the same prompt
    [P, M], then Φ (exp(t·C) for best-of-N)."""
    return torch.stack([transform(calibrate(reference_rewards[p], rewards[p]), kind, t) for p in range(rewards.shape[0])])


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment: 0 up to max_len − buffer, then linear down to −factor at max_len."""
    start = max_len - buffer
    pen = (start - lengths.float()) / buffer * factor
    return torch.where(lengths <= start, torch.zeros_like(pen), pen.clamp(min=-factor))


def varied_groups(rewards: Tensor, group_size: int) -> Tensor:
    """DAPO dynamic sampling: True for the groups whose rewards vary (population std > 0) or G = 1."""
    r = groups(rewards, group_size)
    return torch.ones(r.shape[0], dtype=torch.bool) if group_size == 1 else r.std(1, unbiased=False) > 0
