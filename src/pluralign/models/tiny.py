"""Tiny local models and tokenizers, built without downloading anything.

The sandbox trains its base model from these, and the tests build throwaway models with them. They are
ordinary `transformers` objects: saved with `save_pretrained`, they load through `pluralign.models.load`
exactly like a hub checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pluralign.seeding import seeded

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def word_tokenizer(words: Iterable[str], *, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A whitespace/punctuation word-level tokenizer over a fixed vocabulary (ids follow `words` order
    after the four special tokens), so every sandbox word is one token."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    return _wrap(tok, chat_template)


def bpe_tokenizer(corpus: Iterable[str], vocab_size: int = 300, *, chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`. Byte-level BPE merges across word boundaries
    (e.g. 'Answer:' + ' hello'), which is what the prompt/completion boundary tests need."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return _wrap(tok, chat_template)


def _wrap(tok: Tokenizer, chat_template: str | None) -> PreTrainedTokenizerFast:
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    if chat_template:
        fast.chat_template = chat_template
    return fast


def tiny_llama(vocab_size: int, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
               intermediate_size: int | None = None, max_position_embeddings: int = 256, seed: int = 0,
               pad_token_id: int = 0, bos_token_id: int = 1, eos_token_id: int = 2, tie_word_embeddings: bool = False) -> LlamaForCausalLM:
    """A small Llama-style causal LM with deterministic initial weights for `seed`."""
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
        eos_token_id=eos_token_id, tie_word_embeddings=tie_word_embeddings,
    )
    return _seeded(LlamaForCausalLM, config, seed)


def tiny_gpt2(vocab_size: int, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
              max_position_embeddings: int = 256, seed: int = 0, pad_token_id: int = 0, bos_token_id: int = 1,
              eos_token_id: int = 2) -> GPT2LMHeadModel:
    """A small GPT-2-style causal LM (learned absolute positions, tied embeddings)."""
    config = GPT2Config(
        vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads,
        n_positions=max_position_embeddings, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
    return _seeded(GPT2LMHeadModel, config, seed)


def tiny_qwen2(vocab_size: int, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
               num_kv_heads: int = 2, max_position_embeddings: int = 256, seed: int = 0, pad_token_id: int = 0,
               bos_token_id: int = 1, eos_token_id: int = 2) -> Any:
    """A small Qwen2-style causal LM: biased q/k/v projections and grouped-query attention (fewer key/value
    heads than query heads), tied embeddings."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, tie_word_embeddings=True,
    )
    return _seeded(Qwen2ForCausalLM, config, seed)


def _seeded(model_class: type, config: Any, seed: int) -> Any:
    """`model_class(config)` with initial weights drawn from `seed`, leaving the global RNG as it was."""
    with seeded(seed):
        return model_class(config)
