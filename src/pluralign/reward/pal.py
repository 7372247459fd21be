"""PAL: pluralistic reward model with K shared prototypes and per-user mixtures (Chen et al., ICLR 2025,
"PAL: Sample-Efficient Personalized Reward Modeling for Pluralistic Alignment"; training spec §5.3).

Items are projected by an MLP f: f(x, y) ∈ R^d. Each user u mixes K prototypes with weights
a_u = softmax(W_u / T) into an ideal point z_u(x) = Σ_k a_{u,k} g_k(x): prompt-conditioned prototype
projectors g_k (PAL-B, default) or free prototype vectors p_k (PAL-A). Scorers:
- 'dist' (the ideal-point model): s = −‖f(x, y) − z_u(x)‖ — the response closer to the user's ideal wins;
- 'angle': s = cos(f(x, y), z_u(x)) · min(exp(logit_scale), 100), logit_scale initialised at log(1/0.07).
Pairs are trained with −log σ(s_w − s_l) ('logistic') or max(0, 1 − (s_w − s_l)) ('hinge'). A new user is
fitted from a handful of pairs by optimising only W_new, every shared parameter frozen. With K = 1 every
user has the same ideal point: PAL reduces to one shared reward model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pluralign.errors import ConfigError
from pluralign.reward.base import RewardModel, TextEncoder, register
from pluralign.seeding import seeded


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Module:
    """The PAL paper's projector: Linear (→ GELU → Linear when `hidden` > 0)."""
    if hidden <= 0:
        return nn.Linear(n_in, n_out)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, n_out))


