"""Parity with TRL 1.16: identical inputs through pluralign's losses and through TRL's own code.

TRL's DPO/KTO/reward losses live inline in the trainers' `_compute_loss`/`compute_loss`; those methods are
called unbound on a lightweight stand-in for the trainer, with a stand-in model that plays TRL's fused LM head:
the log-prob of token v is `table[v]` (so sums, and gradients w.r.t. the table, are exact and cheap). CPO's
and ORPO's loss methods are called the same way. Values and gradients must agree to 1e-6.
"""

from __future__ import annotations

import contextlib
import types
import zlib
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from pluralign import losses

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
from trl.experimental.cpo.cpo_trainer import CPOTrainer  # noqa: E402
from trl.experimental.orpo.orpo_trainer import ORPOTrainer  # noqa: E402
from trl.trainer.kto_trainer import KTOTrainer  # noqa: E402
from trl.trainer.reward_trainer import RewardTrainer  # noqa: E402

VOCAB, B, T = 40, 6, 12
ATOL = 1e-6
ACCELERATOR = SimpleNamespace(
    device=torch.device("cpu"),
    gather=lambda x: x,
    gather_for_metrics=lambda x: x,
    unwrap_model=lambda m: m,
    autocast=contextlib.nullcontext,
)


class TableLM(torch.nn.Module):
    """Stands in for a causal LM with TRL's fused LM head: log p(token v) = table[v], WPO's log Σp² = sq[v].

    The tables are plain tensors (not parameters) so tests take gradients with respect to the very leaf.
    """

    is_gradient_checkpointing = False

    def __init__(self, table: torch.Tensor, sq: torch.Tensor | None = None):
        super().__init__()
        self.table, self.sq = table, sq

    def forward(self, input_ids=None, attention_mask=None, labels=None, **_):
        target = labels[:, 1:]
        valid = target != -100
        zero = torch.zeros((), dtype=self.table.dtype)
        log_probs = torch.where(valid, self.table[target.clamp(min=0)], zero)
        sq = None if self.sq is None else torch.where(valid, self.sq[target.clamp(min=0)], zero)
        return SimpleNamespace(
            log_probs=log_probs,
            log_sum_sq_probs=sq,
            entropy=torch.zeros_like(log_probs),
            mean_logits=torch.zeros_like(log_probs),
            is_top1=torch.zeros_like(valid),
        )

    def token_logps(self, input_ids, completion_mask, table=None):
        """[N, T−1] per-token log-probs on completion tokens, 0 elsewhere (the harness's own bookkeeping)."""
        table = self.table if table is None else table
        return table[input_ids[:, 1:]] * completion_mask[:, 1:]


def _rows(gen, n, *, completion_len=None):
    """n right-padded rows: 1–3 prompt tokens, then a completion; returns input_ids, attention, completion masks."""
    ids = torch.randint(4, VOCAB, (n, T), generator=gen)
    attn, comp = torch.zeros(n, T, dtype=torch.long), torch.zeros(n, T, dtype=torch.long)
    for i in range(n):
        p = int(torch.randint(1, 4, (1,), generator=gen))
        c = completion_len or int(torch.randint(1, T - p + 1, (1,), generator=gen))
        attn[i, : p + c] = 1
        comp[i, p : p + c] = 1
    return ids * attn, attn, comp


