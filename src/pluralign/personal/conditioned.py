"""User- or group-conditioned preference training, group-fair objectives, and new users in a few labels.

User-conditioned DPO: every user (or group) of the training data gets a learned vector that is added to the
policy's hidden states at one site (`pluralign.personal.vectors`), and the policy and the vectors are trained
together with the recipe's preference loss, each example under its own user's vector. This is the
policy-side counterpart of PAL's per-user weights (Chen et al. ICLR 2025, "PAL: Sample-Efficient
Personalized Reward Modeling for Pluralistic Alignment"): a shared model plus a small per-user part. A
share `population_dropout` of the examples is trained without a vector, so the zero vector (row 0) is a
population model that serves unknown users.

A new user: with `new_users_only`, a trained model's policy is frozen and only the vectors of users not yet
in its table are learned, from that user's few pairs, with the same loss; the reference is the model
without a vector, i.e. the population model (PAL's "new_user" stage, for the policy).

Group-fair objectives (`pluralign.personal.group_fair`) replace the batch mean of the per-example losses by
a worst-group or Nash-bargaining combination over the records' groups. Such an objective is over groups, so
every training record needs a `group`, and every evaluation record a group of the training data (the
objective has no weight for another): `group_check` refuses both when the data are read, naming the file,
record and field, before the run writes anything. Each group's mean loss is logged as `group_loss/<g>`.

Saved next to the model: `person_vectors.json` (names, site, scale, user → group) and
`person_vectors.safetensors`.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from pluralign import conditioning
from pluralign.config import option
from pluralign.errors import ConfigError
from pluralign.personal import group_fair
from pluralign.personal.record_checks import (
    check_histories,
    check_token_weighting,
    field_of,
    names_of,
    training_groups,
)
from pluralign.personal.step_groups import StepGroups
from pluralign.personal.vectors import PersonVectors, hidden_size, n_rows, offset, per_row, site
from pluralign.train.parallel import PADDING

INDEX = "person_vectors.json"
WEIGHTS = "person_vectors.safetensors"
ATTR = "pluralign_person_vectors"


@dataclass
class PersonalConfig:
    condition_on: Literal["none", "user", "group"] = option("none", help="Learn one vector per user or per group of the training records (their `user`/`group` field), added to the policy's hidden states, trained with the policy (user-conditioned DPO). 'none': a shared policy.")
    layer: str = option("embeddings", help="Where the vector is added: 'embeddings' (the token embeddings) or a decoder layer index (its output; needs gradient_checkpointing=false).")
    vector_scale: float = option(3.0, help="Multiplies the vectors' effective learning rate (they are stored divided by it): a vector in activation space needs far larger steps than a fine-tuned weight.")
    population_dropout: float = option(0.15, help="Share of training examples seen without a vector, so that the zero vector is a population model for unknown users.")
    new_users_only: bool = option(False, help="Freeze the policy and every saved vector; learn only the vectors of users (or groups) that the model's vector table lacks, from their pairs (a new user in a few labels).")
    new_user_prior: Literal["mixture", "free"] = option("mixture", help="A new user's vector: 'mixture' learns softmax weights over the trained vectors (PAL's user weights over prototypes; a few pairs pick among known preferences), 'free' learns the whole vector.")
    token_weighting: bool = option(False, help="NextQuill: weight each response token by how much the user's history (their other chosen responses) raises its probability under the initial policy (pluralign.personal.token_weights).")
    history_size: int = option(4, help="Token weighting: how many of the user's other chosen responses form the history.")
    token_temperature: float = option(1.0, help="Token weighting: temperature τ of the weights n·softmax(Δ/τ); larger is closer to uniform.")
    group_objective: str = option("average", help="How the groups' per-example losses combine: average (plain mean), worst_group (the worst group's mean loss), nash (negative log Nash product of the groups' satisfactions), group_dro (online group DRO weights) or balanced (the groups' mean losses weighted by their training sizes to a power: 0 one vote per group), see pluralign.personal.group_fair.")
    group_objective_params: dict[str, Any] = option(default_factory=dict, help="Parameters of the group objective, e.g. {temperature: 0.5} for worst_group, {step_size: 0.01} for group_dro, {power: 0.5} for balanced.")


def read_index(model_dir: str | Path) -> dict | None:
    path = Path(model_dir) / INDEX
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON ({e.msg})") from None


def load_vectors(model_dir: str | Path) -> tuple[PersonVectors, dict] | None:
    """(vectors, index) saved with a model, or None."""
    index = read_index(model_dir)
    if index is None:
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(model_dir) / WEIGHTS
    if not path.is_file():
        raise ConfigError(f"{model_dir}: {INDEX} names person vectors but {WEIGHTS} is missing")
    try:
        raw = load_file(str(path))["raw"]
    except (SafetensorError, KeyError) as e:
        raise ConfigError(f"{path}: not a person-vector table ({e})") from None
    if raw.dim() != 2 or raw.shape[0] != len(index["names"]):
        raise ConfigError(f"{path}: {raw.shape[0] if raw.dim() else 0} vectors for the {len(index['names'])} "
                          f"names in {INDEX}; the two files are not of one save")
    vectors = PersonVectors(index["names"], raw.shape[1], scale=index["scale"])
    with torch.no_grad():
        vectors.raw.copy_(raw)
    return vectors, index


def save_vectors(model_dir: str | Path, vectors: PersonVectors, index: dict) -> None:
    """Write the vectors, their index and the `person_vectors` conditioning scheme next to a model."""
    from safetensors.torch import save

    from pluralign.runs import atomic_open, atomic_write_json, atomic_write_text

    d = Path(model_dir)
    existing = conditioning.load(d)
    if existing is not None and existing.name != PersonVectorScheme.name:
        raise ConfigError(f"{d} is conditioned by '{existing.name}'; person vectors cannot be added to it")
    with atomic_open(d / WEIGHTS) as f:  # in a model directory that may be in use: never half a file
        f.write(save({"raw": vectors.stored().cpu().contiguous()}))
    atomic_write_json(d / INDEX, index | {"names": vectors.names, "scale": vectors.scale})
    for name, text in conditioning.save_state(PersonVectorScheme()).items():
        atomic_write_text(d / name, text)


@conditioning.register("person_vectors")
class PersonVectorScheme(conditioning.Scheme):
    """A model with per-user (or per-group) vectors added to its hidden states: user-conditioned training
    or PAS steering (`pluralign.personal`). Each request's `user` (or `group`) picks its vector; a user
    the model does not know gets the population model (no vector), with a warning."""

    reads = ("user", "group")
    model_level = True

    def attach(self, model: Any, model_dir: Path) -> Any:
        loaded = load_vectors(model_dir)
        if loaded is None:
            raise ConfigError(f"{model_dir}: conditioned by person vectors but {INDEX} is missing")
        self.vectors, self.index = loaded
        self.vectors.to(next(model.parameters()).device)
        return model

    def unmatched(self, condition: conditioning.Condition) -> str | None:
        return condition.person() if resolve(self.index, condition.user, condition.group, warn=False) is None else None

    @contextlib.contextmanager
    def steer(self, model: Any, condition: conditioning.Condition):
        name = resolve(self.index, condition.user, condition.group)
        vector = None if name is None else self.vectors.get(name)
        with offset(site(model, self.index["layer"]), vector):
            yield model


class Personalization:
    """The personal parts of one preference run: per-example indices, the step wrapper, saving. Built, and
    so every setting checked, before the run writes anything (the reference pass caches to disk); the
    vectors join the model only in `attach`, after the reference pass: the reference is the model without
    any person's vector."""

    def __init__(self, config: PersonalConfig, model: Any, model_dir: str, records: Sequence[Any],
                 gradient_checkpointing: bool, loss_kind: str = "pairwise", *, collator: Any = None,
                 reference_is_initial: bool = True, eval_records: Sequence[Any] = ()):
        self.config, self.model, self.collator = config, model, collator
        if config.token_weighting:
            check_token_weighting(config, loss_kind, reference_is_initial)
            check_histories(records, config.history_size, "training data")
            if eval_records:
                check_histories(eval_records, config.history_size, "eval_data")
        group_fair.get(config.group_objective)  # a bad name fails before anything is loaded
        self.field = config.condition_on
        if self.field == "none" and config.new_users_only:
            raise ConfigError("personal.new_users_only needs personal.condition_on = user or group")
        if not 0.0 <= config.population_dropout < 1.0:
            raise ConfigError(f"personal.population_dropout must be in [0, 1), got {config.population_dropout}")
        scale = config.vector_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
            # the vectors are stored divided by it: 0 saved a NaN table that broke every request of a user
            raise ConfigError(f"personal.vector_scale must be a finite number > 0, got {scale!r}",
                              field="personal.vector_scale")
        self.groups = training_groups(records, config.group_objective)
        sizes = [sum(str(r.group) == g for r in records) for g in self.groups]
        self.combine, stateful = group_fair.make(config.group_objective, max(len(self.groups), 1),
                                                 dict(config.group_objective_params), sizes=sizes or None)
        self.state = {"group_objective": self.combine} if stateful and self.groups else {}
        self.steps = StepGroups(self.combine, stateful)
        self.vectors = None
        if not config.new_users_only and (held := read_index(model_dir)) is not None:
            # training on from a conditioned model silently saved a model without its users, or with new vectors
            warnings.warn(f"{model_dir} holds person vectors (per {held['on']}); this run does not keep them: the "
                          "model it saves " + ("has none" if self.field == "none" else "has new ones, trained from "
                          "zero") + " (personal.new_users_only=true adds users to them)", stacklevel=2)
        if self.field == "none":
            return
        if loss_kind != "pairwise":
            raise ConfigError(f"personal.condition_on trains with pairwise losses; this loss is {loss_kind}")
        if config.layer != "embeddings" and gradient_checkpointing:
            raise ConfigError("personal.layer at a decoder layer needs gradient_checkpointing=false "
                              "(a recomputed layer would miss its vector)")
        self.site = site(model, config.layer)
        names = names_of(records, self.field, f"condition_on={self.field}")
        saved = load_vectors(model_dir)
        if config.new_users_only:
            if saved is None:
                raise ConfigError(f"personal.new_users_only: {model_dir} has no person vectors ({INDEX}); "
                                  "train a user-conditioned model first")
            old, index = saved
            # New users may join a per-group table: each becomes a mixture of the group vectors (PAL's
            # prototypes are then the groups).
            if (index["on"] != self.field and (self.field, index["on"]) != ("user", "group")) \
                    or index["layer"] != config.layer:
                raise ConfigError(f"personal: the model's vectors are per {index['on']} at {index['layer']}, "
                                  f"the config asks for per {self.field} at {config.layer}")
            new = [n for n in names if n not in old.index]
            if not new:
                raise ConfigError(f"personal.new_users_only: every {self.field} in the data already has a vector")
            basis = old.table()[1:].detach() if config.new_user_prior == "mixture" else None
            self.vectors = PersonVectors(old.names + new, old.raw.shape[1], scale=old.scale, frozen=old.names,
                                         basis=basis, values=dict(zip(old.names, old.stored(), strict=True)))
            self.user_groups, self.table_on = index.get("user_groups", {}), index["on"]
        else:
            self.table_on = self.field
            self.vectors = PersonVectors(names, hidden_size(model), scale=config.vector_scale)
            self.user_groups = {}
        for r in records:
            if r.user is not None and r.group is not None:
                self.user_groups[str(r.user)] = str(r.group)

    def attach(self, model: Any) -> None:
        """Put the vectors on the model (after the reference pass); a new user's run freezes the policy."""
        if self.vectors is None:
            return
        if self.config.new_users_only:
            model.requires_grad_(False)
        self.vectors.to(next(model.parameters()).device)
        model.add_module(ATTR, self.vectors)  # so the loop optimizes and checkpoints them

    def step_options(self) -> dict[str, Any]:
        """What make_step needs: token-weighted log-probs under NextQuill weighting."""
        if not self.config.token_weighting:
            return {}
        from pluralign.personal.token_weights import weighted_pairwise_logps

        return {"policy_logps": weighted_pairwise_logps}

    def per_example(self, records: Sequence[Any]) -> dict[str, torch.Tensor]:
        out = {}
        if self.config.token_weighting and records:
            import dataclasses

            from pluralign.personal.token_weights import precompute

            padded = dataclasses.replace(self.collator, packing=False)
            out |= precompute(self.model, padded, records, size=self.config.history_size,
                              temperature=self.config.token_temperature)
        if self.vectors is not None:
            out["person_index"] = self.vectors.lookup([field_of(r, self.field) for r in records])
        if self.groups:  # every record has a training group (`group_check`)
            where = {g: i for i, g in enumerate(self.groups)}
            out["group_index"] = torch.tensor([where[str(r.group)] for r in records])
        return out

    def prepare_step(self, dataset: Sequence, collate: Callable, step: Callable,
                     keep: Sequence[Any] = ()) -> Callable | None:
        """The loop's ``prepare_step`` under a group objective: the objective over each whole step
        (`pluralign.personal.step_groups`); `step` is the training step as the loop runs it."""
        return self.steps.hook(dataset, collate, step, keep) if self.groups else None

    def wrap(self, step: Callable, *, training: bool) -> Callable:
        steps = self.steps
        # A new user's run trains only the new vectors (the policy is frozen): an example seen without its
        # vector would train nothing, and the population model it stands for is not trained in that run.
        vectors = self.vectors
        dropout = 0.0 if self.config.new_users_only else self.config.population_dropout

        def personal_step(model, batch):
            if training and self.groups:
                steps.begin(model)  # a split step's first pass over all its micro-batches, once
            if vectors is None:
                values, metrics = step(model, batch)
            else:
                index = batch["person_index"]
                if training and dropout > 0:
                    index = torch.where(torch.rand(len(index), device=index.device) < dropout, 0, index)
                rows = n_rows(batch) // len(index)  # pairwise: chosen rows then rejected rows
                with offset(self.site, per_row(vectors.vectors(index).repeat(rows, 1), batch)):
                    values, metrics = step(model, batch)
            if self.groups and not steps.collecting:
                groups = batch["group_index"].to(values.device)
                if PADDING in batch:  # an evaluation batch's repeats: no group's member (-1)
                    groups = torch.where(batch[PADDING].to(groups.device), -1, groups)
                    if not bool((groups >= 0).any()):  # repeats only: nothing to combine, weight 0 in the mean
                        return values, metrics
                metrics = metrics | self._group_losses(values, groups)
                values = steps.values(values, groups, training=training)
                if self.state:  # group DRO: its weights over the groups, to watch them move
                    metrics = metrics | {f"group_weight/{g}": self.combine.q[i].float()
                                         for i, g in enumerate(self.groups)}
            return values, metrics

        return personal_step

    def _group_losses(self, losses: torch.Tensor, groups: torch.Tensor) -> dict[str, torch.Tensor]:
        """`group_loss/<g>`: the mean loss of each group present in the batch, so a run shows which group
        the objective favours. Each is given with its count of examples (`parallel.Weighted`): weighted by
        the batch's size instead, micro-batches and evaluation batches would average into a number that is
        not the group's mean loss."""
        losses = losses.detach()
        return {f"group_loss/{self.groups[g]}": (losses[groups == g].float().mean(), int((groups == g).sum()))
                for g in torch.unique(groups[groups >= 0]).tolist()}

    def detach(self, model: Any) -> None:
        """Take the vectors off the model before it is saved (they are saved on their own)."""
        if self.vectors is not None and hasattr(model, ATTR):
            delattr(model, ATTR)

    def save(self, model_dir: str | Path) -> None:
        if self.vectors is not None:
            save_vectors(model_dir, self.vectors, {"on": self.table_on, "layer": self.config.layer,
                                                   "user_groups": self.user_groups})


def resolve(index: dict, user: str | None = None, group: str | None = None, warn: bool = True) -> str | None:
    """The vector name for a request: the user's own vector, else the request's group's, else the group the
    user was seen in during training; None (with a warning, if `warn`) when nothing matches: the population
    model."""
    names = set(index["names"])
    if user is not None and user in names:
        return user
    wanted = group if group is not None else index.get("user_groups", {}).get(user) if user is not None else None
    if wanted is not None and wanted in names:
        return wanted
    if not warn:
        return None
    if user is not None:
        also = f" nor group '{wanted}'" if wanted is not None else ""
        warnings.warn(f"user '{user}' has no vector in this model{also}: using the population model (fit one "
                      "from a few pairs with personal.new_users_only)", stacklevel=2)
    elif group is not None:
        warnings.warn(f"group '{group}' has no vector in this model: using the population model", stacklevel=2)
    return None
