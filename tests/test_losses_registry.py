"""The loss registry: lookup, descriptions, calling convention, mixtures and user-facing errors."""

from __future__ import annotations

import pytest
import torch

from pluralign import losses
from pluralign.errors import ConfigError, PluralignError
from pluralign.losses import registry

EXPECTED = {
    "pairwise": "dpo cdpo robust ipo hinge exo_pair nca_pair bco_pair sppo_hard aot aot_unpaired apo_zero apo_down "
    "discopop sigmoid_norm rdpo simpo orpo nll mnpo modpo",
    "unpaired": "kto bco apo_zero_unpaired",
    "listwise": "lipo_lambda list_mle pair_logistic softmax_list",
    "reward": "bt bce",
}


def _pairs(seed=0, n=4):
    gen = torch.Generator().manual_seed(seed)
    pc, pr, rc, rr = (-torch.rand(n, generator=gen, dtype=torch.float64) * 20 for _ in range(4))
    lengths = {"chosen_lengths": torch.randint(1, 20, (n,), generator=gen)}
    lengths["rejected_lengths"] = torch.randint(1, 20, (n,), generator=gen)
    return (pc, pr, rc, rr), lengths


def test_every_documented_loss_is_registered_with_its_kind():
    for kind, names in EXPECTED.items():
        for name in names.split():
            assert losses.describe(name).kind == kind, name
    assert sorted(losses.names()) == sorted(n for names in EXPECTED.values() for n in names.split())


def test_describe_reads_inputs_and_defaults_off_the_signature():
    dpo = losses.describe("dpo")
    assert dpo.needs_reference and not dpo.needs_lengths
    assert dpo.hyperparams == {"beta": 0.1, "f_divergence": "reverse_kl", "f_alpha_divergence_coef": 1.0}
    assert "Rafailov" in dpo.doc
    simpo = losses.describe("simpo")
    assert not simpo.needs_reference and simpo.needs_lengths
    assert simpo.hyperparams == {"beta": 2.0, "gamma_beta_ratio": 0.5, "label_smoothing": 0.0}
    assert losses.describe("kto").required[-2:] == ("kl_policy_logps", "kl_ref_logps")
    assert "history_chosen_logps" in losses.describe("mnpo").inputs
    assert not losses.describe("aot").weighted


def test_uniform_calling_convention_ignores_unused_inputs():
    (pc, pr, rc, rr), lengths = _pairs()
    with_all, _ = losses.get("dpo")(pc, pr, rc, rr, **lengths)
    assert torch.allclose(with_all, losses.get("dpo")(pc, pr, rc, rr)[0])
    simpo, _ = losses.get("simpo")(pc, pr, rc, rr, **lengths)  # reference given but unused
    assert torch.allclose(simpo, losses.get("simpo")(pc, pr, **lengths)[0])


def test_unknown_loss_suggests_closest_and_lists_valid():
    with pytest.raises(PluralignError, match=r"unknown loss 'dpp' \(did you mean 'dpo'\?\).*kto"):
        losses.get("dpp")
    with pytest.raises(ConfigError, match="unknown loss 'simpoo'"):
        losses.mixture("dpo:1,simpoo:1")


def test_unknown_hyperparameter_is_a_clear_error():
    (pc, pr, rc, rr), _ = _pairs()
    with pytest.raises(
        ConfigError, match=r"loss 'dpo' has no hyper-parameter 'betta' \(did you mean 'beta'\?\)"
    ):
        losses.get("dpo")(pc, pr, rc, rr, betta=0.2)
    with pytest.raises(ConfigError, match="hyper-parameters: none"):
        losses.get("nll")(pc, pr, chosen_lengths=torch.ones(4), beta=1.0)


def test_missing_inputs_are_named():
    (pc, pr, _, _), lengths = _pairs()
    with pytest.raises(ConfigError, match="loss 'dpo' needs ref_chosen_logps, ref_rejected_logps"):
        losses.get("dpo")(pc, pr)
    with pytest.raises(ConfigError, match="loss 'simpo' needs chosen_lengths, rejected_lengths"):
        losses.get("simpo")(pc, pr)
    with pytest.raises(ConfigError, match="ipo needs chosen_lengths"):  # only the normalised form needs them
        losses.get("ipo")(pc, pr, pc, pr)
    assert losses.get("ipo")(pc, pr, pc, pr, length_normalized=False)[0].shape == (4,)
    with pytest.raises(ConfigError, match="kl_policy_logps"):
        losses.get("kto")(pc, pr, torch.ones(4, dtype=torch.bool))


