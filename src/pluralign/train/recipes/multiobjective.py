"""Multi-objective preference training, wired into the preference recipe (`objectives:` in its config).

With ``objectives.names`` set, every batch knows each pair's objective(s) (``signs`` [B, K], see
`pluralign.data.collate`), the registered pairwise loss is evaluated once per objective (chosen and
rejected swapped where an objective prefers the other response), and a registered combiner
(`pluralign.losses.combine`) turns the [B, K] losses into the per-example losses the one loop
back-propagates. What the model is conditioned on is the registered scheme ``objectives.conditioning``
(`pluralign.conditioning`), applied to every training prompt and saved with the model so decoding
applies it to every request.

Methods as configurations of this one recipe:
- linear scalarisation: pairs ordered by wᵀr (`rated_to_pairwise(weights=w)`), plain DPO, one run per w;
- MAH-DPO: ``conditioning: heads``, objective-tagged pairs, combine ``weighted`` with uniform weights;
- RACO / PAMA: combine ``raco`` / ``pama`` with the user's weights (``rated_pairs: signed`` gives one pair
  judged on every objective, as RACO trains);
- weight-conditioned DPO: ``conditioning: system_message``, pairs carrying ``meta.weights`` (pairs ordered
  by those weights, or signed pairs whose per-objective losses the ``weighted`` combiner scalarises by
  each pair's own weights: one model trained across the simplex, steered per request);
- MODPO: loss ``modpo`` with ``margin_reward`` scoring the other objectives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

import torch

from pluralign import conditioning
from pluralign.config import option
from pluralign.data.convert import _by_prompt_and_user, rated_to_pairwise, rating_weights
from pluralign.data.records import Pairwise, Rated
from pluralign.errors import ConfigError, DataError, Problem
from pluralign.losses.combine import Context, combine, objective_means
from pluralign.losses.combine import check as check_combiner
from pluralign.train.parallel import all_processes_sum

Tensors = dict[str, torch.Tensor]
_SWAP = (("policy_chosen_logps", "policy_rejected_logps"), ("ref_chosen_logps", "ref_rejected_logps"),
         ("chosen_lengths", "rejected_lengths"), ("chosen_margin_rewards", "rejected_margin_rewards"))


@dataclass
class ObjectivesConfig:
    names: list[str] = option(default_factory=list, help="Objectives, in order; empty trains on one objective as usual (pairs tagged with several objectives are then refused). Records' `objective` must name one; rated records become pairs per objective.")
    weights: dict[str, float] = option(default_factory=dict, help="User weights over the objectives for the combiner (default: uniform); non-negative, not all zero.")
    combine: str = option("weighted", help="How per-objective losses combine: weighted (linear; MAH-DPO with uniform weights), raco (conflict-averse gradient, Chen et al. 2026), pama (min-norm per pair, He & Maghsudi 2025).")
    combine_params: dict[str, Any] = option(default_factory=dict, help="Combiner hyper-parameters, e.g. {c: 0.4, clip: true, gram: logps} for raco; normalize: objective (each objective's mean over its own pairs, weighted's default) or batch (over all the batch's pairs, ties included: raco's default, as its paper).")
    conditioning: str = option("none", help="What the model is conditioned on: none, system_message, reward_tokens, heads (MAH-DPO), … (pluralign.conditioning.names()).")
    conditioning_params: dict[str, Any] = option(default_factory=dict, help="Parameters of the conditioning scheme.")
    rated_pairs: Literal["per_objective", "signed"] = option("per_objective", help="Rated records → pairs ordered by each objective (tagged with it), or one pair per response pair with a sign per objective (meta.signs).")
    margin_reward: str | None = option(None, help="MODPO: a reward source (gold, module:function, reward-model dir) whose scores of the other objectives, weighted, are each pair's margin.")
    drop_ties: bool = option(False, help="Train only on pairs that prefer a response on some objective of nonzero weight (a soup expert's one-hot weight leaves the pairs tied on its objective, up to 40% of the rows, without gradient). The reference pass still covers every pair, so runs with other weights share its cache.")


def weight_tensor(cfg: ObjectivesConfig) -> torch.Tensor:
    w = cfg.weights or {n: 1.0 for n in cfg.names}
    return torch.as_tensor(conditioning.weights_of(w, cfg.names, "objectives.weights"), dtype=torch.float32)


def check_config(cfg: ObjectivesConfig) -> None:
    """What can be checked before the model and data load: the conditioning scheme and its parameters, and
    with objectives, the weights and the combiner's settings."""
    conditioning.get(cfg.conditioning, cfg.names, **cfg.conditioning_params)
    if cfg.names:
        weight_tensor(cfg)
        check_combiner(cfg.combine, cfg.combine_params)
    if cfg.names and cfg.margin_reward:
        from pluralign.decode.rewards import check_source

        check_source(cfg.margin_reward, "objectives.margin_reward")


