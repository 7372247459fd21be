"""Collators: row order, padding sides, extra keys, packing."""

from __future__ import annotations

import copy

import pytest
import torch

from pluralign.data.collate import (
    ListwiseCollator,
    PairwiseCollator,
    SFTCollator,
    UnpairedCollator,
    pack_rows,
    pad_rows,
)
from pluralign.data.records import Binary, Pairwise, Ranked
from pluralign.data.tokenize import Encoded
from pluralign.errors import ConfigError

PAIRS = [
    Pairwise("what is the cat ?", "the cat sat on the mat", "no", margin=1.5),
    Pairwise("hello", "hello world", "the dog ran under the rug"),
]


def rows_text(tok, batch, key="input_ids", mask_key="attention_mask"):
    """The attended tokens of each row, as text."""
    return [tok.decode(ids[m.bool()]) for ids, m in zip(batch[key], batch[mask_key], strict=True)]


def completions(tok, batch, prefix=""):
    return [tok.decode(ids[m.bool()], skip_special_tokens=True)
            for ids, m in zip(batch[prefix + "input_ids"], batch[prefix + "completion_mask"], strict=True)]


def test_pairwise_rows_are_chosen_then_rejected(tiny_word_tokenizer):
    batch = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    assert batch["input_ids"].shape[0] == 4
    assert completions(tiny_word_tokenizer, batch) == ["the cat sat on the mat", "hello world", "no",
                                                       "the dog ran under the rug"]
    assert rows_text(tiny_word_tokenizer, batch)[2] == "what is the cat? no </s>"
    assert batch["margin"].tolist() == [1.5, 0.0]
    assert "margin" not in PairwiseCollator(tiny_word_tokenizer)([PAIRS[1]])


def test_left_and_right_padding_hold_the_same_rows(tiny_word_tokenizer):
    right = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    left = PairwiseCollator(tiny_word_tokenizer, padding_side="left")(PAIRS)
    assert rows_text(tiny_word_tokenizer, left) == rows_text(tiny_word_tokenizer, right)
    lengths = right["attention_mask"].sum(-1)
    width = right["input_ids"].shape[1]
    for i, n in enumerate(lengths.tolist()):
        assert right["attention_mask"][i, :n].all() and not right["attention_mask"][i, n:].any()
        assert left["attention_mask"][i, width - n:].all() and not left["attention_mask"][i, : width - n].any()
    assert (right["input_ids"][right["attention_mask"] == 0] == tiny_word_tokenizer.pad_token_id).all()
    with pytest.raises(ConfigError):
        PairwiseCollator(tiny_word_tokenizer, padding_side="middle")


@pytest.mark.parametrize("options", [{"max_length": 8, "max_prompt_length": 8}, {"max_length": 1},
                                     {"truncation": "middle"}])
@pytest.mark.parametrize("collator", [PairwiseCollator, UnpairedCollator, ListwiseCollator, SFTCollator])
def test_tokenization_settings_are_refused_when_the_collator_is_made(tiny_word_tokenizer, collator, options):
    # Checked only per row, a max_prompt_length over max_length was reported as a problem of every data row
    # ("pairs.jsonl:5: field 'prompt': max_prompt_length must be in [1, max_length=96) ...") instead of once.
    with pytest.raises(ConfigError) as e:
        collator(tiny_word_tokenizer, **options)
    assert e.value.field in options


def test_tokenizer_without_pad_token_pads_with_eos(tiny_word_tokenizer):
    tok = copy.deepcopy(tiny_word_tokenizer)
    tok.pad_token = None
    batch = PairwiseCollator(tok)(PAIRS)
    padding = batch["attention_mask"] == 0
    assert padding.any() and (batch["input_ids"][padding] == tok.eos_token_id).all()
    assert completions(tok, batch) == completions(tiny_word_tokenizer, PairwiseCollator(tiny_word_tokenizer)(PAIRS))


def test_pad_to_multiple_of():
    batch = pad_rows([Encoded([5, 6, 7], [0, 1, 1])], pad_id=0, pad_to_multiple_of=8)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0, 0, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 1, 1, 0, 0, 0, 0, 0]]


def test_unpaired_labels_and_mismatched_kl_rows(tiny_word_tokenizer):
    records = [Binary("what is the cat ?", "the cat sat", True), Binary("hello", "hello world", False),
               Binary("why", "the dog ran", True)]
    batch = UnpairedCollator(tiny_word_tokenizer)(records)
    assert batch["labels"].tolist() == [True, False, True]
    assert completions(tiny_word_tokenizer, batch) == ["the cat sat", "hello world", "the dog ran"]
    # KL rows: prompt i with the response of record i-1 (cyclically)
    assert completions(tiny_word_tokenizer, batch, "kl_") == ["the dog ran", "the cat sat", "hello world"]
    assert rows_text(tiny_word_tokenizer, batch, "kl_input_ids", "kl_attention_mask")[1] == "hello the cat sat </s>"
    assert "kl_input_ids" not in UnpairedCollator(tiny_word_tokenizer, kl=False)(records)


def test_listwise_rows_scores_and_mask(tiny_word_tokenizer):
    records = [Ranked("what", ["yes", "no", "the cat"], scores=[0.5, -1.0, 2.0]),
               Ranked("why", ["good", "bad"], ranks=[2, 1])]
    batch = ListwiseCollator(tiny_word_tokenizer)(records)
    assert batch["input_ids"].shape[0] == 6
    assert batch["scores"].tolist() == [[0.5, -1.0, 2.0], [-2.0, -1.0, 0.0]]
    assert batch["list_mask"].tolist() == [[True, True, True], [True, True, False]]
    texts = completions(tiny_word_tokenizer, batch)
    assert texts[:5] == ["yes", "no", "the cat", "good", "bad"]
    assert batch["completion_mask"][5].sum() == 1  # the filler row predicts one token: finite, never empty


def test_sft_accepts_pairs_mappings_and_records(tiny_word_tokenizer):
    collate = SFTCollator(tiny_word_tokenizer)
    batch = collate([("what", "yes"), {"prompt": "why", "completion": "no"}, PAIRS[1], Binary("a", "the cat", True)])
    assert completions(tiny_word_tokenizer, batch) == ["yes", "no", "hello world", "the cat"]


def test_packing_lays_rows_end_to_end(tiny_word_tokenizer):
    padded = PairwiseCollator(tiny_word_tokenizer)(PAIRS)
    packed = PairwiseCollator(tiny_word_tokenizer, packing=True)(PAIRS)
    lengths = padded["attention_mask"].sum(-1)
    assert packed["seq_lengths"].tolist() == lengths.tolist()
    assert packed["cu_seqlens"].tolist() == [0, *torch.cumsum(lengths, 0).tolist()]
    assert packed["cu_seqlens"].dtype == torch.int32 and "attention_mask" not in packed
    mask = padded["attention_mask"].bool()
    assert packed["input_ids"][0].tolist() == padded["input_ids"][mask].tolist()
    assert packed["completion_mask"][0].tolist() == padded["completion_mask"][mask].tolist()
    expected_positions = torch.cat([torch.arange(n) for n in lengths.tolist()])
    assert packed["position_ids"][0].tolist() == expected_positions.tolist()


def test_pack_rows_shapes():
    packed = pack_rows([Encoded([1, 2], [0, 1]), Encoded([3, 4, 5], [0, 0, 1])])
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert packed["position_ids"].tolist() == [[0, 1, 0, 1, 2]]
    assert packed["completion_mask"].tolist() == [[0, 1, 0, 0, 1]]
