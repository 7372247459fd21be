"""Janus-style conditioning: the user's (or group's) preferences stated as a system message.

Janus (Lee et al. 2024, "Aligning to Thousands of Preferences via System Message Generalization") trains
one model on many users' data with each user's preferences written in the system message, so that at
inference a new statement of preferences steers the same model. Here `statements` maps a user id or a
group name to the text that states their preferences; a training example (its record's `user`, else its
`group`) and a request (`user=`, else `group=`) get their statement before the prompt: a system message
for chat prompts, else where the tokenizer's template allows (`Scheme.with_statement`). Anyone
without a statement gets the prompt unchanged, i.e. the population model.

Train with `objectives.conditioning=persona_message` and `objectives.conditioning_params.statements`
(no objectives needed); the scheme is saved with the model, so `decode … --user/--group` applies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pluralign import conditioning
from pluralign.errors import ConfigError


@conditioning.register("persona_message")
class PersonaMessage(conditioning.Scheme):
    """Each user's or group's preference statement before the prompt (Janus)."""

    reads = ("user", "group")

    def __init__(self, objectives=(), *, statements: Mapping[str, str] | None = None):
        if not statements or not isinstance(statements, Mapping):
            raise ConfigError("persona_message needs conditioning_params.statements: {user or group: statement}")
        bad = [k for k, v in statements.items() if not isinstance(v, str) or not v.strip()]
        if bad:
            raise ConfigError(f"persona_message: empty or non-text statement for {bad}")
        super().__init__(objectives, statements=dict(statements))

    def statement(self, condition: conditioning.Condition) -> str | None:
        statements = self.params["statements"]
        for key in (condition.user, condition.group):
            if key is not None and key in statements:
                return statements[key]
        return None

    def prompt(self, prompt: Any, condition: conditioning.Condition) -> Any:
        text = self.statement(condition)
        return prompt if text is None else self.with_statement(prompt, text)

    def vocabulary(self) -> list[str]:
        return list(self.params["statements"].values())
