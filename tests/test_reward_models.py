"""Bradley–Terry, multi-objective (MORE), binary, ensemble and implicit reward models; save/load; heads."""

import json
import math
import random

import pytest
import torch

from pluralign.models.heads import last_token_index, pool
from pluralign.reward import (
    BinaryRewardModel,
    BTRewardModel,
    Ensemble,
    MultiObjectiveRewardModel,
    auroc,
    load_reward_model,
    min_norm_element,
)
from pluralign.reward.binary import prior_correction
from pluralign.reward.bt import bt_pair_step
from pluralign.reward.multi import direction, multi_pair_step


def _pair_batch(chosen, rejected, **extra):
    return {"features": torch.cat([chosen, rejected]), **extra}


def test_last_token_index_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 3, 0]
    hidden = torch.arange(3 * 4 * 2, dtype=torch.float).view(3, 4, 2)
    assert pool(hidden, mask, "last")[1].tolist() == hidden[1, 3].tolist()
    assert pool(hidden, mask, "mean")[2].tolist() == hidden[2, 0].tolist()


def test_bt_equal_rewards_give_log2_and_shift_invariance():
    model = BTRewardModel(None, feature_dim=4)
    torch.nn.init.zeros_(model.head.out.weight)
    f = torch.randn(3, 4)
    loss, metrics = bt_pair_step(model, _pair_batch(f, torch.randn(3, 4)))
    assert loss.tolist() == pytest.approx([math.log(2)] * 3)
    assert float(metrics["accuracy"]) == 0.0  # ties count as wrong
    torch.nn.init.normal_(model.head.out.weight)
    batch = _pair_batch(f, torch.randn(3, 4))
    before, _ = bt_pair_step(model, batch)
    with torch.no_grad():
        model.head.out.bias += 7.5  # the same constant on every reward
    after, _ = bt_pair_step(model, batch)
    torch.testing.assert_close(before, after)
    # centering penalises the shift: η·(r_w + r_l)²
    centered, _ = bt_pair_step(model, batch, center_coef=0.01)
    assert (centered > after).all()


def test_bt_margin_enters_the_loss():
    model = BTRewardModel(None, feature_dim=2)
    torch.nn.init.zeros_(model.head.out.weight)
    loss, _ = bt_pair_step(model, _pair_batch(torch.zeros(1, 2), torch.zeros(1, 2), margin=torch.tensor([1.0])),
                           use_margins=True)
    assert loss.detach()[0].item() == pytest.approx(-math.log(1 / (1 + math.e)))  # −log σ(0 − 1)


