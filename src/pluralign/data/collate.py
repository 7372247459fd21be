"""Collators: lists of records → dicts of tensors for causal-LM log-probs.

Every batch holds ``input_ids`` [N, T] (long), ``attention_mask`` [N, T] and ``completion_mask`` [N, T]
(1 on the completion tokens that are predicted; see `pluralign.data.tokenize`). Padding is on the right by
default; with ``padding_side="left"`` `pluralign.models.logprobs` derives position ids from the attention
mask, so both sides give the same log-probs.

With ``packing=True`` the N sequences are laid end to end without padding: ``input_ids``,
``completion_mask`` and ``position_ids`` are [1, total], positions restart at 0 for every sequence, and
``seq_lengths`` [N] / ``cu_seqlens`` [N + 1] (int32, cumulative) say where each one lies. There is no
``attention_mask``: the model isolates the sequences from the restarting position ids (transformers'
packed-sequence masks for sdpa/eager, ``cu_seqlens`` for flash-attention); `pluralign.models.logprobs`
sums per sequence and tests check packed == padded.

Extra keys per collator:
  PairwiseCollator  — N = 2B: rows 0..B-1 are the chosen completions, B..2B-1 the rejected ones;
                      ``margin`` [B] when any record has one (0.0 where missing).
  UnpairedCollator  — ``labels`` [B] bool; with ``kl=True`` a second, mismatched batch under ``kl_*`` keys
                      in which prompt i is paired with the response of record i-1 (cyclically), the
                      baseline of KTO (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic
                      Optimization"), as TRL builds it. With B = 1 the "mismatched" pair is the record itself.
  ListwiseCollator  — N = B·K rows (row b·K + k is response k of record b, K the longest list in the batch),
                      ``scores`` [B, K] (higher is better; ranks r become scores −r) and ``list_mask`` [B, K]
                      (False on the filler rows of shorter lists, which are two-token dummies).
  SFTCollator       — one row per (prompt, completion): a tuple, a mapping with "prompt"/"completion", a
                      pairwise record (its chosen response) or a record with a ``response``.

Who and what (every collator, per record): with ``who=True``, ``user`` and ``group`` (lists of str or
None, as recorded; lists, not tensors, so only consumers that expect them should ask), and with
``objectives`` set (the objective names, in order) ``objective`` [B] long (the index of the record's
``objective``, -1 when it has none) and ``signs`` [B, K] float: per objective, +1 when the record's
preference holds for it, -1 when it is reversed, 0 when the objective says nothing about this record. A
record tagged with an objective has +1 there and 0 elsewhere; a record whose ``meta["signs"]`` maps
objectives to ±1/0 (one pair judged on every objective, as RACO trains on) gives them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from pluralign.data.tokenize import Encoded, Text, Truncation, check_options, encode_pair, pad_token_id
from pluralign.errors import ConfigError, PluralignError

Batch = dict[str, torch.Tensor]


def pad_rows(rows: Sequence[Encoded], pad_id: int, padding_side: Literal["left", "right"] = "right",
             pad_to_multiple_of: int | None = None) -> Batch:
    """Stack rows into [N, T] tensors padded on one side."""
    width = max(len(r) for r in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        input_ids[i, span] = torch.tensor(row.input_ids)
        attention_mask[i, span] = 1
        completion_mask[i, span] = torch.tensor(row.completion_mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


def pack_rows(rows: Sequence[Encoded]) -> Batch:
    """Lay rows end to end in one [1, total] sequence with restarting position ids."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    cu_seqlens = torch.zeros(len(rows) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.cumsum(lengths, 0)
    return {
        "input_ids": torch.tensor([t for r in rows for t in r.input_ids], dtype=torch.long)[None],
        "completion_mask": torch.tensor([m for r in rows for m in r.completion_mask], dtype=torch.long)[None],
        "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()])[None],
        "seq_lengths": lengths,
        "cu_seqlens": cu_seqlens,
    }


@dataclass
class _Collator:
    """Shared options: how to tokenize (see `encode_pair`) and how to lay rows out."""

    tokenizer: Any
    max_length: int = 512
    max_prompt_length: int | None = None
    padding_side: Literal["left", "right"] = "right"
    truncation: Truncation = "keep_end"
    packing: bool = False
    pad_to_multiple_of: int | None = None
    chat_template: str = "auto"
    objectives: Sequence[str] | None = None
    who: bool = False  # add the records' user and group lists to the batch

    def __post_init__(self) -> None:
        # Settings every row would fail alike: said once here, not as a data problem on each row of each file.
        check_options(self.max_length, self.max_prompt_length, self.truncation)
        if self.padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    def annotate(self, batch: Batch, records: Sequence[Any]) -> Batch:
        """Add who gave each record and what it is about (see the module doc)."""
        if self.who:
            batch["user"] = [getattr(r, "user", None) for r in records]
            batch["group"] = [getattr(r, "group", None) for r in records]
        if self.objectives:
            batch["objective"], batch["signs"] = objective_tensors(records, self.objectives)
            if any("weights" in (getattr(r, "meta", None) or {}) for r in records):
                batch["weights"] = example_weights(records, self.objectives)
        return batch

    def encode(self, prompt: Text, completion: Text) -> Encoded:
        return encode_pair(self.tokenizer, prompt, completion, self.max_length, self.max_prompt_length,
                           self.truncation, self.chat_template)

    def assemble(self, rows: Sequence[Encoded]) -> Batch:
        if self.packing:
            return pack_rows(rows)
        return pad_rows(rows, pad_token_id(self.tokenizer), self.padding_side, self.pad_to_multiple_of)


