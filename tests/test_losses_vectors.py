"""Hand-checked values, identities and gradient signs of every loss (shared/specs/training.md §8)."""

from __future__ import annotations

import math

import pytest
import torch

from pluralign import losses

LOG2 = math.log(2.0)
B = 5


def _logps(seed=0, n=B, scale=20.0):
    gen = torch.Generator().manual_seed(seed)
    return -torch.rand(n, generator=gen, dtype=torch.float64) * scale


def _pair_at(h, beta=0.1, n=B):
    """Pairwise inputs whose margin is exactly h = ρ_w − ρ_l (ρ_l = 0)."""
    ref_c, ref_r = _logps(1, n), _logps(2, n)
    return ref_c + h, ref_r.clone(), ref_c, ref_r


def _call(name, pc, pr, rc, rr, lengths=(7, 7), **hp):
    lc = torch.full_like(pc, lengths[0], dtype=torch.long)
    lr = torch.full_like(pr, lengths[1], dtype=torch.long)
    # MODPO's margin rewards (the other objectives' rewards): zero margins make it DPO with β / w0
    margins = {n: torch.zeros_like(pc.detach()) for n in losses.describe(name).required if n.endswith("margin_rewards")}
    return losses.get(name)(pc, pr, rc, rr, chosen_lengths=lc, rejected_lengths=lr, **margins, **hp)


def _value(name, h=0.0, **kw):
    return _call(name, *_pair_at(h), **kw)[0]


# ---------------------------------------------------------------------------------------------- init values
INIT = {
    "dpo": LOG2,
    "cdpo": LOG2,
    "robust": LOG2,
    "ipo": 25.0,
    "hinge": 1.0,
    "exo_pair": -LOG2 - 0.5 * (math.log1p(-1e-3) + math.log(1e-3)),  # ½(log½−log(1−ε)) + ½(log½−log ε)
    "nca_pair": 2 * LOG2,
    "bco_pair": 2 * LOG2,
    "sppo_hard": 2 * 5.0**2,  # (0 − 1/(2β))² twice
    "aot": LOG2,
    "aot_unpaired": LOG2,
    "apo_zero": 1.0,
    "apo_down": 1.0,
    "discopop": 0.5 * LOG2 + 0.5,  # m = σ(0) = ½ mixes log 2 and e⁰
    "sigmoid_norm": LOG2,
    "rdpo": LOG2,
    "mnpo": 1 / (4 * 0.0075**2),  # 4444.44
}


@pytest.mark.parametrize("name", sorted(INIT))
def test_init_values(name):
    assert torch.allclose(_value(name), torch.full((B,), INIT[name], dtype=torch.float64), atol=1e-9)


def test_named_init_constants():
    assert INIT["mnpo"] == pytest.approx(4444.44, abs=0.01)
    assert INIT["exo_pair"] == pytest.approx(2.761231, abs=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.49])
@pytest.mark.parametrize("name", ["cdpo", "robust"])
def test_label_smoothed_init_is_log2_for_any_eps(name, eps):
    assert torch.allclose(_value(name, label_smoothing=eps), torch.full((B,), LOG2, dtype=torch.float64))


