"""Checks of personalised training's records and settings, made before the reference pass so that a mistake is
named (by file and line where there is one) instead of found mid-run: every record of a group objective has a
group the objective weighs, NextQuill's token weighting has histories to weight by, conditioning has names."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pluralign.errors import ConfigError, DataError, Problem
from pluralign.personal import group_fair

if TYPE_CHECKING:
    from pluralign.personal.conditioned import PersonalConfig


def check_token_weighting(config: PersonalConfig, loss_kind: str, reference_is_initial: bool) -> None:
    """NextQuill's settings, checked before the reference pass (the weights are computed only after it)."""
    if loss_kind != "pairwise" or not reference_is_initial:
        raise ConfigError("personal.token_weighting needs a pairwise loss and the cached reference of the initial "
                          "policy (no ref_model, ref_cache=true)")
    t = config.token_temperature
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0:
        raise ConfigError(f"personal.token_temperature must be a finite number > 0, got {t!r}",
                          field="personal.token_temperature")
    h = config.history_size
    if isinstance(h, bool) or not isinstance(h, int) or h < 1:
        raise ConfigError(f"personal.history_size must be an integer >= 1 (how many of the user's other chosen "
                          f"responses form the history), got {h!r}", field="personal.history_size")


def check_histories(records: Sequence[Any], size: int, where: str) -> None:
    """The weights need some user's history, computed only after the reference pass: known before it."""
    from pluralign.personal.token_weights import histories

    if records and all(h is None for h in histories(records, size)):
        raise ConfigError(f"personal.token_weighting: no user of the {where} has 2 or more records, so no "
                          "record has a history (the user's other chosen responses) to weight its tokens by",
                          field="personal.token_weighting")


def group_check(config: PersonalConfig, training: Sequence[Any] | None = None) -> Callable[[Sequence[Any], str, Sequence[int]], None] | None:
    """What `load_data` runs on each file's records under a group objective (None for `average`), while the
    file is known to name it: every record needs a group, and with `training` (the training records, when
    reading evaluation data) one of the training groups. A record without a group, or of a group the
    objective has no weight for, would silently leave the objective, or leave a batch with no group mid-run."""
    if config.group_objective == "average":
        return None
    group_fair.get(config.group_objective)  # a misspelt objective is named before its data are judged
    known = None if training is None else sorted({str(r.group) for r in training if r.group is not None})

    def check(records: Sequence[Any], source: str, lines: Sequence[int]) -> None:
        _raise(_group_problems(records, source, config.group_objective, known, lines))

    return check


def _group_problems(records: Sequence[Any], source: str, objective: str,
                    known: Sequence[str] | None = None, lines: Sequence[int] | None = None) -> list[Problem]:
    """One problem per record without a group (or, given `known`, of a group not in it), at the record's
    line in `source` (`lines`, one per record; without them its position)."""
    problems = []
    for n, r in zip(range(1, len(records) + 1) if lines is None else lines, records, strict=True):
        group = field_of(r, "group")
        if group is None:
            problems.append(Problem(source, n, "group", f"missing; group_objective '{objective}' combines the "
                                    "losses of groups, so every record needs one"))
        elif known is not None and group not in known:
            problems.append(Problem(source, n, "group", f"'{group}' is not a group of the training data {known}; "
                                    f"group_objective '{objective}' has no weight for it"))
    return problems


def _raise(problems: list[Problem]) -> None:
    if problems:
        raise DataError(problems, max_shown=5)  # the first few say what is wrong; the count says how often


def training_groups(records: Sequence[Any], objective: str) -> list[str]:
    """The groups of a group objective, in index order ([] for `average`). `load_data` already refused
    records without a group (naming their files); this guards other callers."""
    if objective == "average":
        return []
    _raise(_group_problems(records, "training data", objective))
    groups = sorted({str(r.group) for r in records})
    if len(groups) < 2:
        raise ConfigError(f"group_objective '{objective}' needs records of at least 2 groups "
                          f"(their 'group' field); found {groups}")
    return groups


def field_of(record: Any, name: str) -> str | None:
    value = getattr(record, name, None)
    return None if value is None else str(value)


def names_of(records: Sequence[Any], name: str, purpose: str) -> list[str]:
    found = sorted({v for r in records if (v := field_of(r, name)) is not None})
    missing = sum(field_of(r, name) is None for r in records)
    if not found:
        raise ConfigError(f"personal: no training record has a '{name}' field, which {purpose} needs")
    if missing:
        warnings.warn(f"personal: {missing} of {len(records)} records have no '{name}'; they train the population "
                      "(no vector)", stacklevel=3)
    return found
