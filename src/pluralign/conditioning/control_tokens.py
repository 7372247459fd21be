"""Learned control tokens: each user (or group) gets a few virtual tokens whose embeddings are learned.

The parameter-efficient form of conditioning on who is asking. MEET-style control tokens, and prompt
tuning in general (Lester et al. EMNLP 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning"):
k new tokens per person, ``<|ctl:NAME:0|>`` … ``<|ctl:NAME:k-1|>``, are added to the tokenizer and placed
where a statement of the person's preferences would go (a system message for chat prompts, else where the
tokenizer's template allows, as Janus' statements: `Scheme.with_statement`). Their input embeddings are a
separate small table, substituted for the model's embedding rows of those ids by a forward hook on the
input embeddings; with ``freeze_policy`` (the default) only that table is trained — k·d numbers per
person — with the recipe's preference loss, each example under its own person's tokens.

Saved with the model: the tokenizer with the added tokens, ``conditioning.json`` (names, token ids) and
``control_tokens.safetensors`` (the table). Loading the model directory with `decode.steer.load_policy`
(what `pluralign decode`, `eval` and the server do) re-installs the hook, and each
request's ``user=`` (else ``group=``, else the group the user was trained in) picks its tokens; anyone
else gets the prompt unchanged, i.e. the base policy, with a warning.

The model's own embedding rows of the control tokens keep their initial value, the mean embedding (so a
tied output layer gives them an average logit); the table starts from those rows, so the DPO reference
(the initial model, control tokens included) is the initial policy.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pluralign import conditioning
from pluralign.errors import ConfigError

WEIGHTS = "control_tokens.safetensors"
ATTR = "pluralign_control_tokens"


def token_names(name: str, k: int) -> list[str]:
    return [f"<|ctl:{name}:{i}|>" for i in range(k)]


class ControlTable(torch.nn.Module):
    """Embeddings [n, d] of control-token ids; `substitute` puts them in place of the embedding layer's
    output wherever the input holds one of those ids."""

    def __init__(self, token_ids: Sequence[int], init: torch.Tensor, vocab_size: int):
        super().__init__()
        self.embeddings = torch.nn.Parameter(init.detach().clone().float())
        lookup = torch.full((vocab_size,), -1, dtype=torch.long)
        lookup[torch.as_tensor(list(token_ids), dtype=torch.long)] = torch.arange(len(token_ids))
        self.register_buffer("lookup", lookup, persistent=False)

    def substitute(self, input_ids: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        rows = self.lookup.to(input_ids.device)[input_ids]
        hit = rows >= 0
        if not bool(hit.any()):
            return embedded
        table = self.embeddings.to(embedded.device, embedded.dtype)[rows.clamp(min=0)]
        return torch.where(hit[..., None], table, embedded)


def _hook(table: ControlTable):
    def hook(_module, inputs, output):
        return table.substitute(inputs[0], output) if inputs and torch.is_tensor(inputs[0]) else output

    return hook


@conditioning.register("control_tokens")
class ControlTokens(conditioning.Scheme):
    """k learned control tokens per user or group (MEET-style; prompt tuning, Lester et al. 2021).

    Params: ``by`` ('user' or 'group': which record field names the person), ``tokens`` (k),
    ``freeze_policy`` (train only the tokens; false trains the policy, or its LoRA adapters, with them),
    ``placement`` ('statement': where a Janus statement goes; 'start': before the request's words, in the
    user's turn).
    ``names``, ``user_groups`` and ``token_ids`` are filled in by training and saved."""

    reads = ("user", "group")

    def __init__(self, objectives: Sequence[str] = (), *, by: str = "user", tokens: int = 4, freeze_policy: bool = True,
                 placement: str = "statement", names: Sequence[str] | None = None,
                 user_groups: dict[str, str] | None = None, token_ids: Sequence[int] | None = None):
        if by not in ("user", "group"):
            raise ConfigError(f"control_tokens: 'by' must be 'user' or 'group', got {by!r}")
        if placement not in ("statement", "start"):
            raise ConfigError(f"control_tokens: 'placement' must be 'statement' or 'start', got {placement!r}")
        if not isinstance(tokens, int) or tokens < 1:
            raise ConfigError(f"control_tokens: 'tokens' must be a positive integer, got {tokens!r}")
        super().__init__(objectives, by=by, tokens=tokens, freeze_policy=bool(freeze_policy), placement=placement,
                         names=list(names or []), user_groups=dict(user_groups or {}),
                         token_ids=list(token_ids or []))
        self.table: ControlTable | None = None
        self._handle = None

    # --- who is asking
    def fit(self, records: Sequence[Any]) -> None:
        on = self.params["by"]
        found = sorted({str(v) for r in records if (v := getattr(r, on, None)) is not None})
        if not found:
            raise ConfigError(f"control_tokens: no training record has a '{on}' field to learn tokens for")
        missing = sum(getattr(r, on, None) is None for r in records)
        if missing:
            warnings.warn(f"control_tokens: {missing} of {len(records)} records have no '{on}'; they train "
                          "without control tokens", stacklevel=2)
        self.params["names"] = found
        self.params["user_groups"] = {str(r.user): str(r.group) for r in records
                                      if getattr(r, "user", None) is not None and getattr(r, "group", None) is not None}

    def name_of(self, condition: conditioning.Condition) -> str | None:
        """The request's person: its user if it has tokens, else its group, else the user's training group."""
        name = self._match(condition)
        if name is None and (who := condition.person()) is not None:
            warnings.warn(f"{who} has no control tokens in this model: using the base policy", stacklevel=3)
        return name

    def unmatched(self, condition: conditioning.Condition) -> str | None:
        return condition.person() if self._match(condition) is None else None

    def _match(self, condition: conditioning.Condition) -> str | None:
        names = set(self.params["names"])
        user, group = condition.user, condition.group
        wanted = group if group is not None else self.params["user_groups"].get(user) if user is not None else None
        return next((key for key in (user, wanted) if key is not None and key in names), None)

    def prompt(self, prompt: Any, condition: conditioning.Condition) -> Any:
        name = self.name_of(condition)
        if name is None:
            return prompt
        tokens = "".join(token_names(name, self.params["tokens"]))
        if self.params["placement"] == "statement":
            return self.with_statement(prompt, tokens)
        # "start": before the request's own words (a prefix, as prompt tuning places it), inside the user turn
        if isinstance(prompt, str):
            head = self.prefix if self.prefix.strip() and prompt.startswith(self.prefix) else ""
            return f"{head}{tokens} {prompt[len(head):]}"
        messages = [dict(m) for m in prompt]
        for m in messages:
            if m.get("role") == "user":
                m["content"] = f"{tokens} {m.get('content', '')}"
                return messages
        return [{"role": "user", "content": tokens}, *messages]

    # --- the tokens in the tokenizer and the model
    def prepare(self, tokenizer: Any, model: Any) -> None:
        """Add every person's tokens to the tokenizer (as special tokens, so text containing them tokenizes
        them whole) and grow the model's embeddings; new rows start at the mean embedding."""
        if not self.params["names"]:
            raise ConfigError("control_tokens: not fitted (no names); call fit(records) first")
        wanted = [t for n in self.params["names"] for t in token_names(n, self.params["tokens"])]
        tokenizer.add_tokens(wanted, special_tokens=True)
        conditioning.grow_embeddings(tokenizer, model)
        self.params["token_ids"] = [int(i) for i in tokenizer.convert_tokens_to_ids(wanted)]

    def install(self, model: Any, init: torch.Tensor | None = None, *, training: bool = True) -> None:
        """Hook the table into the model's input embeddings; in training with `freeze_policy` only the table
        trains (`init`: the table's start, by default the model's rows of the tokens)."""
        ids = self.params["token_ids"]
        if not ids:
            raise ConfigError("control_tokens: no token ids; the scheme was not prepared with a tokenizer")
        emb = model.get_input_embeddings()
        if init is None:
            init = emb.weight.detach()[torch.as_tensor(ids, device=emb.weight.device)]
        if training and self.params["freeze_policy"]:
            model.requires_grad_(False)
        self.table = ControlTable(ids, init, emb.weight.shape[0]).to(emb.weight.device)
        self._handle = emb.register_forward_hook(_hook(self.table))
        model.add_module(ATTR, self.table)  # so the loop optimizes and checkpoints it

    def detach(self, model: Any) -> None:
        """Take the table off the model before it is saved (the table is saved on its own)."""
        if hasattr(model, ATTR):
            delattr(model, ATTR)

    def save(self, model_dir: str | Path) -> None:
        from safetensors.torch import save_file

        if self.table is None:
            raise ConfigError("control_tokens: nothing to save (not installed)")
        tmp = Path(model_dir) / (WEIGHTS + ".tmp")
        save_file({"embeddings": self.table.embeddings.detach().cpu().contiguous()}, str(tmp))
        tmp.replace(Path(model_dir) / WEIGHTS)

    def attach(self, model: Any, model_dir: Path) -> Any:
        from safetensors.torch import load_file

        path = Path(model_dir) / WEIGHTS
        if not path.is_file():
            raise ConfigError(f"{model_dir}: conditioned by control tokens but {WEIGHTS} is missing")
        table = load_file(str(path))["embeddings"]
        if table.shape[0] != len(self.params["token_ids"]):
            raise ConfigError(f"{path}: {table.shape[0]} token embeddings for {len(self.params['token_ids'])} tokens")
        self.install(model, init=table, training=False)
        self.table.requires_grad_(False)
        self.detach(model)  # decoding only: the hook stays, the table is not a module of the model
        return model
