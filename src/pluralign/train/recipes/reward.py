"""Reward-model training recipe: `pluralign train rm|morm|pal|binary-rm --config FILE [k=v ...]`.

Reads feedback, builds the reward model of `model_type` on a transformers backbone (trainable, or frozen
with features computed once), trains it with the project loop (`pluralign.train.loop.train`) and saves it
to `<output_dir>/model` (load with `pluralign.reward.load_reward_model`). Held-out evaluation (accuracy,
calibration) goes to `<output_dir>/report/eval.json`, and is printed, with a warning when it is within
noise of chance. The backbone is trained like a policy (`recipes.common.ModelTrainingConfig`: dtype, LoRA,
gradient checkpointing, padding-free packed batches); the loop defaults are the reward models' own,
chosen by measurement (`_loop_defaults`).

  bt      pairwise (or ranked) data → Bradley–Terry scalar RM (training spec §5.1)
  multi   rated data (regression) or pairwise data with `objective` (per-objective BT) → vector head,
          tasks weighted by MORE's min-norm λ (§5.2)
  pal     pairwise data with `user` → PAL (Chen et al. ICLR 2025, §5.3)
  binary  binary (thumbs up/down) data → P(thumbs-up) (RLUF, Han et al. 2025, §5.4)
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pluralign.config import option
from pluralign.data.io import Checked, read_located
from pluralign.data.prompts import CHAT_TEMPLATE_HELP, rendering_check
from pluralign.data.records import Rated
from pluralign.errors import ConfigError, DataError
from pluralign.reward import data as rdata
from pluralign.reward.base import RewardModel, TextEncoder
from pluralign.runs import RunDir, atomic_write_json
from pluralign.train.loop import LoopConfig, holding, train
from pluralign.train.loop_config import check_config
from pluralign.train.parallel import process_state
from pluralign.train.recipes.common import (
    ModelTrainingConfig,
    RecipeResult,
    check_spares_inputs,
    load_trainable,
    one_objective,
    warn_data_files,
)
from pluralign.train.recipes.reward_models import (
    build,
    check_file_kinds,
    items_like,
    multi_objectives,
    pairs_of,
)

COMMANDS = {"rm": "bt", "morm": "multi", "pal": "pal", "binary-rm": "binary"}
# The loop's step budget per model type (measured, `_loop_defaults`): PAL learns its K prototypes, the
# users' mixtures and the backbone from the pairs of every group, and is still under-fitted at 2000 steps.
STEP_LIMITS = {"bt": 2000, "multi": 2000, "binary": 2000, "pal": 6000}
# The options only one model type reads (their help starts with its name); set for another they would be dropped.
TYPE_OPTIONS = {"bt": ("n_heads", "use_margins", "center_coef"), "multi": ("task_weighting", "objectives"),
                "pal": ("n_prototypes", "pal_dim", "pal_scorer", "pal_variant", "pal_temperature", "pal_user_init",
                        "pal_loss"),
                "binary": ("imbalance",)}
MODEL_STEP_LIMIT = -1  # `loop.step_limit` of the recipe's defaults: resolved to STEP_LIMITS[model_type]


def _loop_defaults() -> LoopConfig:
    """Measured with `train_records` on majority pairs of the default population whose responses the sandbox
    base model sampled (as `pluralign sandbox feedback --model runs/base` writes them), the base model as
    a trainable backbone; held-out accuracy on 1000 pairs against their Bayes ceiling (0.85–0.86), seeds
    0/1/2 (seed-to-seed spread is about ±3 points, so single runs decide little):

      2000 training pairs:
      last-token pooling, lr 1e-3 × 4 epochs, batch 16 (an earlier default)    0.667 0.715 0.742  (82.5%)
      last-token, lr 2e-3 × 8 epochs, batch 64                                 0.730 0.714        (84.2%)
      last+mean pooling, lr 1e-3 × 4, batch 16                                 0.725 0.695 0.739  (83.9%)
      last+mean, lr 2e-3 × 8, batch 64                                         0.726 0.721        (84.4%)
      last+mean, lr 5e-4 × 8, batch 16 (these defaults: 1000 steps)            0.734 0.723 0.728  (84.9%)
      more pairs, last+mean, lr 5e-4, batch 16:
      4000 pairs × 4 epochs (1000 steps)                                       0.778              (91.0%)
      16000 pairs, these defaults (8 epochs cut at 2000 steps: 2 epochs)       0.814 0.817 0.800  (95.1%)
      32000 pairs, these defaults (cut at 2000 steps: 1 epoch)                 0.817 0.821 0.804  (95.5%)

    Per seed: 16000 pairs 95.3%, 95.6%, 94.4% of the ceiling (mean 95.1 ± 1.6%, 95% t-interval), about
    150 CPU-seconds each; 32000 pairs 95.6%, 96.1%, 94.8% (95.5 ± 1.6%), about 130 CPU-seconds each (each
    test set is 1000 pairs, so one seed's figure moves by about ±2.5 points of the ceiling by chance).
    PAL (K = 2, d = 64) on pairs of the whole default population, per-user ceiling: with PAL's own init
    (user logits N(0, 1), T = 1) the mixtures barely move (Adam moves a logit by about lr per step, so at
    most ~1 in 2000 steps): they stay at their random start and the groups are not told apart (16000
    pairs, seeds 0/1/2: majority 88.9, 91.5, 88.3%, minority 64.7, 66.6, 82.7%). Users start at the uniform
    mixture (`pal_user_init` 0) with T = 0.05 (a logit step of lr/T): development set (seed 1000), 16000
    pairs unless said, majority / minority % of the per-user ceiling (2000 held-out pairs, ±1.3 / ±2 points):
      T = 0.05                                                       90.3 / 96.1
      T = 0.1                                                        89.9 / 94.7
      T = 0.05, 32000 pairs                                          91.8 / 96.9
      T = 0.05, angle scorer; with 32000 pairs                       92.3 / 95.7;  91.4 / 94.4
      T = 0.05, lr 1e-3                                              87.9 / 94.5
      T = 0.05, MLP projectors (head_hidden 64)                      91.6 / 94.0
    The groups separate (majority users ~0.7 on one prototype, minority ~0.8 on the other); the majority
    stays at 90–92% (train accuracy ≈ held-out: under-fitted in 2000 steps, not identification; a group-mean
    weight vector would reach 99% of the per-user ceiling, so K = 2 suffices). About 180 CPU-seconds a run.
    Test seeds 0/1/2 at 2000 steps, 16000 pairs: majority 93.5, 93.3, 93.4% (93.4 ± 0.3), minority 95.2,
    93.1, 91.8% (93.4 ± 4.1): short of 95% on both. So PAL gets a larger step budget of its own
    (`STEP_LIMITS`), lr 5e-4 decaying linearly to 0 over it as before (same development set):
      T = 0.05, 32000 pairs, 4000 steps (2 epochs; 332 CPU-s)        93.6 / 95.1
      T = 0.05, 32000 pairs, 6000 steps (3 epochs; 507 CPU-s)        94.7 / 96.7   (PAL's default: 6000)
      T = 0.05, 48000 pairs, 6000 steps (2 epochs; 497 CPU-s)        94.6 / 95.9
    (the development set sits ~3 points below the test seeds on the majority at 2000 steps: 90.3 vs 93.4).
    Test seeds 0/1/2 at PAL's defaults (6000 steps), 32000 pairs: majority 95.4, 97.2, 97.7% (96.8 ± 3.0),
    minority 96.1, 94.5, 95.1% (95.2 ± 2.0); 560–610 CPU-seconds a run with the data.

    Held-out accuracy keeps rising while the held-out loss rises from ~step 300 at 2000 pairs (the margins
    grow over-confident on label noise; on a separate development set, accuracy 0.667 at the loss minimum
    and 0.723 at the end), so keeping the checkpoint of least held-out loss would lose accuracy; what lifts
    accuracy is more pairs. Hence 8 epochs for small sets and a step limit of 2000 (PAL: 6000; 32000 examples at
    batch 16): large sets stop there instead of paying for 8 epochs (16000 pairs × 8 epochs was not
    measured). On grammar responses (ceiling 0.876; seed 0, 2000 pairs): last 0.762, last+mean 0.763,
    mean 0.733, sum 0.728, an MLP head 0.745, weight decay 0.1 0.761. Batch 16 stays so that small
    preference sets still get several steps per epoch. With LoRA on SmolLM2-135M-Instruct these defaults
    are what scripts/real_model.py measures (its set is small: the step limit does not reach it). Full
    fine-tuning of a large pretrained backbone usually wants a smaller rate (1e-5 to 5e-5)."""
    return LoopConfig(learning_rate=5e-4, batch_size=16, num_epochs=8, step_limit=MODEL_STEP_LIMIT, warmup_ratio=0.05)


@dataclass
class RewardConfig(ModelTrainingConfig):
    max_length: int = option(256, help="Maximum tokens of prompt + response; a longer pair loses its prompt's start first "
                                         "(the reward is read at the response's end), with a warning.")
    model_type: Literal["bt", "multi", "pal", "binary"] = option("bt", help="Which reward model: bt, multi, pal or binary.")
    backbone_kind: Literal["causal", "encoder"] = option("causal", help="causal LM (last-token reward) or encoder (mean-pooled, e.g. MiniLM).")
    pooling: Literal["", "last", "mean", "last_mean"] = option("", help="Override the pooling: 'last', 'mean' or 'last_mean' (both, concatenated; "
                                                            "default: last_mean for causal, chosen by measurement, mean for encoder). "
                                                            "ARGS scores incrementally only with 'last'.")
    freeze_backbone: bool = option(False, help="Keep the backbone frozen and train only the head on features computed once.")
    data: str | list[str] = option("", help="Training feedback file(s) (.jsonl/.json/.csv/.parquet or a datasets dir): one path or a list, as the other recipes take.")
    eval_data: str | list[str] = option("", help="Held-out feedback file(s) for the final evaluation (optional).")
    output_dir: str = option("runs/reward", help="Run directory; the model is saved to <output_dir>/model.")
    chat_template: Literal["auto", "always", "never"] = option("auto", help=CHAT_TEMPLATE_HELP + "; saved with the model, so scoring renders prompts as training did.")
    objectives: list[str] = option(default_factory=list, help="Objective names (multi); default: every rating/objective in the data.")
    head_hidden: int = option(0, help="Hidden width of an MLP head / PAL projectors (0: linear).")
    n_heads: int = option(1, help="bt: independently initialised scalar heads (an ensemble on one backbone).")
    use_margins: bool = option(False, help="bt: subtract each pair's margin inside the BT loss (Llama-2 style).")
    center_coef: float = option(0.0, help="bt: reward-centering coefficient η·mean((r_w + r_l)²) (0 = off).")
    task_weighting: Literal["mean", "mgda"] = option("mgda", help="multi: how the objectives' losses combine. mean: uniform λ (on pairs every pair counts alike, so an objective with more pairs weighs more; on ratings each objective's mean error counts alike). mgda: MORE's min-norm λ from each objective's gradient at the head's output layer; with one output row per objective these are orthogonal, so λ_t ∝ 1/‖g_t‖² (every objective's loss falls at the same rate), see pluralign.reward.multi.")
    n_prototypes: int = option(2, help="pal: number of prototypes K.")
    pal_dim: int = option(64, help="pal: dimension d of the preference space.")
    pal_scorer: Literal["dist", "angle"] = option("dist", help="pal: ideal-point distance or cosine (angle) scorer.")
    pal_variant: Literal["a", "b"] = option("b", help="pal: 'b' prompt-conditioned prototypes, 'a' free prototype points.")
    pal_temperature: float = option(0.05, help="pal: softmax temperature T of the user mixtures softmax(W_u / T); "
                                    "0.05 (measured, `_loop_defaults`) lets the mixtures move at the reward lr.")
    pal_user_init: float = option(0.0, help="pal: std of the users' initial mixture logits (0: every user starts "
                                  "at the uniform mixture; PAL's paper draws N(0, 1)).")
    pal_loss: Literal["logistic", "hinge"] = option("logistic", help="pal: loss on the score difference.")
    imbalance: Literal["none", "pos_weight", "downsample"] = option("pos_weight", help="binary: class-imbalance handling.")
    seed: int = option(0, help="Seed of the head initialisation.")
    loop: LoopConfig = option(default_factory=_loop_defaults, help="Training-loop settings (a reward model's own defaults, "
                                                                   "lr 5e-4 × 8 epochs at batch 16, at most 2000 steps (pal: 6000), chosen by a "
                                                                   "measured sweep; fields a config leaves out keep them).")

    def __post_init__(self) -> None:
        for name, least in (("n_heads", 1), ("n_prototypes", 1), ("pal_dim", 1), ("head_hidden", 0)):
            if getattr(self, name) < least:  # n_heads=0 ended in torch's "stack expects a non-empty TensorList"
                raise ConfigError(f"'{name}' must be >= {least}, got {getattr(self, name)}", field=name)
        for name in ("center_coef", "pal_user_init", "pal_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "pal_temperature" and value == 0):
                raise ConfigError(f"'{name}' must be a finite number {'> 0' if name == 'pal_temperature' else '>= 0'}, "
                                  f"got {value}", field=name)
        if unread := _other_types_options(self):
            raise ConfigError(f"{', '.join(unread)}: not read by a {self.model_type} reward model (options of "
                              f"{', '.join(t for t, names in TYPE_OPTIONS.items() if set(unread) & set(names))} "
                              "models); remove them or choose that model_type", field=unread[0])
        if self.loop.step_limit == MODEL_STEP_LIMIT:  # not set: the model type's own budget
            self.loop = dataclasses.replace(self.loop, step_limit=STEP_LIMITS[self.model_type])


def _other_types_options(config: RewardConfig) -> list[str]:
    """The options of other model types that `config` sets to something other than their default."""
    fields = {f.name: f for f in dataclasses.fields(config)}

    def default(name: str) -> Any:
        f = fields[name]
        return f.default_factory() if f.default is dataclasses.MISSING else f.default

    return [name for t, names in TYPE_OPTIONS.items() if t != config.model_type for name in names
            if getattr(config, name) != default(name)]


def run(config: Any = None, **kwargs: Any) -> RecipeResult:
    """Train the configured reward model (a `RewardConfig`, a mapping of its fields or a YAML path, overridden
    by keyword arguments: `pluralign.train.config_of`); the model is saved in `<output_dir>/model`."""
    from pluralign.train import config_of

    config = config_of(RewardConfig, config, kwargs)
    if not config.data:
        raise ConfigError("data: give a training feedback file")
    warn_data_files(config.data, config.eval_data)
    # A multi-objective model masks the objectives a row does not rate, as it does for in-memory records.
    partial = config.model_type == "multi"
    train_files = _read_all(config.data, partial)
    eval_files = _read_all(config.eval_data, partial) if config.eval_data else []
    records = [r for read in train_files for r in read.records]
    eval_records = [r for read in eval_files for r in read.records] if config.eval_data else None
    source = _names(config.data)
    _check_located(config, records, train_files, eval_files, source)
    return train_records(config, records, eval_records, source=source, eval_source=_names(config.eval_data))[1]


def _names(paths: str | list[str]) -> str:
    """The file(s) of a data option, as errors about their records name them."""
    return paths if isinstance(paths, str) else ", ".join(paths)


def _read_all(paths: str | list[str], partial_ratings: bool = False) -> list[Checked]:
    return [read_located(path, partial_ratings=partial_ratings) for path in ([paths] if isinstance(paths, str) else paths)]


def _check_located(config: RewardConfig, records: list, train_files: list[Checked], eval_files: list[Checked],
                   source: str) -> None:
    """The record checks of training (`rdata.record_problems`) file by file, while each record's line is known:
    made later on all files' records at once, they named a record's place among them all, and for a record of
    eval_data a training file."""
    check_file_kinds(config.model_type, [(read.source, read.kind) for read in train_files])
    if config.model_type != "multi":
        one_objective(records, source, reward_model=True)
    objectives = multi_objectives(config, pairs_of(records, source)) if config.model_type == "multi" else []
    problems = [p for read in train_files for p in rdata.record_problems(
        read.records, read.source, read.lines, objectives=objectives, need_user=config.model_type == "pal")]
    problems += [p for read in eval_files
                 for p in rdata.record_problems(read.records, read.source, read.lines, objectives=objectives)]
    if problems:
        raise DataError(problems)
    reads = [*train_files, *eval_files]
    chats = any(not isinstance(r.prompt, str) for read in reads for r in read.records)
    if config.model and config.backbone_kind == "causal" and (chats or config.chat_template == "always"):
        from pluralign.models.load import load_tokenizer

        _check_rendering(load_tokenizer(config.model), config, [(r.records, r.source, r.lines) for r in reads])


def _check_rendering(tokenizer: Any, config: RewardConfig, reads: list[tuple[list, str, list[int] | None]]) -> None:
    """Every record's prompt as the causal backbone renders it (`rendering_check`), at its line: a chat
    conversation (Anthropic HH, Arena) for a tokenizer without a chat template was found by the first training
    step, after the backbone was loaded, as an error naming no file, line or field."""
    check, problems = rendering_check(tokenizer, config.chat_template), []
    for records, source, lines in reads:
        try:
            check(records, source, range(1, len(records) + 1) if lines is None else lines)
        except DataError as e:
            problems += e.problems
    if problems:
        raise DataError(problems)


def train_records(config: Any, records: list, eval_records: list | None = None, *,
                  source: str = "<records>", eval_source: str = "<eval records>") -> tuple[RewardModel, RecipeResult]:
    """Train on in-memory records (e.g. sandbox feedback); returns (model, where everything is). `config`:
    a `RewardConfig`, a mapping of its fields or a YAML path. `source` / `eval_source` name where the
    records came from in the errors about them."""
    from pluralign.train import config_of

    config = config_of(RewardConfig, config, {})
    for name, value in (("records", records), ("eval_records", eval_records)):
        if value is not None and (isinstance(value, str | os.PathLike | Mapping) or not isinstance(value, Iterable)):
            raise ConfigError(f"{name}: expected a list of records, got {type(value).__name__}; a file is read by "
                              "run(data=[path]) or pluralign.data.io.read_records", field=name)
    if not config.model:
        raise ConfigError("model: give a backbone directory or hub id")
    check_spares_inputs(config)
    run_dir = RunDir(config.output_dir)
    encoder = _encoder(config)
    if encoder.kind == "causal":  # in-memory records (the files of `run` were checked at their lines)
        _check_rendering(encoder.tokenizer, config, [(list(records), source, None),
                                                     (list(eval_records or []), eval_source, None)])
    model, items, step, collate, params = build(config, encoder, list(records), source)
    # PAL's loop evaluation keeps the pairs of users it knows; with none left it is skipped (an empty set
    # was a traceback), and the evaluation after training scores every pair
    eval_items = (items_like(config, model, eval_records, eval_source, items) or None) if eval_records else None
    final_records = _final_eval_records(model, eval_records, eval_source, eval_items)
    check_config(config.loop, items)  # before the feature pass: a batch too large was found after it
    if config.freeze_backbone:
        items = rdata.precompute_features(items, encoder, needs_prompt=model.needs_prompt)
        eval_items = eval_items and rdata.precompute_features(eval_items, encoder, needs_prompt=model.needs_prompt)
    with holding(run_dir):  # until the model is saved: no second run starts on the directory after the loop
        result = train(model, items, collate, step, config.loop, run_dir, eval_dataset=eval_items, params=params,
                       run_config=config)
        # Once, by the main process: every process wrote the same directory (racing on its rename) and
        # then the same eval.json, each saying so.
        distributed = process_state()
        model.eval()
        if distributed.is_main_process:
            model.save(run_dir.root / "model")
        distributed.wait_for_everyone()
    if final_records and distributed.is_main_process:
        from pluralign.reward.evaluation import (
            chance_warning,
            evaluate_records,
            summary,
            unknown_users_warning,
        )

        report = evaluate_records(model, final_records, source=eval_source)
        atomic_write_json(run_dir.report / "eval.json", report)
        print(f"held-out {summary(report)} ({run_dir.report / 'eval.json'})", file=sys.stderr)
        for warning in (chance_warning(report), unknown_users_warning(report)):
            if warning is not None:
                warnings.warn(warning, stacklevel=2)
    return model, RecipeResult(run_dir.root / "model", run_dir.root, result)


def _final_eval_records(model: RewardModel, records: list | None, source: str, loop_items: list | None) -> list | None:
    """The held-out records the evaluation after training scores, checked now rather than after training.
    Ratings that give no pair (one rated response per prompt, as sandbox feedback rates by default) have
    the loop's evaluation only (each objective's squared error): said so, and no report is written."""
    from pluralign.reward.evaluation import check_objectives, evaluable, rated_pairs

    if not records:
        return None
    if loop_items and all(isinstance(r, Rated) for r in records) and not rated_pairs(records):
        warnings.warn(f"{source}: its ratings give no pairs (two responses to one prompt rated apart), so the "
                      "held-out evaluation is the loop's squared error of each objective only (eval/mse_*); "
                      "no report/eval.json", stacklevel=3)
        return None
    check_objectives(model, evaluable(records, source), source)
    return records


def _encoder(config: RewardConfig) -> TextEncoder:
    from pluralign.models.load import load_tokenizer
    from pluralign.models.logprobs import prepare_packing

    causal = config.backbone_kind == "causal"
    if config.use_lora and config.freeze_backbone:
        raise ConfigError("use_lora trains adapters in the backbone; it cannot be combined with freeze_backbone")
    backbone = load_trainable(config, config.backbone_kind, frozen=config.freeze_backbone)
    pooling = config.pooling or ("last_mean" if causal else "mean")
    return TextEncoder(backbone, load_tokenizer(config.model), kind=config.backbone_kind, pooling=pooling,
                       max_length=config.max_length, source=config.model, trainable=not config.freeze_backbone,
                       chat_template=config.chat_template, packing=causal and prepare_packing(backbone, config.packing, config.attention_kernel,
                                                                          trains=not config.freeze_backbone))
