"""Token-level and search decoders: GenARM/MOD fusion limits, controlled decoding (CD-FUDGE training,
λ = 0, blockwise = BoN), Transfer Q* limits, DeAL with programmatic constraints."""

import pytest
import torch

from pluralign.decode.api import Controls, decode
from pluralign.decode.controlled import ValueModel, train_fudge
from pluralign.decode.fusion import mod_scores
from pluralign.decode.sampler import sample
from pluralign.decode.search import constraint_score
from pluralign.decode.streams import RowStreams
from pluralign.decode.toy import toy_lm, toy_tokenizer
from pluralign.errors import ConfigError

PROMPTS = ["the cat sat on", "a big dog", "bird"]
GREEDY = Controls(max_new_tokens=8, temperature=0.0)


@pytest.fixture(scope="module")
def tok():
    return toy_tokenizer()


@pytest.fixture(scope="module")
def lms(tok):
    return [toy_lm(tok, seed=s, scale=3.0) for s in (0, 1, 2)]


def texts(samples):
    return [row[0] for row in samples.texts]


def cat_reward(prompts, responses):
    return torch.tensor([float(r.split().count("cat")) for r in responses])


def test_genarm_alpha0_and_uniform_arm_equal_base(tok, lms):
    base, arm = lms[0], lms[1]
    greedy = texts(sample(base, tok, PROMPTS, max_new_tokens=8, temperature=0))
    out = decode("genarm", base, tok, PROMPTS, models=[arm], controls=GREEDY.replace(w=0.0))
    assert out.texts == greedy
    uniform = toy_lm(tok, seed=4)
    with torch.no_grad():
        uniform.lm_head.weight.zero_()
    out = decode("genarm", base, tok, PROMPTS, models=[uniform], controls=GREEDY.replace(w=1.0))
    assert out.texts == greedy
    sampled = texts(sample(base, tok, PROMPTS, max_new_tokens=8, temperature=1.0, seed=5))
    out = decode("genarm", base, tok, PROMPTS, models=[arm], controls=Controls(max_new_tokens=8, w=0.0, seed=5))
    assert out.texts == sampled


def test_mod_one_hot_and_identical_models(tok, lms):
    for j in range(3):
        w = [0.0, 0.0, 0.0]
        w[j] = 1.0
        want = texts(sample(lms[j], tok, PROMPTS, max_new_tokens=8, temperature=0))
        for form in ("reverse_kl", "forward_kl", "alpha"):
            out = decode("mod", lms[0], tok, PROMPTS, models=lms[1:],
                         controls=GREEDY.replace(weights=w, extra={"form": form}))
            assert out.texts == want, (j, form)
    same = decode("mod", lms[1], tok, PROMPTS, models=[lms[1]], controls=GREEDY.replace(weights=[0.3, 0.7]))
    assert same.texts == texts(sample(lms[1], tok, PROMPTS, max_new_tokens=8, temperature=0))
    ell = torch.log_softmax(torch.randn(1, 2, 5), -1).expand(3, 2, 5)
    w = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]])
    for form in ("reverse_kl", "forward_kl"):
        assert torch.allclose(mod_scores(ell, w, form), ell[0], atol=1e-5)


def test_per_request_fusion_weights(tok, lms):
    ctls = [GREEDY.replace(weights=[1.0, 0.0]), GREEDY.replace(weights=[0.0, 1.0])]
    out = decode("mod", lms[0], tok, ["the cat", "the cat"], models=[lms[1]], controls=ctls)
    assert out.texts[0] == texts(sample(lms[0], tok, ["the cat"], max_new_tokens=8, temperature=0))[0]
    assert out.texts[1] == texts(sample(lms[1], tok, ["the cat"], max_new_tokens=8, temperature=0))[0]



@pytest.mark.parametrize(("weights", "form", "message"), [
    ([0.0, 0.0], "reverse_kl", "all 2 weights are 0"),
    ([-1.0, 2.0], "forward_kl", "must be >= 0"),
    ([2.0, -1.0], "alpha", "must be >= 0"),
])
def test_mod_refuses_weights_that_fuse_nothing_or_that_its_form_cannot_take(tok, lms, weights, form, message):
    # all zero weights sampled every token alike (random text); forward-KL / α read a negative weight as 0
    with pytest.raises(ConfigError, match=message):
        decode("mod", lms[0], tok, PROMPTS, models=[lms[1]], controls=GREEDY.replace(weights=weights,
                                                                                      extra={"form": form}))
    # reverse KL extrapolates with a negative weight
    decode("mod", lms[0], tok, PROMPTS[:1], models=[lms[1]], controls=GREEDY.replace(weights=[-1.0, 2.0]))


