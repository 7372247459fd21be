"""What every recipe that trains a causal LM shares: the settings of the model, its data and its
tokenization (each recipe's config inherits them), loading the policy and frozen companions (reference,
opponents) for training, and saving the result."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pluralign.config import option
from pluralign.data.prompts import CHAT_TEMPLATE_HELP, uses_template
from pluralign.data.records import Pairwise, kind_of
from pluralign.errors import ConfigError, PluralignError, Problem
from pluralign.models.load import (
    disable_dropout,
    load_model,
    load_tokenizer,
    save_model,
    vocabulary_mismatch,
)
from pluralign.models.logprobs import prepare_packing
from pluralign.models.lora import LoraSpec, is_peft_model
from pluralign.runs import check_writable
from pluralign.seeding import seeded
from pluralign.train.loop import TrainResult
from pluralign.train.parallel import full_weights, process_state


@dataclass
class ModelTrainingConfig:
    """How a transformers model is trained, whatever it becomes (a policy or a reward model's backbone)."""

    model: str = option("", help="Model to train: a local model directory or a hub id.")
    max_length: int = option(512, help="Longest prompt+completion in tokens.")
    packing: bool = option(True, help="Padding-free batches: sequences laid end to end with restarting position ids, attention run per sequence (no compute or memory spent on padding). Checked against padded batches on the model at start; a model that fails trains on padded batches.")
    attention_kernel: Literal["auto", "flash", "flex", "sdpa"] = option("auto", help="Attention kernel of packed batches: flash (flash-attn varlen, CUDA, the pluralign[flash] extra), flex (PyTorch FlexAttention, compiled on CUDA; forward only on CPU), sdpa (one SDPA call per sequence), auto (flash when installed on CUDA, else sdpa).")
    gradient_checkpointing: bool = option(True, help="Recompute each decoder layer's activations in backward instead of storing them: about a third more compute for a fraction of the activation memory (TRL's default too). Turn off for speed when memory allows.")
    dtype: str = option("auto", help="Weights dtype: auto (as saved), float32, bfloat16, float16.")
    disable_dropout: bool = option(True, help="Turn the model's own dropout off while training (LoRA's adapter dropout is kept). With dropout a training forward scores other log-probs than the reference and the rollouts: DPO's first loss is not log 2 and a policy ratio is not 1 before any update (TRL's DPO, reward and PPO trainers turn it off too). Set false to keep it, e.g. for SFT of a model that ships with it.")
    use_lora: bool = option(False, help="Train LoRA adapters instead of all weights.")
    lora: LoraSpec = option(default_factory=LoraSpec, help="LoRA settings (used when use_lora is true).")


@dataclass
class PolicyTrainingConfig(ModelTrainingConfig):
    data: list[str] = option(default_factory=list, help="Training data file(s) (jsonl/json/csv/parquet or a dataset directory); converted to the record kind the recipe trains on when possible (e.g. ranked -> pairwise).")
    eval_data: list[str] = option(default_factory=list, help="Evaluation data file(s), evaluated every loop.eval_every steps and at the end.")
    max_prompt_length: int | None = option(None, help="Longest prompt in tokens (default: no separate limit).")
    truncation: Literal["keep_end", "keep_start", "error"] = option("keep_end", help="How an over-long prompt is cut: keep its end, its start, or raise.")
    chat_template: Literal["auto", "always", "never"] = option("auto", help=CHAT_TEMPLATE_HELP + ".")
    merge_lora: bool = option(True, help="Save the model with the LoRA adapters merged (true) or as an adapter directory (false).")
    skip_invalid: bool = option(False, help="Skip invalid data rows (written to a .rejects.jsonl file) instead of stopping.")


def record_texts(record: Any) -> list[tuple[str, Any]]:
    """(field, response) of every response a record holds, by the field name its data row gives it."""
    if hasattr(record, "chosen"):
        return [("chosen", record.chosen), ("rejected", record.rejected)]
    if hasattr(record, "responses"):
        return [(f"responses[{i}]", y) for i, y in enumerate(record.responses)]
    return [("response", record.response)]


def encoding_problems(collator: Any, records: Sequence[Any], source: str, lines: Sequence[int] | None,
                      compared: bool = True) -> list[Problem]:
    """One problem per record that `collator.encode(prompt, response)` refuses, at its line in `source`:
    a prompt leaving no room for the reply within max_length, a row over it under truncation=error, a prompt
    the chat template cannot render. Found while reading, the file and line are known; found by the collator
    (in the reference pass, or at whatever step drew the row) the message named neither, and its preview of a
    chat prompt was the template's system header, the same for every row. `compared` (a loss that compares a
    record's responses): a record whose responses encode to the same tokens is warned of. Records with a response
    cut at max_length are counted and warned of once: cutting was silent, and a reply that loses its end of turn
    teaches the model answers that do not end."""
    if collator.chat_template == "always":  # a setting every row would fail alike: said once, as a ConfigError
        uses_template(collator.tokenizer, "", "always")
    problems, alike, cut = [], [], []
    for line, record in zip(range(1, len(records) + 1) if lines is None else lines, records, strict=True):
        # The prompt first, with a one-character reply: a prompt at fault is named as such, once.
        encoded = []
        for field, response in [("prompt", "x"), *record_texts(record)]:
            try:
                encoded.append(collator.encode(record.prompt, response))
            except PluralignError as e:
                problems.append(Problem(source, line, field, str(e)))
                break  # one per record
        else:
            ids = [tuple(e.input_ids) for e in encoded[1:]]
            if compared and len(set(ids)) < len(ids):
                alike.append(line)
            if any(e.completion_cut for e in encoded[1:]):
                cut.append(line)
    if cut:
        warnings.warn(f"{source}: {len(cut)} of {len(records)} record(s) (line(s) {_first(cut)}) have a response cut at "
                      f"max_length={collator.max_length}, losing its end and its end of turn; raise max_length, or set "
                      "max_prompt_length to cut long prompts instead", stacklevel=2)
    if alike:
        # Responses that differ only past the cut (or in words the tokenizer maps alike) are one sequence: such a
        # pair's loss has no gradient, and its reward accuracy counts it as wrong. Not refused: the rest trains.
        warnings.warn(f"{source}: {len(alike)} record(s) (line(s) {_first(alike)}) hold responses that encode to the same tokens within "
                      f"max_length={collator.max_length}, so they train nothing; if the cut made them alike, raise "
                      "max_length or set max_prompt_length to cut the prompt instead", stacklevel=2)
    return problems


def _first(lines: Sequence[int], n: int = 5) -> str:
    return ", ".join(map(str, lines[:n])) + (", …" if len(lines) > n else "")


# Why records of one kind can give none of another: what each target needs of them.
_NEEDS = {"pairwise": "a pair needs two responses to one prompt, ranked or rated differently",
          "ranked": "a list needs two responses to one prompt, ranked or rated differently",
          "demonstration": "only approved responses are imitated: a thumbs-up, a list's best"}


def yielding(converted: list[Any], raw: Sequence[Any], source: str, to: str) -> list[Any]:
    """`converted` (the records a file's `raw` records became), refused when there were records and none came
    of them: the run then computed its reference and stopped with 'the training set is empty', naming no file."""
    if raw and not converted:
        kinds = ", ".join(sorted({kind_of(r) for r in raw}))
        raise ConfigError(f"{source}: its {len(raw)} {kinds} record(s) give no {to} record to train on"
                          + (f" ({_NEEDS[to]})" if to in _NEEDS else ""))
    return converted


def one_objective(records: Sequence[Any], source: str, reward_model: bool = False) -> None:
    """A run on one objective (no objectives.names; a reward model other than multi) refuses pairs that speak
    to several: it would take them all as one preference, though they may disagree on the same two responses
    (a PKU-SafeRLHF row is a helpfulness pair and a harmlessness pair, often of opposite verdicts), training
    such rows toward a tie."""
    counts = Counter(r.objective for r in records if isinstance(r, Pairwise) and r.objective is not None)
    if len(counts) > 1:
        names = ",".join(counts)
        setting = ("model_type=multi (a head per objective)" if reward_model else
                   f"objectives.names=[{names}] (objectives.weights to favour one)")
        run = "this reward model has one score" if reward_model else "objectives.names is not set"
        raise ConfigError(f"{source}: its pairs speak to {len(counts)} objectives "
                          f"({', '.join(f'{o} {n}' for o, n in counts.items())}) and {run}, so they would be trained "
                          f"on as one preference, though they may disagree on the same two responses; set {setting}, "
                          "or give one objective's pairs", field="model_type" if reward_model else "objectives.names")


@dataclass
class RecipeResult:
    """What every `run_*` returns: `model_dir`, the trained model's directory (a transformers model
    directory; a reward-model directory for `run_reward`, for `pluralign.reward.load_reward_model`);
    `run_dir`, the run's `output_dir` (metrics.jsonl, checkpoints); `train`, the loop's `TrainResult`
    (steps, last metrics, last evaluation's metrics, last checkpoint)."""

    model_dir: Path
    run_dir: Path
    train: TrainResult


def load_policy(config: PolicyTrainingConfig) -> tuple[Any, Any, bool]:
    """(tokenizer, model on this process's device, whether batches are packed)."""
    if not config.model:
        raise ConfigError("set 'model' (a local model directory or a hub id)")
    if not config.data:
        raise ConfigError("set 'data' (one or more data files)")
    warn_data_files(config.data, config.eval_data)
    if getattr(config, "output_dir", None):  # else found after the model loaded (and a reference pass ran)
        check_writable(config.output_dir, "output_dir", directory=True)
    check_spares_inputs(config)
    if not config.merge_lora and not config.use_lora:
        warnings.warn("merge_lora=false without use_lora=true: there are no adapters, the model is saved in full",
                      stacklevel=2)
    tokenizer = load_tokenizer(config.model)
    model = load_trainable(config)
    return tokenizer, model, prepare_packing(model, config.packing, config.attention_kernel, trains=True)


def check_spares_inputs(config: Any) -> None:
    """A ConfigError when the trained model would be saved over a model the run reads: <output_dir>/model is
    replaced at the end, so `model=runs/sft/model output_dir=runs/sft` deleted the model it trained from."""
    saved = (Path(config.output_dir or ".") / "model").resolve()
    for field in ("model", "ref_model"):
        given = getattr(config, field, None)
        if given and Path(given).resolve() == saved:
            raise ConfigError(f"output_dir {config.output_dir!r}: the trained model is saved to {saved}, which is the "
                              f"{field} this run reads ({field}={given}) and would be replaced; choose another "
                              "output_dir", field="output_dir")


def warn_data_files(data: str | list[str], eval_data: str | list[str] | None) -> None:
    """A training file listed twice is read twice (perhaps meant as upsampling, perhaps not), and a file in
    both `data` and `eval_data` makes the evaluation one on training data: both legal, neither likely meant."""
    import os

    def files(paths: str | list[str] | None) -> list[str]:
        return [os.path.realpath(p) for p in ([paths] if isinstance(paths, str) else paths or [])]

    train, held_out = files(data), files(eval_data)
    twice = sorted({p for p in train if train.count(p) > 1})
    if twice:
        warnings.warn(f"data lists {', '.join(twice)} more than once: its records are trained on that many times",
                      stacklevel=3)
    both = sorted(set(train) & set(held_out))
    if both:
        warnings.warn(f"{', '.join(both)} is in both data and eval_data: the evaluation is on training data",
                      stacklevel=3)


def load_trainable(config: ModelTrainingConfig, kind: str = "causal", *, frozen: bool = False) -> Any:
    """`config.model` as configured for training (dtype, LoRA, gradient checkpointing, dropout off unless
    `config.disable_dropout` is false), on this process's device; `frozen`: only to compute features (no LoRA, no
    checkpointing)."""
    if not frozen and not config.use_lora and config.lora != LoraSpec():
        # lora.r=8 alone would otherwise train every weight without a word
        warnings.warn("lora settings are given but use_lora is false: training all weights (set use_lora=true "
                      "to train LoRA adapters)", stacklevel=2)
    with seeded(getattr(getattr(config, "loop", None), "seed", 0)):  # LoRA's A matrices are random: drawn from the run's seed
        model = load_model(config.model, kind=kind, dtype=config.dtype,
                           lora=config.lora if config.use_lora and not frozen else None,
                           gradient_checkpointing=config.gradient_checkpointing and not frozen)
    if not frozen and not config.use_lora and is_peft_model(model):  # it loads frozen, on a frozen base
        raise ConfigError(f"model {config.model} is a saved LoRA adapter: set use_lora=true to go on training it "
                          "(or merge it into its base first to train every weight)")
    if config.disable_dropout or frozen:  # features for a frozen backbone: never with dropout
        disable_dropout(model)
    return model.to(process_state().device)


def load_frozen(path: str, config: PolicyTrainingConfig, packing: bool, role: str) -> Any:
    """A model that only scores (a reference, an opponent), on this process's device, packing like the policy."""
    model = load_model(path, dtype=config.dtype).to(process_state().device).requires_grad_(False)
    if path != config.model:
        check_vocabulary(path, config.model, model, role)
    if packing and not prepare_packing(model, kernel=config.attention_kernel):
        raise ConfigError(f"{role} {path}: packed batches do not work with this model; set packing=false")
    return model


def check_vocabulary(path: str, policy: str, model: Any, role: str) -> None:
    """A frozen model scores the token ids of the policy's tokenizer: with another vocabulary its log-probs
    were of other tokens, without a word, or ids past its embedding stopped the reference pass with an
    IndexError traceback. Tokens the policy added after the frozen model's (a conditioning scheme's) are allowed."""
    ours = load_tokenizer(policy)
    try:
        theirs = load_tokenizer(path)
    except Exception:  # weights without a tokenizer: only the embedding's size can be checked
        theirs = None
    rows = model.get_input_embeddings().num_embeddings
    what = theirs is not None and vocabulary_mismatch(ours, theirs, ours_may_add=True)
    if not what and rows < len(theirs.get_vocab() if theirs is not None else ours):
        what = f"its embedding has {rows} rows for the policy's {len(ours)} tokens"
    if what:
        raise ConfigError(f"{role} {path} has another vocabulary than model {policy} ({what}): it would score "
                          f"other tokens than the policy's; give a {role} with the policy's tokenizer", field=role)


def save_gathered(model: Any, tokenizer: Any, directory: Path, merge_lora: bool,
                  extra_files: dict[str, str] | None = None, write: Callable[[Path], None] | None = None) -> None:
    """Save `model` to `directory` (`models.load.save_model`) from the main process. Every process calls it:
    where FSDP sharded the model its full weights are gathered first, a collective; the shards saved by the
    main process alone failed ('invalid python storage')."""
    distributed = process_state()
    weights = full_weights(model)
    if distributed.is_main_process:
        save_model(model, tokenizer, directory, merge_lora=merge_lora, extra_files=extra_files, write=write,
                   state_dict=weights)
    distributed.wait_for_everyone()


def save_policy(model: Any, tokenizer: Any, config: PolicyTrainingConfig, out: Path, result: TrainResult,
                extra_files: dict[str, str] | None = None, write: Callable[[Path], None] | None = None) -> RecipeResult:
    """Save the trained model to <out>/model (`extra_files` {name: text} inside it, e.g. the conditioning
    scheme, and what `write(directory)` adds, before the directory is renamed into place; every process calls
    it, `save_gathered`) and return where everything is."""
    save_gathered(model, tokenizer, out / "model", config.merge_lora, extra_files, write)
    return RecipeResult(out / "model", out, result)
