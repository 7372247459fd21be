"""Controlled decoding (Mudgal et al., ICML 2024, arXiv 2310.17022).

A prefix value model V_θ([x, y^t]) estimates the expected final reward of continuing from a prefix
with the base model. FUDGE-style parametrisation: a linear head over the frozen base model's hidden state
of [x, y_<t] gives V([x, y_<t, z]) for every next token z in one pass. CD-FUDGE training regresses every
prefix of an on-policy sample onto that sample's final reward: L = Σ_t (V([x, y^t]) − r([x, y]))².

Token-wise CD samples from softmax(log π_ref(z|s) + λ·V([s, z])) over π_ref's top-k tokens (Theorem 2.1:
π* ∝ π_ref·exp(λV*)). Blockwise CD draws K continuations of M tokens and keeps the one with the highest
value (M ≥ the remaining length with V = r is best-of-K).
"""

from __future__ import annotations

from typing import Any

import torch

from pluralign.decode.api import (
    TOKENWISE_OPTIONS,
    TOKENWISE_SHARED,
    Controls,
    DecodeResult,
    finish,
    groups,
    register,
    weights_matrix,
)
from pluralign.decode.kv import Compute, LMState, encode_prompts, left_pad, model_device, pad_id_of
from pluralign.decode.rewards import Counted, as_reward, score_groups
from pluralign.decode.sampler import decoded_text, eval_mode, sample
from pluralign.decode.tokenwise import (
    choice_logq,
    nucleus,
    pick,
    row_settings,
    run_tokenwise,
    tokenwise_info,
    top_k_candidates,
)
from pluralign.errors import ConfigError


class ValueHead(torch.nn.Module):
    """V([s, z]) for all z: a linear map from the hidden state of s to |vocab| values (zero-initialised)."""

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__()
        self.proj = torch.nn.Linear(hidden_size, vocab_size)
        torch.nn.init.zeros_(self.proj.weight)
        torch.nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden.float())


