"""One recipe for every offline preference loss: data → model → loss → loop.

The loss is chosen by name (or a mixture such as "dpo:1,nll:0.2"); `pluralign.losses.describe` says its
kind (pairwise, unpaired, listwise), whether it needs reference log-probs and which inputs it reads, and
everything here follows from that. A kind fixes the record type, the collator, how log-probs are taken
from a batch and how they become the loss's inputs (`preference_kinds.KINDS`); no code branches on a loss name.

Reference log-probs (when the loss needs them) are computed once before training and cached on disk
(`pluralign.train.reference`); the batches carry them, so no second model is held. Without the cache the
reference is computed live: the base with adapters disabled under LoRA, else a frozen copy.

Unpaired losses: KTO's baseline z0 (Ethayarajh et al. 2024) is estimated on mismatched pairs, prompt i
with the response of another example. TRL shifts responses within a batch; we fix the pairing once per
dataset (a seeded cyclic shift over a permutation), which draws from the same distribution and lets the
reference log-probs of the mismatched pairs be cached too. BCO's reward shift (Jung et al. 2024) is a
running mean of the implicit rewards, checkpointed with the model so resume is exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pluralign import conditioning, losses
from pluralign.config import option
from pluralign.data.convert import convert
from pluralign.data.io import read_located
from pluralign.data.records import kind_of
from pluralign.errors import ConfigError, DataError, PluralignError
from pluralign.losses.registry import check_hyperparams
from pluralign.models.load import is_adapter_dir
from pluralign.models.lora import is_peft_model
from pluralign.models.soup import save_soup
from pluralign.personal.conditioned import PersonalConfig, Personalization
from pluralign.personal.record_checks import group_check
from pluralign.runs import check_writable
from pluralign.train.loop import LoopConfig, holding, train
from pluralign.train.loop_config import check_config
from pluralign.train.parallel import process_state
from pluralign.train.recipes import multiobjective as mo
from pluralign.train.recipes.common import (
    PolicyTrainingConfig,
    RecipeResult,
    encoding_problems,
    load_frozen,
    load_policy,
    one_objective,
    save_gathered,
    save_policy,
    yielding,
)
from pluralign.train.recipes.preference_kinds import (
    KINDS,
    Collate,
    Kind,
    Tensors,
    gather,
    make_items,
)
from pluralign.train.recipes.token_shaping import check_shaping, shaped, with_alias_options
from pluralign.train.reference import as_reference, cached_reference, frozen_copy, live_reference
from pluralign.train.udm import bco_udm_weights


@dataclass
class PreferenceConfig(PolicyTrainingConfig):
    loss: str = option("dpo", help="A registered loss name (see `pluralign.losses.names()`) or a mixture like 'dpo:1,nll:0.2'.")
    loss_params: dict[str, Any] = option(default_factory=dict, help="Loss hyper-parameters, e.g. {beta: 0.1}; defaults from losses.describe(loss).")
    udm: bool = option(False, help="Unpaired losses (BCO, Jung et al. 2024): weight each undesirable example by the density ratio p/(1-p) of a prompt classifier's P(desirable | prompt), clamped to [0.5, 10], so that undesirable prompts match the desirable prompts' distribution.")
    udm_sample_size: int = option(1024, help="Prompts the UDM classifier is fitted on (a seeded sample).")
    wpo: bool = option(False, help="Pairwise losses, WPO (Zhou et al. 2024): weight each pair's loss by the current policy's length-normalised probability of both responses (no gradient; one extra forward per step; padded batches). `pluralign train wpo` sets it.")
    ld_alpha: float | None = option(None, help="Pairwise losses, LD-DPO (Liu et al. 2024): weight of the longer response's tokens past the shorter one's length in policy and reference log-probs (1 = plain sums; padded batches). `pluralign train ld_dpo` sets 0.5, a middle value: the paper tunes it per model.")
    history_models: list[str] = option(default_factory=list, help="MNPO (Wu et al. 2026): past policies, the opponents, newest first; their log-probs of every chosen and rejected response are computed once and cached like the reference's.")
    personal: PersonalConfig = option(default_factory=PersonalConfig, help="Per-user/per-group conditioning, a new user's vector, group-fair objectives (pluralign.personal).")
    ref_model: str | None = option(None, help="Reference model (default: the initial policy).")
    ref_cache: bool = option(True, help="Compute reference log-probs once and cache them on disk; false computes them every step (LoRA: base with adapters off; else a frozen copy in memory).")
    ref_cache_dir: str | None = option(None, help="Where reference caches live (default: <output_dir>/ref_cache); shareable between runs.")
    ref_batch_size: int = option(0, help="Batch size of the reference pass (0: twice loop.batch_size).")
    objectives: mo.ObjectivesConfig = option(default_factory=mo.ObjectivesConfig, help="Multi-objective training: the objectives, how their losses combine and what the model is conditioned on (pluralign.train.recipes.multiobjective).")
    output_dir: str = option("runs/preference", help="Run directory: config.yaml, metrics.jsonl, checkpoints/, and the trained model in model/.")
    loop: LoopConfig = option(default_factory=LoopConfig, help="Training loop settings.")

    def __post_init__(self) -> None:
        # ref_batch_size=-1 made the reference pass an empty range: an empty cache was written and the run then
        # stopped with "loss 'dpo' needs ref_chosen_logps"; a negative udm_sample_size sliced prompts off the end.
        for name, least in (("ref_batch_size", 0), ("udm_sample_size", 1)):
            if getattr(self, name) < least:
                raise ConfigError(f"'{name}' must be >= {least}, got {getattr(self, name)}", field=name)

    def cache_settings(self) -> tuple[Path, int]:
        """(directory of the reference and opponent caches, batch size of their pass)."""
        return (Path(self.ref_cache_dir or Path(self.output_dir) / "ref_cache"),
                self.ref_batch_size or 2 * self.loop.batch_size)


def load_data(paths: Sequence[str], kind: Kind, skip_invalid: bool,
              objectives: mo.ObjectivesConfig | None = None,
              check: Callable[[Sequence[Any], str, Sequence[int]], None] | None = None,
              collator: Any = None) -> list[Any]:
    """The records of `paths` as `kind` trains on them. `check(records, file, lines)` and, with the `collator`,
    `encoding_problems` (every row must tokenize) run on each file's records as read, to name the file and
    line of a problem."""
    records, given = [], []
    for path in paths:
        read = read_located(path, skip_invalid=skip_invalid)
        raw = read.records
        given += raw
        if check is not None:
            check(raw, str(path), read.lines)  # while the file and each record's line are known, to name them
        if collator is not None and (problems := encoding_problems(collator, raw, str(path), read.lines)):
            raise DataError(problems)
        if objectives is not None and objectives.names:
            mo.check_records(raw, objectives.names, str(path), read.lines)
            raw = mo.to_pairs(raw, objectives)  # rated → per-objective or signed pairs
        try:
            converted = convert(raw, kind.records)
        except (ConfigError, DataError):  # already say where
            raise
        except PluralignError as e:  # the converter does not know the file, nor that no option here reaches it
            hint = ""
            if any(kind_of(r) == "rated" for r in raw):  # no training option takes an objective or threshold
                hint = (f" (no training option sets that: convert the file first, `pluralign data convert {path} OUT "
                        f"--to {kind.records}` with --objective, --weights or --threshold"
                        + (", or set objectives.names to train on every objective)" if kind.records == "pairwise" else ")"))
            raise ConfigError(f"{path}: {e}{hint}") from None
        records += yielding(converted, raw, str(path), kind.records)
    if objectives is None or not objectives.names:  # pairs as given: KTO's thumbs from them disagree alike
        one_objective(given, ", ".join(map(str, paths)))
    return records


# ---------------------------------------------------------------- the step


def make_step(kind: Kind, loss: losses.Loss, params: Mapping[str, Any], live_reference: Callable | None,
              reward_shift: losses.RunningMean | None, *, update_shift: bool, policy_logps: Callable | None = None,
              finish: Callable | None = None) -> Callable:
    """`step(model, batch) -> (per-example loss, metrics)` for the loop. `policy_logps` replaces the kind's
    log-prob function (MAH-DPO's per-objective heads); `finish(model, batch, inputs)` replaces the single
    loss call (multi-objective: the loss per objective, combined)."""
    info = loss.info
    beta = params.get("beta", info.hyperparams.get("beta", 1.0))

    def step(model, batch):
        policy = (policy_logps or kind.logps)(model, batch, info)
        if not info.needs_reference:
            ref = {}
        elif live_reference is not None:
            with torch.no_grad():
                ref = live_reference(model, batch)
        else:
            ref = {k.removeprefix("ref_"): v for k, v in batch.items() if k.startswith("ref_")}
        inputs = kind.inputs(policy, ref, batch) | {k: batch[k] for k in info.extra_inputs if k in batch}
        if reward_shift is not None:
            if update_shift:  # BCO: the shift moves with the rewards seen in training, not in evaluation
                rewards = torch.cat([beta * (inputs[p] - inputs[r]).detach().flatten() for p, r in kind.rewards])
                reward_shift.update(gather(rewards))
            inputs["reward_shift"] = reward_shift.mean
        if finish is not None:
            return finish(model, batch, inputs)
        return loss(**inputs, **params)

    return step


# ---------------------------------------------------------------- run


def run(config: PreferenceConfig) -> RecipeResult:
    """Train `config.model` with `config.loss` on `config.data`; save the model to <output_dir>/model."""
    config = with_alias_options(config)
    loss = losses.get(config.loss)
    info = loss.info
    if info.kind not in KINDS:
        raise ConfigError(f"loss '{config.loss}' is a {info.kind} loss; train reward models with `pluralign train rm`")
    check_hyperparams(info, config.loss_params)
    _check_inputs(config, info)
    mo.check_config(config.objectives)
    mo.check_saving(config.objectives, config.use_lora, config.merge_lora)
    kind = shaped(KINDS[info.kind], wpo=config.wpo, ld_alpha=config.ld_alpha)
    out = Path(config.output_dir)
    distributed = process_state()
    multi = config.objectives if config.objectives.names else None

    if config.ref_cache_dir:  # else found once the reference pass had run
        check_writable(config.ref_cache_dir, "ref_cache_dir", directory=True)
    tokenizer, model, packing = load_policy(config)
    collator = kind.collator(tokenizer, max_length=config.max_length, max_prompt_length=config.max_prompt_length,
                             truncation=config.truncation, chat_template=config.chat_template, packing=packing,
                             objectives=multi.names if multi else None, who=multi is not None,
                             **kind.collator_options)
    train_records = load_data(config.data, kind, config.skip_invalid, multi, group_check(config.personal),
                              collator)
    eval_records = (load_data(config.eval_data, kind, config.skip_invalid, multi,
                              group_check(config.personal, train_records), collator)
                    if config.eval_data else None)
    scheme, objective_step, step_counts, train_finish = None, {}, None, {}
    if multi is not None and multi.margin_reward:  # MODPO's w0 is the trained objective's weight
        config = dataclasses.replace(config, loss_params=mo.modpo_params(multi, train_records, config.loss_params))
    if multi is not None:
        scheme = mo.setup(multi, tokenizer, model, train_records)
        mo.check_coverage(train_records, multi)
        train_records = conditioning.condition_records(scheme, train_records)
        eval_records = conditioning.condition_records(scheme, eval_records) if eval_records else None
        step_counts = mo.StepCounts(multi.names)  # training averages each objective over the whole step
        train_finish = {"finish": mo.make_finish(loss, config.loss_params, multi, step_counts)}
        objective_step = {"finish": mo.make_finish(loss, config.loss_params, multi),
                          "policy_logps": mo.head_logps if scheme.name == "heads" else None}
    elif config.objectives.conditioning != "none":  # conditioned on who, not on objectives (Janus)
        scheme = mo.setup(config.objectives, tokenizer, model, train_records)
        train_records = conditioning.condition_records(scheme, train_records)
        eval_records = conditioning.condition_records(scheme, eval_records) if eval_records else None
    train_items = make_items(train_records, info, config.loop.seed)
    eval_items = make_items(eval_records, info, config.loop.seed, "eval_data") if eval_records else None
    check_config(config.loop, train_items)  # before the reference pass: a batch too large was found after it
    # Before the reference pass writes its cache: a bad personal setting leaves nothing behind.
    personal = Personalization(config.personal, model, config.model, [it.record for it in train_items],
                               config.gradient_checkpointing, info.kind, collator=collator,
                               reference_is_initial=config.ref_model is None and config.ref_cache,
                               eval_records=[it.record for it in eval_items or []])
    if personal.vectors is not None and conditioning.save_state(scheme):
        # A model holds one conditioning scheme: this was found only when saving, after the whole run.
        raise ConfigError(f"personal.condition_on={config.personal.condition_on} conditions the model by person "
                          f"vectors, and objectives.conditioning by '{scheme.name}': a model holds one of them",
                          field="personal.condition_on")
    if personal.step_options() and objective_step.get("policy_logps") is not None:
        raise ConfigError("personal.token_weighting cannot combine with per-objective heads")

    live, train_ref, eval_ref = _reference(config, info, kind, model, collator, train_items, eval_items, distributed)
    if scheme is not None:
        mo.install(scheme, model)  # after the reference: MAH-DPO's reference is the unperturbed head
    personal.attach(model)  # after the reference: the reference is the model without any person's vector
    objective_step |= personal.step_options()
    shift = losses.RunningMean() if "reward_shift" in info.inputs else None
    step = make_step(kind, loss, config.loss_params, live, shift, update_shift=True, **objective_step | train_finish)
    eval_step = make_step(kind, loss, config.loss_params, live, shift, update_shift=False, **objective_step)
    step, eval_step = personal.wrap(step, training=True), personal.wrap(eval_step, training=False)
    if scheme is not None:
        step, eval_step = scheme.wrap_step(step, training=True), scheme.wrap_step(eval_step, training=False)
    train_values = _prefixed(train_ref, "ref_") | personal.per_example([it.record for it in train_items])
    eval_values = _prefixed(eval_ref, "ref_") | personal.per_example([it.record for it in eval_items or []])
    if multi is not None and multi.margin_reward:
        train_values |= mo.margin_values(multi, train_records)
        eval_values |= mo.margin_values(multi, eval_records) if eval_records else {}
    if config.udm:
        train_values["udm_weights"] = _udm(config, model, tokenizer, train_items, distributed)
    if config.history_models:
        train_values |= _history(config, info, kind, collator, train_items, distributed)
        eval_values |= _history(config, info, kind, collator, eval_items, distributed) if eval_items else {}
    if multi is not None and multi.drop_ties:
        # After every per-example value is in place: the items keep their rows of the cached values.
        train_items = [train_items[i] for i in mo.informative([it.record for it in train_items], multi)]
    collate = Collate(collator, train_values)
    # the scheme's first (a joint soup draws the step's weights), then the group objective's pass over the step
    hooks = [h for h in (mo.prepare_step(scheme, step_counts, [it.record for it in train_items]),
                         personal.prepare_step(train_items, collate, step, keep=[shift] if shift else []))
             if h is not None]
    with holding(out):  # until the model is saved: no second run starts on the directory after the loop
        result = train(model, train_items, collate, step, config.loop, out,
                       eval_dataset=eval_items, eval_step=eval_step, eval_collate=Collate(collator, eval_values),
                       stateful=({"reward_shift": shift} if shift else {}) | personal.state, run_config=config,
                       prepare_step=_in_turn(hooks))
        personal.detach(model)
        if scheme is not None:
            scheme.detach(model)
        if scheme is not None and scheme.name == "joint_soup":  # K members, then the soup that interpolates them
            dirs = scheme.save_members(model, out, lambda m, d: save_gathered(m, tokenizer, d, config.merge_lora))
            if distributed.is_main_process:
                save_soup(dirs, scheme.objectives, out / "model")
            distributed.wait_for_everyone()
            return RecipeResult(out / "model", out, result)

        def write(model_dir: Path) -> None:  # into the model directory before it is renamed into place
            personal.save(model_dir)
            if scheme is not None:
                scheme.save(model_dir)

        return save_policy(model, tokenizer, config, out, result, extra_files=conditioning.save_state(scheme), write=write)


def _check_inputs(config: PreferenceConfig, info: losses.LossInfo) -> None:
    if config.ref_model and not info.needs_reference:  # it was never loaded: the run looked anchored to it
        raise ConfigError(f"loss '{info.name}' is reference-free (it reads no reference log-probs), so ref_model "
                          "has no effect; leave ref_model unset, or use a loss with a reference (dpo, ipo, kto, …)",
                          field="ref_model")
    check_shaping(config, info.name, info.kind)
    if config.udm and (info.kind != "unpaired" or not info.weighted):
        raise ConfigError(f"udm weights undesirable examples of an unpaired loss (bco, kto); loss '{info.name}' is {info.kind}")
    if config.history_models and "history_chosen_logps" not in info.inputs:
        raise ConfigError(f"history_models are the opponents of mnpo; loss '{info.name}' does not read them")
    reads_margins = "chosen_margin_rewards" in info.inputs
    if reads_margins and not (config.objectives.names and config.objectives.margin_reward):
        # without both, the margins never reach the loss and it failed with a TypeError on its missing argument
        raise ConfigError(f"loss '{info.name}' reads each pair's margin from the other objectives: set objectives.names "
                          "and objectives.margin_reward (a reward source scoring them)", field="objectives.margin_reward")
    if config.objectives.margin_reward and not reads_margins:  # it would score every pair for nothing
        raise ConfigError(f"objectives.margin_reward gives MODPO its margins; loss '{info.name}' does not read them "
                          "(use loss=modpo, or leave margin_reward unset)", field="objectives.margin_reward")


def _in_turn(hooks: list[Callable]) -> Callable | None:
    """One ``prepare_step`` that runs `hooks` in order (None without any)."""
    if not hooks:
        return None

    def prepare(step: int, micro: list[list[int]]) -> None:
        for hook in hooks:
            hook(step, micro)

    return prepare


def _prefixed(values: Tensors | None, prefix: str) -> Tensors:
    return {prefix + k: v for k, v in (values or {}).items()}


def _history(config, info, kind, collator, items, distributed) -> Tensors:
    """Each past policy's chosen/rejected log-probs, cached like the reference's: [N, number of opponents]."""
    chosen, rejected = [], []
    cache_dir, batch_size = config.cache_settings()
    for path in config.history_models:
        opponent = load_frozen(path, config, collator.packing, "history model")
        with distributed.main_process_first():
            values, cache, hit = cached_reference(
                opponent, items, Collate(collator), lambda m, b: kind.logps(m, b, info),
                cache_dir=cache_dir, batch_size=batch_size,
                what=f"{info.kind}|history" + (f"|ld={config.ld_alpha}" if config.ld_alpha is not None else ""),
                precision=config.loop.mixed_precision)
        distributed.print(f"opponent log-probs of {path}: {'cache hit' if hit else 'computed and cached'} ({cache})")
        chosen.append(values["chosen"])
        rejected.append(values["rejected"])
    return {"history_chosen_logps": torch.stack(chosen, -1), "history_rejected_logps": torch.stack(rejected, -1)}


def _udm(config, model, tokenizer, items, distributed) -> torch.Tensor:
    weights = bco_udm_weights(model, tokenizer, [it.record for it in items], sample_size=config.udm_sample_size,
                              seed=config.loop.seed, chat_template=config.chat_template)
    undesirable = weights[~torch.tensor([bool(it.record.label) for it in items])]
    if len(undesirable):
        distributed.print(f"UDM density ratios of {len(undesirable)} undesirable examples: mean {undesirable.mean():.3f}, "
                          f"range [{undesirable.min():.3f}, {undesirable.max():.3f}]")
    return weights


def _reference(config, info, kind, model, collator, train_items, eval_items, distributed):
    """(live reference function, cached train values, cached eval values); all None when the loss needs
    no reference."""
    if not info.needs_reference:
        return None, None, None

    def logps_of(m, batch):
        return kind.logps(m, batch, info)

    ref_model = _reference_model(config, model, collator.packing)
    if not config.ref_cache:
        return live_reference(ref_model, logps_of), None, None
    cache_dir, bs = config.cache_settings()
    what = f"{info.kind}|{'kl' if 'kl_policy_logps' in info.inputs else ''}"
    what += f"|ld={config.ld_alpha}" if config.ld_alpha is not None else ""  # LD-DPO mixes the reference too
    eval_ref = None
    # The main process computes and writes the cache; the others then read it. A separately loaded
    # reference model is dropped when this returns: training never holds it.
    with distributed.main_process_first(), as_reference(ref_model, model) as reference:
        show = config.loop.progress and distributed.is_main_process
        precision = config.loop.mixed_precision
        train_ref, path, hit = cached_reference(reference, train_items, Collate(collator), logps_of, cache_dir=cache_dir,
                                                batch_size=bs, what=what, show_progress=show, precision=precision)
        if eval_items:
            eval_ref = cached_reference(reference, eval_items, Collate(collator), logps_of,
                                        cache_dir=cache_dir, batch_size=bs, what=what, precision=precision)[0]
    distributed.print(f"reference log-probs: {'cache hit' if hit else 'computed and cached'} ({path})")
    return None, train_ref, eval_ref


def _reference_model(config: PreferenceConfig, policy: Any, packing: bool) -> Any:
    """The model that computes reference log-probs, or None when the policy serves: at initialization
    (cached) or as its base with adapters disabled (LoRA)."""
    if config.ref_model:
        return load_frozen(config.ref_model, config, packing, "ref_model")
    if is_adapter_dir(config.model):
        # The policy continues a saved adapter (e.g. an SFT run's): with adapters off it is the model before that
        # adapter, not the initial policy, which is loaded frozen (`online.build_method` does the same).
        return load_frozen(config.model, config, packing, "model")
    if is_peft_model(policy) or config.ref_cache:
        return None
    return frozen_copy(policy)  # live and no adapters


def from_kwargs(**kwargs: Any) -> PreferenceConfig:
    """PreferenceConfig from keyword arguments with the same checks as a YAML file (loop settings as a
    dict or a LoopConfig)."""
    from pluralign.train import config_of

    return config_of(PreferenceConfig, None, kwargs)
