"""Prompt/completion tokenization: the boundary on tokens, chat templates, EOS, truncation, pad tokens."""

from __future__ import annotations

import copy

import pytest

from pluralign.data.tokenize import encode_pair, pad_token_id
from pluralign.errors import ConfigError, PluralignError

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def split(tokenizer, enc):
    """(prompt ids, completion ids) of an encoding, by its mask."""
    prompt = [t for t, m in zip(enc.input_ids, enc.completion_mask, strict=True) if not m]
    completion = [t for t, m in zip(enc.input_ids, enc.completion_mask, strict=True) if m]
    assert enc.completion_mask == [0] * len(prompt) + [1] * len(completion)  # one contiguous completion
    return prompt, completion


def test_bpe_merge_across_boundary_masks_exactly_the_completion(bpe_tokenizer):
    prompt, completion = "Answer: ", "hello world."
    prompt_ids = bpe_tokenizer.encode(prompt)
    full_ids = bpe_tokenizer.encode(prompt + completion)
    assert full_ids[: len(prompt_ids)] != prompt_ids  # the merge ' ' + 'hello' really spans the boundary
    enc = encode_pair(bpe_tokenizer, prompt, completion, max_length=64)
    p, c = split(bpe_tokenizer, enc)
    assert p == prompt_ids  # the prompt keeps the tokens generation conditions on
    assert c[-1] == bpe_tokenizer.eos_token_id
    assert bpe_tokenizer.decode(c[:-1]) == completion
    assert bpe_tokenizer.decode(p) == prompt


def test_every_split_point_decodes_back_to_prompt_and_completion(bpe_tokenizer):
    text = "Question: what is the cat doing? Answer: the cat sat on the mat."  # from the BPE's corpus
    merged = 0
    for i in range(1, len(text)):
        prompt, completion = text[:i], text[i:]
        enc = encode_pair(bpe_tokenizer, prompt, completion, max_length=128)
        p, c = split(bpe_tokenizer, enc)
        assert bpe_tokenizer.decode(p) == prompt
        assert bpe_tokenizer.decode(c[:-1]) == completion and c[-1] == bpe_tokenizer.eos_token_id
        merged += bpe_tokenizer.encode(text)[: len(p)] != p
    assert merged > 5  # many split points go through the merged-boundary path


def test_natural_tokenization_is_kept_when_the_prompt_is_a_prefix(bpe_tokenizer):
    enc = encode_pair(bpe_tokenizer, "Answer:", " hello world.", max_length=64)
    assert enc.input_ids == bpe_tokenizer.encode("Answer: hello world.") + [bpe_tokenizer.eos_token_id]


def test_word_tokenizer_mask_and_single_eos(tiny_word_tokenizer):
    tok = tiny_word_tokenizer
    enc = encode_pair(tok, "what is the cat?", "the cat sat", max_length=32)
    assert tok.convert_ids_to_tokens(enc.input_ids) == ["what", "is", "the", "cat", "?", "the", "cat", "sat", "</s>"]
    assert enc.completion_mask == [0] * 5 + [1] * 4 and not enc.truncated
    again = encode_pair(tok, "what", "yes </s>", max_length=32)  # an EOS already there is not doubled
    assert tok.convert_ids_to_tokens(again.input_ids) == ["what", "yes", "</s>"]


def test_empty_prompt_starts_from_bos(tiny_word_tokenizer):
    enc = encode_pair(tiny_word_tokenizer, "", "hello", max_length=8)
    assert enc.input_ids == [tiny_word_tokenizer.bos_token_id, tiny_word_tokenizer.convert_tokens_to_ids("hello"),
                             tiny_word_tokenizer.eos_token_id]
    assert enc.completion_mask == [0, 1, 1]


def test_chat_template_prompt_and_reply(bpe_tokenizer):
    tok = copy.deepcopy(bpe_tokenizer)
    tok.chat_template = CHAT_TEMPLATE
    messages = [{"role": "user", "content": "what is the cat doing?"}]
    enc = encode_pair(tok, messages, "the cat sat.", max_length=128)
    p, c = split(tok, enc)
    assert tok.decode(p) == "<|user|>what is the cat doing?<|end|>\n<|assistant|>"
    assert tok.decode(c) == "the cat sat.<|end|>\n"  # the template's end of turn ends it: no EOS added
    as_messages = encode_pair(tok, messages, [{"role": "assistant", "content": "the cat sat."}], max_length=128)
    assert as_messages == enc


