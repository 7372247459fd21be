"""Sampler: greedy equals model.generate token for token (left padding, batches of prompts), the
prompt is prefilled once for n samples, seeds are deterministic, stop strings/EOS finish rows, and the
returned log-probs are the model's own (temperature-free)."""

import pytest
import torch

from pluralign.decode.kv import encode_prompts, left_pad
from pluralign.decode.sampler import sample, warp_logits
from pluralign.decode.streams import RowStreams, row_seed, seeded_generator
from pluralign.decode.toy import toy_lm, toy_tokenizer
from pluralign.errors import ConfigError

PROMPTS = ["the cat sat on", "a big red dog ran very quick and", "bird"]


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


@pytest.fixture(scope="module")
def lm(tok):
    return toy_lm(tok, seed=0, scale=4.0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_matches_generate_with_left_padding(lm, tok, arch):
    if arch == "gpt2":
        from pluralign.models.tiny import tiny_gpt2

        lm = tiny_gpt2(len(tok), hidden_size=32, seed=0).eval()
    out = sample(lm, tok, PROMPTS, n=2, max_new_tokens=12, temperature=0)
    ids, mask = left_pad(encode_prompts(tok, PROMPTS), tok.pad_token_id)
    ref = lm.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    for p in range(len(PROMPTS)):
        expected = ref[p, ids.shape[1]:].tolist()
        if tok.eos_token_id in expected:
            expected = expected[: expected.index(tok.eos_token_id) + 1]
        expected = [t for t in expected if t != tok.pad_token_id]
        assert out.token_ids[p][0] == expected
        assert out.token_ids[p][1] == expected


def test_prefill_once_and_compute_counts(lm, tok):
    out = sample(lm, tok, ["the cat"], n=8, max_new_tokens=5, temperature=1.0, seed=0, eos=[])
    # one prefill call (1 row) + 4 decode calls of 8 rows; EOS disabled so every row runs to the limit
    assert out.compute.calls == 5
    assert out.n_forward == 1 + 4 * 8
    assert out.n_tokens == 2 + 4 * 8
    assert all(len(ids) == 5 for ids in out.token_ids[0])
    assert out.finish[0] == ["length"] * 8


def test_seed_determinism(lm, tok):
    a = sample(lm, tok, PROMPTS, n=4, max_new_tokens=8, seed=3)
    b = sample(lm, tok, PROMPTS, n=4, max_new_tokens=8, seed=3)
    c = sample(lm, tok, PROMPTS, n=4, max_new_tokens=8, seed=4)
    assert a.token_ids == b.token_ids and torch.equal(a.sum_logps, b.sum_logps)
    assert a.token_ids != c.token_ids


@pytest.mark.parametrize("warp", [dict(temperature=2.0), dict(temperature=1.0, top_k=5), dict(temperature=1.0),
                                  dict(temperature=0.0)])
def test_logps_are_model_logps_before_temperature(lm, tok, warp):
    # temperature 1 without filtering reuses the proposal's log-probs; every other warp computes them apart
    out = sample(lm, tok, PROMPTS[:2], n=3, max_new_tokens=6, seed=1, **warp)
    for p, prompt_ids in enumerate(out.prompt_ids):
        for i, gen in enumerate(out.token_ids[p]):
            full = torch.tensor([prompt_ids + gen])
            with torch.no_grad():
                logits = lm(full).logits[0].float()
            lp = torch.log_softmax(logits, -1)[len(prompt_ids) - 1:-1].gather(-1, torch.tensor(gen)[:, None])
            assert torch.allclose(lp.squeeze(-1), out.token_logps[p][i], atol=1e-4)
            assert abs(out.sum_logps[p, i].item() - lp.sum().item()) < 1e-3


def test_stop_strings_cut_text(lm, tok):
    base = sample(lm, tok, ["the"], n=1, max_new_tokens=10, temperature=0, eos=[])
    words = base.texts[0][0].split()
    assert len(words) >= 4
    stop = words[2]
    out = sample(lm, tok, ["the"], n=1, max_new_tokens=10, temperature=0, eos=[], stop=[stop])
    assert out.finish[0][0] == "stop"
    assert out.texts[0][0].strip() == " ".join(words[: words.index(stop)])


def test_eos_finishes_rows(tok):
    lm = toy_lm(tok, seed=0)
    with torch.no_grad():
        lm.lm_head.weight.zero_()
    out = sample(lm, tok, ["the cat"], n=4, max_new_tokens=200, temperature=1.0, seed=0)
    # uniform next-token distribution: EOS has probability 1/V per step, rows end on EOS or the limit
    for ids, why in zip(out.token_ids[0], out.finish[0], strict=True):
        assert (ids[-1] == tok.eos_token_id) == (why == "eos")
        assert tok.eos_token_id not in ids[:-1]


def test_warp_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(warp_logits(logits, top_k=2)[0, 2:]).all()
    lp = warp_logits(logits, top_p=0.7)
    assert torch.isfinite(lp[0, :2]).all() and torch.isinf(lp[0, 2:]).all()
    assert torch.allclose(lp[0, :2].exp(), torch.tensor([0.625, 0.375]))
    assert torch.allclose(warp_logits(logits, temperature=1.0).exp(), logits.exp())


def test_bad_arguments(lm, tok):
    with pytest.raises(ConfigError):
        sample(lm, tok, ["the"], n=0)
    with pytest.raises(ConfigError):
        sample(lm, tok, ["the"], top_p=0.0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_reserved_cache_gives_the_same_samples(lm, tok, arch, monkeypatch):
    """The in-place KV cache (`LMState.reserve`) draws the same tokens with the same log-probs as the
    concatenating cache under one seed, rows finishing early (EOS) included."""
    from pluralign.decode.kv import LMState

    if arch == "gpt2":
        from pluralign.models.tiny import tiny_gpt2

        lm = tiny_gpt2(len(tok), hidden_size=32, seed=0).eval()
    fast = sample(lm, tok, PROMPTS, n=4, max_new_tokens=10, seed=5)
    monkeypatch.setattr(LMState, "reserve", lambda self, tokens: None)
    slow = sample(lm, tok, PROMPTS, n=4, max_new_tokens=10, seed=5)
    assert fast.token_ids == slow.token_ids and fast.finish == slow.finish
    assert {f for row in fast.finish for f in row} >= {"eos", "length"}  # both kinds of rows were exercised
    for a, b in zip(fast.token_logps, slow.token_logps, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_reserved_cache_grows_selects_and_forks(lm, tok):
    """Past its reserved room the cache grows; row selection and forks keep each row's own keys."""
    from pluralign.decode.cache import ReservedLayer
    from pluralign.decode.kv import LMState

    ids = encode_prompts(tok, PROMPTS)
    plain, fast = (LMState.from_ids(lm, ids, tok.pad_token_id) for _ in range(2))
    fast.reserve(1)
    assert all(isinstance(layer, ReservedLayer) for layer in fast.cache.layers)
    tokens = torch.tensor([5, 6, 7])
    for step in range(4):
        for s in (plain, fast):
            s.advance(tokens + step)
        assert torch.equal(plain.logits, fast.logits)
    branch = fast.fork([2, 0])
    for s in (plain, fast):
        s.select([2, 0, 0])
        s.advance(torch.tensor([4, 4, 9]))
    branch.advance(torch.tensor([4, 4]))
    assert torch.equal(plain.logits, fast.logits)
    assert torch.equal(branch.logits, fast.logits[:2])


def test_inverse_cdf_draw_on_a_large_vocabulary():
    from pluralign.decode.sampler import draw

    V = 4196
    p = torch.zeros(V, dtype=torch.float)
    support = torch.tensor([0, 7, 4096, 4150, V - 1])  # both ends of the row included
    p[support] = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros_like(p)
    for _ in range(8):
        u = torch.rand(1000, generator=gen, dtype=torch.float64)
        counts += torch.bincount(draw(p.expand(1000, -1), u), minlength=p.numel()).float()
    assert counts.sum() == 8000 and counts[support].sum() == 8000  # never a zero-probability entry
    freq, sd = counts[support] / 8000, (p[support] * (1 - p[support]) / 8000).sqrt()
    assert ((freq - p[support]).abs() < 4 * sd).all(), freq
    one_hot = torch.zeros(2, V)
    one_hot[0, 5], one_hot[1, -1] = 1.0, 1.0
    assert draw(one_hot, torch.tensor([0.0, 0.999])).tolist() == [5, V - 1]
    assert draw(one_hot, torch.tensor([0.999, 0.0])).tolist() == [5, V - 1]


def test_the_chat_templates_end_of_turn_token_ends_an_answer():
    """A chat model closes its turn with the template's end-of-turn token (<|im_end|>, <|eot_id|>,
    <end_of_turn>), which is not always the tokenizer's EOS nor in the generation config (a ChatML fine-tune
    of a base model, early Llama-3 checkpoints): the answer ends there instead of running on past the turn."""
    from pluralign.decode.sampler import eos_ids
    from pluralign.models.tiny import tiny_llama, word_tokenizer

    template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <|end|> {% endfor %}"
                "{% if add_generation_prompt %}assistant :{% endif %}")
    tok = word_tokenizer(["user", "assistant", "the", "cat", ":"], chat_template=template)
    tok.add_special_tokens({"additional_special_tokens": ["<|end|>"]})
    end = tok.convert_tokens_to_ids("<|end|>")
    lm = tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2).eval()
    with torch.no_grad():
        lm.lm_head.weight[end] += 5.0  # the model ends its turn at once
    assert end in eos_ids(tok, lm) and tok.eos_token_id in eos_ids(tok, lm)
    s = sample(lm, tok, [[{"role": "user", "content": "the cat"}]], max_new_tokens=6, temperature=0)
    assert s.token_ids[0][0] == [end] and s.finish[0] == ["eos"] and s.texts[0] == [""]
    assert eos_ids(tok, lm, []) == set()  # explicit EOS ids (ignore_eos) are taken as given


def test_a_stop_string_of_multi_token_characters_ends_the_answer_when_it_is_written():
    # The stop check decoded the last len(stop) + 2 tokens: a character of several byte tokens (a rare CJK one
    # is 3 in a byte-level BPE) put the stop string out of that window, and the answer ran on to the limit
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from pluralign.decode.sampler import Generation

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    raw = Tokenizer(models.BPE({c: i for i, c in enumerate(sorted(alphabet))}, []))  # one token per byte
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    stop = "龘龘"
    ids = tok.encode(f"ok {stop} and more", add_special_tokens=False)
    gen = Generation(1, tok, eos=set(), stop=[stop], max_new_tokens=len(ids))
    for t in ids:
        gen.append([0], torch.tensor([t]), torch.tensor([0.0]))
        if gen.reason[0] is not None:
            break
    assert gen.reason[0] == "stop" and len(gen.tokens[0]) == len(tok.encode(f"ok {stop}", add_special_tokens=False))
    assert gen.text(0) == "ok "


def test_a_seeded_prompt_draws_the_same_answers_whatever_else_is_decoded_with_it(lm, tok):
    # every row drew from one stream for the whole call: a prompt's answers changed with the other prompts
    # in the file, its position and the batch size (max_rows), where a seed promises the same answer to the
    # same request (OpenAI's `seed`; `pluralign serve` isolated seeded requests for that reason)
    def ids(prompts, n=3, **kw):
        return sample(lm, tok, prompts, n=n, max_new_tokens=8, seed=3, **kw).token_ids

    alone = [ids([p])[0] for p in PROMPTS]
    assert ids(PROMPTS) == alone
    assert ids(PROMPTS[::-1])[::-1] == alone
    assert ids(PROMPTS, max_rows=3) == alone  # one prompt per chunk
    assert len({tuple(x) for x in alone[1]}) > 1  # a prompt's samples are not copies of each other
    # a repeated prompt draws afresh (its next samples), so repeating prompts still estimates by sampling
    six = ids(PROMPTS[:1], n=6)[0]
    assert ids([PROMPTS[0], PROMPTS[1], PROMPTS[0]]) == [six[:3], alone[1], six[3:]]
    assert ids(PROMPTS[:1])[0] != sample(lm, tok, PROMPTS[:1], n=3, max_new_tokens=8, seed=4).token_ids[0]



def test_a_decoders_own_draws_are_not_a_samples_stream():
    # best-of-n's selection (and rejection's acceptance) generator was seeded with row_seed(seed, prompt, k),
    # which for a prompt given as token ids is sample 0's stream: soft BoN's multinomial and candidate 0's first
    # token read the same random numbers (the choice agreed with that token's inverse-CDF cell 40% of the time
    # over 2000 seeds with 4 equal candidates, not 25%)
    ids = [5, 6, 7]
    agree = 0
    for seed in range(2000):
        u = float(RowStreams([row_seed(seed, ids, 0)]).uniforms([0])[0])
        agree += int(torch.multinomial(torch.full((4,), 0.25), 1, generator=seeded_generator(seed, ids))) == int(u * 4)
    assert abs(agree / 2000 - 0.25) < 0.04
