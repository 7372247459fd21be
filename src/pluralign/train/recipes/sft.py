"""Supervised fine-tuning: imitate the completions (a pairwise record's chosen response, a binary or
rated record's response, or prompt/completion rows), the usual first stage before preference training.

The per-example loss is the mean negative log-likelihood of the completion tokens (the registered "nll"
loss), so every example weighs the same whatever its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pluralign import losses
from pluralign.config import option
from pluralign.data.collate import SFTCollator
from pluralign.data.io import read_records
from pluralign.errors import ConfigError
from pluralign.models.load import LoraSpec, load_model, load_tokenizer, save_model
from pluralign.models.logprobs import prepare_packing, sequence_logps
from pluralign.train.loop import LoopConfig, train
from pluralign.train.parallel import process_state
from pluralign.train.recipes.preference import RecipeResult


@dataclass
class SFTConfig:
    model: str = option("", help="Model to fine-tune: a local model directory or a hub id.")
    data: list[str] = option(default_factory=list, help="Training data file(s): any record kind with a prompt and a (chosen) response.")
    eval_data: list[str] = option(default_factory=list, help="Evaluation data file(s).")
    max_length: int = option(512, help="Longest prompt+completion in tokens.")
    max_prompt_length: int | None = option(None, help="Longest prompt in tokens (default: no separate limit).")
    truncation: Literal["keep_end", "keep_start", "error"] = option("keep_end", help="How an over-long prompt is cut.")
    packing: bool = option(True, help="Padding-free batches with restarting position ids, attention run per sequence; checked against padded batches on the model at start (a model that fails trains on padded batches).")
    gradient_checkpointing: bool = option(True, help="Recompute each decoder layer's activations in backward instead of storing them: about a third more compute for a fraction of the activation memory (TRL's default too). Turn off for speed when memory allows.")
    dtype: str = option("auto", help="Weights dtype: auto, float32, bfloat16, float16.")
    use_lora: bool = option(False, help="Train LoRA adapters instead of all weights.")
    lora: LoraSpec = option(default_factory=LoraSpec, help="LoRA settings (used when use_lora is true).")
    merge_lora: bool = option(True, help="Save with adapters merged (true) or as an adapter directory.")
    skip_invalid: bool = option(False, help="Skip invalid data rows instead of stopping.")
    output_dir: str = option("runs/sft", help="Run directory; the trained model goes to model/ inside it.")
    loop: LoopConfig = option(default_factory=lambda: LoopConfig(learning_rate=2e-5), help="Training loop settings.")


def run(config: SFTConfig) -> RecipeResult:
    if not config.model or not config.data:
        raise ConfigError("set 'model' and 'data'")
    nll = losses.get("nll")
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, dtype=config.dtype, lora=config.lora if config.use_lora else None,
                       gradient_checkpointing=config.gradient_checkpointing)
    collate = SFTCollator(tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length,
                          truncation=config.truncation, packing=prepare_packing(model, config.packing))

    def step(model, batch):
        sums, lengths = sequence_logps(model, batch)
        return nll(policy_chosen_logps=sums, policy_rejected_logps=None, chosen_lengths=lengths)

    def read(paths):
        return [r for p in paths for r in read_records(p, skip_invalid=config.skip_invalid)]

    out = Path(config.output_dir)
    result = train(model, read(config.data), collate, step, config.loop, out,
                   eval_dataset=read(config.eval_data) or None, run_config=config)
    if process_state().is_main_process:
        save_model(model, tokenizer, out / "model", merge_lora=config.merge_lora)
    process_state().wait_for_everyone()
    return RecipeResult(out / "model", out, result)
