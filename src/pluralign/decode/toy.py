"""Small local models for decoding tests, benchmarks and the fallback when the sandbox is absent:
a word-level tokenizer over a fixed vocabulary and tiny Llama policies / reward models built from
`pluralign.models.tiny` (nothing downloaded)."""

from __future__ import annotations

from typing import Any

import torch

from pluralign.models.tiny import tiny_llama, word_tokenizer
from pluralign.seeding import seeded

WORDS = ("the a cat dog sat ran on mat rug big small red blue happy sad very not and is was good bad "
         "quick slow bird fish sun moon tree hill river stone . , ? !").split()


def toy_tokenizer(words: tuple[str, ...] | list[str] = WORDS) -> Any:
    return word_tokenizer(words)


def toy_lm(tokenizer: Any, *, seed: int = 0, hidden_size: int = 32, num_layers: int = 2, scale: float = 1.0) -> Any:
    """A tiny random causal LM; `scale` multiplies the output layer so its next-token distributions are
    more (scale > 1) or less peaked. In eval mode."""
    model = tiny_llama(len(tokenizer), hidden_size=hidden_size, num_layers=num_layers, num_heads=4, seed=seed)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model.eval()


def toy_reward_model(tokenizer: Any, *, seed: int = 1, hidden_size: int = 32, num_labels: int = 1) -> Any:
    """A tiny Llama sequence classifier (reads the last token's hidden state) used as a reward model."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id, num_labels=num_labels)
    with seeded(seed):
        return LlamaForSequenceClassification(config).eval()
