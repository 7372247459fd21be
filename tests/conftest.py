"""Shared fixtures: tiny tokenizers and tiny saved models, built locally (nothing is downloaded)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that reaches for the hub fails fast instead of hanging

import pytest  # noqa: E402

from pluralign.models import tiny  # noqa: E402

WORDS = ("the a cat dog sat ran on under mat rug big small red blue happy sad is was here there "
         "yes no hello world answer question what why good bad").split() + list(".,:?!")
BPE_CORPUS = [
    "Question: what is the cat doing? Answer: the cat sat on the mat.",
    "Answer: hello world. Answer: yes. Answer: no.",
    "hello there, the dog ran under the rug and the big red dog was happy.",
] * 20


@pytest.fixture(scope="session")
def tiny_word_tokenizer():
    """Word-level tokenizer over `WORDS` (one token per word; <pad>=0 <s>=1 </s>=2 <unk>=3)."""
    return tiny.word_tokenizer(WORDS)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """Byte-level BPE trained on `BPE_CORPUS`; merges across word boundaries (' hello', ': ')."""
    return tiny.bpe_tokenizer(BPE_CORPUS, vocab_size=400)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_word_tokenizer):
    """A directory with a tiny Llama and its word tokenizer, as `save_pretrained` writes them."""
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny.tiny_llama(len(tiny_word_tokenizer), hidden_size=32, num_heads=2).save_pretrained(path)
    tiny_word_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, bpe_tokenizer):
    """A directory with a tiny GPT-2 and the byte-level BPE tokenizer."""
    path = tmp_path_factory.mktemp("tiny_gpt2")
    tiny.tiny_gpt2(len(bpe_tokenizer), hidden_size=32, num_heads=2).save_pretrained(path)
    bpe_tokenizer.save_pretrained(path)
    return path


# A chat template over plain vocabulary words (the word tokenizer keeps "</s>" whole: it is a special token),
# so tests can render message lists the way an instruct model's template does: role markers, an end-of-turn
# token after every message, and a generation prompt that opens the assistant's turn.
CHAT_WORDS = WORDS + ["system", "user", "assistant"]
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}assistant :{% endif %}")


@pytest.fixture(scope="session")
def chat_tokenizer():
    """Word-level tokenizer over `CHAT_WORDS` with `CHAT_TEMPLATE` as its chat template."""
    return tiny.word_tokenizer(CHAT_WORDS, chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory, chat_tokenizer):
    """A one-layer tiny Llama saved with `chat_tokenizer`: a chat model for the multi-objective recipes."""
    path = tmp_path_factory.mktemp("chat_model")
    tiny.tiny_llama(len(chat_tokenizer), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32).save_pretrained(path)
    chat_tokenizer.save_pretrained(path)
    return path


CHAT_ANSWERS = ["the cat", "the big red cat sat on the mat", "yes", "the dog ran under the rug", "no", "hello world"]


@pytest.fixture(scope="session")
def rated(tmp_path_factory):
    """Rated JSONL over two questions as chat messages: every answer of `CHAT_ANSWERS` rated on
    informativeness (words, up to 4) and conciseness (fewer words), which conflict."""
    import json

    path = tmp_path_factory.mktemp("data") / "rated.jsonl"
    rows = []
    for q in ("what is the cat", "why is the dog sad"):
        for a in CHAT_ANSWERS:
            n = len(a.split())
            rows.append({"prompt": [{"role": "user", "content": q}], "response": a,
                         "ratings": {"informativeness": min(n, 4) / 4, "conciseness": 1 - n / 10}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """A one-layer tiny Llama over a reward-model toy vocabulary (question answer good bad cat dog ok fine)."""
    from pluralign.models.load import save_model
    from pluralign.models.tiny import tiny_llama, word_tokenizer

    tok = word_tokenizer("question answer good bad cat dog ok fine".split())
    path = tmp_path_factory.mktemp("backbone")
    save_model(tiny_llama(len(tok), hidden_size=32, num_layers=1, num_heads=2), tok, path)
    return path


@pytest.fixture(scope="session")
def toy_lm_dir(tmp_path_factory):
    """The decoders' toy LM (`pluralign.decode.toy`, seed 0, scale 2) saved as a model directory."""
    from pluralign.decode.toy import toy_lm, toy_tokenizer

    d = tmp_path_factory.mktemp("toy_lm")
    tok = toy_tokenizer()
    toy_lm(tok, seed=0, scale=2.0).save_pretrained(d)
    tok.save_pretrained(d)
    return d


class Generated(Exception):
    """Raised by `no_generation` instead of generating: reaching it means every check before generation passed."""


@pytest.fixture
def no_generation(monkeypatch):
    """`pluralign eval` stops where its models would start generating, with `Generated`."""
    import pluralign.evaluate.runner as runner

    def generate(*args, **kwargs):
        raise Generated

    monkeypatch.setattr(runner, "generate", generate)