@pytest.mark.parametrize("f", ["forward_kl", "js_divergence", "alpha_divergence"])
def test_f_divergence_init_is_log2(f):
    value = _value("dpo", f_divergence=f, f_alpha_divergence_coef=0.5)
    assert torch.allclose(value, torch.full((B,), LOG2, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- identities
def test_dpo_symmetry():
    h = torch.linspace(-30, 30, B, dtype=torch.float64)
    assert torch.allclose(_value("dpo", h) - _value("dpo", -h), -0.1 * h, atol=1e-12)


def test_rdpo_unbiasedness():
    h, eps = torch.linspace(-30, 30, B, dtype=torch.float64), 0.2
    noisy = (1 - eps) * _value("robust", h, label_smoothing=eps) + eps * _value(
        "robust", -h, label_smoothing=eps
    )
    assert torch.allclose(noisy, _value("dpo", h), atol=1e-12)


def test_label_smoothing_zero_is_dpo():
    h = torch.linspace(-10, 10, B, dtype=torch.float64)
    for name in ("cdpo", "robust"):
        assert torch.allclose(_value(name, h, label_smoothing=0.0), _value("dpo", h))


def test_cdpo_optimum():
    eps, beta = 0.1, 0.1
    beta_h = math.log((1 - eps) / eps)
    assert beta_h == pytest.approx(2.1972, abs=1e-4)
    h = torch.tensor([beta_h / beta], dtype=torch.float64, requires_grad=True)
    loss = _value("cdpo", h, label_smoothing=eps).sum()
    (grad,) = torch.autograd.grad(loss, h)
    assert abs(grad.item()) < 1e-12
    for step in (-1.0, 1.0):
        assert _value("cdpo", h.detach() + step, label_smoothing=eps)[0] > loss.item() / B


@pytest.mark.parametrize("normalized", [False, True])
def test_ipo_zero_at_target_margin(normalized):
    # τ = 0.1 ⇒ target 1/(2τ) = 5 for h (sequence form) or for ρ_w/|y_w| − ρ_l/|y_l| (normalised form).
    rc, rr = _logps(1), _logps(2)
    rho_w, rho_l = (4 * 5.3, 0.6) if normalized else (5.6, 0.6)  # lengths (4, 2): 21.2/4 − 0.6/2 = 5
    kw = {"lengths": (4, 2), "length_normalized": normalized}
    assert torch.allclose(
        _call("ipo", rc + rho_w, rr + rho_l, rc, rr, **kw)[0], torch.zeros(B, dtype=torch.float64), atol=1e-12
    )
    assert (_call("ipo", rc + 2 * rho_w, rr + rho_l, rc, rr, **kw)[0] > 1.0).all()  # overshoot is penalised


def test_hinge_zero_past_unit_margin():
    h = torch.tensor([10.0, 12.0, 50.0, 9.0, 0.0], dtype=torch.float64, requires_grad=True)
    loss = _value("hinge", h)
    assert torch.allclose(loss.detach(), torch.tensor([0, 0, 0, 0.1, 1], dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), h)
    assert grad[:3].abs().max() == 0 and (grad[3:] < 0).all()


def test_sigmoid_norm_equal_lengths_is_dpo_with_scaled_beta():
    h = torch.linspace(-20, 20, B, dtype=torch.float64)
    ln = _call("sigmoid_norm", *_pair_at(h), lengths=(8, 8), beta=2.0)[0]
    assert torch.allclose(ln, _value("dpo", h, beta=2.0 / 8))


def test_rdpo_reduces_to_dpo_and_length_sign():
    h = torch.linspace(-20, 20, B, dtype=torch.float64)
    assert torch.allclose(_call("rdpo", *_pair_at(h), lengths=(9, 3), alpha=0.0)[0], _value("dpo", h))
    assert torch.allclose(_call("rdpo", *_pair_at(h), lengths=(6, 6), alpha=0.3)[0], _value("dpo", h))
    alpha = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    loss = _call("rdpo", *_pair_at(0.0), lengths=(9, 3), alpha=alpha)[0].sum()
    (grad,) = torch.autograd.grad(loss, alpha)
    assert grad < 0  # a longer chosen answer already carries margin α·(|y_w| − |y_l|)


def test_simpo_equal_averages_and_length_invariance():
    avg = -1.3
    for ratio in (0.0, 0.5):
        pc, pr = (
            torch.full((B,), avg * 10, dtype=torch.float64),
            torch.full((B,), avg * 4, dtype=torch.float64),
        )
        loss, _ = _call("simpo", pc, pr, None, None, lengths=(10, 4), beta=2.0, gamma_beta_ratio=ratio)
        gamma = 2.0 * ratio
        assert torch.allclose(loss, torch.full((B,), math.log1p(math.exp(gamma)), dtype=torch.float64))
    pc, pr = _logps(3), _logps(4)
    short = _call("simpo", pc, pr, None, None, lengths=(5, 7))[0]
    doubled = _call("simpo", 2 * pc, 2 * pr, None, None, lengths=(10, 14))[0]  # every token duplicated
    assert torch.allclose(short, doubled)


def test_orpo_equal_averages():
    pc, pr = torch.full((B,), -6.0, dtype=torch.float64), torch.full((B,), -3.0, dtype=torch.float64)
    loss, metrics = _call("orpo", pc, pr, None, None, lengths=(4, 2), beta=0.3)
    assert torch.allclose(loss, torch.full((B,), 1.5 + 0.3 * LOG2, dtype=torch.float64))
    assert torch.allclose(metrics["nll"], torch.full((B,), 1.5, dtype=torch.float64))
    assert torch.allclose(_call("orpo", pc, pr, None, None, lengths=(4, 2), beta=0.0)[0], metrics["nll"])


def test_nll_is_mean_token_nll_of_chosen():
    loss, _ = _call("nll", torch.tensor([-6.0, -2.0]), torch.tensor([-1.0, -1.0]), None, None, lengths=(3, 1))
    assert torch.allclose(loss, torch.tensor([2.0, 2.0 / 3]))


def test_mnpo_ratio_one_is_sequence_ipo_and_history():
    h = torch.linspace(-50, 150, B, dtype=torch.float64)
    ipo = _value("ipo", h, beta=0.0075, length_normalized=False)
    assert torch.allclose(_value("mnpo", h, ratio=1.0), ipo)
    # Opponents equal to the reference reproduce the no-history loss; history_weights are normalised.
    pc, pr, rc, rr = _pair_at(h)
    hist_c, hist_r = torch.stack([rc, rc - 3], 1), torch.stack([rr, rr], 1)
    base = losses.get("mnpo")(pc, pr, rc, rr)[0]
    same = losses.get("mnpo")(pc, pr, rc, rr, history_chosen_logps=hist_c, history_rejected_logps=hist_r,
                              history_weights=(2.0, 0.0))[0]  # fmt: skip
    assert torch.allclose(same, base)
    mixed = losses.get("mnpo")(pc, pr, rc, rr, history_chosen_logps=hist_c, history_rejected_logps=hist_r)[0]
    shifted = h - (1 - 0.3333) * (-1.5) - 1 / (2 * 0.0075)  # the uniform opponent margin is 1.5 lower
    assert torch.allclose(mixed, shifted**2)


# ---------------------------------------------------------------------------------------------- unpaired
def _unpaired(name, rho, labels, **kw):
    ref = _logps(5, len(labels))
    kl_ref = _logps(6, len(labels))
    return losses.get(name)(ref + rho, ref, labels, kl_policy_logps=kl_ref.clone(), kl_ref_logps=kl_ref, **kw)


def test_kto_init_and_baseline():
    labels = torch.tensor([True, False, True, False, False])
    loss, metrics = _unpaired("kto", 0.0, labels, desirable_weight=1.0, undesirable_weight=1.6)
    assert torch.allclose(loss, torch.tensor([0.5, 0.8, 0.5, 0.8, 0.8], dtype=torch.float64))
    assert metrics["kl_baseline"].item() == 0.0
    # z0 is clamped at 0 and carries no gradient.
    kl_policy = torch.tensor([-3.0, -9.0, -1.0], dtype=torch.float64, requires_grad=True)
    z0 = losses.kto_kl_baseline(kl_policy, torch.zeros(3, dtype=torch.float64))
    assert z0.item() == 0.0 and not z0.requires_grad
    assert losses.kto_kl_baseline(-kl_policy, torch.zeros(3)).item() == pytest.approx(13 / 3)


@pytest.mark.parametrize("name", ["kto", "bco", "apo_zero_unpaired"])
def test_unpaired_label_means_combine_over_batches_into_the_labels_means(name):
    """As the loop combines micro-batches and evaluation batches (`parallel.Weighted`, each batch's metrics
    weighted by its size): rewards/chosen was the mean of per-batch means, here (2·0.05 + 2·0.3)/4 = 0.175
    for the desirable examples' real mean 0.1333; a batch of one label gave a margin of its own."""
    from pluralign.train.parallel import Weighted

    class One:  # a single process: reduce is the identity
        num_processes = 1

        @staticmethod
        def reduce(t, reduction):
            return t

    rho = torch.tensor([0.0, 1.0, 3.0, -2.0], dtype=torch.float64)
    labels = torch.tensor([True, True, True, False])
    sums = Weighted(torch.device("cpu"))
    for part in (slice(0, 2), slice(2, 4)):  # batches of two: [desirable, desirable], [desirable, undesirable]
        ref = torch.zeros(2, dtype=torch.float64)
        _, metrics = losses.get(name)(rho[part], ref, labels[part], kl_policy_logps=ref, kl_ref_logps=ref)
        for k, v in metrics.items():
            sums.add(k, v, 2)
    reduced = sums.reduce(One())
    assert reduced["rewards/chosen"] == pytest.approx(0.1 * rho[labels].mean().item())
    assert reduced["rewards/rejected"] == pytest.approx(0.1 * -2.0)
    assert "rewards/margins" not in reduced


def test_apo_zero_unpaired_init():
    labels = torch.tensor([True, False, True])
    loss, _ = losses.get("apo_zero_unpaired")(_logps(1, 3), _logps(1, 3), labels, undesirable_weight=2.0)
    assert torch.allclose(loss, torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64))


def test_bco_init_shift_and_running_mean():
    labels = torch.tensor([True, False, True, False, True])
    assert torch.allclose(_unpaired("bco", 0.0, labels)[0], torch.full((B,), LOG2, dtype=torch.float64))
    # Rewards equal to the shift δ classify at ½ either way.
    assert torch.allclose(
        _unpaired("bco", 2.0, labels, reward_shift=0.2)[0], torch.full((B,), LOG2, dtype=torch.float64)
    )
    running = losses.RunningMean()
    assert running.mean == 0.0
    running.update(torch.tensor([1.0, 2.0, 3.0]))
    assert running.update(torch.tensor([6.0])) == pytest.approx(3.0)
    restored = losses.RunningMean()
    restored.load_state_dict(running.state_dict())
    assert restored.update(torch.tensor([8.0])) == pytest.approx(4.0)


def test_udm_weights():
    p = torch.tensor([0.01, 0.5, 0.8, 0.99, 0.5])
    labels = torch.tensor([False, False, False, False, True])
    w = losses.udm_weights(p, labels)
    assert torch.allclose(w, torch.tensor([0.5, 1.0, 4.0, 10.0, 1.0]), rtol=1e-6)
    weighted = _unpaired("bco", 0.0, labels, weights=w.double())[0]
    assert torch.allclose(weighted, LOG2 * w.double())


# ---------------------------------------------------------------------------------------------- listwise
def _listwise(name, s, psi, mask=None, beta=1.0):
    ref = _logps(7, s.numel()).view_as(s)
    return losses.get(name)(ref + s / beta, ref, psi, mask=mask, beta=beta)


def test_lipo_k2_is_scaled_dpo():
    s = torch.tensor([[0.4, -0.2], [-1.0, 0.5]], dtype=torch.float64)
    psi = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    dpo = -torch.nn.functional.logsigmoid(s[:, 0] - s[:, 1])
    weight = 1 - 1 / math.log2(3)
    assert weight == pytest.approx(0.369070, abs=1e-6)
    assert torch.allclose(_listwise("lipo_lambda", s, psi)[0], weight * dpo)
    for name in ("pair_logistic", "list_mle", "softmax_list"):
        assert torch.allclose(_listwise(name, s, psi)[0], dpo), name


def test_lipo_three_items_by_hand():
    # s = (0.2, 0.5, −0.1) ranks the items (2, 1, 3); ψ = (1, ½, 0) gives gains (1, √2 − 1, 0).
    s = torch.tensor([[0.2, 0.5, -0.1]], dtype=torch.float64)
    psi = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)
    inv_d = {1: 1.0, 2: 1 / math.log2(3), 3: 0.5}
    gain = (1.0, math.sqrt(2) - 1, 0.0)
    rank = (2, 1, 3)
    expected = sum(
        abs(gain[i] - gain[j])
        * abs(inv_d[rank[i]] - inv_d[rank[j]])
        * math.log1p(math.exp(-(s[0, i] - s[0, j])))
        for i, j in ((0, 1), (0, 2), (1, 2))
    )
    assert _listwise("lipo_lambda", s, psi)[0].item() == pytest.approx(expected, abs=1e-12)