@register
class PALRewardModel(RewardModel):
    """PAL reward model; `score(prompts, responses, user=u)` for a known user id, a mixture over the K
    prototypes (sequence of K weights), or None (the mean mixture of the known users)."""

    model_type = "pal"

    def __init__(self, encoder: TextEncoder | None, objectives: Sequence[str] = ("reward",), feature_dim: int | None = None,
                 *, n_prototypes: int = 2, dim: int = 64, hidden: int = 0, scorer: str = "dist", variant: str = "b",
                 temperature: float = 1.0, user_init_std: float = 1.0, user_ids: Sequence[str] = (),
                 fixed_mixture: Sequence[float] | None = None, prompt_dim: int | None = None, seed: int = 0):
        super().__init__(encoder, objectives, feature_dim)
        if scorer not in ("dist", "angle"):
            raise ConfigError(f"PAL scorer must be 'dist' or 'angle', got {scorer!r}")
        if variant not in ("a", "b"):
            raise ConfigError(f"PAL variant must be 'a' (free prototypes) or 'b' (prompt-conditioned), got {variant!r}")
        self.k, self.dim, self.hidden, self.scorer, self.variant = n_prototypes, dim, hidden, scorer, variant
        self.temperature, self.user_init_std, self.seed = temperature, user_init_std, seed
        self.prompt_dim = prompt_dim or self.feature_dim  # prompt features may come from another featurizer
        self.user_ids = [str(u) for u in user_ids]
        self.fixed_mixture = None if fixed_mixture is None else [float(a) for a in fixed_mixture]
        with seeded(seed):
            self.item = mlp(self.feature_dim, dim, hidden)
            if variant == "b":
                self.prototype_proj = mlp(self.prompt_dim, n_prototypes * dim, hidden)
            else:
                self.prototypes = nn.Parameter(torch.randn(n_prototypes, dim) / math.sqrt(dim))
            self.user_logits = nn.Parameter(user_init_std * torch.randn(len(self.user_ids), n_prototypes))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)), requires_grad=scorer == "angle")

    @property
    def needs_prompt(self) -> bool:  # type: ignore[override]
        return self.variant == "b"

    def extra_config(self) -> dict:
        return {"n_prototypes": self.k, "dim": self.dim, "hidden": self.hidden, "scorer": self.scorer,
                "variant": self.variant, "temperature": self.temperature, "user_init_std": self.user_init_std,
                "user_ids": self.user_ids,
                "fixed_mixture": self.fixed_mixture, "prompt_dim": self.prompt_dim, "seed": self.seed}

    # --- mixtures
    def user_index(self, user: Any) -> int:
        if isinstance(user, int) and not isinstance(user, bool):
            if not 0 <= user < len(self.user_ids):
                raise ConfigError(f"user index {user} out of range (model knows {len(self.user_ids)} users)")
            return user
        try:
            return self.user_ids.index(str(user))
        except ValueError:
            raise ConfigError(f"unknown user {user!r}: add it first from a few of its pairs with "
                              "pluralign.reward.adapt_user(model, user_id, ...); "
                              f"known users start {self.user_ids[:5]}") from None

    def mixture_of(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits / self.temperature, dim=-1)

    def mixture(self, user: Any = None) -> torch.Tensor:
        """Mixture weights [K] of a user id/index, a given mixture, or (None) the mean over known users."""
        if self.fixed_mixture is not None:
            return torch.tensor(self.fixed_mixture, device=self.user_logits.device)
        if user is None:
            if not self.user_ids:
                return torch.full((self.k,), 1.0 / self.k, device=self.user_logits.device)
            return self.mixture_of(self.user_logits).mean(0)
        if isinstance(user, (str, int)) and not isinstance(user, bool):
            return self.mixture_of(self.user_logits[self.user_index(user)])
        try:
            mix = torch.as_tensor(user, dtype=torch.float, device=self.user_logits.device).flatten()
        except (TypeError, ValueError):  # e.g. a list of user ids, which torch refused as "too many dimensions 'str'"
            raise ConfigError(f"user: expected a user id, a user index or a mixture of {self.k} weights, got {user!r}; "
                              "score one user at a time, or use group_mixture(users) for a group", field="user") from None
        if mix.numel() != self.k or (mix < 0).any() or abs(float(mix.sum()) - 1) > 1e-4:
            raise ConfigError(f"a PAL mixture must be {self.k} non-negative weights summing to 1, got {mix.tolist()}")
        return mix

    def group_mixture(self, users: Sequence[Any]) -> torch.Tensor:
        """Mean mixture of a group of users: scoring with it gives the group's collective reward."""
        return torch.stack([self.mixture(u) for u in users]).mean(0)

    def group_scores(self, prompts: Sequence[Any], responses: Sequence[Any],
                     groups: dict[str, Sequence[Any]]) -> dict[str, torch.Tensor]:
        """Score [N, 1] per group, each with the mean mixture of its users ({group: [user ids]})."""
        return {g: self.score(prompts, responses, user=self.group_mixture(users).tolist()) for g, users in groups.items()}

    # --- scoring
    def ideal_points(self, prompt_features: torch.Tensor | None, mixtures: torch.Tensor) -> torch.Tensor:
        """z(x) = Σ_k a_k g_k(x): mixtures [N, K] (or [K]) → ideal points [N, d]."""
        if self.variant == "a":
            return mixtures @ self.prototypes if mixtures.dim() == 2 else (mixtures @ self.prototypes)[None]
        if prompt_features is None:
            raise ConfigError("PAL-B needs the prompts' features")
        protos = self.prototype_proj(prompt_features).view(-1, self.k, self.dim)
        mix = mixtures if mixtures.dim() == 2 else mixtures[None].expand(protos.shape[0], -1)
        return torch.einsum("nk,nkd->nd", mix, protos)

    def score_items(self, features: torch.Tensor, ideal: torch.Tensor) -> torch.Tensor:
        """Score [N] of item features against ideal points [N, d] (or [1, d])."""
        return self.score_projected(self.item(features), ideal)

    def score_projected(self, f: torch.Tensor, ideal: torch.Tensor, *, frozen: bool = False) -> torch.Tensor:
        """Score of already-projected items f(x, y) [N, d]; `frozen` detaches the angle scale."""
        if self.scorer == "dist":
            return -(f - ideal).norm(dim=-1)
        scale = self.logit_scale.detach() if frozen else self.logit_scale
        return F.cosine_similarity(f, ideal.expand_as(f), dim=-1) * scale.exp().clamp(max=100.0)

    def rewards(self, features: torch.Tensor, prompt_features: torch.Tensor | None = None, user: Any = None) -> torch.Tensor:
        if isinstance(user, torch.Tensor) and user.dtype == torch.long:  # per-row user indices [N]
            mix = self.mixture_of(self.user_logits[user])
        else:
            mix = self.mixture(user)
        return self.score_items(features, self.ideal_points(prompt_features, mix))[:, None]

    # --- users
    def add_user(self, user_id: str, *, seed: int = 0) -> int:
        """Append a user with logits drawn from N(0, user_init_std²); other rows are copied unchanged."""
        if str(user_id) in self.user_ids:
            return self.user_index(str(user_id))
        g = torch.Generator().manual_seed(seed)
        row = (self.user_init_std * torch.randn(1, self.k, generator=g)).to(self.user_logits)
        self.user_logits = nn.Parameter(torch.cat([self.user_logits.data, row]), requires_grad=self.user_logits.requires_grad)
        self.user_ids.append(str(user_id))
        return len(self.user_ids) - 1

    def collapse(self, user: Any = None) -> PALRewardModel:
        """A plain reward model (user argument ignored) scoring with one fixed mixture — of a user, a
        group (`group_mixture`), or an explicit mixture."""
        mix = self.mixture(user).detach().cpu().tolist()
        out = PALRewardModel(self.encoder, self.objectives, self.feature_dim, **{
            **self.extra_config(), "user_ids": [], "fixed_mixture": mix})
        own = {k: v for k, v in self.state_dict().items() if k != "user_logits" and not k.startswith("encoder.")}
        out.load_state_dict(own, strict=False)
        return out