class ValueModel:
    """A frozen trunk (any HF causal LM, usually the base policy) plus a `ValueHead`."""

    def __init__(self, trunk: Any, head: ValueHead):
        self.trunk, self.head = trunk, head

    @classmethod
    def new(cls, trunk: Any) -> ValueModel:
        cfg = trunk.config
        return cls(trunk, ValueHead(cfg.hidden_size, cfg.vocab_size))

    @torch.no_grad()
    def hidden(self, seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = left_pad(seqs, pad_id, model_device(self.trunk))
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.trunk(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True)
        return out.hidden_states[-1], ids

    def prefix_values(self, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
        """V([x, y^t]) at every position t ≥ 1 of each (left-padded) sequence: [B, T-1]."""
        h, ids = self.hidden(seqs, pad_id)
        v = self.head(h[:, :-1])
        return v.gather(-1, ids[:, 1:, None]).squeeze(-1)

    def save(self, path: str) -> None:
        from safetensors.torch import save

        from pluralign.runs import atomic_write_bytes

        atomic_write_bytes(path, save({k: v.contiguous() for k, v in self.head.state_dict().items()}))

    def load(self, path: str) -> ValueModel:
        """The head saved at `path` (`save`), for this trunk: a missing or unreadable file, or a head fitted to
        another trunk (its hidden size or vocabulary), is a ConfigError naming the file."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except (OSError, SafetensorError) as e:
            raise ConfigError(f"{path}: not a value head saved by ValueModel.save ({e})", field="value_model") from e
        want = {k: tuple(v.shape) for k, v in self.head.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != want:
            w = got.get("proj.weight", (None, None))
            raise ConfigError(f"{path}: a value head for hidden size {w[1]} and a vocabulary of {w[0]}, but the "
                              f"policy has hidden size {want['proj.weight'][1]} and a vocabulary of "
                              f"{want['proj.weight'][0]}: fit the head over this policy (train_fudge)",
                              field="value_model")
        self.head.load_state_dict(state)
        return self


def missing_value_model(method: str, value_model: Any, reward: Any) -> str | None:
    """Why decoder `method` cannot run as called (no value model, and for cd_block no reward either), or None;
    checked by the decoders and, before anything loads, by `pluralign decode`."""
    if value_model is not None or method not in ("cd", "cd_block"):
        return None
    how = ("a value head saved by ValueModel.save after train_fudge: value_model= from Python, --value-model "
           "from the command line")
    if method == "cd":
        return f"--value-model: method 'cd' needs a value model ({how})"
    if reward is None:
        return f"cd_block needs a value model ({how}) or a reward (reward= / --reward) to score its blocks"
    return None


def train_fudge(value: ValueModel, tokenizer: Any, prompts: list[Any], reward: Any, *, n: int = 8,
                max_new_tokens: int = 16, steps: int = 50, lr: float = 1e-2, seed: int = 0, weights: Any = None,
                chat_template: str = "auto") -> list[float]:
    """CD-FUDGE: sample n responses per prompt from the trunk, score them, and fit the head so every
    prefix value regresses onto its sample's final (weighted) reward (the reward sees each prompt itself,
    text or messages; the trunk sees it rendered with `chat_template`). Returns the loss per step."""
    reward = as_reward(reward)
    s = sample(value.trunk, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, seed=seed,
               chat_template=chat_template)
    flat_p = [p for p in prompts for _ in range(n)]
    r = score_groups(reward, flat_p, s.flat_texts())
    w = weights_matrix(reward, [Controls(weights=weights)], r.shape[1])[0]
    target = r @ w
    seqs = [s.prompt_ids[p] + ids for p in range(len(prompts)) for ids in s.token_ids[p]]
    pad = pad_id_of(tokenizer, value.trunk)
    h, ids = value.hidden(seqs, pad)
    lengths = torch.tensor([len(ids_) for row in s.token_ids for ids_ in row])
    T = ids.shape[1]
    # completion positions: the last `length` tokens of each left-padded row
    mask = (torch.arange(T - 1)[None, :] >= (T - 1 - lengths)[:, None]).to(h.device)
    opt = torch.optim.Adam(value.head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        v = value.head(h[:, :-1]).gather(-1, ids[:, 1:, None]).squeeze(-1)
        loss = (((v - target.to(v)[:, None]) ** 2) * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


class CDGuide:
    """Token-wise CD: top-k of π_ref re-weighted by exp(λ·V([s, z]))."""

    def __init__(self, controls: list[Controls], prompt_ids: list[list[int]], streams: Any, *, value: ValueModel,
                 tokenizer: Any, compute: Compute):
        self.controls, self.streams = controls, streams
        self.value = value
        self.state = LMState.from_ids(value.trunk, prompt_ids, pad_id_of(tokenizer), output="hidden", compute=compute)
        self.k = max(int(c.extra.get("k", c.top_k or 10)) for c in controls)

    def choose(self, logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        logp = torch.log_softmax(logits, -1)
        top, cand = top_k_candidates(logp, self.k)
        with torch.no_grad():
            v = self.value.head(self.state.hidden).gather(-1, cand)
        lam = torch.tensor([float(self.controls[r].w) for r in rows], device=logits.device)
        greedy, temp = row_settings(self.controls, rows, logits.device)
        c = self.controls[rows[0]]  # top_k / top_p are shared by the batch (`batch_shared`)
        score = nucleus(top + lam[:, None] * v, temp, c.top_k, c.top_p)
        idx = pick(score, greedy, temp, self.streams, rows)
        self.last_logq = choice_logq(score, idx, greedy, temp)
        return cand.gather(1, idx[:, None]).squeeze(1)

    def keep(self, index: list[int]) -> None:
        self.state.select(index)

    def advance(self, tokens: torch.Tensor) -> None:
        self.state.advance(tokens)


@register("cd", options=("k", *TOKENWISE_OPTIONS), batch_shared=("k", "top_k", "top_p", *TOKENWISE_SHARED),
          needs=("value_model",))
def cd_tokenwise(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any = None, controls: list[Controls],
                 value_model: ValueModel | None = None, **_: Any) -> DecodeResult:
    """Token-wise controlled decoding with λ = controls.w and k = extra["k"] (default 10)."""
    if why := missing_value_model("cd", value_model, reward):
        raise ConfigError(why, field="value_model")
    compute = Compute()
    with eval_mode(value_model.trunk):
        texts, gen, compute = run_tokenwise(
            model, tokenizer, prompts, controls,
            lambda ids, comp, g: CDGuide(controls, ids, g, value=value_model, tokenizer=tokenizer, compute=comp),
            compute=compute)
    out = finish(texts, prompts, reward, controls, compute=compute)
    out.info.update(tokenwise_info(gen))
    return out


@register("cd_block", options=("block",), needs=("value_model|reward",))
def cd_blockwise(model: Any, tokenizer: Any, prompts: list[Any], *, reward: Any = None, controls: list[Controls],
                 value_model: ValueModel | None = None, **_: Any) -> DecodeResult:
    """Blockwise best-of-K: K = controls.n continuations of M = extra["block"] tokens (default 4) per step;
    keep the best by the value model (or by the request-weighted reward of the partial text). Requests
    whose sampling settings differ are decoded in separate batches, each to its own limit and stop strings."""
    if why := missing_value_model("cd_block", value_model, reward):
        raise ConfigError(why, field="value_model")
    counted = Counted(reward) if reward is not None else None
    compute, pad = Compute(), pad_id_of(tokenizer, model)
    ids = encode_prompts(tokenizer, prompts, [c.chat_template for c in controls])
    gen: list[list[int]] = [[] for _ in prompts]
    for active, c in groups(controls, "n", "max_new_tokens", "temperature", "top_k", "top_p", "stop", "seed",
                            extra=("block",)):
        step = 0
        while active:
            # every active row is step·M tokens long (a shorter one ended): the last block stops at the limit
            s = sample(model, tokenizer, [ids[i] + gen[i] for i in active], n=c.n,
                       max_new_tokens=min(int(c.extra.get("block", 4)), c.max_new_tokens - len(gen[active[0]])),
                       temperature=c.temperature, top_k=c.top_k, top_p=c.top_p, stop=c.stop,
                       seed=None if c.seed is None else c.seed + step)
            compute.add(s.compute)
            util = _block_scores(s, active, ids, gen, prompts, controls, tokenizer, value_model, counted, pad)
            still = []
            for j, i in enumerate(active):
                b = int(util[j].argmax())
                gen[i] = gen[i] + s.token_ids[j][b]
                if s.finish[j][b] == "length" and len(gen[i]) < c.max_new_tokens:
                    still.append(i)
            active, step = still, step + 1
    texts = [decoded_text(tokenizer, g, c.stop) for g, c in zip(gen, controls, strict=True)]
    return finish(texts, prompts, reward, controls, compute=compute,
                  reward_compute=counted.compute if counted else None, info={"token_ids": gen})


def _block_scores(s, active, ids, gen, prompts, controls, tokenizer, value_model, counted, pad) -> torch.Tensor:
    """[len(active), K] value of each prefix extended by each block."""
    K = len(s.token_ids[0])
    if value_model is not None:
        seqs = [ids[i] + gen[i] + s.token_ids[j][b] for j, i in enumerate(active) for b in range(K)]
        with torch.no_grad():
            v = value_model.prefix_values(seqs, pad)[:, -1]
        return v.view(len(active), K)
    texts = [tokenizer.decode(gen[i] + s.token_ids[j][b], skip_special_tokens=True) for j, i in enumerate(active)
             for b in range(K)]
    flat_p = [prompts[i] for i in active for _ in range(K)]
    r = score_groups(counted, flat_p, texts, [controls[i].user for i in active for _ in range(K)])
    w = weights_matrix(counted.source, [controls[i] for i in active], r.shape[1])
    return (r.view(len(active), K, -1) * w[:, None, :]).sum(-1)