def test_mgda_min_norm_on_hand_computed_gradients():
    # min over γ of ‖γ(2,0) + (1−γ)(0,1)‖² = 4γ² + (1−γ)²  →  γ = 1/5
    assert min_norm_element(torch.tensor([[2.0, 0.0], [0.0, 1.0]])).tolist() == pytest.approx([0.2, 0.8])
    # (1,0) and (1,1): the closest point of the segment to 0 is the vertex (1,0)
    assert min_norm_element(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).tolist() == pytest.approx([1.0, 0.0])
    # opposite gradients cancel
    assert min_norm_element(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])).tolist() == pytest.approx([0.5, 0.5])
    # three vectors: the simplex centroid of e1, e2, −e1−e2 is the origin
    lam = min_norm_element(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    assert lam.tolist() == pytest.approx([1 / 3] * 3, abs=1e-4)
    assert min_norm_element(torch.tensor([[3.0, 4.0]])).tolist() == [1.0]


def test_multi_objective_one_task_is_plain_bt_and_weights_combine():
    model = MultiObjectiveRewardModel(None, ["help", "safe"], feature_dim=3)
    c, r = torch.randn(4, 3), torch.randn(4, 3)
    tasks = torch.zeros(4, dtype=torch.long)
    loss, metrics = multi_pair_step(model, _pair_batch(c, r, tasks=tasks))
    rw = model.head(torch.cat([c, r]))
    expected = -torch.nn.functional.logsigmoid(rw[:4, 0] - rw[4:, 0])
    torch.testing.assert_close(loss, expected)
    assert float(metrics["lambda_help"]) == 1.0
    f = torch.randn(2, 3)
    full = model.rewards(f)
    torch.testing.assert_close(model.rewards(f, user={"help": 0.25, "safe": 0.75})[:, 0], full @ torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(model.rewards(f, user=direction(90))[:, 0], full[:, 1], atol=1e-6, rtol=0)


def test_auroc_hand_example_and_ties():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert auroc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)
    assert auroc([1, 2, 3], [0, 1, 1]) == 1.0


def test_binary_prior_correction_restores_the_base_rate():
    # trained on balanced data (rate ½), deployed where positives are 10%: σ(0 + offset) = 0.1
    off = prior_correction(0.5, 0.1)
    assert 1 / (1 + math.exp(-off)) == pytest.approx(0.1)
    model = BinaryRewardModel(None, feature_dim=2, logit_offset=off)
    torch.nn.init.zeros_(model.head.out.weight)
    assert model.rewards(torch.zeros(1, 2)).item() == pytest.approx(0.1)


def test_ensemble_mean_and_disagreement():
    class Const:
        objectives = ["r"]

        def __init__(self, v):
            self.v = v

        def score(self, prompts, responses, user=None):
            return torch.full((len(prompts), 1), self.v)

    ens = Ensemble([Const(1.0), Const(3.0)])
    out = ens.score_all(["p"] * 2, ["a", "b"])
    assert out.mean.tolist() == [[2.0], [2.0]] and out.std.tolist() == [[1.0], [1.0]]
    assert Ensemble([Const(1.0)]).disagreement(["p"], ["a"]).tolist() == [[0.0]]


def _toy_pairs(n, seed):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        filler = " ".join(rng.choice(["cat", "dog", "ok", "fine"]) for _ in range(3))
        rows.append({"prompt": "question " + rng.choice(["cat", "dog"]), "chosen": f"good {filler}",
                     "rejected": f"bad {filler}", "user": f"u{i % 3}", "group": "g" if i % 2 else "h"})
    return rows


def test_bt_recipe_learns_a_separable_toy_preference_and_round_trips(tiny_backbone, tmp_path):
    from pluralign.config import from_dict
    from pluralign.train.recipes.reward import RewardConfig, run

    for name, n, seed in (("train", 48, 0), ("test", 24, 1)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _toy_pairs(n, seed)))
    cfg = from_dict(RewardConfig, {
        "model": str(tiny_backbone), "data": str(tmp_path / "train.jsonl"), "eval_data": str(tmp_path / "test.jsonl"),
        "output_dir": str(tmp_path / "run"), "n_heads": 2,
        "loop": {"learning_rate": 3e-3, "batch_size": 8, "num_epochs": 3, "progress": False}})
    out = run(cfg).run_dir
    report = json.loads((out / "report" / "eval.json").read_text())
    assert report["accuracy"] == 1.0 and set(report["per_group"]) == {"g", "h"}
    model = load_reward_model(out)
    prompts, responses = ["question cat", "question dog"], ["good ok ok", "bad fine cat"]
    before = model.score(prompts, responses)
    assert before[0, 0] > before[1, 0]
    model.save(tmp_path / "copy")
    again = load_reward_model(tmp_path / "copy")
    assert torch.equal(before, again.score(prompts, responses))
    # a head ensemble on one backbone reports its disagreement
    ens = Ensemble([again]).score_all(prompts, responses)
    assert ens.members.shape == (2, 2, 1) and (ens.std > 0).all()
    torch.testing.assert_close(ens.mean, before)


def test_implicit_reward_is_zero_at_init_and_sum_form_matches_logps(tiny_backbone):
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.reward import ImplicitRewardModel

    policy, tok = load_model(str(tiny_backbone)), load_tokenizer(str(tiny_backbone))
    ref = load_model(str(tiny_backbone))
    prompts, responses = ["question cat", "question dog"], ["good ok", "bad"]
    ratio = ImplicitRewardModel(policy, tok, ref, beta=0.1).score(prompts, responses)
    assert torch.allclose(ratio, torch.zeros(2, 1), atol=1e-6)
    total = ImplicitRewardModel(policy, tok, form="sum").score(prompts, responses)
    avg = ImplicitRewardModel(policy, tok, form="avg").score(prompts, responses)
    assert (total < 0).all() and total[0, 0] < avg[0, 0]  # 'good ok' + EOS: 3 tokens, so sum < mean
    with pytest.raises(Exception, match="reference"):
        ImplicitRewardModel(policy, tok, form="ratio")