@dataclass
class PairwiseCollator(_Collator):
    """Pairwise records → one [2B, T] batch: chosen rows, then rejected rows (one forward for both)."""

    def __call__(self, records: Sequence[Any]) -> Batch:
        rows = [self.encode(r.prompt, r.chosen) for r in records]
        rows += [self.encode(r.prompt, r.rejected) for r in records]
        batch = self.assemble(rows)
        margins = [r.margin for r in records]
        if any(m is not None for m in margins):
            batch["margin"] = torch.tensor([0.0 if m is None else float(m) for m in margins])
        return self.annotate(batch, records)


@dataclass
class UnpairedCollator(_Collator):
    """Binary records → rows + ``labels``, and (``kl=True``) the mismatched ``kl_*`` rows of KTO."""

    kl: bool = True

    def __call__(self, records: Sequence[Any]) -> Batch:
        batch = self.assemble([self.encode(r.prompt, r.response) for r in records])
        batch["labels"] = torch.tensor([bool(r.label) for r in records], dtype=torch.bool)
        if self.kl:
            shifted = [records[i - 1].response for i in range(len(records))]  # i = 0 takes the last one
            mismatched = self.assemble([self.encode(r.prompt, y) for r, y in zip(records, shifted, strict=True)])
            batch.update({f"kl_{k}": v for k, v in mismatched.items()})
        return self.annotate(batch, records)


@dataclass
class ListwiseCollator(_Collator):
    """Ranked records → B·K rows + ``scores`` [B, K] + ``list_mask`` [B, K]."""

    def __call__(self, records: Sequence[Any]) -> Batch:
        k = max(len(r.responses) for r in records)
        filler = self._filler()
        rows, scores, mask = [], [], []
        for r in records:
            rows += [self.encode(r.prompt, y) for y in r.responses] + [filler] * (k - len(r.responses))
            scores.append(list_scores(r) + [0.0] * (k - len(r.responses)))
            mask.append([True] * len(r.responses) + [False] * (k - len(r.responses)))
        batch = self.assemble(rows)
        batch["scores"] = torch.tensor(scores, dtype=torch.float32)
        batch["list_mask"] = torch.tensor(mask, dtype=torch.bool)
        return self.annotate(batch, records)

    def _filler(self) -> Encoded:
        # Two tokens with one predicted: cheap, and its log-prob is finite (no 0-token division downstream).
        pad = pad_token_id(self.tokenizer)
        return Encoded(input_ids=[pad, pad], completion_mask=[0, 1])


def objective_tensors(records: Sequence[Any], objectives: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(``objective`` [B] long, ``signs`` [B, K] float) of records (see the module doc)."""
    index = {name: k for k, name in enumerate(objectives)}
    ids = torch.full((len(records),), -1, dtype=torch.long)
    signs = torch.zeros(len(records), len(objectives))
    for b, r in enumerate(records):
        objective = getattr(r, "objective", None)
        given = (getattr(r, "meta", None) or {}).get("signs")
        if objective is not None:
            if objective not in index:
                raise PluralignError(f"record objective {objective!r} is not one of the objectives {list(objectives)}")
            ids[b] = index[objective]
        if given is not None:
            issue = signs_issue(given, objectives)
            if issue:
                raise PluralignError(f"meta.signs: {issue}")
            for name, value in given.items():
                signs[b, index[name]] = float(value)
        elif objective is not None:
            signs[b, ids[b]] = 1.0
    return ids, signs


def signs_issue(given: Any, objectives: Sequence[str]) -> str | None:
    """What is wrong with a record's ``meta.signs`` (a {objective: -1, 0 or 1} mapping over `objectives`), or
    None. The data loader calls it too, to name the file and record (`multiobjective.check_records`)."""
    if isinstance(given, Mapping) and all(name in objectives and v in (-1, 0, 1) for name, v in given.items()):
        return None
    return f"expected {{objective: -1, 0 or 1}} over {list(objectives)}, got {given}"


def example_weights(records: Sequence[Any], objectives: Sequence[str]) -> torch.Tensor:
    """[B, K] objective weights of each record's ``meta.weights`` (on the simplex); a zero row for a record
    that states none (the run's weights apply to it)."""
    from pluralign.conditioning import weights_of

    out = torch.zeros(len(records), len(objectives))
    for b, r in enumerate(records):
        given = (getattr(r, "meta", None) or {}).get("weights")
        if given is not None:
            out[b] = torch.as_tensor(weights_of(given, objectives, "meta.weights"), dtype=torch.float32)
    return out


def list_scores(record: Any) -> list[float]:
    """A ranked record's scores, higher is better: its ``scores``, else minus its ``ranks``."""
    if record.scores is not None:
        return [float(s) for s in record.scores]
    if record.ranks is not None:
        return [-float(r) for r in record.ranks]
    raise PluralignError("a ranked record needs 'scores' or 'ranks'")


@dataclass
class SFTCollator(_Collator):
    """(prompt, completion) pairs → rows for supervised fine-tuning on the completion tokens."""

    def __call__(self, records: Sequence[Any]) -> Batch:
        return self.annotate(self.assemble([self.encode(*sft_pair(r)) for r in records]), records)


def sft_pair(record: Any) -> tuple[Text, Text]:
    """The (prompt, completion) to imitate in a record (see the module doc for the accepted forms)."""
    if isinstance(record, tuple) and len(record) == 2:
        return record
    if isinstance(record, Mapping):
        return record["prompt"], record["completion"]
    if hasattr(record, "chosen"):
        return record.prompt, record.chosen
    if hasattr(record, "response"):
        return record.prompt, record.response
    raise PluralignError(f"cannot take a (prompt, completion) pair from a {type(record).__name__}")
