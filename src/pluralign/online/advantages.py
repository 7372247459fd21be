"""Advantage estimators: rewards of B = P·G sampled completions → per-token advantages [B, T].

Every estimator is a pure function registered by name with one signature,

    fn(rewards [B], mask [B, T], *, group_size, kl_penalty=None, values=None, **params)
        -> (advantages [B, T], returns [B, T] or None)

where rows j·G .. j·G+G−1 are the G completions of prompt j, `mask` marks completion tokens and
`kl_penalty` is β·k1 per token when the KL to the reference is put in the reward (specs/online.md §5.2).
Formulas and test vectors: specs/online.md §2. Nothing here needs gradients; inputs are detached.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.registry import Registry

ESTIMATORS = Registry("advantage estimator")
register, get, names = ESTIMATORS.register, ESTIMATORS.get, ESTIMATORS.names


def groups(rewards: Tensor, group_size: int) -> Tensor:
    """[B] → [P, G], checking that B is a whole number of groups."""
    if group_size < 1 or rewards.numel() % group_size:
        raise ConfigError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.reshape(-1, group_size)


def group_advantages(rewards: Tensor, group_size: int, *, scale: str = "group", eps: float = 1e-4) -> Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): (R − group mean) / (std + eps), Bessel std, eps added to
    the std as TRL does. scale="batch": divide by the std of all B rewards (Lite PPO); "none": Dr. GRPO
    (Liu et al. 2025), no std scaling. A group of one has mean = its reward, so A = 0 (no signal)."""
    r = groups(rewards.float(), group_size)
    centred = _centred(r, r.mean(1, keepdim=True))
    if scale == "none":
        return centred.flatten()
    if scale == "group":
        std = r.std(1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
    elif scale == "batch":
        std = rewards.float().std() if rewards.numel() > 1 else torch.zeros(())
    else:
        raise ConfigError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    return (centred / (std + eps)).flatten()


def leave_one_out(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO (Ahmadian et al. 2024): R_i minus the mean of the other G−1 rewards of its group."""
    if group_size < 2:
        raise ConfigError("RLOO needs at least 2 completions per prompt (group_size >= 2)")
    r = groups(rewards.float(), group_size)
    return (_centred(r, r.mean(1, keepdim=True)) * group_size / (group_size - 1)).flatten()


def _centred(r: Tensor, mean: Tensor) -> Tensor:
    """r − mean, exactly 0 in a group whose rewards are all equal: the float mean of 6 or 7 equal rewards can
    miss them by an ulp, which the (std + eps) scaling turns into advantages of ~1e-4 where there is no
    signal (and would make the group look live, `PolicyGradient._live_rows`)."""
    flat = (r == r[:, :1]).all(1, keepdim=True)
    return torch.where(flat, torch.zeros_like(r), r - mean)


def returns_to_go(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """G_t = Σ_{s≥t} γ^{s−t} r_s over the completion tokens (masked positions carry nothing)."""
    r = token_rewards * mask
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running * mask[:, t]
        out[:, t] = running
    return out * mask


def outcome_token_rewards(scores: Tensor, mask: Tensor, kl_penalty: Tensor | None = None) -> Tensor:
    """Token rewards: −kl_penalty on every completion token, plus the outcome score on the last one."""
    mask = mask.float()
    r = -kl_penalty * mask if kl_penalty is not None else torch.zeros_like(mask)
    last = last_token(mask)
    rows = torch.arange(mask.shape[0])
    has = mask.sum(1) > 0
    r[rows[has], last[has]] += scores.float()[has]
    return r


def last_token(mask: Tensor) -> Tensor:
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * (mask > 0).long()).argmax(1)


def whiten(values: Tensor, mask: Tensor, *, ddof: int = 1, eps: float = 1e-8, shift_mean: bool = True) -> Tensor:
    """(x − mean) / sqrt(var + eps) over the valid tokens (token-weighted). ddof=1 as verl, 0 as OpenRLHF
    and MOSS-RLHF (specs/online.md §2.3)."""
    m = mask.float()
    n = m.sum()
    mean = (values * m).sum() / n.clamp(min=1)
    var = (((values - mean) * m) ** 2).sum() / (n - ddof).clamp(min=1)
    out = (values - mean) / torch.sqrt(var + eps) if shift_mean else values / torch.sqrt(var + eps)
    return out * m


def _with_kl(per_sequence: Tensor, mask: Tensor, kl_penalty: Tensor | None) -> Tensor:
    """Sequence advantages broadcast over tokens; a KL penalty in the reward enters as its return-to-go,
    after the group baseline, so its scale does not depend on the group's spread (OpenRLHF; §5.3)."""
    a = per_sequence[:, None] * mask.float()
    if kl_penalty is not None:
        a = a + returns_to_go(-kl_penalty, mask.float())
    return a


@register("grpo")
def grpo(rewards, mask, *, group_size, kl_penalty=None, values=None, scale="group", eps=1e-4):
    return _with_kl(group_advantages(rewards, group_size, scale=scale, eps=eps), mask, kl_penalty), None


@register("dr_grpo")
def dr_grpo(rewards, mask, *, group_size, kl_penalty=None, values=None):
    return _with_kl(group_advantages(rewards, group_size, scale="none"), mask, kl_penalty), None


@register("rloo")
def rloo(rewards, mask, *, group_size, kl_penalty=None, values=None):
    return _with_kl(leave_one_out(rewards, group_size), mask, kl_penalty), None


@register("reinforce_pp")
def reinforce_pp(rewards, mask, *, group_size, kl_penalty=None, values=None, gamma=1.0, whiten_ddof=1, baseline=False):
    """REINFORCE++ (Hu 2025): token rewards (−β·k1 each token, outcome at the last), returns-to-go,
    whitened over all valid tokens of the batch. `baseline`: subtract each group's mean reward first
    (REINFORCE++-baseline)."""
    if baseline:
        rewards = group_advantages(rewards, group_size, scale="none")
    g = returns_to_go(outcome_token_rewards(rewards, mask, kl_penalty), mask.float(), gamma)
    return whiten(g, mask, ddof=whiten_ddof), None


@register("reinforce_pp_baseline")
def reinforce_pp_baseline(rewards, mask, *, group_size, kl_penalty=None, values=None, gamma=1.0, whiten_ddof=1):
    return reinforce_pp(rewards, mask, group_size=group_size, kl_penalty=kl_penalty, gamma=gamma,
                        whiten_ddof=whiten_ddof, baseline=True)


def gae_advantages(token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
                   lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016): δ_t = r_t + γV_{t+1} − V_t with V = 0
    after the last valid token; Â_t = δ_t + γλÂ_{t+1}; returns Â + V (targets from the rollout's values)."""
    m = mask.float()
    v = values * m
    adv = torch.zeros_like(v)
    next_v = torch.zeros_like(v[:, 0])
    next_a = torch.zeros_like(v[:, 0])
    for t in range(v.shape[1] - 1, -1, -1):
        delta = token_rewards[:, t] + gamma * next_v - v[:, t]
        a = delta + gamma * lam * next_a
        adv[:, t] = a * m[:, t]
        # Masked positions (padding after the end) pass through the next valid values unchanged.
        next_v = torch.where(m[:, t] > 0, v[:, t], next_v)
        next_a = torch.where(m[:, t] > 0, a, next_a)
    return adv, (adv + v) * m


@register("gae")
def gae(rewards, mask, *, group_size, kl_penalty=None, values=None, gamma=1.0, lam=0.95, whiten_advantages=True,
        whiten_ddof=1):
    """PPO's estimator: GAE on token rewards from the rollout's values; returns are the value targets."""
    if values is None:
        raise ConfigError("the 'gae' estimator needs values: train with a value head (pluralign train ppo)")
    adv, ret = gae_advantages(outcome_token_rewards(rewards, mask, kl_penalty), values, mask, gamma, lam)
    return (whiten(adv, mask, ddof=whiten_ddof) if whiten_advantages else adv), ret