def test_mod_weights_are_normalised_to_the_simplex(tok, lms):
    # MOD's weights lie on the simplex (the reference policy cancels only when they sum to 1): 2,2 fused
    # π1²·π2² (a sharper, colder distribution) where 0.5,0.5 fused √(π1·π2)
    ctl = Controls(max_new_tokens=8, seed=3)
    half = decode("mod", lms[0], tok, PROMPTS, models=[lms[1]], controls=ctl.replace(weights=[0.5, 0.5]))
    double = decode("mod", lms[0], tok, PROMPTS, models=[lms[1]], controls=ctl.replace(weights=[2.0, 2.0]))
    assert double.texts == half.texts
    assert double.info["decoder_logps"] == pytest.approx(half.info["decoder_logps"], abs=1e-4)
    with pytest.raises(ConfigError, match=r"sum to 0.*cannot be normalised") as e:
        decode("mod", lms[0], tok, PROMPTS, models=[lms[1]], controls=GREEDY.replace(weights=[1.0, -1.0]))
    assert e.value.field == "weights"


def test_genarm_alpha_of_the_wrong_length_names_the_arms(tok, lms):
    # the message counted the policy as a further weight ("3 fusion weights for 2 models ... the policy's first")
    with pytest.raises(ConfigError, match=r"genarm option 'alpha': 2 values for 1 ARM\(s\)"):
        decode("genarm", lms[0], tok, PROMPTS, models=[lms[1]], controls=GREEDY.replace(extra={"alpha": [1.0, 2.0]}))

@pytest.mark.parametrize("method", ["genarm", "mod"])
def test_fusion_reads_top_k_and_top_p(method, tok, lms):
    # top_k=1 (or a tiny top_p) keeps only the fused argmax: sampling then is greedy fusion
    greedy = decode(method, lms[0], tok, PROMPTS, models=[lms[1]], controls=GREEDY.replace(weights=[0.5, 0.5]))
    for cut in ({"top_k": 1}, {"top_p": 1e-6}):
        out = decode(method, lms[0], tok, PROMPTS, models=[lms[1]],
                     controls=Controls(max_new_tokens=8, seed=1, weights=[0.5, 0.5], **cut))
        assert out.texts == greedy.texts, cut


def test_cd_fudge_training_and_limits(tok, lms):
    base = lms[0]
    value = ValueModel.new(base)
    losses = train_fudge(value, tok, ["the", "a cat"], cat_reward, n=8, max_new_tokens=8, steps=30, lr=0.05)
    assert losses[-1] < 0.5 * losses[0]
    greedy = texts(sample(base, tok, PROMPTS, max_new_tokens=8, temperature=0))
    out = decode("cd", base, tok, PROMPTS, value_model=value, controls=GREEDY.replace(w=0.0))
    assert out.texts == greedy
    strong = decode("cd", base, tok, ["the"] * 4, value_model=value, reward=cat_reward,
                    controls=GREEDY.replace(w=20.0))
    assert float(strong.scores.sum()) >= float(cat_reward(None, greedy).sum())


def test_blockwise_with_long_blocks_is_bon(tok, lms):
    ctl = Controls(n=6, max_new_tokens=8, seed=7, extra={"block": 100})
    bon = decode("bon", lms[0], tok, PROMPTS, reward=cat_reward, controls=ctl.replace(extra={}))  # bon reads no block
    blk = decode("cd_block", lms[0], tok, PROMPTS, reward=cat_reward, controls=ctl)
    assert blk.texts == bon.texts


def test_tq_star_limits(tok, lms):
    greedy = texts(sample(lms[0], tok, PROMPTS, max_new_tokens=6, temperature=0))
    ctl = Controls(max_new_tokens=6, temperature=0.0, w=0.0, extra={"k": 4, "rollout": 4})
    assert decode("tq_star", lms[0], tok, PROMPTS, reward=cat_reward, baseline=lms[1], controls=ctl).texts == greedy
    ctl = ctl.replace(w=2.0)
    direct = decode("tq_star", lms[0], tok, PROMPTS, reward=cat_reward, baseline=lms[1], controls=ctl)
    indirect = decode("tq_star", lms[0], tok, PROMPTS, reward=cat_reward, baseline=lms[1],
                      baseline_reward=cat_reward, controls=ctl)
    assert direct.texts == indirect.texts  # r_BL = r: the importance weight is 1


