"""Prompt-level alignment: put the preference in the prompt, leave the model alone.

- DPA (Wang et al. 2024, "Arithmetic Control of LLMs for Diverse User Preferences: Directional Preference
  Alignment", arXiv 2402.18571): a unit preference direction over reward attributes in the system
  message ("maximize weighted rating = helpfulness*0.8 + verbosity*0.6").
- Janus (Lee et al. 2024, "Aligning to Thousands of Preferences via System Message Generalization",
  arXiv 2405.17977): the user's preferences stated in words in the system message.
- URIAL (Lin et al., ICLR 2024, "The Unlocking Spell on Base LLMs"): in-context alignment of a base
  model; serialisation and output cleaning as in Re-Align/URIAL (`urial_backticks`, `clear_output`).
- CoSA (Zhang et al., ICLR 2025, arXiv 2410.08968): a safety config listing allowed harm categories in
  the system prompt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pluralign.data.prompts import as_messages, has_template
from pluralign.errors import ConfigError

DPA_SYSTEM = "You are a helpful, respectful and honest assistant. Your response should maximize weighted rating = {terms}."


def direction(weights: Sequence[float]) -> list[float]:
    """Unit vector along `weights` (DPA conditions on directions, not magnitudes)."""
    norm = math.sqrt(sum(float(w) ** 2 for w in weights))
    if norm == 0:
        raise ConfigError("preference weights are all zero")
    return [float(w) / norm for w in weights]


def dpa_system_message(weights: Sequence[float] | Mapping[str, float], objectives: Sequence[str] | None = None,
                       *, normalize: bool = True, digits: int = 2) -> str:
    """The DPA system message for a preference direction over named objectives."""
    if isinstance(weights, Mapping):
        objectives, weights = list(weights), list(weights.values())
    objectives = list(objectives or [f"r{i}" for i in range(len(weights))])
    v = direction(weights) if normalize else [float(w) for w in weights]
    terms = " + ".join(f"{name}*{round(x, digits)}" for name, x in zip(objectives, v, strict=True))
    return DPA_SYSTEM.format(terms=terms)


def janus_system_message(preferences: Sequence[str] | str, persona: str | None = None) -> str:
    """A Janus-style system message stating a user's preferences (and optional persona) in words."""
    prefs = [preferences] if isinstance(preferences, str) else list(preferences)
    lead = f"You are talking to {persona}. " if persona else ""
    return lead + "The user prefers responses that: " + "; ".join(p.strip().rstrip(".") for p in prefs) + "."


def with_system(prompt: Any, system: str, tokenizer: Any = None, chat_template: str = "auto") -> Any:
    """Attach a system message (replacing any): chat messages when the prompt is messages or the tokenizer
    has a chat template that `chat_template` lets render it (plain text becomes the user message), else plain
    text `system + blank line + prompt`."""
    if not isinstance(prompt, str) or (chat_template != "never" and has_template(tokenizer)):
        return as_messages(prompt, system)
    return f"{system}\n\n{prompt}"


URIAL_PREAMBLE = (
    "# Instruction\n\n"
    "Below is a list of conversations between a human and an AI assistant (you). \n"
    "As an AI assistant, you will engage in conversations with users, responding to their queries which are "
    "presented under the heading \"# Query:\". \n"
    "Your responses should be entered under the heading \"# Answer:\". \n"
    "You excel in a wide range of tasks including, but not limited to, providing general information, "
    "conducting reasoning, engaging in role-play, creative writing, planning, and solving mathematical and "
    "coding problems. \n"
    "Your responses should be well-structured, comprehensive, and aim to thoroughly address the user's "
    "query or problem at hand.\n"
)
URIAL_STOP = "# Query"


def _urial_turn(q: str, a: str | None) -> str:
    head = "\n# Query:\n```\n" + q + "\n```\n" + "\n# Answer:\n```\n"
    return head if a is None else head + a + "\n```\n"


def urial_prompt(query: str, examples: Sequence[tuple[str, str]] = (), preamble: str = URIAL_PREAMBLE) -> str:
    """URIAL prompt: preamble, K in-context (query, answer) examples, then the query with an open answer
    fence. Pass the repo's example answers for `inst_1k_v4.help`; none gives the K = 0 ablation."""
    return preamble + "".join(_urial_turn(q, a) for q, a in examples) + _urial_turn(query, None)


def urial_clean(output: str) -> str:
    """Cut at the next "# Query", delete code fences, strip (URIAL's clear_output)."""
    return output.split(URIAL_STOP)[0].replace("```", "").strip()


COSA_CATEGORIES = (
    "Discrimination and Verbal Abuse",
    "Financial Crime and Theft",
    "Illegal Drug-Related Activities and Substance Abuse",
    "Privacy Violations",
    "Sexual Misconduct, Exploitation, and Infidelity",
    "Violence",
    "Weapons, Explosives, Arson, and Illegal Firearm Transactions",
    "Other Harms",
)


def cosa_system_prompt(allowed: Sequence[str] = (), context: str | None = None) -> str:
    """A CoSA safety config: which harm categories this deployment allows; all others stay refused."""
    unknown = [a for a in allowed if a not in COSA_CATEGORIES]
    if unknown:
        raise ConfigError(f"unknown CoSA categories {unknown}; known: {list(COSA_CATEGORIES)}")
    banned = [c for c in COSA_CATEGORIES if c not in allowed]
    lines = ["You are a helpful assistant operating under the following safety configuration."]
    if context:
        lines.append(f"Deployment context: {context}")
    lines.append("Allowed content categories: " + ("; ".join(allowed) if allowed else "none") + ".")
    lines.append("Do not produce content in these categories: " + "; ".join(banned) + ".")
    return "\n".join(lines)