def test_more_two_task_step_uses_min_norm_weights():
    torch.manual_seed(0)
    model = MultiObjectiveRewardModel(None, ["help", "safe"], feature_dim=3)
    c, r = torch.randn(6, 3), torch.randn(6, 3)
    tasks = torch.tensor([0, 0, 0, 0, 1, 1])
    loss, metrics = multi_pair_step(model, _pair_batch(c, r, tasks=tasks), weighting="mgda")
    lam = torch.tensor([float(metrics["lambda_help"]), float(metrics["lambda_safe"])])
    assert lam.sum().item() == pytest.approx(1.0) and (lam >= 0).all()
    rw = model.head(torch.cat([c, r])).detach()
    per_pair = -torch.nn.functional.logsigmoid(rw[:6][torch.arange(6), tasks] - rw[6:][torch.arange(6), tasks])
    # MORE: K_present · λ_t · ℓ_i per example
    torch.testing.assert_close(loss.detach(), 2 * lam[tasks] * per_pair)
    # the weights are the min-norm point of the two head gradients
    g = []
    for t in (0, 1):
        w = model.head.out.weight.detach().clone().requires_grad_(True)
        out = torch.nn.functional.linear(torch.cat([c, r]), w, model.head.out.bias.detach())
        sel = tasks == t
        lt = -torch.nn.functional.logsigmoid(out[:6][sel, t] - out[6:][sel, t]).mean()
        g.append(torch.autograd.grad(lt, w)[0].flatten())
    torch.testing.assert_close(lam, min_norm_element(torch.stack(g)), atol=1e-5, rtol=0)


def test_value_head_is_per_token():
    from pluralign.models.heads import ValueHead

    v = ValueHead(8)
    assert v(torch.randn(2, 5, 8)).shape == (2, 5)


def test_more_mgda_steps_run_in_the_loops_no_grad_evaluation():
    # the loop evaluates held-out data under torch.no_grad(); λ's own gradients were refused there
    # ("element 0 of tensors does not require grad"), so `train morm` with eval_data stopped after training
    from pluralign.reward.multi import multi_regression_step

    torch.manual_seed(0)
    model = MultiObjectiveRewardModel(None, ["help", "safe"], feature_dim=3)
    c, r = torch.randn(6, 3), torch.randn(6, 3)
    pairs = _pair_batch(c, r, tasks=torch.tensor([0, 0, 0, 0, 1, 1]))
    rated = {"features": c, "targets": torch.randn(6, 2), "target_mask": torch.ones(6, 2)}
    for step, batch in ((multi_pair_step, pairs), (multi_regression_step, rated)):
        with_grad = step(model, batch, weighting="mgda")[0].detach()
        with torch.no_grad():
            torch.testing.assert_close(step(model, batch, weighting="mgda")[0], with_grad)


def test_a_saved_implicit_reward_model_reloads_from_any_working_directory(tiny_backbone, tmp_path, monkeypatch):
    # from_paths("policy") stored "policy" as given: loaded elsewhere, it was another directory or none
    from pluralign.reward.implicit import ImplicitRewardModel

    monkeypatch.chdir(tiny_backbone.parent)
    model = ImplicitRewardModel.from_paths(tiny_backbone.name, tiny_backbone.name, beta=0.5)
    model.save(tmp_path / "implicit")
    monkeypatch.chdir(tmp_path)
    again = load_reward_model(tmp_path / "implicit")
    prompts, responses = ["question cat"], ["good ok"]
    torch.testing.assert_close(again.score(prompts, responses), model.score(prompts, responses))


def test_an_ensemble_of_binary_models_is_evaluated_on_their_probability_scale(tiny_backbone):
    # the ensemble's mean P(thumbs-up) was read as a logit: mean_probability σ(p), accuracy 'p > 0' (every
    # response predicted positive) and the calibration of σ(p)
    from pluralign.data.records import Binary
    from pluralign.models.load import load_model, load_tokenizer
    from pluralign.reward.base import TextEncoder
    from pluralign.reward.evaluation import evaluate_records

    encoder = TextEncoder(load_model(str(tiny_backbone)), load_tokenizer(str(tiny_backbone)))
    model = BinaryRewardModel(encoder, logit_offset=-3.0)  # P < ½ throughout: every response predicted negative
    records = [Binary("question cat", r, label) for r, label in (("good ok", True), ("bad", False), ("ok", False))]
    alone = evaluate_records(model, records)
    assert alone["accuracy"] == pytest.approx(2 / 3)
    together = evaluate_records(Ensemble([model, model]), records)
    for key in ("auroc", "accuracy", "mean_probability"):
        assert together[key] == pytest.approx(alone[key]), key
    assert together["calibration"]["before"] == pytest.approx(alone["calibration"]["before"])