def test_deal_keywords(tok, lms):
    assert constraint_score({"keywords": ["cat", "dog"], "max_words": 2}, ["p"], ["a cat sat"]).item() == pytest.approx(-0.5)
    ctl = Controls(max_new_tokens=12, seed=0, constraints={"keywords": ["cat"]},
                   extra={"lookahead": 4, "init_beams": 4, "beams": 2, "max_iterations": 3})
    prompts = ["the", "a", "bird", "sun", "hill", "tree"]
    guided = decode("deal", lms[2], tok, prompts, controls=ctl.replace(w=10.0))
    plain = decode("deal", lms[2], tok, prompts, controls=ctl.replace(w=0.0))
    has = lambda ts: sum("cat" in t.split() for t in ts)
    assert has(guided.texts) > has(plain.texts)


def test_genarm_alpha1_is_normalised_product(tok, lms):
    from pluralign.decode.fusion import FusionGuide
    from pluralign.decode.kv import encode_prompts

    ids = encode_prompts(tok, ["the cat"])
    ctl = [Controls(w=1.0, temperature=1.0)]
    guide = FusionGuide(ctl, ids, None, models=[lms[1]], tokenizer=tok, compute=None, kind="genarm")
    with torch.no_grad():
        lb = lms[0](torch.tensor(ids)).logits[:, -1]
        la = lms[1](torch.tensor(ids)).logits[:, -1]
    guide.streams = RowStreams([0])
    draws = torch.stack([guide.choose(lb, [0]) for _ in range(4000)]).flatten()
    want = torch.softmax(lb, -1) * torch.softmax(la, -1)
    want = (want / want.sum())[0]
    got = torch.bincount(draws, minlength=want.numel()).float() / 4000
    assert 0.5 * (got - want).abs().sum() < 0.06
    assert torch.allclose(guide.last_logq.exp(), want[draws[-1]], atol=1e-5)


def test_mod_over_lora_adapters(tok):
    peft = pytest.importorskip("peft")
    from pluralign.decode.fusion import AdapterView

    base = toy_lm(tok, seed=0, scale=3.0)
    cfg = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    pm = peft.get_peft_model(base, cfg, adapter_name="helpful")
    pm.add_adapter("concise", peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                        init_lora_weights=False))
    va, vb, v0 = AdapterView(pm, "helpful"), AdapterView(pm, "concise"), AdapterView(pm, None)
    want_b = texts(sample(vb, tok, PROMPTS, max_new_tokens=8, temperature=0))
    want_0 = texts(sample(v0, tok, PROMPTS, max_new_tokens=8, temperature=0))
    assert want_b != want_0
    out = decode("mod", va, tok, PROMPTS, models=[vb, v0], controls=GREEDY.replace(weights=[0, 1, 0]))
    assert out.texts == want_b
    out = decode("mod", va, tok, PROMPTS, models=[vb, v0], controls=GREEDY.replace(weights=[0, 0, 1]))
    assert out.texts == want_0


def test_search_decoders_keep_each_requests_token_limit_and_stop_strings(tok, lms):
    """DeAL's segments of `lookahead` tokens ran past `max_new_tokens` (two of 3 tokens for a limit of 4
    gave 6) and ignored stop strings; blockwise CD decoded every request with the first one's n, limit and
    temperature."""
    deal = Controls(max_new_tokens=4, seed=0, extra={"lookahead": 3, "init_beams": 2, "beams": 1, "max_iterations": 5})
    out = decode("deal", lms[0], tok, PROMPTS, reward=cat_reward, controls=deal)
    assert max(len(ids) for ids in out.info["token_ids"]) == 4
    word = out.texts[0].split()[-1]
    stopped = decode("deal", lms[0], tok, PROMPTS[:1], reward=cat_reward, controls=deal.replace(stop=[word]))
    assert word not in stopped.texts[0]

    short, long = Controls(n=2, max_new_tokens=3, seed=1, extra={"block": 2}), Controls(n=5, max_new_tokens=7, seed=1)
    mixed = decode("cd_block", lms[0], tok, PROMPTS[:2], reward=cat_reward, controls=[short, long])
    alone = [decode("cd_block", lms[0], tok, [p], reward=cat_reward, controls=c)
             for p, c in zip(PROMPTS[:2], [short, long], strict=True)]
    assert mixed.texts == [a.texts[0] for a in alone]
    assert [len(ids) for ids in mixed.info["token_ids"]] == [3, 7]