def test_inputs_of_different_batch_sizes_are_named():
    # torch broadcast a batch of 1 against the others: a loss of pairs nobody gave, without a word
    (pc, pr, rc, rr), lengths = _pairs()
    with pytest.raises(ConfigError, match="loss 'dpo': inputs of different batch sizes .*policy_rejected_logps 1"):
        losses.get("dpo")(pc, pr[:1], rc, rr)
    with pytest.raises(ConfigError, match="weights 3"):
        losses.get("dpo")(pc, pr, rc, rr, weights=torch.ones(3))
    with pytest.raises(ConfigError, match="different batch sizes"):
        losses.mixture("dpo:1,ipo:1")(pc, pr, rc[:1], rr, **lengths)
    labels = torch.tensor([True, False, True, False])  # KTO's KL batch is averaged: its size is its own
    assert losses.get("kto")(pc, rc, labels, kl_policy_logps=pr[:2], kl_ref_logps=rr[:2])[0].shape == (4,)


def test_bad_hyperparameter_values():
    (pc, pr, rc, rr), _ = _pairs()
    for name, hp, message in [
        ("robust", {"label_smoothing": 0.5}, r"'label_smoothing' must be in \[0, 0.5\), got 0.5"),
        ("cdpo", {"label_smoothing": -0.1}, "label_smoothing"),
        ("exo_pair", {"label_smoothing": 0.0}, r"\(0, 1\)"),
        ("dpo", {"f_divergence": "kl"}, "'f_divergence' must be one of the f-divergences .*forward_kl.*got 'kl'"),
        ("mnpo", {"history_weights": (1.0,)}, "history_weights"),
        ("mnpo", {"history_weights": ["a"]}, "'history_weights' must be a list of numbers >= 0"),
        # values of the wrong type or sign used to reach the loss: a traceback, or a silently reversed DPO
        ("dpo", {"beta": -1.0}, "'beta' must be > 0, got -1.0"),
        ("ipo", {"beta": 0}, "'beta' must be > 0, got 0"),
        ("dpo", {"beta": "abc"}, "'beta' must be a finite number, got 'abc'"),
        ("dpo", {"beta": [1, 2]}, "'beta' must be a finite number"),
        ("dpo", {"beta": None}, "'beta' must be a finite number, got None"),
        ("dpo", {"beta": float("nan")}, "'beta' must be a finite number"),
        ("ipo", {"length_normalized": "yes"}, "'length_normalized' must be true or false"),
        ("simpo", {"gamma_beta_ratio": "abc"}, "'gamma_beta_ratio' must be a finite number"),
    ]:
        kw = {
            "history_chosen_logps": torch.stack([rc, rc], 1),
            "history_rejected_logps": torch.stack([rr, rr], 1),
        }
        with pytest.raises(ConfigError, match=message):
            losses.get(name)(pc, pr, rc, rr, **(kw if name == "mnpo" else {}), **hp)