def check_saving(cfg: ObjectivesConfig, use_lora: bool, merge_lora: bool) -> None:
    """MAH-DPO's heads are trained in full and saved in the model's weights (``lm_head.extra``), which an
    adapter directory does not hold: such a run would train, then save a model that cannot be decoded."""
    if cfg.conditioning == "heads" and use_lora and not merge_lora:
        raise ConfigError("objectives.conditioning=heads (MAH-DPO) trains its LM heads in full, which a LoRA adapter "
                          "directory does not hold; set merge_lora=true", field="merge_lora")


def to_pairs(records: Sequence[Any], cfg: ObjectivesConfig) -> list[Any]:
    """Rated records → pairs (per objective or signed); other records as they are."""
    if not records or not isinstance(records[0], Rated):
        return list(records)
    if cfg.rated_pairs == "per_objective":
        return [p for name in cfg.names for p in rated_to_pairwise(records, objective=name)]
    return signed_pairs(records, cfg.names)


def check_records(records: Sequence[Any], names: Sequence[str], source: str, lines: Sequence[int]) -> None:
    """Each record's `objective`, ``meta.signs`` and ``meta.weights`` against the objectives, as read from
    `source`: a DataError naming the file, the record's line (`lines`, one per record) and the field. Checked
    here because the collator and the combiner that read them later no longer know where a record came
    from. Rated records are not checked: they become new pairs, and their meta is not read."""
    problems = []
    for line, r in zip(lines, records, strict=True):
        if not isinstance(r, Rated):
            problems += [Problem(source, line, field, message) for field, message in _record_issues(r, names)]
    if problems:
        raise DataError(problems)


def _record_issues(record: Any, names: Sequence[str]) -> list[tuple[str, str]]:
    from pluralign.data.collate import signs_issue

    issues = []
    objective = getattr(record, "objective", None)
    if objective is not None and objective not in names:
        issues.append(("objective", f"{objective!r} is not one of the objectives {list(names)}"))
    meta = getattr(record, "meta", None) or {}
    if "signs" in meta and (issue := signs_issue(meta["signs"], names)):
        issues.append(("meta.signs", issue))
    if "weights" in meta:
        try:
            conditioning.weights_of(meta["weights"], names, "meta.weights")
        except ConfigError as e:  # its message starts with the field, which the Problem names already
            issues.append(("meta.weights", str(e).removeprefix("meta.weights: ")))
    return issues


def signed_pairs(records: Sequence[Rated], objectives: Sequence[str]) -> list[Pairwise]:
    """Every two rated responses to one prompt (same user) as one pair with ``meta.signs``: +1 where the
    first is rated higher on an objective, −1 lower, 0 tied (RACO's data: one pair, a sign per objective)."""
    rating_weights(records, weights=dict.fromkeys(objectives, 1.0))  # every objective rated, as per-objective pairs need
    pairs = []
    for same in _by_prompt_and_user(records).values():
        for a, b in combinations(same, 2):
            if a.response == b.response:
                continue
            signs = {k: int((a.ratings[k] > b.ratings[k]) - (a.ratings[k] < b.ratings[k])) for k in objectives}
            if any(signs.values()):
                pairs.append(Pairwise(a.prompt, a.response, b.response, None, a.user, a.group, None, a.section,
                                      {"signs": signs}))
    return pairs


