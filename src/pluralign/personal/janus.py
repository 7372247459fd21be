"""Janus-style conditioning: the user's (or group's) preferences stated as a system message.

Janus (Lee et al. 2024, "Aligning to Thousands of Preferences via System Message Generalization") trains
one model on many users' data with each user's preferences written in the system message, so that at
inference a new statement of preferences steers the same model. Here `statements` maps a user id or a
group name to the text that states their preferences; a training example (its record's `user`, else its
`group`) and a request (`user=`, else `group=`) get their statement before the prompt: a system message
for chat prompts, else where the tokenizer's template allows (`Scheme.with_statement`). Anyone
without a statement gets the prompt unchanged, i.e. the population model (a request, with a warning, as
the other per-person schemes do). A statement key that is no user or group of the training data would
train nothing (usually a typo): training refuses it.

Train with `objectives.conditioning=persona_message` and `objectives.conditioning_params.statements`
(no objectives needed); the scheme is saved with the model, so `decode … --user/--group` applies it.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from pluralign import conditioning
from pluralign.data.field_checks import person_id
from pluralign.errors import ConfigError


@conditioning.register("persona_message")
class PersonaMessage(conditioning.Scheme):
    """Each user's or group's preference statement before the prompt (Janus)."""

    reads = ("user", "group")

    def __init__(self, objectives=(), *, statements: Mapping[str, str] | None = None,
                 user_groups: Mapping[str, str] | None = None):
        if not statements or not isinstance(statements, Mapping):
            raise ConfigError("persona_message needs conditioning_params.statements: {user or group: statement}")
        bad = [k for k, v in statements.items() if not isinstance(v, str) or not v.strip()]
        if bad:
            raise ConfigError(f"persona_message: empty or non-text statement for {bad}")
        # keys as the data's ids are read: YAML's {7: ...} has the integer 7, the data's user 7 is "7"
        keys = {k: person_id(k) for k in statements}
        if bad := [k for k, v in keys.items() if not v]:
            raise ConfigError(f"objectives.conditioning_params.statements: the keys must be user or group ids (a text "
                              f"or an integer), got {bad}", field="objectives.conditioning_params.statements")
        statements = {keys[k]: v for k, v in statements.items()}
        # user → training group (filled by `fit`, saved): a trained user named alone gets their group's
        # statement, as their training examples did, and as the other per-person schemes resolve them
        super().__init__(objectives, statements=dict(statements), user_groups=dict(user_groups or {}))
        self.training = False  # set by `fit`: training records without a statement are not warned about

    def fit(self, records: Sequence[Any]) -> None:
        """Refuse statement keys that are no user or group of the training data: they would train nothing."""
        users = sorted({str(r.user) for r in records if getattr(r, "user", None) is not None})
        groups = sorted({str(r.group) for r in records if getattr(r, "group", None) is not None})
        unknown = [k for k in self.params["statements"] if k not in set(users) | set(groups)]
        if unknown:
            raise ConfigError("objectives.conditioning_params.statements: "
                              + "; ".join(_unmatched(k, users, groups) for k in unknown),
                              field="objectives.conditioning_params.statements")
        # Records without a statement train the population model, by design; only requests are warned.
        self.training = True
        self.params["user_groups"] = {str(r.user): str(r.group) for r in records
                                      if getattr(r, "user", None) is not None and getattr(r, "group", None) is not None}

    def statement(self, condition: conditioning.Condition) -> str | None:
        statements = self.params["statements"]
        trained_in = self.params["user_groups"].get(condition.user) if condition.group is None else None
        for key in (condition.user, condition.group, trained_in):
            if key is not None and key in statements:
                return statements[key]
        return None

    def unmatched(self, condition: conditioning.Condition) -> str | None:
        return condition.person() if self.statement(condition) is None else None

    def prompt(self, prompt: Any, condition: conditioning.Condition) -> Any:
        text = self.statement(condition)
        if text is None and not self.training and (who := condition.person()) is not None:
            warnings.warn(f"{who} has no statement in this model: using the population model", stacklevel=2)
        return prompt if text is None else self.with_statement(prompt, text)

    def vocabulary(self) -> list[str]:
        return list(self.params["statements"].values())


def _unmatched(key: str, users: Sequence[str], groups: Sequence[str]) -> str:
    """Why `key` matches no one: the data's groups and users (a few), and the closest names."""
    close = difflib.get_close_matches(key, [*groups, *users], n=3)
    shown = ", ".join(users[:10]) + (f", … ({len(users)} in all)" if len(users) > 10 else "")
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"key '{key}' is no user or group of the training data (groups: {', '.join(groups) or 'none'}; "
            f"users: {shown or 'none'}){hint}")
