"""MAP palette, RPS, prompt-level helpers (DPA, URIAL, CoSA) and the decoder registry/contract."""

import math

import pytest
import torch

from pluralign.decode.api import Controls, decode, names
from pluralign.decode.map_palette import solve_palette
from pluralign.decode.prompts import (
    COSA_CATEGORIES,
    cosa_system_prompt,
    dpa_system_message,
    urial_clean,
    urial_prompt,
    with_system,
)
from pluralign.decode.rps import neighbour_directions
from pluralign.decode.toy import toy_lm, toy_tokenizer
from pluralign.errors import ConfigError


def two_words(prompts, responses):
    return torch.tensor([[float(r.split().count("cat")), float(r.split().count("dog"))] for r in responses])


def test_map_single_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    mu, sigma = 1.0, 2.0
    r = (mu + sigma * torch.randn(400000, 1, generator=g, dtype=torch.double))
    for c in (3.0, 2.0, 0.0):
        sol = solve_palette(r, [c])
        assert sol.feasible
        assert float(sol.lam[0]) == pytest.approx(max(0.0, (c - mu) / sigma ** 2), abs=0.02)
    bad = solve_palette(torch.rand(1000, 1, generator=g), [2.0])  # rewards in [0, 1] cannot average 2
    assert not bad.feasible


def test_map_two_objectives_meet_targets():
    g = torch.Generator().manual_seed(1)
    r = torch.randn(50000, 2, generator=g)
    sol = solve_palette(r, [0.5, -1.0])
    assert sol.feasible and float(sol.lam[1]) == 0.0
    assert float(sol.achieved[0]) == pytest.approx(0.5, abs=1e-3)


def test_rps_neighbourhood():
    v = torch.tensor([3.0, 4.0])
    d = neighbour_directions(v, 5, math.pi / 6)
    cos = (d @ (v / v.norm())).clamp(max=1)
    assert torch.allclose(d.norm(dim=1), torch.ones(5), atol=1e-6)
    assert float(torch.acos(cos).max()) <= math.pi / 6 + 1e-5
    assert torch.isclose(cos, torch.tensor(1.0)).any()  # v* itself is included
    assert torch.allclose(neighbour_directions(v, 4, 0.0), (v / v.norm()).expand(4, 2))


def test_rps_theta0_equals_best_of_k():
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=0)
    ctl = Controls(n=6, weights=[0.6, 0.8], max_new_tokens=6, seed=3, extra={"theta_max": 0.0})
    out = decode("rps", lm, tok, ["the cat", "a dog"], reward=two_words, controls=ctl)
    conditioned = [with_system(x, dpa_system_message([0.6, 0.8], ["r0", "r1"])) for x in ["the cat", "a dog"]]
    bon = [decode("bon", lm, tok, [x], reward=two_words, controls=ctl.replace(extra={})) for x in conditioned]
    assert out.texts == [b.texts[0] for b in bon]
    # selection is invariant to positive rescaling of v*
    out2 = decode("rps", lm, tok, ["the cat", "a dog"], reward=two_words,
                  controls=ctl.replace(weights=[6.0, 8.0], extra={"theta_max": 0.0, "conditioner": lambda x, d, o:
                                       with_system(x, dpa_system_message(d, o))}))
    assert out2.texts == out.texts