def informative(records: Sequence[Any], cfg: ObjectivesConfig) -> list[int]:
    """Indices of the records with a preference (a nonzero sign) on some objective of nonzero weight."""
    from pluralign.data.collate import objective_tensors

    _, signs = objective_tensors(records, cfg.names)
    keep = ((signs != 0) & (weight_tensor(cfg) > 0)).any(1)
    return keep.nonzero().flatten().tolist()


def check_coverage(records: Sequence[Any], cfg: ObjectivesConfig, where: str = "data") -> None:
    """Every objective has pairs, and the combiner and conditioning suit the data (else a ConfigError);
    each record's own fields were checked as its file was read (`check_records`)."""
    from pluralign.data.collate import objective_tensors

    _, signs = objective_tensors(records, cfg.names)
    empty = [n for k, n in enumerate(cfg.names) if not bool((signs[:, k] != 0).any())]
    if cfg.margin_reward and len(empty) < len(cfg.names):
        empty = []  # MODPO: pairs of the trained objective, the others enter as reward margins
    if empty:
        raise ConfigError(f"objectives.names: objective(s) {empty} have no pairs in the training {where}")
    stated = any("weights" in (getattr(r, "meta", None) or {}) for r in records)
    if stated and cfg.combine != "weighted":
        raise ConfigError(f"objectives.combine={cfg.combine}: the training {where} has pairs with their own "
                          "meta.weights, which only the weighted combiner reads")
    if cfg.conditioning == "joint_soup" and cfg.combine != "weighted":
        raise ConfigError(f"objectives.combine={cfg.combine}: a joint soup weighs each step's per-objective losses by "
                          "the weights it draws for that step, which only the weighted combiner reads")
    if cfg.conditioning == "heads" and any(getattr(r, "objective", None) is None for r in records):
        raise ConfigError("objectives.conditioning=heads (MAH-DPO) trains head k on objective k's pairs: every "
                          "pair needs an `objective` (use rated_pairs=per_objective)")
    if len(records) > 1 and len(conditions := stated_conditions(records, cfg)) == 1:
        stated = {k: v for k, v in dataclasses.asdict(conditions.pop()).items() if v is not None}
        raise ConfigError(f"objectives.conditioning={cfg.conditioning}: every pair of the training {where} states the "
                          f"same condition ({stated or 'none given: the uniform weights'}), so the model cannot learn to read the statement "
                          "and no request's weights would steer it; give pairs an `objective` "
                          "(rated_pairs=per_objective) or their own meta.weights / meta.direction",
                          field="objectives.conditioning")


def stated_conditions(records: Sequence[Any], cfg: ObjectivesConfig) -> set[Any]:
    """The distinct conditions a text-level scheme steered by weights or a direction states over `records`
    (signed pairs without meta.weights all state the uniform weights); empty for other schemes."""
    scheme = conditioning.get(cfg.conditioning, cfg.names, **cfg.conditioning_params)
    fitted = type(scheme).fit is not conditioning.Scheme.fit  # RiC states each record's own rewards
    if scheme.model_level or fitted or not {"weights", "direction"} & set(scheme.reads):
        return set()
    return {scheme.condition_of(r) for r in records}


def setup(cfg: ObjectivesConfig, tokenizer: Any, model: Any, records: Sequence[Any]) -> conditioning.Scheme:
    """The conditioning scheme over the objectives, fitted to the data, with the tokenizer taught its words."""
    scheme = conditioning.get(cfg.conditioning, cfg.names, **cfg.conditioning_params).bind(tokenizer)
    scheme.fit(records) if type(scheme).fit is not conditioning.Scheme.fit else None
    conditioning.ensure_vocabulary(tokenizer, model, scheme.vocabulary())
    scheme.prepare(tokenizer, model)  # e.g. learned control tokens join the vocabulary
    return scheme


