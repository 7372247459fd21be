"""Pairs stored as two sides and a verdict, read as chosen and rejected.

Human votes between two models' answers are published this way, with who voted — per-person preference
data, which pluralistic methods need:

- Chatbot Arena and MT-Bench human judgments: ``conversation_a`` / ``conversation_b`` (whole
  conversations), ``winner`` ("model_a", "model_b", "tie", "tie (bothbad)") and ``judge`` (the voter, read
  as the row's `user`);
- LMSYS arena-human-preference: ``prompt``, ``response_a`` / ``response_b`` and one-hot ``winner_model_a`` /
  ``winner_model_b`` / ``winner_tie`` columns, each side a JSON list with one entry per turn: a one-turn
  exchange's one-element lists are unwrapped, and the turns of a longer one become each side's conversation
  (the user's turns from ``prompt``, the side's answers between them), cut after their shared prompt as
  Arena's conversations are; a turn that is no text (``null``) is a problem of its field;
- HelpSteer3 preference: ``context`` (the conversation so far), ``response1`` / ``response2`` and
  ``overall_preference`` from -3 (response 1 much better) to 3 (response 2 much better), 0 a tie; its
  magnitude is the pair's `margin`;
- Stanford Human Preferences (SHP): ``history`` (the post), ``human_ref_A`` / ``human_ref_B`` and ``labels``
  (1: A is preferred, 0: B).

The winner's side becomes `chosen`, the other `rejected`; whole conversations are then cut after the prompt
they share (`pluralign.data.conversations`). A tie states no preference between the sides, so a tied row
is a problem of its own (field ``winner``), listed with its line by ``--skip-invalid`` and never trained on.

A pair already given as ``chosen`` / ``rejected`` may carry each side's score (UltraFeedback-binarized's
``score_chosen`` / ``score_rejected``, or ``chosen_score`` / ``rejected_score``, ``chosen_rating`` /
``rejected_rating``): their difference is the pair's `margin` (`with_score_margin`), which a reward model's
margin loss reads. A rejected side scored above the chosen one is a problem of its row (`score_issues`).

One row can also hold a verdict per objective. PKU-SafeRLHF (``prompt``, ``response_0`` / ``response_1``,
``better_response_id`` and ``safer_response_id``, each 0 or 1) is read as two pairs at the row's line, one
with objective ``helpfulness`` and one with ``harmlessness`` (`per_objective_rows`): the two objectives
of Safe RLHF and MODPO, which often disagree on the same two responses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pluralign.data.conversations import list_of, messages_of, shared_prompt, shared_turns
from pluralign.data.field_checks import short
from pluralign.data.rated_forms import number_of

SHP_SIDES = ("human_ref_A", "human_ref_B")  # their verdict: `labels`, 1 when A is preferred
SIDES = (("conversation_a", "conversation_b"), ("response_a", "response_b"), ("response1", "response2"), SHP_SIDES)
PROMPT_NAMES = ("context", "history")  # where HelpSteer3 and SHP keep the prompt
SCALE = "overall_preference"  # < 0: the first side is better, > 0: the second, 0: a tie
ONE_HOT = ("winner_model_a", "winner_model_b", "winner_tie")
WINNER_SIDE = {"model_a": 0, "a": 0, "model_b": 1, "b": 1}


def _sides(row: Mapping[str, Any]) -> tuple[str, str] | None:
    return next(((a, b) for a, b in SIDES if a in row and b in row), None)


def _truthy(value: Any) -> bool:
    return value is True or value == 1 or (isinstance(value, str) and value.strip().lower() in ("1", "1.0", "true"))


def _winner(row: Mapping[str, Any]) -> int | str:
    """0 or 1 (the side that won), or what the row says instead (a tie, an unknown verdict)."""
    if SCALE in row:
        scale = number_of(row[SCALE])
        if scale is None or not -3 <= scale <= 3:  # NaN and 7 read as "response 1 won", margin NaN / 7
            return short(row[SCALE])
        return "tie" if scale == 0 else int(scale > 0)
    if _sides(row) == SHP_SIDES and "labels" in row:
        label = number_of(row["labels"])
        return {1.0: 0, 0.0: 1}.get(label, short(row["labels"]))
    if "winner" in row:
        verdict = row["winner"]
        return WINNER_SIDE.get(verdict.strip().lower(), verdict) if isinstance(verdict, str) else short(verdict)
    flags = [_truthy(row.get(k)) for k in ONE_HOT]
    if flags == [True, False, False]:
        return 0
    if flags == [False, True, False]:
        return 1
    return "tie" if flags == [False, False, True] else f"one-hot {dict(zip(ONE_HOT, flags, strict=True))}"


def has_verdict(row: Mapping[str, Any]) -> bool:
    sides = _sides(row)
    return sides is not None and (SCALE in row or "winner" in row or all(k in row for k in ONE_HOT)
                                  or (sides == SHP_SIDES and "labels" in row))


def _unwrapped(value: Any) -> Any:
    """A one-turn exchange stored as a one-element list of text (or its JSON text): the text."""
    items = list_of(value)
    return items[0] if items is not None and len(items) == 1 and isinstance(items[0], str) else value


TURN_SIDES = ("response_a", "response_b")  # arena-human-preference: one list entry per turn


def _turn_lists(row: Mapping[str, Any], sides: tuple[str, str] | None) -> list[list] | None:
    """arena-human-preference's prompt and two sides as lists of turns (JSON text in a table's cell), else None."""
    if sides != TURN_SIDES:
        return None
    lists = [list_of(row.get(name)) for name in ("prompt", *sides)]
    return lists if all(items is not None for items in lists) else None


def _turn_issues(row: Mapping[str, Any], sides: tuple[str, str] | None) -> list[tuple[str, str]]:
    """Turns of an arena-human-preference row that are no text, or sides with another number of turns than
    the prompt. Read as text, ``[null]`` was trained on as the reply "[null]"."""
    lists = _turn_lists(row, sides)
    if lists is None:
        return []
    names = ("prompt", *TURN_SIDES)
    if not lists[0]:  # "[]" was read as the prompt text "[]", its empty replies as a pair alike
        return [("prompt", "expected at least one turn, got an empty list")]
    issues = [(f"{name}[{i}]", f"expected the text of a turn, got {short(turn)}")
              for name, items in zip(names, lists, strict=True) for i, turn in enumerate(items)
              if not isinstance(turn, str) or not turn.strip()]
    return issues or [(name, f"has {len(items)} turn(s) for the {len(lists[0])} of prompt")
                      for name, items in zip(names[1:], lists[1:], strict=True) if len(items) != len(lists[0])]


def _conversation(questions: list[str], answers: list[str]) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for q, a in zip(questions, answers, strict=True)
            for role, text in (("user", q), ("assistant", a))]


def _side_conversations(row: Mapping[str, Any], sides: tuple[str, str]) -> tuple[list, list] | None:
    """Both sides of a verdict row as conversations (Arena's messages, or arena-human-preference's turns)."""
    lists = _turn_lists(row, sides)
    if lists is not None:
        return (_conversation(lists[0], lists[1]), _conversation(lists[0], lists[2])) if len(lists[0]) > 1 else None
    a, b = messages_of(row[sides[0]]), messages_of(row[sides[1]])
    return (a, b) if a and b else None


def _history_issues(row: Mapping[str, Any], sides: tuple[str, str] | None) -> list[tuple[str, str]]:
    """A multi-turn vote whose sides part before the user's last turn: each model answered the later turns
    after its own earlier reply, so no one prompt precedes both last replies, and a pair needs one. Cut
    after the turns they share, each "reply" held a user turn, refused as the `chosen` the row never had."""
    if sides is None or _turn_issues(row, sides) or (convs := _side_conversations(row, sides)) is None:
        return []
    a, b = convs
    n = shared_turns(a, b)
    if not any(m.get("role") == "user" for m in [*a[n:], *b[n:]]):
        return []
    field = f"{sides[1]}[{n // 2}]" if sides == TURN_SIDES else f"{sides[1]}[{n}]"
    return [(field, f"the two sides part here (message {n + 1}), before the user's last turn: each side's later "
                    "turns follow its own earlier reply, so no one prompt precedes both last replies (a pair needs "
                    "one); a vote on one turn, or on sides whose earlier turns agree, is a pair")]


def chosen_and_rejected(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A decided verdict row with `chosen` and `rejected` in place of its sides (the verdict and the
    models' names kept, as meta); any other row unchanged (a tie is reported by `verdict_issues`)."""
    sides = _sides(row)
    if sides is None or not has_verdict(row) or "chosen" in row or "rejected" in row:
        return row
    winner = _winner(row)
    if not isinstance(winner, int):
        return row
    lists = _turn_lists(row, sides)
    if _turn_issues(row, sides):
        return row  # `verdict_issues` names the turn
    if _history_issues(row, sides):  # refused as a pair; its opening turns are still a prompt (prompt files)
        a, b = _side_conversations(row, sides)
        return row if "prompt" in row else {**row, "prompt": shared_prompt(a, b) or None}
    if lists is not None and len(lists[0]) > 1:  # several turns: each side's whole conversation
        out = {k: v for k, v in row.items() if k not in (*sides, "prompt")}
        out["chosen"], out["rejected"] = (_conversation(lists[0], lists[1 + winner]), _conversation(lists[0], lists[2 - winner]))
        return out
    out = {k: v for k, v in row.items() if k not in sides}
    out["chosen"], out["rejected"] = (_unwrapped(row[sides[winner]]), _unwrapped(row[sides[1 - winner]]))
    for name in PROMPT_NAMES:
        if "prompt" not in out and name in out:
            out["prompt"] = out.pop(name)
    if "prompt" in out:
        out["prompt"] = _unwrapped(out["prompt"])
    if SCALE in row and "margin" not in out:
        out["margin"] = abs(number_of(row[SCALE]))
    return out