def test_with_system_keeps_plain_text_when_chat_templates_are_off():
    # RPS under --chat-template never made messages of plain prompts, then refused them as chat
    templated = type("Tok", (), {"chat_template": "{{ messages }}"})()
    assert with_system("hi", "S", templated) == [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert with_system("hi", "S", templated, "never") == "S\n\nhi"
    assert with_system([{"role": "user", "content": "hi"}], "S", templated, "never")[0]["role"] == "system"


def test_prompt_helpers():
    assert dpa_system_message([3, 4], ["helpfulness", "verbosity"]).endswith(
        "weighted rating = helpfulness*0.6 + verbosity*0.8.")
    p = urial_prompt("Why?", [("Hi", "Hello!")], preamble="PRE\n")
    assert p == ("PRE\n\n# Query:\n```\nHi\n```\n\n# Answer:\n```\nHello!\n```\n"
                 "\n# Query:\n```\nWhy?\n```\n\n# Answer:\n```\n")
    assert urial_clean("```\nBecause.\n```\n\n# Query:\n```\nmore") == "Because."
    s = cosa_system_prompt([COSA_CATEGORIES[0]])
    assert COSA_CATEGORIES[0] in s.split("Do not")[0] and COSA_CATEGORIES[1] in s.split("Do not")[1]
    with pytest.raises(ConfigError):
        cosa_system_prompt(["Jaywalking"])
    assert with_system([{"role": "user", "content": "q"}], "S")[0] == {"role": "system", "content": "S"}


def test_registry_and_contract():
    assert {"bon", "soft_bon", "rejection", "infalign", "map", "rps", "args", "cd", "cd_block", "tq_star",
            "genarm", "mod", "deal"} <= set(names())
    with pytest.raises(ConfigError):
        decode("nope", None, None, ["x"])
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=0)
    ctls = [Controls(n=4, weights=[1, 0], max_new_tokens=5), Controls(n=8, weights={"r1": 1.0}, max_new_tokens=5)]
    out = decode("bon", lm, tok, ["the", "a"], reward=two_words, controls=ctls)
    assert [len(c) for c in out.candidates] == [4, 8]
    assert out.scores.shape == (2, 2) and out.objectives == ["r0", "r1"]
    assert torch.allclose(out.utility, torch.stack([out.scores[0, 0], out.scores[1, 1]]))
    assert out.compute.forward > 0 and out.compute.tokens > 0 and out.reward_compute.forward == 12
    rows = out.rows()
    assert set(rows[0]) >= {"response", "scores", "utility", "candidates"}
    with pytest.raises(ConfigError):
        decode("bon", lm, tok, ["the"], reward=two_words, controls=Controls(weights=[1, 2, 3]))


def test_every_controls_extra_key_a_decoder_reads_is_declared_and_others_are_errors():
    import re
    from pathlib import Path

    from pluralign.decode import api

    names()  # imports every decoder module, which declares its options
    declared = set().union(*api._OPTIONS.values()) | api.SHARED_OPTIONS
    source = Path(api.__file__).parent
    read = {key for f in source.glob("*.py") for key in re.findall(r"""extra(?:\.get\(|\[)["'](\w+)["']""", f.read_text())}
    read |= set(re.findall(r"""extra or \{\}\)\.get\(["'](\w+)""", (source.parent / "conditioning" / "__init__.py").read_text()))
    assert read and read <= declared, read - declared  # a key read but declared nowhere would be refused
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=0)
    with pytest.raises(ConfigError, match=r"request 2: \['kk'\] not an option of decoding method 'args' \(did you mean 'k'\?\)"):
        decode("args", lm, tok, ["the", "a"], reward=two_words,
               controls=[Controls(max_new_tokens=2, extra={"k": 3}), Controls(max_new_tokens=2, extra={"kk": 3})])
    with pytest.raises(ConfigError, match="'sample'.*its options: none"):
        decode("sample", lm, tok, ["the"], controls=Controls(max_new_tokens=2, extra={"k": 3}))
    decode("bon", lm, tok, ["the"], reward=two_words, controls=Controls(n=2, max_new_tokens=2, extra={"ties": "first"}))


def test_infalign_calibration_makes_objective_scales_irrelevant():
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=1)
    scaled = lambda p, r: two_words(p, r) * torch.tensor([1.0, 100.0])
    ctl = Controls(n=8, weights=[1.0, 1.0], max_new_tokens=8, seed=0, extra={"m": 16})
    a = decode("infalign", lm, tok, ["the cat", "a dog", "the"], reward=two_words, controls=ctl)
    b = decode("infalign", lm, tok, ["the cat", "a dog", "the"], reward=scaled, controls=ctl)
    assert a.info["chosen"] == b.info["chosen"]
    assert a.compute.forward > 0 and a.reward_compute.forward == 3 * (8 + 16)


def test_map_decoder_reports_lambda_and_feasibility():
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=1)
    ctl = Controls(n=8, max_new_tokens=8, seed=0, extra={"targets": [0.2, 0.0]})
    out = decode("map", lm, tok, ["the cat", "a dog"], reward=two_words, controls=ctl)
    assert len(out.info["lambda"][0]) == 2 and all(x >= 0 for x in out.info["lambda"][0])
    assert isinstance(out.info["feasible"][0], bool)
    with pytest.raises(ConfigError):
        decode("map", lm, tok, ["the"], reward=two_words, controls=Controls(n=4, max_new_tokens=4))