def test_per_example_weights():
    (pc, pr, rc, rr), _ = _pairs()
    w = torch.tensor([0.0, 1.0, 2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(
        losses.get("dpo")(pc, pr, rc, rr, weights=w)[0], w * losses.get("dpo")(pc, pr, rc, rr)[0]
    )
    with pytest.raises(ConfigError, match="sorts the batch"):
        losses.get("aot")(pc, pr, rc, rr, weights=w)


def test_mixture_is_the_weighted_sum_with_prefixed_metrics():
    (pc, pr, rc, rr), lengths = _pairs(1)
    mixed = losses.mixture({"dpo": 1.0, "ipo": 0.25, "nll": 0.5})
    loss, metrics = mixed(pc, pr, rc, rr, **lengths, beta=0.2)
    parts = {n: losses.get(n)(pc, pr, rc, rr, **lengths, **hp) for n, hp in
             [("dpo", {"beta": 0.2}), ("ipo", {"beta": 0.2}), ("nll", {})]}  # fmt: skip
    expected = parts["dpo"][0] + 0.25 * parts["ipo"][0] + 0.5 * parts["nll"][0]
    assert torch.allclose(loss, expected)
    assert torch.allclose(metrics["dpo/rewards/margins"], parts["dpo"][1]["rewards/margins"])
    assert torch.allclose(metrics["ipo/loss"], parts["ipo"][0]) and "nll/nll" in metrics
    assert mixed.info.kind == "pairwise" and mixed.info.needs_reference and mixed.info.needs_lengths
    # The string form and get() build the same thing.
    for same in (losses.mixture("dpo:1, ipo:0.25, nll:0.5"), losses.get("dpo:1,ipo:0.25,nll:0.5")):
        assert torch.allclose(same(pc, pr, rc, rr, **lengths, beta=0.2)[0], loss)


def test_mixture_hyperparameters_and_weights():
    (pc, pr, rc, rr), lengths = _pairs(2)
    mixed = losses.mixture("dpo,ipo:0.5", hyperparams={"ipo": {"beta": 0.5}})
    loss, _ = mixed(pc, pr, rc, rr, **lengths, beta=0.3)  # beta reaches dpo; ipo keeps its fixed 0.5
    expected = (
        losses.get("dpo")(pc, pr, rc, rr, beta=0.3)[0]
        + 0.5 * losses.get("ipo")(pc, pr, rc, rr, **lengths, beta=0.5)[0]
    )
    assert torch.allclose(loss, expected)
    w = torch.tensor([1.0, 0.0, 3.0, 1.0], dtype=torch.float64)
    assert torch.allclose(mixed(pc, pr, rc, rr, **lengths, beta=0.3, weights=w)[0], w * loss)


def test_mixture_errors():
    with pytest.raises(ConfigError, match="one kind"):
        losses.mixture({"dpo": 1.0, "kto": 1.0})
    with pytest.raises(ConfigError, match="not a number"):
        losses.mixture("dpo:x")
    with pytest.raises(ConfigError, match="at least one"):
        losses.mixture("")
    with pytest.raises(ConfigError, match="finite"):
        losses.mixture({"dpo": float("nan")})
    with pytest.raises(ConfigError, match="weight of 'nll' must be finite and >= 0, got -1"):
        losses.mixture("dpo:1,nll:-1")
    with pytest.raises(ConfigError, match="not in the mixture"):
        losses.mixture("dpo", hyperparams={"ipo": {"beta": 1.0}})
    with pytest.raises(ConfigError, match="no hyper-parameter 'gamma'"):
        losses.mixture("dpo", hyperparams={"dpo": {"gamma": 1.0}})
    (pc, pr, rc, rr), _ = _pairs()
    with pytest.raises(ConfigError, match="no hyper-parameter 'tau'"):
        losses.mixture("dpo,hinge")(pc, pr, rc, rr, tau=1.0)


def test_register_rejects_duplicates_and_hyperparameters_without_defaults():
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("dpo", kind="pairwise")(lambda policy_chosen_logps: None)
    try:
        with pytest.raises(TypeError, match="keyword-only with a default"):

            def bad(policy_chosen_logps, *, beta):
                raise AssertionError

            registry.register("_test_bad", kind="pairwise")(bad)
    finally:
        registry._LOSSES.pop("_test_bad", None)
    with pytest.raises(ValueError, match="unknown loss kind"):
        registry.register("_x", kind="pointwise")


def test_a_mixture_naming_a_loss_twice_is_refused():
    with pytest.raises(ConfigError, match="names 'dpo' twice"):  # was dpo at weight 0.5 alone: the 1 was dropped
        losses.get("dpo:1,nll:0.2,dpo:0.5")


def test_a_loss_name_that_is_not_text_or_inputs_that_do_not_bind_are_named():
    # get(None) was "argument of type 'NoneType' is not iterable"; a fifth positional tensor a bare TypeError
    (pc, pr, rc, rr), lengths = _pairs()
    with pytest.raises(ConfigError, match="a loss name must be a string.*got NoneType"):
        losses.get(None)
    with pytest.raises(ConfigError, match="loss 'dpo': too many positional arguments; its inputs: policy_chosen_logps"):
        losses.get("dpo")(pc, pr, rc, rr, lengths["chosen_lengths"])
    with pytest.raises(ConfigError, match="loss 'dpo': multiple values for argument 'ref_chosen_logps'"):
        losses.get("dpo")(pc, pr, rc, rr, ref_chosen_logps=rc)