def test_listwise_ties_and_padding():
    s = torch.tensor([[0.3, -0.4, 0.1]], dtype=torch.float64)
    tied = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
    for name in ("lipo_lambda", "pair_logistic"):
        assert _listwise(name, s, tied)[0].item() == 0.0
    psi = torch.tensor([[1.0, 0.0, 0.7]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    for name in ("lipo_lambda", "pair_logistic", "list_mle", "softmax_list"):
        padded = _listwise(name, s, psi, mask=mask)[0]
        short = _listwise(name, s[:, :2], psi[:, :2])[0]
        assert torch.allclose(padded, short), name


def test_win_rate_labels():
    scores = torch.tensor([[3.0, 1.0, 2.0, 2.0], [5.0, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    expected = torch.tensor([[1.0, 0.0, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(losses.win_rate_labels(scores, mask), expected)


# ---------------------------------------------------------------------------------------------- reward
def test_bt_equal_rewards_centering_and_shift_invariance():
    r = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(losses.get("bt")(r, r)[0], torch.full((3,), LOG2, dtype=torch.float64))
    centred = losses.get("bt")(r, r, center_coef=0.01)[0]
    assert torch.allclose(centred, LOG2 + 0.01 * (2 * r) ** 2)
    rw, rl = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    assert torch.allclose(losses.get("bt")(rw, rl)[0], losses.get("bt")(rw + 7, rl + 7)[0])
    assert torch.allclose(losses.get("bt")(rw, rl, margin=torch.ones(4))[0], losses.get("bt")(rw - 1, rl)[0])


def test_bce_zero_logit_and_pos_weight():
    logits, labels = torch.zeros(4, dtype=torch.float64), torch.tensor([True, False, True, False])
    assert torch.allclose(losses.get("bce")(logits, labels)[0], torch.full((4,), LOG2, dtype=torch.float64))
    weighted = losses.get("bce")(logits, labels, pos_weight=3.0)[0]
    assert torch.allclose(weighted, torch.tensor([3, 1, 3, 1], dtype=torch.float64) * LOG2)


# ---------------------------------------------------------------------------------------------- token level
def test_wpo_weights_uniform_policy_is_one():
    vocab = 16
    logits = torch.zeros(4, 6, vocab, dtype=torch.float64)
    sq = losses.log_sum_sq_probs(logits)
    assert torch.allclose(sq, torch.full((4, 6), -math.log(vocab), dtype=torch.float64))
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]] * 2)
    token_logps = torch.full((4, 6), -math.log(vocab), dtype=torch.float64, requires_grad=True) * mask
    weights = losses.wpo_weights(token_logps, sq * mask, mask)
    assert torch.allclose(weights, torch.ones(2, dtype=torch.float64)) and not weights.requires_grad


def test_ld_mixed_logps_by_hand():
    # chosen completion 3 tokens (left-padded), rejected 1 token: shared length 1.
    per_token = torch.tensor([[0.0, -1.0, -1.0, -1.0], [-2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 0]])
    assert torch.allclose(losses.ld_mixed_logps(per_token, mask, 0.5), torch.tensor([-2.0, -2.0]))
    assert torch.allclose(losses.ld_mixed_logps(per_token, mask, 1.0), per_token.sum(1))


# ---------------------------------------------------------------------------------------------- gradient signs
PAIRWISE = [n for n in losses.names() if losses.describe(n).kind == "pairwise"]
# Exceptions, by the formula (values checked by hand, β = 0.1): APO-down lowers both likelihoods, and at init
# its two chosen terms cancel (rejected: β/4); DiscoPOP's modulation σ(z/τ) makes dL/dz at 0 equal
# (1 − log 2)/(4τ) − ¾, positive for TRL's τ = 0.05 (the loss is non-convex around 0) and negative for
# τ > (1 − log 2)/3, so at its default both signs are reversed.
DISCOPOP_DZ = (1 - LOG2) / (4 * 0.05) - 0.75
INIT_GRADS = {"apo_down": (0.0, 0.1 / 4), "discopop": (0.1 * DISCOPOP_DZ, -0.1 * DISCOPOP_DZ)}


def _init_grads(name, **hp):
    rc, rr = _logps(1) / 5, _logps(2) / 5  # small enough that ORPO's average log-probs stay below 0
    pc, pr = rc.clone().requires_grad_(), rr.clone().requires_grad_()
    loss, _ = _call(name, pc, pr, rc, rr, **hp)
    return torch.autograd.grad(loss.sum(), (pc, pr), allow_unused=True)


@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_gradient_signs_at_init(name):
    grad_c, grad_r = _init_grads(name)
    if name in INIT_GRADS:
        for grad, value in zip((grad_c, grad_r), INIT_GRADS[name], strict=True):
            assert torch.allclose(grad, torch.full_like(grad, value), atol=1e-12), name
    elif name == "nll":  # SFT on the chosen answer never looks at the rejected one
        assert (grad_c < 0).all() and (grad_r is None or (grad_r == 0).all())
    else:
        assert (grad_c < 0).all() and (grad_r > 0).all(), name


def test_discopop_gradient_sign_with_wider_modulation():
    grad_c, grad_r = _init_grads("discopop", tau=1.0)
    assert (grad_c < 0).all() and (grad_r > 0).all()


def test_unpaired_and_listwise_gradient_signs_at_init():
    labels = torch.tensor([True, False, True, False])
    for name in ("kto", "bco", "apo_zero_unpaired"):
        policy = _logps(9, 4).requires_grad_()
        ref = policy.detach().clone()
        loss, _ = losses.get(name)(policy, ref, labels, kl_policy_logps=ref, kl_ref_logps=ref)
        (grad,) = torch.autograd.grad(loss.sum(), policy)
        assert (grad[labels] < 0).all() and (grad[~labels] > 0).all(), name
    psi = torch.tensor([[1.0, 0.2, 0.6]], dtype=torch.float64)
    for name in ("lipo_lambda", "pair_logistic", "list_mle", "softmax_list"):
        policy = _logps(10, 3).view(1, 3).requires_grad_()
        loss, _ = losses.get(name)(policy, policy.detach().clone(), psi)
        (grad,) = torch.autograd.grad(loss.sum(), policy)
        assert grad[0, 0] < 0 and grad[0, 1] > 0, name
