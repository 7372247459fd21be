"""The reward model each `model_type` of `pluralign train rm|morm|pal|binary-rm` trains, and the items it
trains and is evaluated on (`build`, `items_like`): a Bradley–Terry model on pairs (ranked lists paired), PAL
on pairs with users, a binary model on thumbs (pairs and judged records converted), a multi-objective model on
ratings or on pairs of an objective."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pluralign.data.convert import judged_to_binary, pairs_of_lists, pairwise_to_binary, ranked_to_pairwise
from pluralign.data.io import as_rated_hint
from pluralign.data.records import Binary, Judged, Pairwise, Ranked, Rated, kind_of
from pluralign.errors import ConfigError, DataError
from pluralign.reward import data as rdata
from pluralign.reward.base import TextEncoder
from pluralign.reward.binary import (
    BinaryRewardModel,
    balanced_pos_weight,
    binary_step,
    downsample_negatives,
    prior_correction,
)
from pluralign.reward.bt import BTRewardModel, bt_pair_step
from pluralign.reward.multi import MultiObjectiveRewardModel, multi_pair_step, multi_regression_step
from pluralign.reward.pal import PALRewardModel, pal_pair_step

if TYPE_CHECKING:
    from pluralign.train.recipes.reward import RewardConfig


# The kinds of feedback each model type trains on (converted to its own: lists to pairs, pairs to thumbs).
TRAINS_ON = {"bt": ("pairwise", "ranked"), "pal": ("pairwise", "ranked"), "binary": ("binary", "pairwise", "judged"),
             "multi": ("rated", "pairwise", "ranked")}


def check_file_kinds(model_type: str, files: list[tuple[str, str]]) -> None:
    """A `ConfigError` naming each training file (source, kind) whose kind the model type does not train on, or,
    for a multi-objective model, ratings beside pairs (it regresses on ratings or compares pairs, not both).
    Found on the merged records, the error named every row at its place among all files' records, under all
    files' names ("a.jsonl, b.jsonl:14"), or said a multi-objective model trains on ratings "not rated records"."""
    accepted = TRAINS_ON[model_type]
    if bad := [f"{kind} records ({source})" for source, kind in files if kind not in accepted]:
        helpsteer = [source for source, kind in files if kind == "demonstration"] if model_type == "multi" else []
        hint = "".join(f"; for HelpSteer-style numeric columns, {as_rated_hint(source)}" for source in helpsteer)
        raise ConfigError(f"a {model_type} reward model trains on {', '.join(accepted[:-1])} or {accepted[-1]} feedback, not "
                          f"{', '.join(bad)}{hint}", field="data")
    rated = [source for source, kind in files if kind == "rated"]
    if model_type == "multi" and rated and len(rated) < len(files):
        others = [source for source, kind in files if kind != "rated"]
        raise ConfigError(f"a multi-objective reward model regresses on ratings or compares pairs, not both: "
                          f"{', '.join(rated)} rated, {', '.join(others)} not", field="data")


def pairs_of(records: list, source: str) -> list[Pairwise]:
    if records and all(isinstance(r, Ranked) for r in records):
        return pairs_of_lists(records, source, "train on")
    # files of pairs and files of lists together: each list's pairs beside the pairs given
    return [p for r in records for p in (ranked_to_pairwise([r]) if isinstance(r, Ranked) else [r])]


def build(config: RewardConfig, encoder: TextEncoder, records: list, source: str):
    """(model, items, step, collate, params) for the configured model type."""
    t = config.model_type
    if t == "bt":
        model = BTRewardModel(encoder, n_heads=config.n_heads, head_hidden=config.head_hidden, seed=config.seed)
        items = rdata.pair_items(pairs_of(records, source), source=source)
        step = functools.partial(bt_pair_step, use_margins=config.use_margins, center_coef=config.center_coef)
        return model, items, step, rdata.pair_collate(encoder), None
    if t == "pal":
        pairs = pairs_of(records, source)
        if missing := rdata.record_problems(pairs, source, need_user=True):
            raise DataError(missing)
        users = sorted({str(r.user) for r in pairs})
        model = PALRewardModel(encoder, n_prototypes=config.n_prototypes, dim=config.pal_dim, hidden=config.head_hidden,
                               scorer=config.pal_scorer, variant=config.pal_variant, temperature=config.pal_temperature,
                               user_init_std=config.pal_user_init, user_ids=users, seed=config.seed)
        items = rdata.pair_items(pairs, user_ids=users, source=source)
        step = functools.partial(pal_pair_step, loss=config.pal_loss)
        return model, items, step, rdata.pair_collate(encoder, needs_prompt=model.needs_prompt), None
    if t == "binary":
        recs = binary_records(records, source)
        true_rate = sum(r.label for r in recs) / max(1, len(recs))
        pos_weight = None
        if config.imbalance == "downsample":
            recs = downsample_negatives(recs, seed=config.seed)
        elif config.imbalance == "pos_weight":
            pos_weight = balanced_pos_weight([r.label for r in recs])
        train_rate = sum(r.label for r in recs) / len(recs) if pos_weight is None else 0.5
        model = BinaryRewardModel(encoder, head_hidden=config.head_hidden, seed=config.seed,
                                  logit_offset=prior_correction(train_rate, true_rate) if 0 < true_rate < 1 else 0.0)
        step = functools.partial(binary_step, pos_weight=pos_weight)
        return model, rdata.binary_items(recs), step, rdata.point_collate(encoder), None
    if t == "multi":
        return _build_multi(config, encoder, records, source)
    raise ConfigError(f"unknown model_type {t!r}")