def test_messages_without_chat_template_or_mixed_forms_are_errors(bpe_tokenizer):
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(PluralignError, match="no chat template"):
        encode_pair(bpe_tokenizer, messages, "yes", max_length=32)
    with pytest.raises(PluralignError, match="plain text"):
        encode_pair(bpe_tokenizer, "hi", messages, max_length=32)


def test_long_prompt_keeps_its_end_and_completion_is_cut(tiny_word_tokenizer):
    tok = tiny_word_tokenizer
    prompt = "a cat sat on the mat under the rug what is here ?"  # 12 tokens
    enc = encode_pair(tok, prompt, "the big red dog was happy", max_length=10, max_prompt_length=4)
    assert tok.convert_ids_to_tokens(enc.input_ids) == ["what", "is", "here", "?", "the", "big", "red", "dog", "was", "happy"]
    assert enc.completion_mask == [0] * 4 + [1] * 6 and enc.truncated  # EOS cut away with the tail
    start = encode_pair(tok, prompt, "yes", max_length=10, max_prompt_length=4, truncation="keep_start")
    assert tok.convert_ids_to_tokens(start.input_ids) == ["a", "cat", "sat", "on", "yes", "</s>"]


def test_bos_adding_tokenizer_keeps_one_bos_through_truncation(tiny_word_tokenizer):
    from tokenizers import processors

    tok = copy.deepcopy(tiny_word_tokenizer)
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    enc = encode_pair(tok, "a cat sat on the mat under the rug what is here ?", "the cat", max_length=8,
                      max_prompt_length=4)
    assert tok.convert_ids_to_tokens(enc.input_ids) == ["<s>", "is", "here", "?", "the", "cat", "</s>"]
    assert enc.completion_mask == [0, 0, 0, 0, 1, 1, 1]


def test_prompt_longer_than_max_length_never_gives_an_empty_completion(tiny_word_tokenizer):
    prompt = "a cat sat on the mat under the rug what is here ?"
    with pytest.raises(PluralignError, match="no room for the completion"):
        encode_pair(tiny_word_tokenizer, prompt, "yes", max_length=8)
    with pytest.raises(PluralignError, match="truncation='error'"):
        encode_pair(tiny_word_tokenizer, "what", "the big red dog", max_length=4, truncation="error")
    fits = encode_pair(tiny_word_tokenizer, "what", "yes", max_length=4, truncation="error")
    assert not fits.truncated


@pytest.mark.parametrize("kwargs", [{"max_length": 1}, {"max_length": 8, "max_prompt_length": 8},
                                    {"max_length": 8, "truncation": "middle"}])
def test_bad_options_are_config_errors(tiny_word_tokenizer, kwargs):
    with pytest.raises(ConfigError):
        encode_pair(tiny_word_tokenizer, "what", "yes", **kwargs)


def test_tokenizer_without_pad_token_pads_with_eos(tiny_word_tokenizer):
    tok = copy.deepcopy(tiny_word_tokenizer)
    tok.pad_token = None
    assert tok.pad_token_id is None and pad_token_id(tok) == tok.eos_token_id
    tok.eos_token = None
    assert pad_token_id(tok) == 0


def test_a_chat_turn_marker_named_bos_is_not_kept_before_a_cut_prompt(chat_tokenizer):
    # SmolLM2's tokenizer names its turn marker <|im_start|> as BOS and never prepends it: here <s> plays it.
    tok = copy.deepcopy(chat_tokenizer)
    tok.chat_template = ("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                         "{% if add_generation_prompt %}<s> assistant :{% endif %}")
    assert tok.encode("the cat", add_special_tokens=True)[0] != tok.bos_token_id == tok.convert_tokens_to_ids("<s>")
    prompt = [{"role": "user", "content": "a cat sat on the mat under the rug what is here ?"}]
    enc = encode_pair(tok, prompt, "the cat", max_length=12, max_prompt_length=5)
    kept = tok.convert_ids_to_tokens(enc.input_ids[:5])
    assert kept == ["?", "</s>", "<s>", "assistant", ":"]  # was ['<s>', '</s>', '<s>', 'assistant', ':']: a bogus turn
