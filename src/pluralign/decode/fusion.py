"""Model fusion at decoding time, with per-request weights.

- GenARM (Xu et al., ICLR 2025, arXiv 2410.08193): next-token logits
  (log π_base + Σ_i α_i log π_{r_i}) / T, the ARMs being autoregressive reward models (LMs).
  α = 0 is the base model; a uniform ARM changes nothing.
- MOD (Shi et al., NeurIPS 2024, "Decoding-Time Language Model Alignment with Multiple Objectives"):
  models π_i aligned to each objective from one reference with the same f-divergence; each candidate
  token z is scored on the full-prefix log-probs ℓ_i = log π_i(y_<t, z | x):
    reverse KL  f = Σ w_i ℓ_i                     (π ∝ Π π_i^{w_i})
    forward KL  f = −logsumexp_i(log w_i − ℓ_i)   (π ∝ (Σ w_i/π_i)^{−1})
    α-div.      f = −logsumexp_i(log w_i − α ℓ_i)
  with w on the simplex: weights are divided by their sum (`mod_weights`).
  Greedy takes argmax f; sampling draws from softmax(f − f(prefix)) (exact for reverse KL).
Models may be separate LMs or LoRA adapters of one PEFT model (`AdapterView`), each with its own cache.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from pluralign.decode.api import TOKENWISE_OPTIONS, TOKENWISE_SHARED, Controls, DecodeResult, finish, register
from pluralign.decode.kv import Compute, LMState, pad_id_of
from pluralign.decode.sampler import eval_mode
from pluralign.decode.tokenwise import choice_logq, nucleus, pick, row_settings, run_tokenwise, tokenwise_info
from pluralign.errors import ConfigError


class AdapterView(torch.nn.Module):
    """One LoRA adapter of a PEFT model seen as its own causal LM (`adapter=None`: the base model with
    adapters disabled). The adapter is activated for every forward pass, so several views of one PEFT
    model can be fused step by step."""

    def __init__(self, peft_model: Any, adapter: str | None):
        super().__init__()
        self.peft_model = peft_model
        self.adapter = adapter

    def forward(self, **kwargs: Any) -> Any:
        if self.adapter is None:
            with self.peft_model.disable_adapter():
                return self.peft_model(**kwargs)
        self.peft_model.set_adapter(self.adapter)
        return self.peft_model(**kwargs)


def mod_scores(ell: torch.Tensor, w: torch.Tensor, form: str = "reverse_kl", alpha: float = 0.5) -> torch.Tensor:
    """f over models: ell [M, B, V] full-prefix log-probs, w [B, M] simplex weights -> [B, V]."""
    wt = w.t()[:, :, None].to(ell)
    if form in ("reverse_kl", "jsd"):
        return (wt * ell).sum(0)
    logw = torch.where(wt > 0, wt.clamp(min=1e-30).log(), torch.full_like(wt, float("-inf")))
    if form == "forward_kl":
        return -torch.logsumexp(logw - ell, dim=0)
    if form == "alpha":
        return -torch.logsumexp(logw - alpha * ell, dim=0)
    raise ConfigError(f"unknown MOD form {form!r}; use reverse_kl, forward_kl, alpha or jsd")


def mod_weights(weights: Any, n_models: int, form: str = "reverse_kl") -> list[float]:
    """A request's MOD weights: one per model, in order, the policy's first (uniform when not given), divided
    by their sum (only their ratios matter: 2,2 is 0.5,0.5; a sum <= 0 is refused). Models
    have no objective names, so weights by name are an error rather than read as their keys. All zero
    weights fuse nothing (every token equally likely: random text), and the forward-KL and α forms take
    log w, so a negative weight there would count as 0: both are refused."""
    if weights is None:
        return [1.0 / n_models] * n_models
    if isinstance(weights, Mapping):
        raise ConfigError(f"mod weighs its models in order, the policy first: give {n_models} weights as a list, "
                          "not by name", field="weights")
    w = [float(x) for x in weights]
    if len(w) != n_models:
        raise ConfigError(f"{len(w)} weights for {n_models} models (the policy and {n_models - 1} further model(s): "
                          "one weight each, the policy's first)", field="weights")
    if not any(w):
        raise ConfigError(f"all {n_models} weights are 0: give at least one model a weight", field="weights")
    if form in ("forward_kl", "alpha") and min(w) < 0:
        raise ConfigError(f"{w}: the {form} form takes log w, so its weights must be >= 0 (negative weights "
                          "extrapolate only with form=reverse_kl)", field="weights")
    # MOD's weights lie on the simplex: with Σ w = 1 the shared reference policy cancels from Π π_i^{w_i};
    # otherwise it stays as π_ref^{Σw} (2,2 decoded a sharper π1²·π2² than 0.5,0.5's √(π1·π2))
    total = sum(w)
    if total <= 0:
        raise ConfigError(f"{w}: the weights sum to {total:g}, so they cannot be normalised to sum to 1 as MOD's "
                          "weights must (negative weights extrapolate, e.g. 1.5,-0.5)", field="weights")
    return [x / total for x in w]


class FusionGuide:
    """Holds one cache per extra model; combines next-token log-probs of all models each step."""

    def __init__(self, controls: list[Controls], prompt_ids: list[list[int]], streams: Any, *, models: list[Any],
                 tokenizer: Any, compute: Compute, kind: str):
        self.controls, self.streams, self.kind = controls, streams, kind
        pad = pad_id_of(tokenizer)
        self.states = [LMState.from_ids(m, prompt_ids, pad, compute=compute) for m in models]
        self.prefix = None  # [M, B] cumulative log-probs of each model for MOD

    def _weights(self, rows: list[int], n_models: int, device: Any) -> torch.Tensor:
        out = []
        for r in rows:
            c = self.controls[r]
            if self.kind == "genarm":
                a = c.extra.get("alpha", c.w)
                a = [float(a)] * (n_models - 1) if isinstance(a, (int, float)) else [float(x) for x in a]
                if len(a) != n_models - 1:  # α weighs the ARMs only: the policy's weight is always 1
                    raise ConfigError(f"genarm option 'alpha': {len(a)} values for {n_models - 1} ARM(s) (one per "
                                      "model given with models=, in order; the policy has none)", field="extra")
                out.append([1.0] + a)
            else:
                out.append(mod_weights(c.weights, n_models, c.extra.get("form", "reverse_kl")))
        w = torch.tensor(out, device=device)
        if w.shape[1] != n_models:
            raise ConfigError(f"{w.shape[1]} fusion weights for {n_models} models (the policy and {n_models - 1} "
                              "further model(s): one weight each, the policy's first)")
        return w

    def choose(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        lps = torch.stack([torch.log_softmax(logits, -1)] + [torch.log_softmax(s.logits, -1) for s in self.states])
        w = self._weights(rows, lps.shape[0], logits.device)
        greedy, temp = row_settings(self.controls, rows, logits.device)
        c = self.controls[rows[0]]
        if self.kind == "genarm":
            scores = nucleus((w.t()[:, :, None] * lps).sum(0), temp, c.top_k, c.top_p)
        else:
            if self.prefix is None:
                self.prefix = torch.zeros(lps.shape[0], lps.shape[1], device=logits.device)
            ell = self.prefix[:, :, None] + lps
            form, alpha = c.extra.get("form", "reverse_kl"), float(c.extra.get("alpha", 0.5))
            f = mod_scores(ell, w, form, alpha)
            f_prev = mod_scores(self.prefix[:, :, None], w, form, alpha)
            scores = nucleus(f - f_prev, temp, c.top_k, c.top_p)
        tok = pick(scores, greedy, temp, self.streams, rows)
        self.last_logq = choice_logq(scores, tok, greedy, temp)
        if self.prefix is not None:
            self.prefix = self.prefix + lps.gather(-1, tok[None, :, None].expand(lps.shape[0], -1, 1)).squeeze(-1)
        return tok

    def keep(self, index: list[int]) -> None:
        for s in self.states:
            s.select(index)
        if self.prefix is not None:
            self.prefix = self.prefix[:, index]

    def advance(self, tokens: torch.Tensor) -> None:
        for s in self.states:
            s.advance(tokens)


def _fusion(kind: str):
    def run(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any = None, controls: list[Controls],
            models: list[Any] | None = None, **_: Any) -> DecodeResult:
        if not models:
            raise ConfigError(f"{kind} needs models=[...] (ARMs for genarm, the other objective models for mod)")
        compute = Compute()
        with eval_mode(*models):
            texts, gen, compute = run_tokenwise(
                model, tokenizer, prompts, controls,
                lambda ids, comp, g: FusionGuide(controls, ids, g, models=list(models), tokenizer=tokenizer,
                                                 compute=comp, kind=kind), compute=compute)
        out = finish(texts, prompts, reward, controls, compute=compute)
        out.info.update(tokenwise_info(gen))
        return out

    return run


register("genarm", options=("alpha", *TOKENWISE_OPTIONS),
         batch_shared=("top_k", "top_p", *TOKENWISE_SHARED), needs=("models",))(_fusion("genarm"))
register("mod", options=("form", "alpha", *TOKENWISE_OPTIONS),
         batch_shared=("top_k", "top_p", "form", "alpha", *TOKENWISE_SHARED), needs=("models",))(_fusion("mod"))
