"""Multi-objective training: conditioning schemes, combiners (RACO, PAMA), MODPO, MAH-DPO heads, soups,
and the preference recipe with objectives, checked against hand-computed values (specs/training.md §4, §8)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from loop_toys import make_model_dir

from pluralign import conditioning, losses
from pluralign.cli import main
from pluralign.data.collate import PairwiseCollator
from pluralign.data.records import Pairwise, Rated
from pluralign.errors import ConfigError
from pluralign.losses import combine
from pluralign.losses import multiobjective as mo
from pluralign.models.multihead import MultiHead, install_heads, mixed, multihead_of
from pluralign.models.soup import interpolate
from pluralign.models.tiny import tiny_llama, word_tokenizer

OBJ = ["informativeness", "conciseness"]


# ---------------------------------------------------------------- conditioning


@pytest.mark.parametrize("weights, message", [
    ([-1, 2], "non-negative"), ([float("nan"), 1], "finite"), ([0, 0], "all zero"), ([1, 2, 3], "3 value(s) given for 2"),
    ({"fun": 1}, "unknown objective"),
])
def test_bad_weights_name_the_field(weights, message):
    scheme = conditioning.get("system_message", OBJ)
    with pytest.raises(ConfigError, match="request 3: weights") as e:
        scheme.condition(weights=weights, field="request 3: ")
    assert message in str(e.value)


def test_zero_direction_is_an_error_and_directions_are_unit():
    scheme = conditioning.get("system_message", OBJ)
    with pytest.raises(ConfigError, match="direction: the direction has norm 0"):
        scheme.condition(direction=[0, 0])
    assert np.allclose(scheme.condition(direction=[3, 4]).direction, (0.6, 0.8))
    assert np.allclose(scheme.condition(weights={"conciseness": 2}).weights, (0.0, 1.0))


def test_system_message_states_weights_or_direction_for_text_and_chat():
    scheme = conditioning.get("system_message", OBJ)
    c = scheme.condition(weights=[0.7, 0.3])
    assert scheme.prompt("question: x answer:", c) == "weights : informativeness 70 conciseness 30 . question: x answer:"
    chat = scheme.prompt([{"role": "user", "content": "hi"}], scheme.condition(direction=[1, 1]))
    assert chat[0] == {"role": "system", "content": "direction : informativeness 71 conciseness 71 ."}
    merged = scheme.prompt([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}], c)
    assert merged[0]["content"].endswith("Be kind.") and len(merged) == 2


def test_training_condition_comes_from_the_record():
    scheme = conditioning.get("system_message", OBJ)
    tagged = Pairwise("p", "a", "b", objective="conciseness", user="u1", group="g")
    assert scheme.condition_of(tagged) == conditioning.Condition(weights=(0.0, 1.0), user="u1", group="g")
    stated = Pairwise("p", "a", "b", meta={"weights": {"informativeness": 1, "conciseness": 3}})
    assert scheme.condition_of(stated).weights == (0.25, 0.75)


def test_reward_tokens_fit_and_map_preferences_like_ric():
    records = [Rated("p", "r", {"informativeness": x, "conciseness": y}) for x, y in [(0, 1), (1, 0), (2, 2)]]
    scheme = conditioning.get("reward_tokens", OBJ)
    scheme.fit(records)
    z = np.round((np.array([0, 1, 2]) - 1) / np.std([0, 1, 2]), 1)
    assert np.allclose(scheme.params["low"], [z.min()] * 2) and np.allclose(scheme.params["high"], [z.max()] * 2)
    # RiC 'l2': ω = (1, 0) ⇒ (high_1, low_2)
    assert np.allclose(scheme.scores_for(scheme.condition(weights=[1, 0])), [z.max(), z.min()])
    shown = conditioning.condition_record(scheme, records[0]).prompt
    assert shown == f"scores : informativeness {z[0]} conciseness {z[1]} . p"


def test_ensure_vocabulary_teaches_a_word_tokenizer_the_statement():
    tok = word_tokenizer(["question", "answer", ":", "."])
    model = tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2)
    scheme = conditioning.get("system_message", OBJ)
    added = conditioning.ensure_vocabulary(tok, model, scheme.vocabulary())
    assert {"weights", "informativeness", "7", "0"} <= set(added)
    ids = tok.encode(scheme.prompt("question :", scheme.condition(weights=[0.73, 0.27])))
    assert tok.unk_token_id not in ids
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_ensure_vocabulary_leaves_a_byte_level_tokenizer_with_an_unknown_token_alone():
    # SmolLM2's byte-level BPE names an unknown token: its pre-tokenized words ('Ġconciseness', 'Ġ71') were
    # added as tokens no text ever produces, growing the model's vocabulary (49152 → 49155) for nothing
    from pluralign.models.tiny import bpe_tokenizer

    tok = bpe_tokenizer(["question : describe the river . answer :"] * 5, vocab_size=300)
    assert tok.unk_token_id is not None
    model = tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2)
    size = len(tok)
    for name in ("system_message", "reward_tokens"):
        assert conditioning.ensure_vocabulary(tok, model, conditioning.get(name, OBJ).vocabulary()) == []
    assert len(tok) == size and model.get_input_embeddings().weight.shape[0] == size


def test_added_tokens_are_prompt_only_and_the_models_answers_keep_the_bases_distribution(tmp_path):
    # the new output rows took probability mass from every real token: a conditioned model could emit its
    # statement words or control tokens, and its KL to the base came out negative
    import copy

    import torch

    from pluralign.models.load import load_model

    tok = word_tokenizer(["question", "answer", ":", "."])
    base = tiny_llama(len(tok), hidden_size=16, num_layers=1, num_heads=2, seed=3)
    grown = copy.deepcopy(base)
    old = len(tok)
    conditioning.ensure_vocabulary(tok, grown, conditioning.get("system_message", OBJ).vocabulary())
    ids = torch.tensor([[tok.convert_tokens_to_ids("question"), tok.convert_tokens_to_ids(":")]])
    with torch.no_grad():
        want = torch.log_softmax(base(ids).logits, -1)
        got = torch.log_softmax(grown(ids).logits, -1)
    assert torch.allclose(got[..., :old], want, atol=1e-6) and got[..., old:].exp().max() == 0
    grown.save_pretrained(tmp_path)
    with torch.no_grad():
        again = torch.log_softmax(load_model(tmp_path)(ids).logits, -1)
    assert torch.allclose(again[..., :old], want, atol=1e-6) and again[..., old:].exp().max() == 0


def test_collator_carries_objective_signs_user_group(tiny_word_tokenizer):
    records = [Pairwise("the cat", "sat", "ran", objective="conciseness", user="u1", group="g"),
               Pairwise("the dog", "sat", "ran", meta={"signs": {"informativeness": -1, "conciseness": 1}})]
    batch = PairwiseCollator(tiny_word_tokenizer, objectives=OBJ, who=True)(records)
    assert batch["objective"].tolist() == [1, -1]
    assert batch["signs"].tolist() == [[0, 1], [-1, 1]]
    assert batch["user"] == ["u1", None] and batch["group"] == ["g", None]


# ---------------------------------------------------------------- RACO, PAMA, MODPO


def test_raco_two_objective_closed_form_matches_a_grid():
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 5001)
    for _ in range(100):
        g = rng.normal(size=(2, 4))
        H, w = g @ g.T, rng.dirichlet([1, 1])
        b, s = H @ w, 0.4 * math.sqrt(w @ H @ w)
        lam = mo.raco_lambda_two(H, b, s)
        best = min(mo.raco_objective(np.array([x, 1 - x]), H, b, s) for x in grid)
        assert mo.raco_objective(np.array([lam, 1 - lam]), H, b, s) <= best + 1e-9


def test_raco_three_objective_solver_matches_a_grid():
    rng = np.random.default_rng(1)
    pts = [np.array([i, j, 1 - i - j]) for i in np.linspace(0, 1, 101) for j in np.linspace(0, 1, 101) if i + j <= 1]
    for _ in range(20):
        g = rng.normal(size=(3, 5))
        H, w = g @ g.T, rng.dirichlet([1, 1, 1])
        b, s = H @ w, 0.4 * math.sqrt(w @ H @ w)
        p = mo.raco_simplex_min(H, b, s)
        assert abs(p.sum() - 1) < 1e-9 and (p >= -1e-12).all()
        assert mo.raco_objective(p, H, b, s) <= min(mo.raco_objective(q, H, b, s) for q in pts) + 1e-9


def test_raco_coefficients_sanity():
    H = np.array([[1.0, -0.5], [-0.5, 2.0]])
    w = np.array([0.8, 0.2])
    assert np.allclose(mo.raco_coefficients(H, w, c=0.0), w)  # c = 0: the weighted DPO gradient
    a = mo.raco_coefficients(H, w, c=0.4, clip=True)
    p = mo.raco_simplex_min(H, H @ w, 0.4 * math.sqrt(w @ H @ w))
    clipped = np.minimum(p, w)
    expected = w + 0.4 * math.sqrt(w @ H @ w) * clipped / math.sqrt(clipped @ H @ clipped)
    assert np.allclose(a, expected) and (clipped <= w + 1e-12).all()


@pytest.mark.parametrize("adv, s_star", [((-1.0, 2.0), 0.0), ((1.0, 3.0), 1.0), ((-3.0, -1.0), -1.0)])
def test_pama_vectors(adv, s_star):
    a = torch.tensor([adv])
    assert mo.pama_scalar(a).item() == s_star
    c = mo.pama_weights(a)
    assert torch.allclose(c.sum(1), torch.ones(1)) and (c >= 0).all()
    assert (c * a).sum().item() == pytest.approx(s_star)


def test_modpo_reduces_to_dpo():
    pc, pr, rc, rr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.5]), torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -1.0])
    zero = torch.zeros(2)
    dpo = losses.get("dpo")(pc, pr, rc, rr, beta=0.1)[0]
    assert torch.allclose(losses.get("modpo")(pc, pr, rc, rr, chosen_margin_rewards=zero, rejected_margin_rewards=zero,
                                              beta=0.1, w0=1.0)[0], dpo)
    same = torch.tensor([0.3, -0.2])
    half = losses.get("modpo")(pc, pr, rc, rr, chosen_margin_rewards=same, rejected_margin_rewards=same, beta=0.1, w0=0.5)[0]
    assert torch.allclose(half, losses.get("dpo")(pc, pr, rc, rr, beta=0.2)[0])
    # hand value: h = (−1+1.5) − (−3+2) = 1.5; margin 0.4 − 0.1 = 0.3; R = (0.15 − 0.3)/0.5 = −0.3
    got = losses.get("modpo")(pc[:1], pr[:1], rc[:1], rr[:1], chosen_margin_rewards=torch.tensor([0.4]),
                              rejected_margin_rewards=torch.tensor([0.1]), beta=0.1, w0=0.5)[0]
    assert got.item() == pytest.approx(-math.log(1 / (1 + math.exp(0.3))), abs=1e-6)


def test_weighted_combiner_mean_is_the_weighted_objective_losses():
    losses_ = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    mask = torch.tensor([[True, False], [True, False], [False, True]])
    per, _ = combine.combine("weighted", losses_, mask, torch.tensor([0.25, 0.75]), combine.Context())
    assert per.mean().item() == pytest.approx(0.25 * 2.0 + 0.75 * 5.0)


def test_raco_combiner_update_is_the_cagrad_clip_direction():
    torch.manual_seed(0)
    theta = torch.nn.Parameter(torch.randn(3))
    x = torch.randn(4, 3)

    def objectives():
        return torch.stack([(x @ theta).sin(), (x @ theta) ** 2 * 0.1 - x[:, 0] * theta[1]], 1)

    per_obj = objectives()
    mask = torch.ones(4, 2, dtype=torch.bool)
    w = torch.tensor([0.8, 0.2])
    g = [torch.autograd.grad(per_obj[:, k].mean(), theta, retain_graph=True)[0].double() for k in range(2)]
    G = torch.stack(g)
    a = mo.raco_coefficients((G @ G.T).numpy(), w.double().numpy(), c=0.4, clip=True)
    per, _ = combine.combine("raco", per_obj, mask, w, combine.Context(params=[theta]), {"c": 0.4})
    (grad,) = torch.autograd.grad(per.mean(), theta)
    assert torch.allclose(grad.double(), a[0] * g[0] + a[1] * g[1], atol=1e-6)
    means = per_obj.detach().mean(0)  # the logged value is the surrogate Σ a_k L_k
    assert per.mean().item() == pytest.approx(float(a[0] * means[0] + a[1] * means[1]), abs=1e-6)
    per0, _ = combine.combine("raco", objectives(), mask, w, combine.Context(params=[theta]), {"c": 0.0})
    (grad0,) = torch.autograd.grad(per0.mean(), theta)
    assert torch.allclose(grad0.double(), 0.8 * g[0] + 0.2 * g[1], atol=1e-6)


def test_weighted_combiner_trains_nothing_without_a_weighted_objective_in_the_batch():
    losses_ = torch.tensor([[0.0, 2.0], [0.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[False, True], [False, True]])  # only objective 1, which has weight 0
    per, _ = combine.combine("weighted", losses_, mask, torch.tensor([1.0, 0.0]), combine.Context())
    (grad,) = torch.autograd.grad(per.mean(), losses_)
    assert per.mean().item() == 0.0 and torch.count_nonzero(grad) == 0


def test_raco_with_the_gram_at_the_log_probs_weights_losses_by_cagrad_clip_of_their_derivatives():
    anchor = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)  # chosen log-probs; h = anchor here
    signs = torch.tensor([[1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    theta = torch.nn.Parameter(torch.zeros(1))
    per_obj = -F.logsigmoid(0.1 * signs * anchor[:, None])
    # ∂L_k/∂h_b = −β s_bk σ(−β s_bk h_b) / 3 (L_k a mean over the three pairs), by hand
    u = -0.1 * signs * torch.sigmoid(-0.1 * signs * anchor.detach()[:, None]) / 3
    H = (u.T @ u).double().numpy()
    w = torch.tensor([0.7, 0.3])
    a = mo.raco_coefficients(H, w.double().numpy(), c=0.4, clip=True)
    per, _ = combine.combine("raco", per_obj, signs != 0, w, combine.Context(params=[theta], anchor=anchor),
                             {"gram": "logps"})
    (grad,) = torch.autograd.grad(per.mean(), anchor)
    assert torch.allclose(grad.double(), a[0] * u[:, 0].double() + a[1] * u[:, 1].double(), atol=1e-7)
    assert not np.allclose(a, w.numpy())  # the objectives conflict on two pairs of three: not the linear step
    with pytest.raises(ConfigError, match="gram must be"):
        combine.combine("raco", per_obj, signs != 0, w, combine.Context(params=[theta], anchor=anchor), {"gram": "x"})


def test_raco_normalises_each_objective_by_the_batch_so_a_tied_pair_adds_log_2_and_no_gradient():
    # RACO's L_k = mean over all B pairs of −logσ(β s_bk h_b): a pair tied on k counts in B, adds no gradient.
    anchor = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    signs = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])
    per_obj = -F.logsigmoid(0.1 * signs * anchor[:, None])  # the tied cell is log 2, masked out below
    u = (-0.1 * signs * torch.sigmoid(-0.1 * signs * anchor.detach()[:, None]) / 3).double()  # /B, not /n_k
    w = torch.tensor([0.5, 0.3, 0.2])
    a = mo.raco_coefficients((u.T @ u).numpy(), w.double().numpy(), c=0.4)
    context = combine.Context(params=[torch.nn.Parameter(torch.zeros(1))], anchor=anchor)
    per, logs = combine.combine("raco", per_obj, signs != 0, w, context, {"gram": "logps"})
    (grad,) = torch.autograd.grad(per.mean(), anchor)
    assert torch.allclose(grad.double(), u @ torch.as_tensor(a), atol=1e-7)
    assert logs["raco/a2"].item() == pytest.approx(a[2])
    masked = per_obj.detach() * (signs != 0)
    assert per.mean().item() == pytest.approx(float((masked.sum(0) / 3).double() @ torch.as_tensor(a)), abs=1e-6)
    # The weighted combiner normalised the same way: Σ_k w_k (Σ_b ℓ_bk) / B, the RACO paper's "DPO LW".
    per_w, _ = combine.combine("weighted", per_obj, signs != 0, w, combine.Context(), {"normalize": "batch"})
    assert per_w.mean().item() == pytest.approx(float((masked.sum(0) / 3) @ w), abs=1e-6)
    per_o, _ = combine.combine("weighted", per_obj, signs != 0, w, combine.Context())
    assert per_o.mean().item() == pytest.approx(float((masked.sum(0) / torch.tensor([3.0, 3.0, 2.0])) @ w), abs=1e-6)
    for name in ("raco", "weighted"):
        with pytest.raises(ConfigError, match="normalize must be one of"):
            combine.combine(name, per_obj, signs != 0, w, context, {"normalize": "pairs"})


def test_raco_logs_its_coefficients_gradient_norms_and_update_length():
    anchor = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    signs = torch.tensor([[1.0, -1.0, 0.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]])  # objective 2 tied on pair 0
    per_obj = -F.logsigmoid(0.1 * signs * anchor[:, None])
    # ∂L_k/∂h_b = −β s_bk σ(−β s_bk h_b) / n_k, n_k the pairs with a preference on k (3, 3, 2)
    u = (-0.1 * signs * torch.sigmoid(-0.1 * signs * anchor.detach()[:, None]) / torch.tensor([3.0, 3.0, 2.0])).double()
    H = (u.T @ u).numpy()
    w = torch.tensor([0.5, 0.3, 0.2])
    a = mo.raco_coefficients(H, w.double().numpy(), c=0.4)
    _, logs = combine.combine("raco", per_obj, signs != 0, w, combine.Context(params=[torch.nn.Parameter(torch.zeros(1))],
                              anchor=anchor), {"gram": "logps", "normalize": "objective"})
    wn = w.double().numpy()
    for k in range(3):
        assert logs[f"raco/a{k}"].item() == pytest.approx(a[k])
        assert logs[f"raco/gnorm{k}"].item() == pytest.approx(float(u[:, k].norm()))
    update, linear = u.numpy() @ a, u.numpy() @ wn  # Σ a_k g_k and Σ w_k g_k
    assert logs["raco/update_ratio"].item() == pytest.approx(np.linalg.norm(update) / np.linalg.norm(linear))
    assert logs["raco/update_ratio"].item() > 1 and not np.allclose(a, wn)  # here the correction lengthens the step
    assert logs["raco/grad_cosine"].item() == pytest.approx(float(u[:, 0] @ u[:, 1] / (u[:, 0].norm() * u[:, 1].norm())))


def test_pama_combiner_cancels_conflicting_objectives_per_pair():
    anchor = torch.tensor([0.0, 0.0], requires_grad=True)  # policy chosen log-prob; h = anchor
    signs = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    per_obj = -F.logsigmoid(0.1 * signs * anchor[:, None])
    per, _ = combine.combine("pama", per_obj, signs != 0, torch.tensor([0.5, 0.5]), combine.Context(anchor=anchor))
    (grad,) = torch.autograd.grad(per.sum(), anchor)
    assert grad[0].item() == pytest.approx(0.0, abs=1e-7)  # the objectives disagree: no move
    assert grad[1].item() == pytest.approx(-0.05)  # they agree: the least advantage, β·σ(0) = 0.05


# ---------------------------------------------------------------- MAH-DPO heads and soups


def test_multihead_mixes_logits_and_one_head_is_the_original():
    torch.manual_seed(0)
    base = torch.nn.Linear(4, 6, bias=False)
    heads = MultiHead(base, 3)
    h = torch.randn(2, 4)
    per = [F.linear(h, heads.head_weight(k)) for k in range(3)]
    heads.mix.copy_(torch.tensor([0.2, 0.5, 0.3]))
    assert torch.allclose(heads(h), 0.2 * per[0] + 0.5 * per[1] + 0.3 * per[2], atol=1e-6)
    assert (heads.head_weight(1) - base.weight).abs().max() < 0.01  # equal_init: W + 0.001·N(0, I)
    assert not torch.equal(heads.head_weight(1), heads.head_weight(2))
    assert torch.equal(MultiHead(base, 1, noise=0.0).head_weight(0), base.weight)


def test_soup_interpolation_is_linear_and_one_hot_gives_the_member():
    a = {"w": torch.tensor([1.0, 2.0]), "step": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, -2.0]), "step": torch.tensor(7)}
    assert torch.equal(interpolate([a, b], [1.0, 0.0])["w"], a["w"])
    assert torch.allclose(interpolate([a, b], [0.25, 0.75])["w"], torch.tensor([2.5, -1.0]))
    assert interpolate([a, b], [0.5, 0.5])["step"].item() == 3


# ---------------------------------------------------------------- the recipe, end to end


def _objective_pairs(path, n=16):
    rows = []
    for i in range(n):
        objective = OBJ[i % 2]
        long, short = "the cat is very good", "good"
        chosen, rejected = (long, short) if objective == "informativeness" else (short, long)
        rows.append({"prompt": "tell me about the cat", "chosen": chosen, "rejected": rejected, "objective": objective})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


LOOP = {"learning_rate": 5e-2, "batch_size": 4, "num_epochs": 2, "log_every": 1, "progress": False}


def test_mahdpo_heads_learn_their_objectives_and_decode_steers_by_weights(tmp_path):
    from pluralign.decode.api import Controls, decode
    from pluralign.decode.steer import load_policy
    from pluralign.models.logprobs import sequence_logps
    from pluralign.train import run_preference
    from pluralign.train.recipes.preference import from_kwargs

    base = make_model_dir(tmp_path / "base")
    data = _objective_pairs(tmp_path / "pairs.jsonl")
    config = from_kwargs(model=str(base), data=[str(data)], output_dir=str(tmp_path / "out"), loop=LOOP,
                         objectives={"names": OBJ, "conditioning": "heads"})
    result = run_preference(config)
    model, tok = load_policy(result.model_dir)
    assert conditioning.attached(model).name == "heads"
    collate = PairwiseCollator(tok)
    batch = collate([Pairwise("tell me about the cat", "the cat is very good", "good")])

    def margin(weights):
        with mixed(model, weights), torch.no_grad():
            s, _ = sequence_logps(model, batch)
        return (s[0] - s[1]).item()

    assert margin([1.0, 0.0]) > margin([0.5, 0.5]) > margin([0.0, 1.0])  # head 0 prefers the long answer
    out = decode("sample", model, tok, ["tell me about the cat"] * 2,
                 controls=[Controls(weights=[1, 0], max_new_tokens=4), Controls(weights=[0, 1], max_new_tokens=4)])
    assert len(out.texts) == 2 and out.info["groups"] == [[0], [1]]
    with pytest.raises(ConfigError, match="request 0: weights: weights must be non-negative"):
        decode("sample", model, tok, ["x"], controls=Controls(weights=[-1, 2]))


@pytest.mark.parametrize("combiner", ["raco", "pama"])
def test_recipe_trains_with_gradient_combiners_on_signed_pairs(tmp_path, combiner):
    from pluralign.train import run_preference
    from pluralign.train.recipes.preference import from_kwargs

    base = make_model_dir(tmp_path / "base")
    rated = [{"prompt": "tell me about the cat", "response": r, "ratings": {"informativeness": len(r.split()), "conciseness": -len(r.split()) + (r == "good")}}
             for r in ["good", "the cat", "the cat is very good", "a dog"]] * 4
    path = tmp_path / "rated.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rated))
    config = from_kwargs(model=str(base), data=[str(path)], output_dir=str(tmp_path / "out"), loop=LOOP,
                         objectives={"names": OBJ, "combine": combiner, "rated_pairs": "signed",
                                     "weights": {"informativeness": 0.8, "conciseness": 0.2}})
    result = run_preference(config)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert "objective/informativeness/loss" in rows[0] and math.isfinite(rows[-1]["loss"])
    assert result.model_dir.is_dir()


def test_objective_without_pairs_and_bad_weights_exit_2(tmp_path, capsys):
    base = make_model_dir(tmp_path / "base")
    data = _objective_pairs(tmp_path / "pairs.jsonl")
    common = ["train", "dpo", f"model={base}", f"data=[{data}]", f"output_dir={tmp_path / 'o'}"]
    assert main(common + ["objectives.names=[informativeness,conciseness,formality]"]) == 2
    assert "objective(s) ['formality'] have no pairs" in capsys.readouterr().err
    assert main(common + ["objectives.names=[informativeness,conciseness]", "objectives.weights={informativeness: -1}"]) == 2
    assert "objectives.weights: weights must be non-negative" in capsys.readouterr().err


def test_mahdpo_head_gradients_come_only_from_their_objective(tiny_word_tokenizer):
    from pluralign.models.logprobs import sequence_logps

    model = tiny_llama(len(tiny_word_tokenizer), hidden_size=16, num_layers=1, num_heads=2)
    heads = install_heads(model, 2)
    batch = PairwiseCollator(tiny_word_tokenizer, objectives=OBJ)(
        [Pairwise("the cat", "sat on the mat", "ran", objective="conciseness")])
    row_head = torch.cat([batch["objective"], batch["objective"]])
    sums, _ = sequence_logps(model, batch, heads=heads.heads(), row_head=row_head)
    (sums[0] - sums[1]).backward()
    assert heads.weight.grad is None or heads.weight.grad.abs().sum() == 0  # head 0: informativeness
    assert heads.extra.grad[0].abs().sum() > 0
    # one head with its own weight: the log-probs of the plain model
    plain = tiny_llama(len(tiny_word_tokenizer), hidden_size=16, num_layers=1, num_heads=2)
    expected, _ = sequence_logps(plain, batch)
    one = install_heads(plain, 1, noise=0.0)
    got, _ = sequence_logps(plain, batch, heads=one.heads(), row_head=torch.zeros(2, dtype=torch.long))
    assert torch.allclose(got, expected.detach(), atol=1e-6)


def test_a_saved_mahdpo_model_loads_its_heads_without_a_load_report(tmp_path, tiny_word_tokenizer, caplog):
    # transformers reports lm_head.extra as UNEXPECTED ("not ok if you expect identical arch") when the bare
    # architecture loads it; the heads scheme reads it itself, so load_policy keeps quiet about that key alone.
    from pluralign.decode.steer import load_policy
    from pluralign.models.load import load_model, save_model

    model = tiny_llama(len(tiny_word_tokenizer), hidden_size=16, num_layers=1, num_heads=2)
    heads = install_heads(model, 2)
    with torch.no_grad():
        heads.extra.normal_()
    save_model(model, tiny_word_tokenizer, tmp_path / "m")
    for name, text in conditioning.save_state(conditioning.get("heads", OBJ)).items():
        (tmp_path / "m" / name).write_text(text)
    load_model(tmp_path / "m")
    assert "lm_head.extra | UNEXPECTED" in caplog.text  # the report exists, and looks as the filter expects
    caplog.clear()
    loaded, _ = load_policy(tmp_path / "m")
    assert "LOAD REPORT" not in caplog.text
    assert torch.equal(multihead_of(loaded).extra, heads.extra)


def test_soup_directory_steers_per_request(tmp_path):
    from pluralign.decode.api import Controls, decode
    from pluralign.decode.steer import load_policy
    from pluralign.models.load import load_model
    from pluralign.models.soup import save_soup

    a, b = make_model_dir(tmp_path / "a", seed=0), make_model_dir(tmp_path / "b", seed=1)
    soup_dir = save_soup([a, b], OBJ, tmp_path / "soup")
    model, tok = load_policy(soup_dir)
    scheme = conditioning.attached(model)
    member_b = load_model(b).state_dict()
    with scheme.steer(model, scheme.condition(weights=[0, 1])):
        assert all(torch.allclose(v, member_b[k]) for k, v in model.state_dict().items())
    out = decode("sample", model, tok, ["tell me about the cat"] * 2,
                 controls=[Controls(weights=[1, 0], max_new_tokens=3), Controls(weights=[0.5, 0.5], max_new_tokens=3)])
    assert out.info["groups"] == [[0], [1]]
    # each request's own sample facts survive the merge of the per-condition results, in request order
    from pluralign.decode.api import merge_results

    parts = [([1], decode("sample", model, tok, ["the dog"], controls=Controls(max_new_tokens=2))),
             ([0], decode("sample", model, tok, ["the cat"], controls=Controls(max_new_tokens=3)))]
    merged = merge_results(parts, 2)
    assert [len(ids) for ids in merged.info["token_ids"]] == [len(parts[1][1].info["token_ids"][0]), len(parts[0][1].info["token_ids"][0])]
    assert [row["logp"] for row in merged.rows()] == [parts[1][1].info["logp"][0], parts[0][1].info["logp"][0]]
    assert all(row["logp"] < 0 for row in out.rows())


def test_ric_sft_states_scores_and_decoding_maps_weights(tmp_path):
    from pluralign.decode.steer import load_policy
    from pluralign.train import run_sft

    base = make_model_dir(tmp_path / "base")
    rows = [{"prompt": "tell me about the cat", "response": r, "ratings": {"informativeness": len(r), "conciseness": -len(r)}}
            for r in ["good", "the cat is very good", "the dog"]] * 4
    data = tmp_path / "rated.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_sft(model=str(base), data=[str(data)], output_dir=str(tmp_path / "ric"), objectives=OBJ,
                     conditioning="reward_tokens", loop=LOOP)
    model, tok = load_policy(result.model_dir)
    scheme = conditioning.attached(model)
    assert scheme.name == "reward_tokens" and scheme.params["mean"] is not None
    shown = scheme.prompt("tell me about the cat", scheme.condition(weights=[1, 0]))
    assert shown.startswith(f"scores : informativeness {scheme.params['high'][0]} conciseness {scheme.params['low'][1]} .")
    assert tok.unk_token_id not in tok.encode(shown)


def test_dpa_round_keeps_the_best_sample_by_the_direction(tmp_path):
    from pluralign.decode.rewards import FunctionReward
    from pluralign.decode.steer import load_policy
    from pluralign.train.steerable import dpa_records, sample_directions

    v = sample_directions(50, 2, np.random.default_rng(0), (0, 90))
    assert np.allclose(np.linalg.norm(v, axis=1), 1) and (v >= 0).all()
    model, tok = load_policy(make_model_dir(tmp_path / "base"))
    reward = FunctionReward(lambda p, y: [[len(t.split()), -len(t.split())] for t in y], OBJ)
    records = dpa_records(model, tok, ["tell me about the cat"] * 3, OBJ, reward, n=4, max_new_tokens=5)
    for r in records:
        d = np.array([r.meta["direction"][k] for k in OBJ])
        assert abs(np.linalg.norm(d) - 1) < 1e-9 and set(r.ratings) == set(OBJ)


def test_palette_weights_match_the_gaussian_tilt():
    from pluralign.train.steerable import palette_weights

    r = np.random.default_rng(0).normal(0.2, 0.5, size=(20000, 1))
    lam = palette_weights(r, [0.45])
    assert lam[0] == pytest.approx((0.45 - 0.2) / 0.25, rel=0.05)  # λ* = (c − μ)/σ²
    assert palette_weights(r, [0.0])[0] == pytest.approx(0.0, abs=1e-6)  # already met: λ = 0


def test_decode_cli_rejects_bad_weights_for_a_conditioned_model(tmp_path, capsys):
    from pluralign.models.soup import save_soup

    a, b = make_model_dir(tmp_path / "a", seed=0), make_model_dir(tmp_path / "b", seed=1)
    soup = save_soup([a, b], OBJ, tmp_path / "soup")
    prompts = tmp_path / "p.txt"
    prompts.write_text("tell me about the cat\n")
    base = ["decode", "--method", "sample", "--model", str(soup), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]
    for weights, message in [("1,-1", "non-negative"), ("0,0", "all zero"), ("1,1,1", "3 value(s)"), ("nan,1", "finite")]:
        assert main(base + ["--weights", weights]) == 2
        err = capsys.readouterr().err
        assert "weights" in err and message in err and "Traceback" not in err
    assert main(base + ["--weights", "0.3,0.7", "--max-new-tokens", "3"]) == 0


def test_statements_go_inside_the_templates_user_turn():
    from pluralign.sandbox.world import CHAT_TEMPLATE

    tok = word_tokenizer(["question", "answer", ":", "."], chat_template=CHAT_TEMPLATE)
    scheme = conditioning.get("system_message", OBJ).bind(tok)
    c = scheme.condition(weights=[1, 0])
    assert scheme.prompt("question: describe rivers. answer:", c) == \
        "question: describe rivers. weights : informativeness 100 conciseness 0 . answer:"
    # this template drops system messages: the statement joins the user's message
    assert not scheme.system_ok
    chat = scheme.prompt([{"role": "user", "content": "describe rivers."}], c)
    assert chat == [{"role": "user", "content": "describe rivers. weights : informativeness 100 conciseness 0 ."}]


def test_a_rendered_prompt_gets_the_statement_as_the_template_would_render_it():
    # SmolLM2-style turns end "…<|im_end|>" with no space: a prompt already rendered got "… . <|im_end|>",
    # one token more than the template renders from the plain prompt with its statement
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok = word_tokenizer(["describe", "rivers", "."], chat_template=template)
    for name, params in [("system_message", {}), ("reward_tokens", {"mean": [0, 0], "std": [1, 1], "low": [-1, -1],
                                                                     "high": [1, 1]})]:
        scheme = conditioning.get(name, OBJ, **params).bind(tok)
        c = scheme.condition(weights=[0.7, 0.3])

        def render(text):
            return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)

        assert scheme.prompt(render("describe rivers."), c) == render(scheme.prompt("describe rivers.", c))


def test_rated_lists_rate_several_responses_per_prompt():
    from pluralign.data.convert import rated_to_pairwise
    from pluralign.sandbox.feedback import rated_lists

    records = rated_lists(6, OBJ, k=3, seed=2)  # grammar responses: no model needed
    assert set(records[0].ratings) == set(OBJ) and len(records) >= 12
    assert rated_to_pairwise(records, objective="conciseness")
    with pytest.raises(ConfigError, match="unknown objective"):
        rated_lists(2, ["wit"])


def test_modpo_in_the_recipe_reads_margins_from_the_margin_reward(tmp_path):
    from pluralign.train import run_preference
    from pluralign.train.recipes import multiobjective as recipe_mo
    from pluralign.train.recipes.preference import from_kwargs

    base = make_model_dir(tmp_path / "base")
    data = tmp_path / "info.jsonl"
    rows = [{"prompt": "tell me about the cat", "chosen": "the cat is very good", "rejected": "good",
             "objective": "informativeness"}] * 8
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = recipe_mo.ObjectivesConfig(names=OBJ, weights={"informativeness": 0.6, "conciseness": 0.4}, margin_reward="gold")
    records = [Pairwise(**r) for r in rows[:1]]
    margins = recipe_mo.margin_values(cfg, records)
    from pluralign.sandbox.attributes import score
    expected = 0.4 * (score(rows[0]["prompt"], rows[0]["chosen"])["conciseness"])
    assert margins["chosen_margin_rewards"][0].item() == pytest.approx(expected, abs=1e-6)
    result = run_preference(from_kwargs(model=str(base), data=[str(data)], loss="modpo", output_dir=str(tmp_path / "o"),
                                        loss_params={"beta": 0.1, "w0": 0.6}, loop=LOOP,
                                        objectives={"names": OBJ, "weights": {"informativeness": 0.6, "conciseness": 0.4},
                                                    "margin_reward": "gold"}))
    assert math.isfinite(result.train.metrics["loss"])


def test_modpo_w0_is_the_trained_objectives_weight(tmp_path, monkeypatch):
    # the margins weigh conciseness by 0.2 (objectives.weights), so R = (β·ρ − 0.2·r) / w0 needs w0 = 0.8; the
    # loss's default w0 = 0.5 was used whatever the weights said
    from pluralign.train import run_preference
    from pluralign.train.recipes import preference
    from pluralign.train.recipes.preference import from_kwargs

    base = make_model_dir(tmp_path / "base")
    data = tmp_path / "info.jsonl"
    data.write_text((json.dumps({"prompt": "tell me about the cat", "chosen": "the cat is very good", "rejected": "good",
                                 "objective": "informativeness"}) + "\n") * 4)
    seen, real = [], preference.make_step
    monkeypatch.setattr(preference, "make_step", lambda kind, loss, params, *a, **k: seen.append(params) or real(kind, loss, params, *a, **k))
    objectives = {"names": OBJ, "weights": {"informativeness": 4.0, "conciseness": 1.0}, "margin_reward": "gold"}
    run_preference(from_kwargs(model=str(base), data=[str(data)], loss="modpo", output_dir=str(tmp_path / "o"),
                               loop=LOOP | {"num_epochs": 1}, objectives=objectives))
    assert seen and all(p["w0"] == pytest.approx(0.8) for p in seen)
    with pytest.raises(ConfigError, match="loss_params.w0=0.5"):
        run_preference(from_kwargs(model=str(base), data=[str(data)], loss="modpo", output_dir=str(tmp_path / "o2"),
                                   loss_params={"w0": 0.5}, loop=LOOP, objectives=objectives))


def test_pama_with_one_hot_weights_is_that_objectives_dpo_gradient():
    anchor = torch.tensor([0.0, 0.3], requires_grad=True)
    signs = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    per_obj = -F.logsigmoid(0.1 * signs * anchor[:, None])
    per, _ = combine.combine("pama", per_obj, signs != 0, torch.tensor([1.0, 0.0]), combine.Context(anchor=anchor))
    (grad,) = torch.autograd.grad(per.sum(), anchor, retain_graph=True)
    expected = torch.autograd.grad((2 * per_obj[:, 0]).sum(), anchor)[0]  # advantages scaled by K·w = 2
    assert torch.allclose(grad, expected)


# ---------------------------------------------------------------- pairs stating their own weights


def test_weighted_combiner_scalarises_each_example_by_its_own_weights():
    losses_ = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    rows = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    per, _ = combine.combine("weighted", losses_, mask, rows, combine.Context())
    # objective k's mean over its 2 examples of w_bk·ℓ_bk, summed: (1·1 + 0.25·3) / 2 + (0·2 + 0.75·4) / 2
    assert per.mean().item() == pytest.approx(2.375)
    same, _ = combine.combine("weighted", losses_, mask, torch.tensor([[0.3, 0.7]] * 2), combine.Context())
    shared, _ = combine.combine("weighted", losses_, mask, torch.tensor([0.3, 0.7]), combine.Context())
    assert torch.allclose(same, shared)
    # a row's weights are renormalised over the objectives the batch holds, as the run's weights are
    one, _ = combine.combine("weighted", losses_, torch.tensor([[True, False], [True, False]]),
                             torch.tensor([[0.5, 0.5], [0.2, 0.8]]), combine.Context())
    assert one.mean().item() == pytest.approx(2.0)


def test_collator_carries_each_pairs_weights(tiny_word_tokenizer):
    records = [Pairwise("the cat", "sat", "ran", meta={"signs": {"informativeness": 1}, "weights": {"conciseness": 2}}),
               Pairwise("the dog", "sat", "ran", objective="conciseness")]
    batch = PairwiseCollator(tiny_word_tokenizer, objectives=OBJ)(records)
    assert batch["weights"].tolist() == [[0.0, 1.0], [0.0, 0.0]]  # on the simplex; none stated: a zero row
    assert "weights" not in PairwiseCollator(tiny_word_tokenizer, objectives=OBJ)(records[1:])


def _weighted_pairs(path, weights=({"informativeness": 1.0}, {"conciseness": 1.0})):
    rows = [{"prompt": "tell me about the cat", "chosen": "the cat is very good", "rejected": "good",
             "meta": {"signs": {"informativeness": 1, "conciseness": -1}, "weights": weights[i % len(weights)]}}
            for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_weight_conditioned_dpo_on_signed_pairs_steers_by_the_stated_weights(tmp_path):
    from pluralign.decode.steer import load_policy
    from pluralign.models.logprobs import sequence_logps
    from pluralign.train import run_preference
    from pluralign.train.recipes.preference import from_kwargs

    base = make_model_dir(tmp_path / "base")
    config = from_kwargs(model=str(base), data=[str(_weighted_pairs(tmp_path / "pairs.jsonl"))],
                         output_dir=str(tmp_path / "out"), loop=LOOP | {"num_epochs": 25},
                         objectives={"names": OBJ, "conditioning": "system_message"})
    model, tok = load_policy(run_preference(config).model_dir)
    scheme = conditioning.attached(model)
    assert scheme.name == "system_message"

    def margin(weights):
        prompt = scheme.prompt("tell me about the cat", scheme.condition(weights=weights))
        batch = PairwiseCollator(tok)([Pairwise(prompt, "the cat is very good", "good")])
        with torch.no_grad():
            s, _ = sequence_logps(model, batch)
        return (s[0] - s[1]).item()

    # the same pairs, scalarised by each one's weights: informativeness prefers the long answer, conciseness
    # the short one, and the model learns which the stated weights ask for
    assert margin([1.0, 0.0]) > 0 > margin([0.0, 1.0])
    assert margin([1.0, 0.0]) > margin([0.5, 0.5]) > margin([0.0, 1.0])


@pytest.mark.parametrize(("settings", "message"), [
    (["objectives.combine=raco", "objectives.combine_params={normalize: pairs}"],
     "combiner 'raco': normalize must be one of ['objective', 'batch'], got 'pairs'"),
    (["objectives.combine=raco", "objectives.combine_params={cc: 1}"], "combiner 'raco' has no parameter ['cc'] (did you mean 'c'?)"),
    (["objectives.combine=racco"], "racco"),
    (["objectives.weights={informativeness: -1, conciseness: 1}"], "objectives.weights"),
    (["objectives.conditioning=joint_soup", "objectives.conditioning_params={alphaa: 1}"],
     "conditioning scheme 'joint_soup' has no parameter ['alphaa'] (did you mean 'alpha'?); its parameters: alpha, vertex_prob, seed"),
    (["objectives.conditioning=system_message", "objectives.conditioning_params={noise: 1}"],
     "conditioning scheme 'system_message' has no parameter ['noise']; its parameters: states"),
    (["loss=modpo", "objectives.margin_reward=no_such_module:fn"], "objectives.margin_reward no_such_module:fn: cannot import fn"),
    (["objectives.margin_reward=gold"], "objectives.margin_reward gives MODPO its margins; loss 'dpo' does not read them"),
])
def test_bad_objective_settings_exit_2_before_anything_loads_or_is_written(tmp_path, capsys, settings, message):
    data = _weighted_pairs(tmp_path / "pairs.jsonl")
    args = ["train", "dpo", f"model={tmp_path / 'no_model_here'}", f"data=[{data}]", f"output_dir={tmp_path / 'o'}",
            "objectives.names=[informativeness,conciseness]", *settings]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # checked before the model (here missing) loads or the run directory exists


def test_bad_pair_weights_exit_2_naming_the_record(tmp_path, capsys):
    base = make_model_dir(tmp_path / "base")
    data = _weighted_pairs(tmp_path / "pairs.jsonl", weights=({"informativeness": 1.0}, {"conciseness": -1.0}))
    common = ["train", "dpo", f"model={base}", f"data=[{data}]", f"output_dir={tmp_path / 'o'}",
              "objectives.names=[informativeness,conciseness]"]
    assert main(common) == 2
    err = capsys.readouterr().err  # every bad row, located by file, line and field
    assert f"{data}:2: field 'meta.weights': weights must be non-negative" in err and f"{data}:16:" in err
    good = _weighted_pairs(tmp_path / "good.jsonl")
    assert main(common[:3] + [f"data=[{good}]"] + common[4:] + ["objectives.combine=raco"]) == 2
    assert "only the weighted combiner reads" in capsys.readouterr().err


def test_a_stated_direction_leaves_the_weights_to_the_reward():
    from pluralign.decode.api import Controls

    scheme = conditioning.get("system_message", OBJ)
    c = scheme.condition_of_request(Controls(direction=[0.8, -0.6], weights=[0.8, -0.6]))
    assert c.weights is None and c.direction == pytest.approx((0.8, -0.6))
    with pytest.raises(ConfigError, match="3 value"):  # still numbers, one per objective
        scheme.condition_of_request(Controls(direction=[1, 0], weights=[1, 2, 3]))
    with pytest.raises(ConfigError, match="non-negative"):  # weights alone are the statement's: simplex weights
        scheme.condition_of_request(Controls(weights=[0.8, -0.6]))