def test_controls_weights_take_any_flat_numbers_and_refuse_the_rest():
    import numpy as np

    from pluralign.decode.api import Controls
    from pluralign.errors import ConfigError

    for ok in ([1, 0], (0.5, 0.5), torch.tensor([1.0, 2.0]), np.array([1, 2]), {"a": 1, "b": 0.5}, None):
        Controls(weights=ok, direction=ok)
    Controls(weights=[3e38, -3e38], beta=3e38)  # float32's largest are still numbers decoders compute with
    for bad in ("a=1", [1, "x"], [True, 1], [float("nan")], {"a": "x"}, [[1, 2]], {"a": float("inf")},
                [1e300], {"a": 1e39}):  # finite in Python, inf in the float32 decoders weigh in (a 500 from serve)
        with pytest.raises(ConfigError, match="controls.weights must be finite numbers") as e:
            Controls(weights=bad)
        assert e.value.field == "weights"
    for name in ("beta", "w"):
        with pytest.raises(ConfigError, match=f"controls.{name} must be a finite number"):
            Controls(**{name: 1e300})


@pytest.mark.parametrize("method", ["sample", "bon", "args"])
def test_a_reward_scores_the_prompt_as_asked_not_as_a_conditioned_policy_sees_it(method):
    """A prompt-level scheme (here DPA-style weight statements) restates each prompt for the policy; the
    reward must still score the request's own prompt (what it was trained on, and what `Controls` says
    reward sources receive), never the statement the policy was shown."""
    from pluralign import conditioning

    tok = toy_tokenizer()
    lm = toy_lm(tok)
    lm.pluralign_conditioning = conditioning.get("system_message", ["cat", "dog"])
    seen = []

    def reward(prompts, responses):
        seen.extend(prompts)
        return two_words(prompts, responses)

    reward.objectives = ["cat", "dog"]
    prompts = ["the cat", "a dog"]
    decode(method, lm, tok, prompts, reward=reward,
           controls=[Controls(n=2, max_new_tokens=2, weights=w) for w in ([1, 0], [0.2, 0.8])])
    assert seen and all(p in prompts for p in seen), seen


@pytest.mark.parametrize("method, extra, rule", [
    ("args", {"k": "abc"}, "an integer >= 1"),  # was a ValueError traceback from inside the decoder
    ("args", {"k": 0}, "an integer >= 1"),  # a reshape error
    ("args", {"mode": "gredy"}, "'greedy' or 'sample'"),  # quietly sampled
    ("deal", {"beams": 0}, "an integer >= 1"),  # an IndexError
    ("rejection", {"max_rounds": 0}, "an integer >= 1"),  # a KeyError
    ("rps", {"theta_max": "wide"}, "a finite number"),
    ("args", {"eos": "x"}, "a token id or a list of them"),
])
def test_a_decoder_options_value_of_the_wrong_kind_is_an_error_naming_it(method, extra, rule):
    tok = toy_tokenizer()
    with pytest.raises(ConfigError, match=f"{method} option '{next(iter(extra))}' must be {rule}"):
        decode(method, toy_lm(tok), tok, ["the cat"], reward=two_words,
               controls=Controls(n=2, max_new_tokens=2, extra=extra))


def test_rps_neighbours_are_independent_draws():
    # Each neighbour's prompt was sampled with the request's own seed: the same random numbers for every
    # neighbour, so where the conditioning moves the model little (here not at all: the toy tokenizer drops
    # the trailing spaces) the k candidates were one answer k times, and the selection had nothing to choose.
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=0)
    ctl = Controls(n=4, weights=[0.6, 0.8], max_new_tokens=6, seed=3,
                   extra={"theta_max": 0.5, "conditioner": lambda x, d, o: x + " " * (1 + round(100 * d[0]))})
    out = decode("rps", lm, tok, ["the cat", "a dog"], reward=two_words, controls=ctl)
    assert tok(["the cat", "the cat   "])["input_ids"][0] == tok(["the cat", "the cat   "])["input_ids"][1]
    for candidates in out.candidates:
        assert len(candidates) == 4 and len(set(candidates)) > 1


@pytest.mark.parametrize("stop", ["", ["\n", ""]])
def test_an_empty_stop_text_is_refused(stop):
    # accepted and silently ignored (by the server too), where it reads as "stop at once"
    with pytest.raises(ConfigError, match="stop") as e:
        Controls(stop=stop)
    assert e.value.field == "stop" and "non-empty" in str(e.value)