def _tables(seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    policy = (-torch.rand(VOCAB, generator=gen, dtype=dtype) * 3).requires_grad_()
    ref = -torch.rand(VOCAB, generator=gen, dtype=dtype) * 3
    sq = -torch.rand(VOCAB, generator=gen, dtype=dtype) * 2
    return gen, policy, ref, sq


def _dpo_trainer(loss_types, *, weights=None, beta=0.1, label_smoothing=0.0, f_divergence="reverse_kl",
                 f_alpha=1.0, use_weighting=False, ld_alpha=None, model=None, ref_model=None,
                 discopop_tau=0.05):  # fmt: skip
    return SimpleNamespace(
        model=model, ref_model=ref_model, accelerator=ACCELERATOR, beta=beta, loss_types=list(loss_types),
        loss_weights=weights or [1.0] * len(loss_types), label_smoothing=label_smoothing,
        f_divergence_type=f_divergence, f_alpha_divergence_coef=f_alpha, use_weighting=use_weighting,
        ld_alpha=ld_alpha, precompute_ref_logps=ref_model is None, aux_loss_enabled=False,
        args=SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip


def _assert_close(ours, theirs, what):
    assert torch.allclose(ours, theirs, atol=ATOL, rtol=0), f"{what}: {ours} vs {theirs}"


# (TRL loss types, TRL trainer settings, our loss name or mixture, our hyper-parameters)
DPO_CASES = {
    "dpo": (["sigmoid"], {}, "dpo", {}),
    "dpo_beta": (["sigmoid"], {"beta": 0.7}, "dpo", {"beta": 0.7}),
    "forward_kl": (["sigmoid"], {"f_divergence": "forward_kl"}, "dpo", {"f_divergence": "forward_kl"}),
    "js": (["sigmoid"], {"f_divergence": "js_divergence"}, "dpo", {"f_divergence": "js_divergence"}),
    "alpha_limit": (
        ["sigmoid"],
        {"f_divergence": "alpha_divergence"},
        "dpo",
        {"f_divergence": "alpha_divergence"},
    ),
    "hinge": (["hinge"], {"beta": 0.5}, "hinge", {"beta": 0.5}),
    "ipo": (["ipo"], {"beta": 0.3}, "ipo", {"beta": 0.3, "length_normalized": True}),
    "exo_pair": (["exo_pair"], {"label_smoothing": 1e-3}, "exo_pair", {"label_smoothing": 1e-3}),
    "nca_pair": (["nca_pair"], {"beta": 0.5}, "nca_pair", {"beta": 0.5}),
    "robust": (["robust"], {"label_smoothing": 0.2}, "robust", {"label_smoothing": 0.2}),
    "bco_pair": (["bco_pair"], {"beta": 0.5}, "bco_pair", {"beta": 0.5}),
    "sppo_hard": (["sppo_hard"], {}, "sppo_hard", {}),
    "aot": (["aot"], {"label_smoothing": 0.1, "beta": 0.5}, "aot", {"label_smoothing": 0.1, "beta": 0.5}),
    "aot_unpaired": (["aot_unpaired"], {"label_smoothing": 0.1}, "aot_unpaired", {"label_smoothing": 0.1}),
    "apo_zero": (["apo_zero"], {"beta": 0.5}, "apo_zero", {"beta": 0.5}),
    "apo_down": (["apo_down"], {"beta": 0.5}, "apo_down", {"beta": 0.5}),
    "discopop": (["discopop"], {"beta": 0.5, "discopop_tau": 0.1}, "discopop", {"beta": 0.5, "tau": 0.1}),
    "sigmoid_norm": (["sigmoid_norm"], {"beta": 2.0}, "sigmoid_norm", {"beta": 2.0}),
    "mixture": (["sigmoid", "hinge", "ipo"], {"weights": [1.0, 0.3, 0.05]}, "dpo:1,hinge:0.3,ipo:0.05", {}),
}


def _dpo_inputs(gen, policy, *, equal_chosen=False):
    chosen = _rows(gen, B, completion_len=5 if equal_chosen else None)
    rejected = _rows(gen, B)
    ids, attn, comp = (torch.cat(pair) for pair in zip(chosen, rejected, strict=True))
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": comp}


def _ref_logps(gen, dtype=torch.float64):
    """Precomputed reference log-probs (chosen, rejected), as TRL's precompute_ref_log_probs supplies them."""
    return tuple(-torch.rand(B, generator=gen, dtype=dtype) * 20 for _ in range(2))


def _run_trl_dpo(trainer, inputs):
    return trl_dpo.DPOTrainer._compute_loss(trainer, trainer.model, inputs, return_outputs=False)


def _our_pairwise(name, inputs, policy_logps_tok, ref_c, ref_r, hp, weights=None):
    comp = inputs["completion_mask"]
    pc, pr = policy_logps_tok.sum(1).chunk(2)
    lc, lr = comp.sum(1).chunk(2)
    return losses.get(name)(
        pc, pr, ref_c, ref_r, chosen_lengths=lc, rejected_lengths=lr, weights=weights, **hp
    )


@pytest.mark.parametrize("case", sorted(DPO_CASES))
def test_dpo_trainer_losses(case):
    trl_types, settings, ours, hp = DPO_CASES[case]
    gen, policy, _, _ = _tables(zlib.crc32(case.encode()))
    model = TableLM(policy)
    inputs = _dpo_inputs(gen, policy)
    ref_c, ref_r = _ref_logps(gen)
    trainer = _dpo_trainer(trl_types, model=model, **settings)
    theirs = _run_trl_dpo(trainer, inputs | {"ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r})
    (grad_theirs,) = torch.autograd.grad(theirs, policy)

    per_token = model.token_logps(inputs["input_ids"], inputs["completion_mask"])
    loss, metrics = _our_pairwise(ours, inputs, per_token, ref_c, ref_r, hp)
    (grad_ours,) = torch.autograd.grad(loss.mean(), policy)
    _assert_close(loss.mean(), theirs, case)
    _assert_close(grad_ours, grad_theirs, f"{case} gradient")
    prefix = "dpo/" if ":" in ours else ""
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert metrics[prefix + key].mean().item() == pytest.approx(
            trainer._metrics["train"][key][0], abs=ATOL
        )


def test_alpha_divergence_matches_trl_in_float32():
    # TRL computes the α-divergence score in float32 (it has no float64 branch), so compare there.
    gen, policy, _, _ = _tables(7, dtype=torch.float32)
    model, inputs = TableLM(policy), _dpo_inputs(gen, policy)
    ref_c, ref_r = _ref_logps(gen, torch.float32)
    for alpha in (0.5, 2.0):
        trainer = _dpo_trainer(["sigmoid"], model=model, f_divergence="alpha_divergence", f_alpha=alpha)
        theirs = _run_trl_dpo(trainer, inputs | {"ref_chosen_logps": ref_c, "ref_rejected_logps": ref_r})
        per_token = model.token_logps(inputs["input_ids"], inputs["completion_mask"])
        hp = {"f_divergence": "alpha_divergence", "f_alpha_divergence_coef": alpha}
        loss, _ = _our_pairwise("dpo", inputs, per_token, ref_c, ref_r, hp)
        _assert_close(loss.mean(), theirs, f"alpha={alpha}")


def test_nll_and_rpo_mixture_match_trl_sft():
    # TRL's "sft" averages tokens over the batch; equal chosen lengths make that the mean of per-example means.
    gen, policy, _, _ = _tables(11)
    model, inputs = TableLM(policy), _dpo_inputs(gen, policy, equal_chosen=True)
    ref = dict(zip(("ref_chosen_logps", "ref_rejected_logps"), _ref_logps(gen), strict=True))
    for trl_types, weights, ours in (
        (["sft"], [1.0], "nll"),
        (["sigmoid", "sft"], [1.0, 0.5], "dpo:1,nll:0.5"),
    ):
        per_token = model.token_logps(inputs["input_ids"], inputs["completion_mask"])
        theirs = _run_trl_dpo(_dpo_trainer(trl_types, weights=weights, model=model), inputs | ref)
        loss, _ = _our_pairwise(
            ours, inputs, per_token, ref["ref_chosen_logps"], ref["ref_rejected_logps"], {}
        )
        _assert_close(loss.mean(), theirs, ours)
        grads = [torch.autograd.grad(x, policy)[0] for x in (theirs, loss.mean())]
        _assert_close(grads[1], grads[0], f"{ours} gradient")


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_wpo_weights_match_trl_use_weighting(loss_type):
    gen, policy, _, sq = _tables(13)
    model, inputs = TableLM(policy, sq), _dpo_inputs(gen, policy)
    ref = dict(zip(("ref_chosen_logps", "ref_rejected_logps"), _ref_logps(gen), strict=True))
    theirs = _run_trl_dpo(_dpo_trainer([loss_type], model=model, use_weighting=True), inputs | ref)
    mask = inputs["completion_mask"]
    per_token = model.token_logps(inputs["input_ids"], mask)
    weights = losses.wpo_weights(
        per_token, model.token_logps(inputs["input_ids"], mask, table=sq), mask[:, 1:]
    )
    ours = {"sigmoid": "dpo", "ipo": "ipo"}[loss_type]
    loss, _ = _our_pairwise(
        ours, inputs, per_token, ref["ref_chosen_logps"], ref["ref_rejected_logps"], {}, weights
    )
    _assert_close(loss.mean(), theirs, "wpo")
    grads = [torch.autograd.grad(x, policy)[0] for x in (theirs, loss.mean())]
    _assert_close(grads[1], grads[0], "wpo gradient")


def test_ld_dpo_mixing_matches_trl_ld_alpha():
    gen, policy, ref_table, _ = _tables(17)
    model, ref_model = TableLM(policy), TableLM(ref_table)
    inputs = _dpo_inputs(gen, policy)
    theirs = _run_trl_dpo(_dpo_trainer(["sigmoid"], model=model, ref_model=ref_model, ld_alpha=0.4), inputs)
    mask = inputs["completion_mask"]
    policy_logps = losses.ld_mixed_logps(model.token_logps(inputs["input_ids"], mask), mask[:, 1:], 0.4)
    ref_logps = losses.ld_mixed_logps(ref_model.token_logps(inputs["input_ids"], mask), mask[:, 1:], 0.4)
    loss, _ = losses.get("dpo")(*policy_logps.chunk(2), *ref_logps.chunk(2))
    _assert_close(loss.mean(), theirs, "ld_alpha")
    grads = [torch.autograd.grad(x, policy)[0] for x in (theirs, loss.mean())]
    _assert_close(grads[1], grads[0], "ld_alpha gradient")


@pytest.mark.parametrize("loss_type,kl_offset", [("kto", 0.3), ("kto", -0.3), ("apo_zero_unpaired", 0.0)])
def test_kto_trainer_losses(loss_type, kl_offset):
    gen, policy, _, _ = _tables(19)
    model = TableLM(policy)
    ids, attn, comp = _rows(gen, 2 * B)
    kl_ids, kl_attn, kl_comp = _rows(gen, 2 * B)
    labels = torch.tensor([True, False, True, True, False, False, True, False, True, True, False, True])
    ref_logps = -torch.rand(2 * B, generator=gen, dtype=torch.float64) * 20
    kl_policy = model.token_logps(kl_ids, kl_comp).sum(1).detach()
    # z0 = mean(kl_policy − kl_ref) = kl_offset before clamping: positive and clamped cases both covered.
    kl_ref = kl_policy - kl_offset + torch.randn(2 * B, generator=gen, dtype=torch.float64) * 0.1
    kl_ref = kl_ref - (kl_ref - (kl_policy - kl_offset)).mean()
    trainer = SimpleNamespace(
        model=model, ref_model=None, accelerator=ACCELERATOR, loss_type=loss_type, beta=0.4,
        desirable_weight=1.0, undesirable_weight=1.5, calculate_KL=loss_type == "kto", precompute_ref_logps=True,
        aux_loss_enabled=False, args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    trainer._compute_kl_logps = types.MethodType(KTOTrainer._compute_kl_logps, trainer)
    inputs = {
        "input_ids": ids, "attention_mask": attn, "completion_mask": comp, "label": labels,
        "KL_input_ids": kl_ids, "KL_attention_mask": kl_attn, "KL_completion_mask": kl_comp,
        "ref_logps": ref_logps, "ref_KL_logps": kl_ref,
    }  # fmt: skip
    theirs = KTOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    (grad_theirs,) = torch.autograd.grad(theirs, policy)

    policy_logps = model.token_logps(ids, comp).sum(1)
    hp = {"beta": 0.4, "desirable_weight": 1.0, "undesirable_weight": 1.5}
    loss, metrics = losses.get(loss_type)(
        policy_logps, ref_logps, labels, kl_policy_logps=kl_policy, kl_ref_logps=kl_ref, **hp
    )
    (grad_ours,) = torch.autograd.grad(loss.mean(), policy)
    _assert_close(loss.mean(), theirs, loss_type)
    _assert_close(grad_ours, grad_theirs, f"{loss_type} gradient")
    if loss_type == "kto":
        assert metrics["kl_baseline"].item() == pytest.approx(trainer._metrics["train"]["kl"][0], abs=ATOL)
        assert metrics["kl_baseline"].item() == pytest.approx(max(kl_offset, 0.0), abs=1e-9)
    theirs = trainer._metrics["train"]
    for key in ("rewards/chosen", "rewards/rejected"):  # (mean, count): the loop weighs each by its count
        assert metrics[key][0].item() == pytest.approx(theirs[key][0], abs=ATOL)
    margin = metrics["rewards/chosen"][0] - metrics["rewards/rejected"][0]
    assert margin.item() == pytest.approx(theirs["rewards/margins"][0], abs=ATOL)


def _cpo(loss_type, beta, **kw):
    attrs = {"alpha": 0.0, "simpo_gamma": 0.5, "label_smoothing": 0.0} | kw
    return SimpleNamespace(loss_type=loss_type, beta=beta, accelerator=ACCELERATOR, **attrs)


def _random_pairs(seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logps = -torch.rand(4, B, generator=gen, dtype=dtype) * 30
    lengths = torch.randint(1, 40, (2, B), generator=gen)
    return logps, lengths


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_matches_trl_cpo_trainer(label_smoothing):
    (pc, pr, _, _), (lc, lr) = _random_pairs(23)
    pc.requires_grad_()
    trainer = _cpo("simpo", 2.5, simpo_gamma=1.4, label_smoothing=label_smoothing)
    theirs, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(trainer, pc / lc, pr / lr)
    hp = {"beta": 2.5, "gamma_beta_ratio": 1.4 / 2.5, "label_smoothing": label_smoothing}
    loss, metrics = losses.get("simpo")(pc, pr, chosen_lengths=lc, rejected_lengths=lr, **hp)
    _assert_close(loss, theirs, "simpo")
    _assert_close(metrics["rewards/chosen"], chosen_rewards, "simpo rewards")
    grads = [torch.autograd.grad(x.sum(), pc)[0] for x in (theirs, loss)]
    _assert_close(grads[1], grads[0], "simpo gradient")


@pytest.mark.parametrize("loss_type,ours,hp", [
    ("sigmoid", "cdpo", {"label_smoothing": 0.15}),
    ("ipo", "ipo", {"length_normalized": False}),
])  # fmt: skip
def test_reference_free_cpo_forms_match_cdpo_and_sequence_ipo(loss_type, ours, hp):
    # CPO's "sigmoid" (with label smoothing) and "ipo" are cDPO and sequence-level IPO with a zero reference.
    (pc, pr, _, _), _ = _random_pairs(29)
    zero = torch.zeros_like(pc)
    theirs, _, _ = CPOTrainer.cpo_loss(
        _cpo(loss_type, 0.05, **{"label_smoothing": hp.get("label_smoothing", 0.0)}), pc, pr
    )
    loss, _ = losses.get(ours)(pc, pr, zero, zero, beta=0.05, **hp)
    _assert_close(loss, theirs, ours)


def test_orpo_odds_ratio_matches_trl():
    (pc, pr, _, _), (lc, lr) = _random_pairs(31, torch.float32)  # TRL computes ORPO in float32
    pc, pr = pc / 10, pr / 10  # ORPO's average log-probs must be < 0 and mostly near 0
    trainer = SimpleNamespace(beta=0.25, accelerator=ACCELERATOR)
    theirs, chosen_rewards, _, log_odds_ratio, log_odds_chosen = ORPOTrainer.odds_ratio_loss(
        trainer, pc / lc, pr / lr
    )
    loss, metrics = losses.get("orpo")(pc, pr, chosen_lengths=lc, rejected_lengths=lr, beta=0.25)
    # ORPO = NLL(chosen) − mean(TRL's β·logσ(log-odds)); the NLL part is the "nll" metric.
    _assert_close(loss - metrics["nll"], -theirs, "orpo odds-ratio term")
    _assert_close(metrics["rewards/chosen"], chosen_rewards, "orpo rewards")
    _assert_close(metrics["log_odds_ratio"].mean(), log_odds_ratio, "log_odds_ratio")
    _assert_close(metrics["log_odds_chosen"].mean(), log_odds_chosen, "log_odds_chosen")


@pytest.mark.parametrize("center", [None, 0.05])
@pytest.mark.parametrize("with_margin", [False, True])
def test_bt_matches_trl_reward_trainer(center, with_margin):
    gen = torch.Generator().manual_seed(37)
    rewards = torch.randn(2 * B, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    margin = torch.rand(B, generator=gen, dtype=torch.float64)
    model = lambda **_: SimpleNamespace(logits=rewards)
    model.training = True
    trainer = SimpleNamespace(
        model=model, accelerator=ACCELERATOR, args=SimpleNamespace(center_rewards_coefficient=center),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {"attention_mask": torch.ones(2 * B, 3)} | ({"margin": margin} if with_margin else {})
    theirs = RewardTrainer.compute_loss(trainer, model, inputs)
    chosen, rejected = rewards.squeeze(-1).chunk(2)
    kwargs = {"margin": margin} if with_margin else {}
    loss, metrics = losses.get("bt")(chosen, rejected, center_coef=center or 0.0, **kwargs)
    _assert_close(loss.mean(), theirs, "bt")
    assert metrics["accuracy"].mean().item() == pytest.approx(trainer._metrics["train"]["accuracy"][0])
    grads = [torch.autograd.grad(x, rewards)[0] for x in (theirs, loss.mean())]
    _assert_close(grads[1], grads[0], "bt gradient")


def _logits_batch(seed):
    """A CPO/ORPO-style batch and logits: one prompt token, chosen completions filling the row (so TRL's
    batch-token-mean NLL, which also covers prompt tokens in ORPO, equals the per-example mean), rejected ones
    right-padded to varying lengths."""
    gen = torch.Generator().manual_seed(seed)
    batch = {}
    for side in ("chosen", "rejected"):
        ids = torch.randint(4, VOCAB, (B, T), generator=gen)
        attn = torch.ones(B, T, dtype=torch.long)
        if side == "rejected":
            for i in range(B):
                attn[i, 1 + int(torch.randint(1, T, (1,), generator=gen)) :] = 0
        labels = ids.masked_fill(attn == 0, -100)
        labels[:, 0] = -100
        batch |= {f"{side}_input_ids": ids * attn, f"{side}_attention_mask": attn, f"{side}_labels": labels}
    logits = torch.randn(2 * B, T, VOCAB, generator=gen, dtype=torch.float64).requires_grad_()
    return batch, logits


def _sequence_logps(batch, logits):
    """Sums and lengths of completion log-probs from the logits (the harness's own bookkeeping)."""
    labels = torch.cat([batch["chosen_labels"], batch["rejected_labels"]])[:, 1:]
    mask = labels != -100
    token = logits[:, :-1].log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    sums, lengths = (token * mask).sum(1), mask.sum(1)
    return sums.chunk(2), lengths.chunk(2)


def _logits_trainer(cls, logits, **attrs):
    trainer = SimpleNamespace(
        accelerator=ACCELERATOR, is_encoder_decoder=False, pad_token_id=0, padding_value=0, aux_loss_enabled=False,
        concatenated_inputs=cls.concatenated_inputs, get_batch_logps=cls.get_batch_logps, **attrs,
    )  # fmt: skip
    for method in ("concatenated_forward", "cpo_loss", "odds_ratio_loss"):
        if hasattr(cls, method):
            setattr(trainer, method, types.MethodType(getattr(cls, method), trainer))
    model = lambda *args, **kwargs: SimpleNamespace(logits=logits)
    return trainer, model


@pytest.mark.parametrize("cpo_alpha", [0.0, 0.7])
def test_full_cpo_simpo_step_matches_simpo_plus_nll(cpo_alpha):
    batch, logits = _logits_batch(41)
    trainer, model = _logits_trainer(
        CPOTrainer, logits, loss_type="simpo", beta=2.0, simpo_gamma=0.8, label_smoothing=0.0, alpha=0.0,
        cpo_alpha=cpo_alpha,
    )  # fmt: skip
    theirs, _ = CPOTrainer.get_batch_loss_metrics(trainer, model, batch)
    (pc, pr), (lc, lr) = _sequence_logps(batch, logits)
    mixed = losses.mixture({"simpo": 1.0, "nll": cpo_alpha}, hyperparams={"simpo": {"gamma_beta_ratio": 0.4}})
    loss, _ = mixed(pc, pr, chosen_lengths=lc, rejected_lengths=lr, beta=2.0)
    _assert_close(loss.mean(), theirs, "cpo simpo")
    grads = [torch.autograd.grad(x, logits)[0] for x in (theirs, loss.mean())]
    _assert_close(grads[1], grads[0], "cpo simpo gradient")


def test_full_orpo_step_matches_orpo():
    batch, logits = _logits_batch(43)
    trainer, model = _logits_trainer(ORPOTrainer, logits, beta=0.3)
    theirs, metrics = ORPOTrainer.get_batch_loss_metrics(trainer, model, batch)
    (pc, pr), (lc, lr) = _sequence_logps(batch, logits)
    loss, ours = losses.get("orpo")(pc, pr, chosen_lengths=lc, rejected_lengths=lr, beta=0.3)
    _assert_close(loss.mean(), theirs, "orpo")
    assert ours["nll"].mean().item() == pytest.approx(metrics["nll_loss"], abs=ATOL)
    grads = [torch.autograd.grad(x, logits)[0] for x in (theirs, loss.mean())]
    _assert_close(grads[1], grads[0], "orpo gradient")
