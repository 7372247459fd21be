"""Rollouts from a colocated vLLM engine (Kwon et al. 2023, "Efficient Memory Management for Large Language
Model Serving with PagedAttention"): the optional `pluralign[vllm]` extra, CUDA only.

The engine lives in the training process on the same GPU (`gpu_memory_utilization` bounds its share). It is
started from the policy's checkpoint directory and, before each rollout, gets the trained weights pushed
into its model with `load_weights` (under LoRA, copies of the base weights with the adapters merged
in), after which its prefix cache is reset. Each request asks for the log-prob of the sampled token
(`logprobs=0`) of the raw model distribution (`logprobs_mode="raw_logprobs"`), as the native sampler records
them; requests end at the native sampler's end-of-sequence ids (`eos_ids`, the chat template's end of turn
included) and finish reasons are mapped to the native ones ("eos", "stop", "length").

Not tested in pluralign's CI or on the machines it was written on (no GPU, no vLLM there): its tests skip
without CUDA and vllm. The in-process engine access follows TRL's colocate mode (`distributed_executor_backend
="external_launcher"` keeps the engine in this process, so `llm_engine.model_executor` exists).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from pluralign.data.prompts import encode_prompts
from pluralign.decode.sampler import eos_ids
from pluralign.errors import ConfigError
from pluralign.models.load import OUTPUT_VOCAB
from pluralign.models.lora import is_peft_model
from pluralign.online.rollout import BACKENDS, Rollout, RolloutConfig, derived_seed


@contextmanager
def merged_weights(policy: Any) -> Iterator[Iterator[tuple[str, torch.Tensor]]]:
    """(name, tensor) of the policy's weights under the names of its base checkpoint, read lazily (one whole
    tensor at a time, for `load_weights` to copy). Under LoRA each adapted weight is a copy with its adapters'
    update added (what peft's merge would write), the policy's own base weights untouched: merged in place and
    unmerged after, a 16-bit base came back rounded (W + ΔW - ΔW), drifting sync after sync."""
    if not is_peft_model(policy):
        yield ((name, _whole(p)) for name, p in policy.named_parameters())
        return
    from peft.tuners.lora import LoraLayer

    layers = {id(t): (m, kind) for m in policy.modules() if isinstance(m, LoraLayer)
              for kind in ("weight", "bias") if (t := getattr(m.get_base_layer(), kind, None)) is not None}
    yield ((name.removeprefix("base_model.model.").replace(".base_layer", "").replace("modules_to_save.default.", ""),
            _merged(p, *layers[id(p)]) if id(p) in layers else _whole(p)) for name, p in policy.named_parameters()
           if "lora_" not in name and "original_module" not in name)  # adapters: in the copies / replaced by modules_to_save


def _merged(p: torch.Tensor, layer: Any, kind: str) -> torch.Tensor:
    """A copy of a LoRA layer's base weight (or bias) with its active adapters merged in, as peft's safe merge
    computes it (vanilla LoRA: W + ΔW in W's dtype; DoRA and other variants: their own merge_safe)."""
    from peft.tuners.tuners_utils import check_adapters_to_merge

    out = _whole(p)
    with torch.no_grad():
        for adapter in check_adapters_to_merge(layer):
            if adapter not in layer.lora_A and adapter not in getattr(layer, "lora_embedding_A", {}):
                continue
            if kind == "bias":
                if layer.lora_bias.get(adapter):
                    out = (out + _whole(layer.lora_B[adapter].bias) * layer.scaling[adapter]).to(out.dtype)
            elif adapter in layer.lora_variant:
                out = layer.lora_variant[adapter].merge_safe(layer, adapter, out.clone())
            else:  # ΔW may be fp32 (peft's adapters): the sum rounded once to W's dtype, as merging in place does
                out = (out + _whole(layer.get_delta_weight(adapter))).to(out.dtype)
    return out


def _whole(p: torch.Tensor) -> torch.Tensor:
    """The full tensor of a parameter: FSDP2 holds each as a DTensor shard, gathered here (a collective; every
    process syncs its own engine at the same point of the step, over the same parameters in the same order)."""
    from torch.distributed.tensor import DTensor

    with torch.no_grad():
        return p.full_tensor() if isinstance(p, DTensor) else p.data


def allowed_tokens(model_config: Any) -> list[int] | None:
    """The ids the policy may answer with, when some are excluded: tokens added for prompts only (statement
    words, control tokens; from the config's `pluralign_output_vocab` on) get the lowest logit in pluralign's
    own forward (`mask_added_tokens`, a hook vLLM's copy of the model does not run), so vLLM is told to
    sample below that id. None: every id may be sampled."""
    vocab = getattr(model_config, OUTPUT_VOCAB, None)
    return list(range(vocab)) if vocab is not None else None


def finish_reason(reason: str | None, stop_reason: Any, eos: Collection[int] = ()) -> str:
    """vLLM's (finish_reason, stop_reason) as the native sampler's: EOS ends with "stop" and no stop reason, or
    the id of the end-of-sequence token among the request's `stop_token_ids` (`eos`) that ended it."""
    if reason == "length":
        return "length"
    return "eos" if stop_reason is None or stop_reason in eos else "stop"


def _check_vocabulary(base: Any, path: str) -> None:
    """vLLM's copy of the model is built from the checkpoint at `path`, and the synced weights must fit it: a
    policy whose embeddings grew after it was saved (an adapter trained with added tokens, loaded onto its
    base) would fail the first sync in vLLM's weight loader, after the engine had started."""
    from pathlib import Path

    from transformers import AutoConfig

    if not Path(path).is_dir():  # a hub id: vLLM reads it from the hub, as transformers did
        return
    saved = AutoConfig.from_pretrained(path).get_text_config().vocab_size
    rows = base.get_input_embeddings().weight.shape[0]
    if rows != saved:
        raise ConfigError(f"rollout.backend 'vllm' starts its engine from {path}, whose model has {saved} token "
                          f"embeddings; the policy has {rows} token embeddings (tokens added after it was saved). "
                          "Save the policy as a full model and train from that, or use rollout.backend=native")


@BACKENDS.register("vllm")
class VLLMBackend:
    def __init__(self, policy: Any, tokenizer: Any, config: RolloutConfig | None = None, seed: int = 0):
        config = config or RolloutConfig(backend="vllm")
        try:
            from vllm import LLM
        except ImportError as e:
            raise ConfigError("rollout.backend 'vllm' needs the vllm package: pip install 'pluralign[vllm]'") from e
        if not torch.cuda.is_available():
            raise ConfigError("rollout.backend 'vllm' needs a CUDA GPU; use rollout.backend=native")
        base = policy.get_base_model() if is_peft_model(policy) else policy
        path = getattr(base.config, "_name_or_path", "") or getattr(base, "name_or_path", "")
        if not path:
            raise ConfigError("rollout.backend 'vllm' starts its engine from the policy's checkpoint directory; this "
                              "policy has none (load it with from_pretrained)")
        _check_vocabulary(base, path)
        from accelerate import PartialState

        state = PartialState()
        # The external launcher keeps the engine in this process (weights can be pushed into it); it reads
        # the torch.distributed variables, set here for a single-process run.
        for key, value in (("RANK", state.process_index), ("LOCAL_RANK", state.local_process_index),
                           ("WORLD_SIZE", state.num_processes), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, str(value))
        if "MASTER_PORT" not in os.environ:  # a single process: any free port (launchers set theirs)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                os.environ["MASTER_PORT"] = str(s.getsockname()[1])
        self.policy, self.tokenizer, self.allowed = policy, tokenizer, allowed_tokens(base.config)
        # The native sampler's end-of-sequence ids: vLLM knows the tokenizer's and the checkpoint's generation
        # config's, not the chat template's end-of-turn token (`turn_end_id`), and would write on past it.
        self.eos = sorted(eos_ids(tokenizer, base))
        self.llm = LLM(model=path, tokenizer=path, dtype=str(next(base.parameters()).dtype).removeprefix("torch."),
                       gpu_memory_utilization=config.gpu_memory_utilization, max_model_len=config.max_model_len,
                       seed=seed + state.process_index, distributed_executor_backend="external_launcher",
                       logprobs_mode="raw_logprobs")

    def sync(self) -> None:
        """Push the trained weights into the engine (called before each rollout)."""
        model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        with merged_weights(self.policy) as weights:
            model.load_weights(weights)
        self.llm.reset_prefix_cache()

    def generate(self, prompts: Sequence[Any], n: int, *, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] | None = None,
                 chat_template: str = "auto") -> Rollout:
        from vllm import SamplingParams

        prompt_ids = encode_prompts(self.tokenizer, list(prompts), chat_template)
        # One seed per prompt: a vLLM request's seed alone fixes its random stream (its n samples draw from
        # seed + g), so with one seed for all, a prompt given twice got the same samples and others correlated ones.
        params = [SamplingParams(n=n, temperature=temperature, top_k=top_k if top_k > 0 else -1, top_p=top_p,
                                 max_tokens=max_new_tokens, logprobs=0, seed=None if seed is None else derived_seed(seed, j),
                                 stop=list(stop) if stop else None, stop_token_ids=self.eos,
                                 allowed_token_ids=self.allowed)
                  for j in range(len(prompt_ids))]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], sampling_params=params,
                                    use_tqdm=False)
        completions = [c for out in outputs for c in out.outputs]
        return Rollout(
            prompts=[p for p in prompts for _ in range(n)],
            prompt_ids=[list(ids) for ids in prompt_ids for _ in range(n)],
            completion_ids=[list(c.token_ids) for c in completions],
            sampler_logps=[torch.tensor([pos[t].logprob for pos, t in zip(c.logprobs, c.token_ids, strict=True)])
                           for c in completions],
            finish=[finish_reason(c.finish_reason, c.stop_reason, self.eos) for c in completions],
            texts=[c.text for c in completions],
            group_size=n,
        )