def install(scheme: conditioning.Scheme, model: Any) -> None:
    """Trainable parts, after the reference was taken from the untouched model (MAH-DPO heads, control
    tokens)."""
    if scheme.name == "heads":
        from pluralign.models.multihead import install_heads

        install_heads(model, len(scheme.objectives), **scheme.params)
    else:
        scheme.install(model)


def head_logps(model: Any, batch: dict, info: Any) -> Tensors:
    """Pairwise log-probs with each pair scored by its objective's head (MAH-DPO)."""
    from pluralign.models.logprobs import sequence_logps
    from pluralign.models.multihead import multihead_of

    heads = multihead_of(model).heads()
    row_head = torch.cat([batch["objective"], batch["objective"]])  # chosen rows, then rejected rows
    sums, lengths = sequence_logps(model, batch, heads=heads, row_head=row_head)
    b = sums.shape[0] // 2
    return {"chosen": sums[:b], "rejected": sums[b:], "chosen_lengths": lengths[:b], "rejected_lengths": lengths[b:]}


class StepCounts:
    """Each objective's pairs, and all pairs, in the whole optimizer step: every micro-batch of every
    process, counted from the data order before the step (`prepare`, the loop's ``prepare_step``) and
    summed across processes. The weighted combiner then averages each objective over the step, so that
    2 processes x batch 2, 1 x 2 micro-batches of 2, and 1 x batch 4 train alike (per micro-batch, an
    objective's mean would depend on how the batch was split)."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.present = torch.zeros(0, len(self.names), dtype=torch.bool)  # [N, K], set by `bind`
        self.counts: torch.Tensor | None = None
        self.total: int | None = None

    def bind(self, records: Sequence[Any]) -> None:
        """The training examples, in the order of the dataset the loop draws from."""
        from pluralign.data.collate import objective_tensors

        self.present = objective_tensors(records, self.names)[1] != 0

    def prepare(self, step: int, micro: Sequence[Sequence[int]]) -> None:
        index = torch.as_tensor([i for m in micro for i in m], dtype=torch.long)
        local = torch.cat([self.present[index].sum(0).double(), torch.tensor([float(len(index))], dtype=torch.float64)])
        local = all_processes_sum(local)
        self.counts, self.total = local[:-1].float(), int(local[-1])


def prepare_step(scheme: Any, step_counts: StepCounts | None, records: Sequence[Any]) -> Callable | None:
    """The loop's hook before each optimizer step: the scheme's (a joint soup draws its weights) and the
    multi-objective counts of the step's pairs."""
    if step_counts is not None:
        step_counts.bind(records)
    if scheme is None and step_counts is None:
        return None

    def prepare(step: int, micro: list[list[int]]) -> None:
        if scheme is not None:
            scheme.before_step(step)
        if step_counts is not None:
            step_counts.prepare(step, micro)

    return prepare


def make_finish(loss: Callable, params: dict, cfg: ObjectivesConfig, step_counts: StepCounts | None = None) -> Callable:
    """`finish(model, batch, inputs) -> (per-example loss, metrics)`: the loss per objective, combined
    (over the whole optimizer step's pairs when `step_counts` is given: training, not evaluation)."""
    weights = weight_tensor(cfg)

    def finish(model, batch, inputs):
        signs = batch["signs"]
        per, metrics = [], {}
        for k in range(signs.shape[1]):
            flip = signs[:, k] < 0
            values, _ = loss(**swapped(inputs, flip), **params)
            per.append(values)
        losses = torch.stack(per, 1)
        mask = signs != 0
        trainable = [p for p in model.parameters() if p.requires_grad]
        context = Context(params=trainable, anchor=inputs["policy_chosen_logps"],
                          counts=step_counts.counts if step_counts is not None else None,
                          total=step_counts.total if step_counts is not None else None)
        w = weights.to(losses.device)
        if "weights" in batch:  # pairs that state their own weights; the run's for those that do not
            rows = batch["weights"].to(losses.device)
            w = torch.where(rows.sum(1, keepdim=True) > 0, rows, w)
        values, metrics = combine(cfg.combine, losses, mask, w, context, cfg.combine_params)
        means, present = objective_means(losses.detach(), mask)
        metrics = dict(metrics) | {f"objective/{n}/loss": means[k] for k, n in enumerate(cfg.names) if present[k]}
        return values, metrics

    return finish