def binary_records(records: list, source: str) -> list[Binary]:
    """Binary records as binary-rm trains and evaluates on them: pairs and judged records converted."""
    # record by record: files of pairs, judgments and thumbs may be given together
    recs = [b for r in records for b in (pairwise_to_binary([r]) if isinstance(r, Pairwise) else
                                         judged_to_binary([r]) if isinstance(r, Judged) else [r])]
    if not all(isinstance(r, Binary) for r in recs):
        raise ConfigError(f"{source}: binary-rm needs binary, pairwise or judged feedback")
    return recs


def _check_covered(objectives: list[str], seen: set, source: str, verb: str) -> None:
    """Each configured objective needs training data: its head would be fitted on nothing, without a word."""
    missing = [o for o in objectives if o not in seen]
    if missing:
        raise ConfigError(f"objectives: no record of {source} {verb} {', '.join(map(repr, missing))}; they hold "
                          f"{sorted(map(str, seen - {None}))}", field="objectives")


def multi_objectives(config: RewardConfig, records: list) -> list[str]:
    """The objectives a multi-objective reward model fits: the configured ones, else those the records rate
    (rated records) or are pairs of."""
    if records and all(isinstance(r, Rated) for r in records):
        return config.objectives or sorted({k for r in records for k in r.ratings})
    return config.objectives or sorted({r.objective for r in records if r.objective is not None})


def _build_multi(config: RewardConfig, encoder: TextEncoder, records: list, source: str):
    if records and all(isinstance(r, Rated) for r in records):
        objectives = multi_objectives(config, records)
        _check_covered(objectives, {k for r in records for k in r.ratings}, source, "rates")
        model = MultiObjectiveRewardModel(encoder, objectives, head_hidden=config.head_hidden, seed=config.seed)
        step = functools.partial(multi_regression_step, weighting=config.task_weighting)
        return model, rdata.rated_items(records, objectives), step, rdata.point_collate(encoder), None
    pairs = pairs_of(records, source)
    if others := sorted({kind_of(r) for r in pairs} - {"pairwise"}):
        hint = f"; for HelpSteer-style numeric columns, {as_rated_hint(source)}" if "demonstration" in others else ""
        raise ConfigError(f"{source}: a multi-objective reward model trains on rated records or pairs of an "
                          f"objective, not {', '.join(others)} records{hint}")
    objectives = multi_objectives(config, pairs)
    if not objectives:
        raise ConfigError(f"{source}: multi-objective pairs need an `objective` field (or set objectives=...)")
    if len(objectives) > 1:
        _check_covered(objectives, {r.objective for r in pairs}, source, "is a pair of")
    model = MultiObjectiveRewardModel(encoder, objectives, head_hidden=config.head_hidden, seed=config.seed)
    items = rdata.pair_items(pairs, objectives=objectives, source=source)
    step = functools.partial(multi_pair_step, weighting=config.task_weighting)
    return model, items, step, rdata.pair_collate(encoder), None


def items_like(config: RewardConfig, model, records: list, source: str, train_items: list[dict]) -> list[dict]:
    """Eval items built like the training items (users/objectives of the trained model). The loop evaluates
    them with the training step, so a multi-objective model gets none of the other kind (pairs for a model
    trained on ratings, or the reverse: the rating step read pairs as a KeyError after training); the
    evaluation after training scores those. Pairs are checked either way, before training."""
    if config.model_type == "binary":  # judged eval data reached binary_items unconverted (an AttributeError)
        return rdata.binary_items(binary_records(records, source))
    trained_on_ratings = config.model_type == "multi" and bool(train_items) and "targets" in train_items[0]
    if config.model_type == "multi" and records and isinstance(records[0], Rated):
        return rdata.rated_items(records, model.objectives) if trained_on_ratings else []
    pairs = pairs_of(records, source)
    if config.model_type == "pal":  # users the model does not know cannot be scored by their own weights
        pairs = [r for r in pairs if str(r.user) in model.user_ids]
    objectives = model.objectives if config.model_type == "multi" else ()
    items = rdata.pair_items(pairs, user_ids=getattr(model, "user_ids", ()), objectives=objectives, source=source)
    return [] if trained_on_ratings else items