# The columns in which a published pair scores its chosen and its rejected response.
SCORED_SIDES = (("score_chosen", "score_rejected"), ("chosen_score", "rejected_score"),
                ("chosen_rating", "rejected_rating"), ("chosen-rating", "rejected-rating"))


def _scores(row: Mapping[str, Any]) -> tuple[tuple[str, str], float | None, float | None] | None:
    """The score columns of a chosen/rejected row without its own `margin`, and their values as numbers
    (None for a cell that is no number); None when the row has no such columns or a side is left blank."""
    if "margin" in row or "chosen" not in row or "rejected" not in row:
        return None
    names = next(((c, r) for c, r in SCORED_SIDES if c in row and r in row), None)
    if names is None or any(row[n] is None or (isinstance(row[n], str) and not row[n].strip()) for n in names):
        return None  # a blank cell scores nothing: the pair stands, without a margin
    return names, number_of(row[names[0]]), number_of(row[names[1]])


def with_score_margin(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A pair with both sides' scores, their difference as its `margin` (dropped otherwise: a reward model's
    margin loss, or `data stats`, had no margin though the file held the scores); any other row unchanged."""
    found = _scores(row)
    if found is None or found[1] is None or found[2] is None or found[1] < found[2]:
        return row  # `score_issues` names what is wrong
    return {**row, "margin": found[1] - found[2]}


def score_issues(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A pair's scores that are no numbers, or that score the rejected response above the chosen one."""
    found = _scores(row)
    if found is None:
        return []
    (chosen, rejected), c, r = found
    bad = [(name, f"expected a number, got {short(row[name])}") for name, v in ((chosen, c), (rejected, r)) if v is None]
    if not bad and c < r:
        bad = [(rejected, f"{r:g} is above {chosen} {c:g}: the rejected response scored higher than the chosen one")]
    return bad


