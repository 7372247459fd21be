"""Underlying-distribution matching for BCO (Jung et al. 2024, "Binary Classifier Optimization", §3.3).

When desirable and undesirable examples come from different prompt distributions, BCO reweights each
undesirable example by the density ratio p(x)/(1 − p(x)) of a classifier's P(desirable | prompt), so that the
undesirable prompts look as if drawn from the desirable ones. As in the paper's code, the classifier is a
class-balanced L2 logistic regression on prompt embeddings fitted on at most `sample_size` prompts; the
ratios are clamped to [0.5, 10] (`pluralign.losses.udm_weights`). The embeddings here are the policy's own
final hidden states mean-pooled over the prompt tokens, taken once before training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from pluralign.losses import udm_weights
from pluralign.models.logprobs import final_hidden_states


@torch.no_grad()
def prompt_embeddings(model: Any, tokenizer: Any, records: Sequence[Any], batch_size: int = 32,
                      max_length: int = 512, chat_template: str = "auto") -> torch.Tensor:
    """[N, H] float32: each record's prompt tokens (as training sees them: chat template, truncation) through
    the model, final hidden states averaged over those tokens."""
    from pluralign.data.collate import pad_rows
    from pluralign.data.tokenize import Encoded, encode_pair, pad_token_id

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        for start in range(0, len(records), batch_size):
            rows = []
            for r in records[start:start + batch_size]:
                encoded = encode_pair(tokenizer, r.prompt, r.response, max_length, chat_template=chat_template)
                prompt = encoded.input_ids[:len(encoded) - sum(encoded.completion_mask)]
                rows.append(Encoded(prompt, [0] * len(prompt)))
            batch = pad_rows(rows, pad_token_id(tokenizer))
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            hidden = final_hidden_states(model, ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)).float()
            out.append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1))
    finally:
        model.train(was_training)
    return torch.cat(out).cpu()


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1.0, max_iter: int = 500) -> torch.Tensor:
    """Weights [H + 1] (bias last) of a class-balanced logistic regression, minimising
    Σᵢ sᵢ·BCE(xᵢ·w + b, yᵢ) + l2/2·‖w‖² with sᵢ = n / (2·n_{yᵢ}) (scikit-learn's class_weight="balanced", C=1)."""
    x, y = x.double(), y.double()
    n, n_pos = len(y), float(y.sum())
    if n_pos in (0.0, n):
        raise ValueError("the prompt classifier needs both desirable and undesirable examples")
    sample_weight = torch.where(y > 0, n / (2 * n_pos), n / (2 * (n - n_pos)))
    theta = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def objective():
        opt.zero_grad()
        logits = x @ theta[:-1] + theta[-1]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        value = (sample_weight * bce).sum() + 0.5 * l2 * theta[:-1].square().sum()
        value.backward()
        return value

    opt.step(objective)
    return theta.detach()


def bco_udm_weights(model: Any, tokenizer: Any, records: Sequence[Any], *, sample_size: int = 1024, seed: int = 0,
                    min_ratio: float = 0.5, max_ratio: float = 10.0, chat_template: str = "auto") -> torch.Tensor:
    """[N] weights for binary `records`: 1 for desirable ones, the clamped density ratio for undesirable ones."""
    labels = torch.tensor([bool(r.label) for r in records])
    embeddings = prompt_embeddings(model, tokenizer, records, chat_template=chat_template)
    fit_rows = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))[:sample_size]
    theta = fit_logistic(embeddings[fit_rows], labels[fit_rows].float())
    prob = torch.sigmoid(embeddings.double() @ theta[:-1] + theta[-1]).float()
    return udm_weights(prob, labels, min_ratio=min_ratio, max_ratio=max_ratio)
