"""A reward model on SmolLM2-135M-Instruct (the cached copy; skipped without it): its chat template renders
prompt + response alike for training and scoring, the score of a pair does not depend on its batch (pad
token = EOS = <|im_end|>), and an over-long chat prompt loses its start, not the response."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
SMOL = Path.home() / ".cache" / "pluralign" / "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def rm():
    if not (SMOL / "config.json").exists():
        pytest.skip(f"no SmolLM2 at {SMOL}")
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.reward import BTRewardModel
    from pluralign.reward.base import TextEncoder

    encoder = TextEncoder(load_model(str(SMOL)), load_tokenizer(str(SMOL)), trainable=False, max_length=64)
    return BTRewardModel(encoder, seed=0).eval()


PROMPTS = [[{"role": "user", "content": "Name a colour."}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]]
ANSWERS = ["Blue.", "It is four, because two and two make four."]


def test_training_batches_and_scoring_see_the_templated_conversation(rm):
    from pluralign.reward.data import pair_collate

    tok = rm.encoder.tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2 pads with <|im_end|>: the mask, not the id, must tell
    items = [{"prompt": p, "chosen": a, "rejected": "No.", "margin": 0.0, "user": -1, "task": 0}
             for p, a in zip(PROMPTS, ANSWERS, strict=True)]
    batch = pair_collate(rm.encoder)(items)
    for row, mask, p, a in zip(batch["input_ids"], batch["attention_mask"], PROMPTS, ANSWERS, strict=False):
        want = tok.apply_chat_template(p + [{"role": "assistant", "content": a}], tokenize=False)
        assert tok.decode(row[mask.bool()]) == want
    with torch.no_grad():
        trained = rm.rewards(rm.encoder(batch["input_ids"], batch["attention_mask"]))[:2]
    torch.testing.assert_close(trained, rm.score(PROMPTS, ANSWERS), atol=1e-4, rtol=1e-4)


def test_a_pair_scores_the_same_alone_and_in_any_batch(rm):
    together = rm.score(PROMPTS + PROMPTS[::-1], ANSWERS + ANSWERS[::-1])
    alone = torch.cat([rm.score([p], [a]) for p, a in zip(PROMPTS, ANSWERS, strict=True)])
    torch.testing.assert_close(together[:2], alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(together[2:], alone.flip(0), atol=1e-4, rtol=1e-4)


def test_an_over_long_chat_prompt_keeps_the_response(rm):
    long = [{"role": "user", "content": "Tell me about gardens. " * 30}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = rm.encoder.tokenize([long], ["Roses and tulips."])
    text = rm.encoder.tokenizer.decode(batch["input_ids"][0])
    assert len(batch["input_ids"][0]) == 64 and text.endswith("<|im_start|>assistant\nRoses and tulips.<|im_end|>\n")
    assert any("max_length=64" in str(w.message) for w in caught)