def verdict_issues(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A verdict row that was not decided for one side: a tie, or a verdict naming no side."""
    if "chosen" in row or not has_verdict(row):
        return []
    winner = _winner(row)
    if isinstance(winner, int):  # decided, yet left as sides: their turns are at fault
        return _turn_issues(row, _sides(row)) or _history_issues(row, _sides(row))
    field = next((k for k in (SCALE, "winner", "labels") if k in row), "winner_tie")
    if winner == "tie" or (isinstance(winner, str) and winner.lower().startswith("tie")):
        shown = row[SCALE] if SCALE in row else winner
        return [(field, f"{shown!r}: a tie states no preference between the two sides")]
    if SCALE in row:
        return [(field, f"expected a number from -3 to 3, got {winner}")]
    if field == "labels":
        return [(field, f"expected 1 (A is preferred) or 0 (B), got {winner}")]
    return [(field, f"{winner!r} names neither side (model_a or model_b)")]


PER_OBJECTIVE = {"better_response_id": "helpfulness", "safer_response_id": "harmlessness"}  # PKU-SafeRLHF
NUMBERED = ("response_0", "response_1")


def is_per_objective_row(data: Any) -> bool:
    """Whether a row holds two numbered responses and a verdict per objective (PKU-SafeRLHF's form)."""
    return isinstance(data, Mapping) and all(k in data for k in NUMBERED) and any(k in data for k in PER_OBJECTIVE)


def per_objective_rows(data: Mapping[str, Any]) -> list[tuple[dict[str, Any] | None, list[tuple[str, str]]]]:
    """One (pairwise row, issues) per objective the row decides: the response its id names is `chosen`,
    the objective is named, and the row's other fields (safety labels, harm categories, …) are kept."""
    shared = {k: v for k, v in data.items() if k not in (*NUMBERED, *PER_OBJECTIVE)}
    out = []
    for key, objective in PER_OBJECTIVE.items():
        if key not in data:
            continue
        side = number_of(data[key])
        if side not in (0.0, 1.0):
            out.append((None, [(key, f"expected 0 or 1 (which response is better), got {short(data[key])}")]))
            continue
        chosen, rejected = NUMBERED if side == 0.0 else NUMBERED[::-1]
        out.append(({**shared, "chosen": data[chosen], "rejected": data[rejected], "objective": objective,
                     key: data[key]}, []))
    return out
