"""Rollouts: policy + prompts + n + sampling settings → completions with their token ids, the sampling
policy's per-token log-probs and finish reasons, laid out as training rows.

Backends are registered parts (`BACKENDS`, chosen by `rollout.backend`). The default, "native", is
pluralign's batched KV-cached sampler (`pluralign.decode.sampler.sample`): each prompt is prefilled once and
its cache shared by its n samples. "vllm" (`pluralign.online.vllm_rollout`, the `pluralign[vllm]` extra)
runs a colocated vLLM engine. Log-probs are of the model's own logits (before temperature / top-k /
top-p), the distribution the trainer's ratios refer to.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pluralign.config import option
from pluralign.data.collate import pad_rows
from pluralign.data.tokenize import Encoded, pad_token_id
from pluralign.decode.api import Controls
from pluralign.decode.sampler import sample
from pluralign.errors import ConfigError, DataError
from pluralign.registry import Registry

BACKENDS = Registry("rollout backend", modules=("pluralign.online.vllm_rollout",))


@dataclass
class RolloutConfig:
    backend: str = option("native", help="Who generates the rollouts: native (pluralign's KV-cached batched sampler on the policy) or vllm (a colocated vLLM engine, `pip install 'pluralign[vllm]'`, CUDA only; weights synced before each rollout, LoRA merged).")
    gpu_memory_utilization: float = option(0.3, help="vllm: fraction of the GPU's memory vLLM may take (weights + KV cache); the rest stays for training.")
    max_model_len: int | None = option(None, help="vllm: longest prompt + completion vLLM plans for (default: the model's).")


@dataclass(frozen=True)
class Prompt:
    index: int  # position in the prompt set (the loop's dataset index)
    prompt: Any  # text, or chat messages rendered with the tokenizer's chat template
    user: str | None = None  # whose reward (PAL reward models), from the row's `user` field
    weights: dict | None = None  # objective weights of a multi-objective reward for this prompt (`weights` field)
    stop: tuple[str, ...] | None = None  # texts that end its completions (`stop` field), as `pluralign decode` honours them


@dataclass
class Rollout:
    """B = P·n completions; row j·n + g is sample g of prompt j."""

    prompts: list[Any]  # per row
    prompt_ids: list[list[int]]  # per row
    completion_ids: list[list[int]]
    sampler_logps: list[torch.Tensor]  # per-token model log-probs recorded while sampling
    finish: list[str]  # "eos" | "stop" | "length"
    texts: list[str]
    group_size: int

    @property
    def lengths(self) -> torch.Tensor:
        return torch.tensor([len(c) for c in self.completion_ids], dtype=torch.float)

    @property
    def truncated(self) -> torch.Tensor:
        return torch.tensor([f == "length" for f in self.finish])

    def groups(self, which: Sequence[int]) -> Rollout:
        """The rollout of prompt groups `which` (in that order)."""
        rows = [p * self.group_size + g for p in which for g in range(self.group_size)]

        def pick(xs: list) -> list:
            return [xs[r] for r in rows] if xs else xs

        return Rollout(pick(self.prompts), pick(self.prompt_ids), pick(self.completion_ids), pick(self.sampler_logps),
                       pick(self.finish), pick(self.texts), self.group_size)

    @staticmethod
    def concat(parts: Sequence[Rollout]) -> Rollout:
        return Rollout(*([x for r in parts for x in getattr(r, f)] for f in
                         ("prompts", "prompt_ids", "completion_ids", "sampler_logps", "finish", "texts")),
                       group_size=parts[0].group_size)


def read_prompts(paths: Sequence[str], check: Callable[[Sequence[Any], str, Sequence[int]], None] | None = None
                 ) -> list[Prompt]:
    """The prompt of every row of the files (`pluralign.data.prompt_files`: any form of feedback data, or a
    prompt-only file), with the row's `user`, `weights` and `stop`. Bad rows, and rows with sampling settings of
    their own (`ROW_SAMPLING_FIELDS`), are errors naming file and line; `check`
    (records, source, lines) runs on each file's rows, e.g. `pluralign.data.prompts.rendering_check`."""
    from pluralign.data.prompt_files import read_prompt_rows

    rows = read_prompt_rows(paths) if paths else []
    for source in dict.fromkeys(r.source for r in rows) if check is not None else ():
        mine = [r for r in rows if r.source == source]
        check(mine, source, [r.line for r in mine])
    def numbers(w: Any) -> bool:
        return isinstance(w, dict) and all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                                           for x in w.values())

    bad = [r.problem("weights", "must map objective names to finite numbers") for r in rows
           if r.fields.get("weights") is not None and not numbers(r.fields["weights"])]
    stops = []
    for r in rows:  # checked as decoding checks a row's stop
        try:
            stop = Controls(stop=r.fields.get("stop")).stop
            stops.append(tuple(stop) if stop else None)
        except ConfigError as e:
            bad.append(r.problem("stop", str(e)))
    bad += own_sampling_settings(rows)
    if bad:
        raise DataError(bad)
    return [Prompt(i, r.prompt, r.fields.get("user"), r.fields.get("weights"), stop)
            for i, (r, stop) in enumerate(zip(rows, stops, strict=True))]


