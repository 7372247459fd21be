"""Heads that turn a backbone's hidden states into rewards and values.

The reward of a sequence is read at its last non-pad token (the convention of TRL's RewardTrainer and of
InstructGPT reward models): a causal model has seen the whole prompt and response there. Encoders may
instead mean-pool (sentence-transformers convention).
"""

from __future__ import annotations

import torch
from torch import nn


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position in each row; works for left and right padding."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(dim=-1)


POOLINGS = ("last", "mean", "last_mean")


def pooled_size(hidden: int, how: str) -> int:
    """Width of a pooled vector: 'last_mean' concatenates two hidden-size vectors."""
    return 2 * hidden if how == "last_mean" else hidden


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str = "last") -> torch.Tensor:
    """[N, T, H] hidden states → [N, H]: 'last' non-pad token, or 'mean' over non-pad tokens; 'last_mean'
    concatenates both ([N, 2H]), the reward recipe's default for causal backbones (measured in
    `pluralign.train.recipes.reward._loop_defaults`)."""
    if how == "last":
        idx = last_token_index(attention_mask)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    if how == "mean":
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    if how == "last_mean":
        return torch.cat([pool(hidden, attention_mask, "last"), pool(hidden, attention_mask, "mean")], dim=-1)
    raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {how!r}")


def backbone_hidden(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Final hidden states [N, T, H] of any transformers model, without computing LM logits."""
    if hasattr(backbone, "get_base_model"):  # peft: adapters are injected into the wrapped model's modules
        backbone = backbone.get_base_model()
    base = getattr(backbone, "base_model", backbone)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    return base(**kwargs).last_hidden_state


def hidden_size(backbone: nn.Module) -> int:
    cfg = backbone.config
    return int(getattr(cfg, "hidden_size", None) or cfg.n_embd)


class RewardHead(nn.Module):
    """Linear map from a pooled representation to `n_outputs` rewards (1 = scalar BT head; more = one per
    objective or per ensemble member). Optional hidden MLP layer (the PAL paper's 'MLP projector')."""

    def __init__(self, in_features: int, n_outputs: int = 1, *, hidden: int = 0, bias: bool = True,
                 init_std: float | None = None):
        super().__init__()
        layers: list[nn.Module] = []
        if hidden:
            layers += [nn.Linear(in_features, hidden), nn.GELU()]
            in_features = hidden
        self.out = nn.Linear(in_features, n_outputs, bias=bias)
        # small init keeps initial rewards near 0, so the initial BT loss is ≈ log 2
        nn.init.normal_(self.out.weight, std=init_std if init_std is not None else 1 / (in_features + 1) ** 0.5)
        if bias:
            nn.init.zeros_(self.out.bias)
        self.trunk = nn.Sequential(*layers)

    @property
    def n_outputs(self) -> int:
        return self.out.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Representation fed to the last linear layer (what MORE differentiates the head weight against)."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(x))


class ValueHead(nn.Module):
    """Per-token value V(s_t) [N, T] for actor–critic training (a linear map on every hidden state)."""

    def __init__(self, in_features: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(in_features, 1)
        nn.init.normal_(self.out.weight, std=1 / (in_features + 1) ** 0.5)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(hidden)).squeeze(-1)