def pal_pair_losses(s_chosen: torch.Tensor, s_rejected: torch.Tensor, loss: str = "logistic") -> torch.Tensor:
    """Per-pair loss on the score difference: −log σ(Δ) ('logistic') or max(0, 1 − Δ) ('hinge')."""
    diff = s_chosen - s_rejected
    if loss == "logistic":
        return -F.logsigmoid(diff)
    if loss == "hinge":
        return F.relu(1 - diff)
    raise ConfigError(f"PAL loss must be 'logistic' or 'hinge', got {loss!r}")


def pal_pair_step(model: PALRewardModel, batch: dict, *, loss: str = "logistic"):
    """Training step for the project loop on a per-user pairwise batch: rows 0..B-1 chosen, B..2B-1
    rejected, `users` [B] user indices, prompt features (or token ids) for the B prompts."""
    feats, prompt = model.batch_features(batch)
    users = batch["users"].long()
    b = users.shape[0]
    ideal = model.ideal_points(prompt, model.mixture_of(model.user_logits[users]))
    s_w, s_l = model.score_items(feats[:b], ideal), model.score_items(feats[b:], ideal)
    diff = (s_w - s_l).detach()
    return pal_pair_losses(s_w, s_l, loss), {"accuracy": (diff > 0).float().mean(), "margin": diff.mean()}


def adapt_user(model: PALRewardModel, user_id: str, chosen: torch.Tensor, rejected: torch.Tensor,
               prompt: torch.Tensor | None = None, *, steps: int = 200, lr: float = 0.05, weight_decay: float = 0.0,
               loss: str = "logistic", seed: int = 0) -> torch.Tensor:
    """Few-shot adaptation (PAL stage 'new_user'): fit ONLY the new user's logits W_u on its labelled pairs
    (chosen / rejected item features [n, H], prompt features [n, H] for PAL-B). Every other parameter —
    including the other users' rows of W — stays bit-identical. Returns the learned mixture [K]."""
    for name, value in (("chosen", chosen), ("rejected", rejected), ("prompt", prompt)):
        if value is not None and not isinstance(value, torch.Tensor):  # texts reached nn.Linear as a TypeError
            raise ConfigError(f"{name}: expected features [n, H] (model.features(prompts, responses)), got "
                              f"{type(value).__name__}", field=name)
    if model.variant != "a" and prompt is None:
        raise ConfigError("prompt: a PAL-B model (prompt-conditioned prototypes) needs the prompts' features, "
                          "model.features(prompts)", field="prompt")
    idx = model.add_user(user_id, seed=seed)
    with torch.no_grad():  # shared parts are constants here: compute them once
        ideal_each = None if model.variant == "a" else model.prototype_proj(prompt).view(-1, model.k, model.dim)
        f_w, f_l = model.item(chosen), model.item(rejected)
    w = model.user_logits.data[idx].clone().requires_grad_(True)
    opt = torch.optim.AdamW([w], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        mix = model.mixture_of(w)
        ideal = (mix @ model.prototypes.detach())[None] if ideal_each is None else torch.einsum("k,nkd->nd", mix, ideal_each)
        s_w, s_l = model.score_projected(f_w, ideal, frozen=True), model.score_projected(f_l, ideal, frozen=True)
        opt.zero_grad()
        pal_pair_losses(s_w, s_l, loss).mean().backward()
        opt.step()
    with torch.no_grad():
        model.user_logits.data[idx] = w.detach()
    return model.mixture(idx).detach()