# A prompt row's sampling controls (`pluralign decode` honours them per row) that a rollout cannot: the recipe's
# group_size, sampling settings and seeds fix them for every prompt (groups of one size, one max_new_tokens for
# DAPO's overlong shaping and Dr. GRPO's normaliser). (A row's user, weights and stop are used; a feedback row's
# group names its annotator's group, not a control.)
ROW_SAMPLING_FIELDS = {"n": "group_size", "max_new_tokens": "max_new_tokens", "temperature": "temperature",
                       "top_k": "top_k", "top_p": "top_p", "seed": "loop.seed", "chat_template": "chat_template"}


def own_sampling_settings(rows: Sequence[Any]) -> list[Any]:
    """A problem (file, line, field) for each per-request control a row carries: a prompt file written for
    `pluralign decode` trained with the recipe's settings instead, after a warning a user could miss."""
    return [r.problem(name, f"online training samples every prompt with the recipe's {setting} (a row cannot "
                            f"set its own); remove the field, or set {setting} in the config")
            for r in rows for name, setting in ROW_SAMPLING_FIELDS.items() if r.fields.get(name) is not None]


def derived_seed(*parts: Any) -> int:
    """A seed from the run seed, the step and the prompt indices: the same rollout on resume and on any
    number of processes (a micro-batch is drawn from the same seed however the step is split)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:6], "little")


@BACKENDS.register("native")
class NativeBackend:
    """Rollouts from the policy itself with pluralign's sampler: always in step with the trained weights."""

    def __init__(self, policy: Any, tokenizer: Any, config: RolloutConfig | None = None, seed: int = 0):
        self.policy, self.tokenizer = policy, tokenizer

    def sync(self) -> None:
        """Nothing to copy: the sampler runs the trained module."""

    def generate(self, prompts: Sequence[Any], n: int, **sampling: Any) -> Rollout:
        return generate(self.policy, self.tokenizer, prompts, n, **sampling)


def make_backend(config: RolloutConfig, policy: Any, tokenizer: Any, seed: int = 0) -> Any:
    return BACKENDS.get(config.backend)(policy, tokenizer, config, seed)


def generate(model: Any, tokenizer: Any, prompts: Sequence[Any], n: int, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
             stop: Sequence[str] | None = None, chat_template: str = "auto") -> Rollout:
    """Sample `n` completions for each prompt with the KV-cached batched sampler (no gradients); prompts
    are rendered for the policy by `pluralign.data.prompts` (`chat_template`), reward sources get them as given."""
    with torch.no_grad():
        s = sample(model, tokenizer, list(prompts), n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                   top_k=top_k, top_p=top_p, seed=seed, stop=stop, chat_template=chat_template)
    return Rollout(
        prompts=[p for p in prompts for _ in range(n)],
        prompt_ids=[ids for ids in s.prompt_ids for _ in range(n)],
        completion_ids=[ids for row in s.token_ids for ids in row],
        sampler_logps=[lp for row in s.token_logps for lp in row],
        finish=[f for row in s.finish for f in row],
        texts=s.flat_texts(),
        group_size=n,
    )


def generate_by_stop(generate_fn: Callable[..., Rollout], prompts: Sequence[Prompt], n: int, seed: int,
                     sampling: dict) -> Rollout:
    """`generate_fn(texts, n, seed=, stop=, **sampling)` for the prompts, each ended by its own stop texts, in
    prompt order: prompts sharing them are sampled in one call (all of them, from `seed`, when they share
    them, as without any), the others from a seed derived from `seed` and their stop texts."""
    kinds = list(dict.fromkeys(p.stop for p in prompts))
    if len(kinds) == 1:
        return generate_fn([p.prompt for p in prompts], n, seed=seed, stop=kinds[0], **sampling)
    which = [[j for j, p in enumerate(prompts) if p.stop == stop] for stop in kinds]
    parts = [generate_fn([prompts[j].prompt for j in js], n, seed=derived_seed(seed, stop), stop=stop, **sampling)
             for js, stop in zip(which, kinds, strict=True)]
    position = {j: k for k, j in enumerate(j for js in which for j in js)}
    return Rollout.concat(parts).groups([position[j] for j in range(len(prompts))])


def training_rows(tokenizer: Any, prompt_ids: Sequence[list[int]], completion_ids: Sequence[list[int]]) -> dict:
    """Right-padded [N, T] batch of prompt + completion with `completion_mask` on the generated tokens."""
    rows = [Encoded(list(p) + list(c), [0] * len(p) + [1] * len(c)) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    return pad_rows(rows, pad_token_id(tokenizer), "right")