def swapped(inputs: dict, flip: torch.Tensor) -> dict:
    """Loss inputs with chosen and rejected exchanged on the rows where `flip` is true."""
    if not bool(flip.any()):
        return inputs
    out = dict(inputs)
    for a, b in _SWAP:
        if inputs.get(a) is not None and inputs.get(b) is not None:
            out[a] = torch.where(flip, inputs[b], inputs[a])
            out[b] = torch.where(flip, inputs[a], inputs[b])
    return out


def modpo_params(cfg: ObjectivesConfig, records: Sequence[Any], params: dict[str, Any]) -> dict[str, Any]:
    """The loss parameters with MODPO's w0, the trained objective's weight in ``objectives.weights``: the
    margins weigh the other objectives by those weights (`margin_values`), and R = (β·ρ − margin) / w0 is
    MODPO's reward only with w0 from the same weights. A stated w0 must agree (else a ConfigError naming it)."""
    w = weight_tensor(cfg)
    trained = sorted({r.objective for r in records if getattr(r, "objective", None) in cfg.names})
    own = {float(w[cfg.names.index(n)]) for n in trained}
    if len(own) > 1:
        raise ConfigError(f"MODPO divides by the trained objective's weight w0, one per run: the pairs train {trained}, "
                          f"weighted {sorted(own)} in objectives.weights; train one objective per run",
                          field="objectives.weights")
    if not own:
        return params
    w0 = own.pop()
    if "w0" in params and not isinstance(params["w0"], torch.Tensor) and abs(float(params["w0"]) - w0) > 1e-6:
        raise ConfigError(f"loss_params.w0={params['w0']}: MODPO's w0 is the trained objective's weight, "
                          f"{trained[0]}'s {w0:g} in objectives.weights (normalised), which also weighs the margins; "
                          "leave w0 unset", field="loss_params.w0")
    return params | {"w0": w0}


def margin_values(cfg: ObjectivesConfig, records: Sequence[Any]) -> Tensors:
    """MODPO margins: Σ_{k ≠ the pair's objective} w_k r_k(x, y) for the chosen and the rejected response,
    with r from ``margin_reward`` (its objectives must include the configured names)."""
    from pluralign.decode.rewards import load_reward, score_groups

    reward = load_reward(cfg.margin_reward, "objectives.margin_reward")
    names = list(getattr(reward, "objectives", None) or [])
    missing = [n for n in cfg.names if n not in names]
    if missing:
        raise ConfigError(f"objectives.margin_reward {cfg.margin_reward}: scores no objective(s) {missing}; it has {names}")
    cols = [names.index(n) for n in cfg.names]
    w = weight_tensor(cfg)
    prompts = [r.prompt for r in records]
    out = {}
    for side in ("chosen", "rejected"):
        scores = score_groups(reward, prompts, [getattr(r, side) for r in records])[:, cols]
        others = w.expand_as(scores).clone()
        for i, r in enumerate(records):
            if r.objective is None:
                raise ConfigError("MODPO margins need pairs tagged with the trained objective (`objective`)")
            others[i, cfg.names.index(r.objective)] = 0.0
        out[f"{side}_margin_rewards"] = (scores * others).sum(1)
    return out
