"""Supervised fine-tuning: imitate the completions (a pairwise record's chosen response, a binary or
rated record's response, or prompt/completion rows), the usual first stage before preference training.

The per-example loss is the mean negative log-likelihood of the completion tokens (the registered "nll"
loss), so every example weighs the same whatever its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pluralign import losses
from pluralign.config import option
from pluralign.data.collate import SFTCollator
from pluralign.data.io import read_records
from pluralign.models.logprobs import sequence_logps
from pluralign.train.loop import LoopConfig, train
from pluralign.train.recipes.common import PolicyTrainingConfig, RecipeResult, load_policy, save_policy


@dataclass
class SFTConfig(PolicyTrainingConfig):
    output_dir: str = option("runs/sft", help="Run directory; the trained model goes to model/ inside it.")
    loop: LoopConfig = option(default_factory=lambda: LoopConfig(learning_rate=2e-5), help="Training loop settings.")


def step(model, batch):
    """Per-example mean NLL of the completion tokens (also the step of rejection-sampling fine-tuning)."""
    sums, lengths = sequence_logps(model, batch)
    return losses.get("nll")(policy_chosen_logps=sums, policy_rejected_logps=None, chosen_lengths=lengths)


def run(config: SFTConfig) -> RecipeResult:
    tokenizer, model, packing = load_policy(config)
    collate = SFTCollator(tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length,
                          truncation=config.truncation, chat_template=config.chat_template, packing=packing)

    def read(paths):
        return [r for p in paths for r in read_records(p, skip_invalid=config.skip_invalid)]

    out = Path(config.output_dir)
    result = train(model, read(config.data), collate, step, config.loop, out,
                   eval_dataset=read(config.eval_data) or None, run_config=config)
    return save_policy(model, tokenizer, config, out, result)