@pytest.mark.parametrize("method", ["args", "cd", "genarm", "mod", "tq_star"])
def test_token_level_decoders_give_batched_requests_their_own_stop_strings_and_k(method, tok, lms):
    """One call holding requests with different stop strings, k or top-k (as a server batches them)
    equals a call per request; all used the first request's before."""
    value = ValueModel.new(lms[0])
    kwargs = {"cd": {"value_model": value}, "tq_star": {"baseline": lms[1]}, "genarm": {"models": [lms[1]]},
              "mod": {"models": [lms[1]]}}.get(method, {})
    base = Controls(max_new_tokens=6, temperature=0.0, w=1.0)
    k = {"args": "k", "cd": "k", "tq_star": "k"}.get(method)
    first = decode(method, lms[0], tok, PROMPTS[:1], reward=cat_reward, controls=base, **kwargs).texts[0]
    controls = [base.replace(extra={k: 2} if k else {}, top_k=3), base.replace(stop=[first.split()[1]])]
    mixed = decode(method, lms[0], tok, PROMPTS[:1] * 2, reward=cat_reward, controls=controls, **kwargs)
    alone = [decode(method, lms[0], tok, PROMPTS[:1], reward=cat_reward, controls=c, **kwargs).texts[0]
             for c in controls]
    assert mixed.texts == alone
    assert first.split()[1] not in mixed.texts[1]


@pytest.mark.parametrize("method", ["args", "genarm", "mod"])
def test_token_level_decoders_give_batched_requests_their_own_seeds(method, tok, lms):
    """Sampled requests with different seeds in one call draw as each does alone: the whole batch drew from the
    first request's seed before, so the second request's seed was ignored."""
    kwargs = {"genarm": {"models": [lms[1]]}, "mod": {"models": [lms[1]]}}.get(method, {})
    controls = [Controls(max_new_tokens=8, temperature=1.5, w=1.0, seed=s) for s in (1, 2)]
    mixed = decode(method, lms[0], tok, PROMPTS[:1] * 2, reward=cat_reward, controls=controls, **kwargs)
    alone = [decode(method, lms[0], tok, PROMPTS[:1], reward=cat_reward, controls=c, **kwargs).texts[0]
             for c in controls]
    assert mixed.texts == alone and alone[0] != alone[1]


@pytest.mark.parametrize("constraints", [
    {"keywords": 5},  # failed inside the search: a 500 from the server, a traceback from Python
    {"keywords": "river"},  # was searched for letter by letter
    {"keywords": ["river", 3]},
    {"min_words": "two"},
    {"max_words": -1},
    {"keyword": ["river"]},  # a misspelt key: refused when made, not at the first search step
])
def test_malformed_deal_constraints_are_refused_when_the_controls_are_made(constraints):
    from pluralign.errors import ConfigError

    with pytest.raises(ConfigError, match="controls.constraints must be an object of \"keywords\"") as e:
        Controls(constraints=constraints)
    assert e.value.field == "constraints"
    assert Controls(constraints={"keywords": ("river",), "min_words": 0, "max_words": None}).constraints


@pytest.mark.parametrize("method", ["genarm", "mod"])
def test_fusion_filters_top_p_after_temperature_as_sampling_does(method, tok, lms):
    # The nucleus was taken of the untempered distribution, then temperature applied: at temperature 2 and
    # top_p 0.5 a fusion that reduces to the base model (its ARM weighted 0) drew from another distribution
    # than `sample` with the same settings (temperature first, as in transformers and vLLM).
    from pluralign.decode.fusion import FusionGuide
    from pluralign.decode.kv import encode_prompts
    from pluralign.decode.sampler import warp_logits

    ids = encode_prompts(tok, ["the cat"])
    ctl = [Controls(w=0.0, weights=[1.0, 0.0], temperature=2.0, top_p=0.5)]
    guide = FusionGuide(ctl, ids, None, models=[lms[1]], tokenizer=tok, compute=None, kind=method)
    with torch.no_grad():
        logits = lms[0](torch.tensor(ids)).logits[:, -1]
    want = warp_logits(logits, 2.0, 0, 0.5)[0]
    guide.streams = RowStreams([0])
    for _ in range(50):
        guide.prefix = None
        token = int(guide.choose(logits, [0]))
        assert torch.allclose(guide.last_logq[0], want[token], atol=1e-5), token


@pytest.mark.parametrize("method", ["args", "cd", "tq_star"])
def test_reward_guided_decoders_read_top_p(method, tok, lms):
    # ARGS, CD and TQ* sampled among all k candidates whatever top_p was: a tiny top_p keeps only the best
    # guided score, so sampling with it is the method's greedy decoding
    value = ValueModel.new(lms[0])
    torch.nn.init.normal_(value.head.proj.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    kwargs = {"cd": {"value_model": value}, "tq_star": {"baseline": lms[1]}}.get(method, {})
    base = Controls(max_new_tokens=6, w=1.0, extra={"k": 5})
    greedy = decode(method, lms[0], tok, PROMPTS, reward=cat_reward, controls=base.replace(temperature=0.0), **kwargs)
    for seed in (1, 2):
        out = decode(method, lms[0], tok, PROMPTS, reward=cat_reward, controls=base.replace(seed=seed, top_p=1e-6),
                     **kwargs)
        assert out.texts == greedy.texts, seed
