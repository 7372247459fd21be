"""Toy model, data and step functions shared by the loop/state tests (not a test module)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pluralign.models.tiny import tiny_llama

VOCAB = 24


def make_model(seed: int = 0):
    return tiny_llama(VOCAB, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seed=seed)


def make_data(n: int = 32, length: int = 8, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (length,), generator=gen) for _ in range(n)]


def collate(items: list[torch.Tensor]) -> dict:
    return {"input_ids": torch.stack(items)}


def nll_step(model, batch):
    """Per-sequence mean next-token NLL; fixed-length rows, so no padding is involved."""
    ids = batch["input_ids"]
    logits = model(input_ids=ids).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    nll = nll.view(ids.shape[0], -1).mean(1)
    return nll, {"ppl": nll.detach().exp()}


def noisy_step(model, batch):
    """`nll_step` times a random factor drawn from torch's global RNG: resume is only exact when the
    RNG state is checkpointed too."""
    nll, metrics = nll_step(model, batch)
    return nll * (1 + 0.1 * torch.rand(nll.shape[0])), metrics


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- recipe fixtures

WORDS = ["good", "bad", "cat", "dog", "sun", "rain", "yes", "no", "tell", "me", "about", "the", "a", "is", "very"]


def make_model_dir(path, seed: int = 0):
    """A tiny Llama + word tokenizer saved like a hub checkpoint."""
    from pluralign.models.tiny import tiny_llama, word_tokenizer

    tok = word_tokenizer(WORDS)
    model = tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_pairs(path, n: int = 16, seed: int = 0):
    """Pairwise JSONL: 'good' answers preferred to 'bad' ones, of varied lengths."""
    import json
    import random

    rng = random.Random(seed)
    nouns = ["cat", "dog", "sun", "rain"]
    with open(path, "w") as f:
        for i in range(n):
            noun = nouns[i % 4]
            k = rng.randint(1, 3)
            f.write(json.dumps({"prompt": f"tell me about the {noun}",
                                "chosen": " ".join(["the", noun, "is"] + ["very"] * k + ["good"]),
                                "rejected": " ".join(["the", noun, "is"] + ["very"] * (3 - k) + ["bad"])}) + "\n")
    return path


def write_ranked(path, n: int = 8, seed: int = 0):
    """Ranked JSONL: lists of 2-4 responses, more 'good' scores higher."""
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            noun = ["cat", "dog", "sun", "rain"][i % 4]
            k = rng.randint(2, 4)
            responses = [" ".join(["the", noun, "is"] + ["good"] * j + ["bad"] * (k - j)) for j in range(k)]
            f.write(json.dumps({"prompt": f"tell me about the {noun}", "responses": responses,
                                "scores": [float(j) for j in range(k)]}) + "\n")
    return path