@pytest.mark.parametrize(("method", "extra", "kwargs"), [
    ("sample", {}, {}), ("bon", {"ties": "random"}, {}), ("soft_bon", {}, {}), ("rejection", {}, {}),
    ("args", {"k": 5}, {}), ("mod", {}, {"models": True}), ("cd_block", {"block": 3}, {}),
])
def test_a_seeded_request_decodes_alike_whatever_is_decoded_with_it(method, extra, kwargs):
    # one random stream served the whole call, so a prompt's answer changed with the other rows of the prompts
    # file, its position among them, and (the server) the requests batched with it
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=0, scale=1.0)
    if kwargs.get("models"):
        kwargs = {"models": [toy_lm(tok, seed=1, scale=1.0)]}
    prompts = ["the cat sat on", "a big dog", "bird"]
    ctl = Controls(n=3, max_new_tokens=6, seed=11, beta=0.5, extra=extra)

    def run(ps):
        return decode(method, lm, tok, ps, reward=two_words, controls=ctl, **kwargs).texts

    alone = [run([p])[0] for p in prompts]
    assert run(prompts) == alone
    assert run(prompts[::-1])[::-1] == alone


@pytest.mark.parametrize(("method", "extra"), [
    ("sample", {}), ("bon", {}), ("args", {"k": 5}),
    ("rps", {}), ("deal", {"init_beams": 3, "beams": 2, "max_iterations": 2, "lookahead": 3}),
])
def test_a_prompt_repeated_in_one_call_gets_independent_answers(method, extra):
    # rps and deal decode one prompt at a time with the request's seed, so a prompt given three times in a
    # prompts file (one --seed for all) got one answer three times, where the other decoders draw its repeats
    # from the next streams; its first occurrence still answers as alone
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=0, scale=1.0)
    ctl = Controls(n=3, max_new_tokens=6, seed=11, weights=[0.5, 0.5], extra=extra)
    alone = decode(method, lm, tok, ["bird"], reward=two_words, controls=ctl).texts
    texts = decode(method, lm, tok, ["bird"] * 4, reward=two_words, controls=ctl).texts
    assert texts[0] == alone[0] and len(set(texts)) > 1


def test_an_unseeded_request_draws_fresh_rps_directions_and_infalign_references(monkeypatch):
    # `c.seed or 0`: a request without a seed drew RPS's neighbour directions from seed 0 and InfAlign's
    # reference samples from seed 104729, the same for every such request
    import pluralign.decode.infalign as infalign
    import pluralign.decode.rps as rps

    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=0, scale=1.0)
    dirs, ref_seeds = [], []
    draw = infalign.draw_candidates

    def directions(*args, **kwargs):
        dirs.append(neighbour_directions(*args, **kwargs))
        return dirs[-1]

    def candidates(model, tokenizer, prompts, controls, **kwargs):
        ref_seeds.extend(c.seed for c in controls)
        return draw(model, tokenizer, prompts, controls, **kwargs)

    def three(prompts, responses):
        return torch.cat([two_words(prompts, responses), torch.ones(len(responses), 1)], 1)

    monkeypatch.setattr(rps, "neighbour_directions", directions)
    monkeypatch.setattr(infalign, "draw_candidates", candidates)
    ctl = Controls(n=3, max_new_tokens=3, weights=[0.5, 0.3, 0.2], seed=None)
    for _ in range(2):
        decode("rps", lm, tok, ["bird"], reward=three, controls=ctl)
        decode("infalign", lm, tok, ["bird"], reward=three, controls=ctl)
    assert not torch.equal(dirs[0], dirs[1])
    assert ref_seeds == [None] * 4  # candidates and references of two requests


@pytest.mark.parametrize("method", ["args", "mod"])
def test_token_level_requests_with_different_seeds_share_one_batch(method, monkeypatch):
    # the seed was read once per batch, so rows of a prompts file with their own seeds were decoded in one call
    # per seed (each its own prefill and decoding loop), though each row draws from its own streams
    from pluralign.decode.kv import LMState

    prefills = []
    from_ids = LMState.from_ids
    monkeypatch.setattr(LMState, "from_ids", lambda *a, **k: prefills.append(1) or from_ids(*a, **k))
    tok = toy_tokenizer()
    lm = toy_lm(tok, seed=0, scale=1.0)
    kwargs = {"models": [toy_lm(tok, seed=1, scale=1.0)]} if method == "mod" else {}
    ctl = Controls(max_new_tokens=5, extra={"eos": []})

    def run(seeds):
        return decode(method, lm, tok, ["the cat", "a dog"], reward=two_words,
                      controls=[ctl.replace(seed=s) for s in seeds], **kwargs)

    one = run([1, 1])
    calls = len(prefills)
    two = run([1, 2])
    assert len(prefills) == 2 * calls  # one call each
    assert two.texts[0] == one.texts[0] == run([1, 3]).texts[0]  # each row's answer is its own seed's
