"""Supervised fine-tuning: imitate the completions (demonstrations — prompt/completion rows or
``{"messages": [...]}`` conversations, see `pluralign.data.conversations` — a pairwise record's chosen
response, a rated record's response), the usual first stage before preference training.

Feedback that judges its responses is imitated where it approves: a thumbs-up response, a ranked list's
best, a positive written judgment (`data.convert.to_demonstrations`, as ``data convert --to demonstration``);
thumbs-down responses and the rest of a list are not imitated, with a conditioning scheme or without.

The per-example loss is the mean negative log-likelihood of the completion tokens (the registered "nll"
loss), so every example weighs the same whatever its length.

With a conditioning scheme (`pluralign.conditioning`) every prompt first states its example's condition:
RiC (``reward_tokens``) states the z-scored rewards of the response (rated records' ratings), DPA's
rejection-sampling rounds (``system_message``) the direction each response was selected for
(``meta.direction``). The scheme is saved with the model, so decoding states each request's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pluralign import conditioning, losses
from pluralign.config import option
from pluralign.data.collate import SFTCollator
from pluralign.data.convert import convert
from pluralign.data.io import read_located
from pluralign.data.records import kind_of
from pluralign.errors import DataError, Problem
from pluralign.models.logprobs import sequence_logps
from pluralign.train.loop import LoopConfig, holding, train
from pluralign.train.recipes.common import (
    PolicyTrainingConfig,
    RecipeResult,
    encoding_problems,
    load_policy,
    save_policy,
    yielding,
)


@dataclass
class SFTConfig(PolicyTrainingConfig):
    objectives: list[str] = option(default_factory=list, help="Objectives the conditioning scheme speaks of, in order (empty: no conditioning).")
    conditioning: str = option("none", help="Conditioning scheme: none, reward_tokens (RiC), system_message (DPA), … (pluralign.conditioning.names()).")
    conditioning_params: dict[str, Any] = option(default_factory=dict, help="Parameters of the conditioning scheme.")
    output_dir: str = option("runs/sft", help="Run directory; the trained model goes to model/ inside it.")
    loop: LoopConfig = option(default_factory=lambda: LoopConfig(learning_rate=2e-5), help="Training loop settings.")


def step(model, batch):
    """Per-example mean NLL of the completion tokens (also the step of rejection-sampling fine-tuning)."""
    sums, lengths = sequence_logps(model, batch)
    return losses.get("nll")(policy_chosen_logps=sums, policy_rejected_logps=None, chosen_lengths=lengths)


# Kinds whose responses carry a verdict: imitating them all would imitate the disapproved ones too.
JUDGING_KINDS = ("binary", "ranked", "judged")


def imitated(records: list[Any]) -> list[Any]:
    """The records to imitate: a judging record becomes the responses it approves of (none for a thumbs-down,
    a ranked list's best), any other record (a demonstration, a pair's chosen, a rated response) stays."""
    return [d for r in records
            for d in (convert([r], "demonstration") if kind_of(r) in JUDGING_KINDS else [r])]


def run(config: SFTConfig) -> RecipeResult:
    tokenizer, model, packing = load_policy(config)
    collate = SFTCollator(tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length,
                          truncation=config.truncation, chat_template=config.chat_template, packing=packing)

    scheme = None
    if config.conditioning != "none":
        scheme = conditioning.get(config.conditioning, config.objectives, **config.conditioning_params).bind(tokenizer)
    problems: list[Problem] = []

    def read(paths):
        records = []
        for path in paths:
            located = read_located(path, skip_invalid=config.skip_invalid)
            problems.extend(encoding_problems(collate, located.records, str(path), located.lines, compared=False))
            if scheme is not None:  # while the file and each record's line are known, to name them
                problems.extend(scheme.record_problems(located.records, str(path), located.lines))
            # Under a scheme too only what feedback approves is imitated: the scheme states each kept record's
            # condition (its objective, meta, user and group, which the approved responses keep; RiC: a rated
            # response's ratings), it does not say that a thumbs-down response is one to avoid.
            records += yielding(imitated(located.records), located.records, str(path), "demonstration")
        return records

    records, eval_records = read(config.data), read(config.eval_data)
    if problems:
        raise DataError(problems)
    if scheme is not None:
        scheme.fit(records)
        conditioning.ensure_vocabulary(tokenizer, model, scheme.vocabulary())
        scheme.prepare(tokenizer, model)
        records = conditioning.condition_records(scheme, records)
        eval_records = conditioning.condition_records(scheme, eval_records)
        scheme.install(model)  # learned control tokens: the table the loop trains
    out = Path(config.output_dir)
    with holding(out):  # until the model is saved: no second run starts on the directory after the loop
        result = train(model, records, collate, step, config.loop, out,
                       eval_dataset=eval_records or None, run_config=config)
        if scheme is not None:
            scheme.detach(model)
        return save_policy(model, tokenizer, config, out, result, extra_files=conditioning.save_state(scheme),
                           write=scheme.save if scheme is not None else None)
