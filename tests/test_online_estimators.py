"""Advantage estimators, policy losses, KL estimators and the value loss against the hand-computed
vectors of specs/online.md (Fixture A: P=2 prompts, G=3 completions, T=L_max=4)."""

from __future__ import annotations

import math

import pytest
import torch

from pluralign.errors import ConfigError, DataError
from pluralign.online import advantages as adv
from pluralign.online import policy_losses as pl

DELTA = [[0.10, -0.30, 0.25, 0.00], [0.40, -0.05], [-0.20, 0.05, 0.30], [0.15], [-0.10, 1.20, -0.25, 0.05], [0.30, -0.40]]
D = [[0.05, 0.20, -0.10, 0.00], [-0.30, 0.10], [0.00, -0.15, 0.25], [0.40], [0.10, -0.05, 0.00, 0.20], [-0.20, 0.30]]
R = torch.tensor([1.0, 0.0, 0.5, 0.2, 0.2, 0.8])


def padded(rows):
    out = torch.zeros(len(rows), 4)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r)
    return out


MASK = padded([[1] * len(r) for r in DELTA])
OLD = torch.full((6, 4), -1.0) * MASK  # only differences matter
LOGPS = OLD + padded(DELTA)
REF = OLD + padded(D)
TRL_A = torch.tensor([0.9998, -0.9998, 0, -0.577184, -0.577184, 1.15437])


def close(x, expected, tol=2e-5):
    torch.testing.assert_close(torch.as_tensor(x, dtype=torch.float), torch.tensor(expected, dtype=torch.float),
                               atol=tol, rtol=0)


def test_group_advantages_vector_2():
    close(adv.group_advantages(R, 3), TRL_A.tolist())
    close(adv.group_advantages(R, 3, eps=1e-6), [0.999998, -0.999998, 0, -0.577349, -0.577349, 1.1547])
    close(adv.group_advantages(R, 3, scale="none"), [0.5, -0.5, 0, -0.2, -0.2, 0.4])
    close(adv.group_advantages(R, 3, scale="batch"), [1.28638, -1.28638, 0, -0.514553, -0.514553, 1.02911])
    a, _ = adv.get("grpo")(R, MASK, group_size=3)
    close(a, (TRL_A[:, None] * MASK).tolist())


def test_singleton_groups_and_constant_groups_give_zero_advantage():
    assert torch.equal(adv.group_advantages(R, 1), torch.zeros(6))
    assert torch.equal(adv.group_advantages(torch.ones(6), 3), torch.zeros(6))
    # a flat group of 7 rewards of 0.3: their float mean misses 0.3 by an ulp, which (std + eps) scaled into
    # advantages of 3e-4 before; a flat group carries no signal, so its advantages are exactly 0
    flat = torch.full((7,), 0.3)
    assert flat.mean() != flat[0]
    for estimator in (adv.group_advantages, adv.leave_one_out):
        assert torch.equal(estimator(flat, 7), torch.zeros(7))
    with pytest.raises(ConfigError, match="groups of 4"):
        adv.group_advantages(R, 4)


def test_rloo_vector_3():
    close(adv.leave_one_out(R, 3), [0.75, -0.75, 0, -0.3, -0.3, 0.6])
    with pytest.raises(ConfigError, match="at least 2"):
        adv.leave_one_out(R, 1)
    # TRL's variant: summed k1 of the sampling policy in the reward, before the baseline, and a sequence
    # ratio exp(Σ(ℓ − ℓ_old)) in the clipped loss, mean over sequences.
    k1_old = ((OLD - REF) * MASK).sum(1)
    close(k1_old, [-0.15, 0.2, -0.1, -0.4, -0.25, -0.1])
    a = adv.leave_one_out(R - 0.05 * k1_old, 3)
    close(a, [0.76, -0.76625, 0.00625, -0.28875, -0.3, 0.58875])
    ratio = torch.exp(pl.sequence_log_ratio(LOGPS, OLD, MASK, normalize=False))
    close(ratio, [1.05127, 1.41907, 1.16183, 1.16183, 2.4596, 0.904837])
    per_token, _ = pl.get("gspo")(LOGPS, OLD, a[:, None] * MASK, MASK, eps_low=0.2, eps_high=0.2, length_normalize=False)
    close(pl.aggregate(per_token, MASK, "seq_mean_token_mean"), 0.136962)


def test_reinforce_pp_vector_4():
    kl = 0.01 * (OLD - REF) * MASK
    g = adv.returns_to_go(adv.outcome_token_rewards(R, MASK, kl), MASK)
    close(g[0], [1.0015, 1.001, 0.999, 1])
    close(g[1, :2], [-0.002, 0.001])
    a_biased, _ = adv.reinforce_pp(R, MASK, group_size=3, kl_penalty=kl, whiten_ddof=0)
    close(a_biased[0], [1.35477, 1.35339, 1.34791, 1.35065], 1e-4)
    a, _ = adv.get("reinforce_pp")(R, MASK, group_size=3, kl_penalty=kl)
    close(a[0], [1.31175, 1.31042, 1.30511, 1.30776], 1e-4)
    a, _ = adv.get("reinforce_pp_baseline")(R, MASK, group_size=3, whiten_ddof=0)
    close(a[:, 0], [1.2792, -1.56347, -0.142134, -0.710669, -0.710669, 0.994937], 1e-4)
    a, _ = adv.get("reinforce_pp_baseline")(R, MASK, group_size=3)
    close(a[:, 0], [1.23858, -1.51383, -0.13762, -0.688102, -0.688102, 0.963343], 1e-4)
    assert torch.all(a[MASK == 0] == 0)


def test_gae_value_loss_and_ppo_vector_5():
    mask = MASK[[0, 2]]
    kl = 0.05 * (OLD - REF)[[0, 2]] * mask
    old_v = padded([[0.3, 0.5, 0.6, 0.8], [0.1, -0.2, -0.4]])
    new_v = padded([[0.45, 0.4, 0.9, 0.7], [0.0, -0.1, -0.7]])
    r = adv.outcome_token_rewards(torch.tensor([1.0, -0.5]), mask, kl)
    close(r, [[0.0025, 0.01, -0.005, 1], [0, -0.0075, -0.4875, 0]])
    raw, ret = adv.gae_advantages(r, old_v, mask, 1.0, 0.95)
    close(raw, [[0.654462, 0.47575, 0.385, 0.2], [-0.576094, -0.290625, -0.0875, 0]])
    close(ret, [[0.954462, 0.97575, 0.985, 1], [-0.476094, -0.490625, -0.4875, 0]])
    close(adv.gae_advantages(r, old_v, mask, 1.0, 1.0)[0], [[0.7075, 0.505, 0.395, 0.2], [-0.595, -0.295, -0.0875, 0]])
    a, ret2 = adv.get("gae")(torch.tensor([1.0, -0.5]), mask, group_size=1, kl_penalty=kl, values=old_v)
    close(a, [[1.22847, 0.826191, 0.621915, 0.205484], [-1.54148, -0.898901, -0.441672, 0]], 1e-4)
    close(adv.whiten(raw, mask, ddof=0), [[1.3269, 0.892388, 0.671745, 0.221948], [-1.66499, -0.970924, -0.47706, 0]], 1e-4)
    lv, clipped = pl.value_loss(new_v, old_v, ret2, mask, clip=0.2)
    close(pl.aggregate(lv, mask, "token_mean"), 0.0810432)
    close(pl.aggregate(pl.value_loss(new_v, old_v, ret2, mask, clip=None)[0], mask, "token_mean"), 0.0791146)
    close(clipped.sum() / mask.sum(), 1 / 7)
    per_token, _ = pl.clipped_surrogate(LOGPS[[0, 2]], OLD[[0, 2]], a, mask)
    close(pl.aggregate(per_token, mask, "token_mean"), -0.0168946)


def test_clipped_surrogate_vector_1():
    a = TRL_A[:, None] * MASK
    per_token, _ = pl.get("clip")(LOGPS, OLD, a, MASK, eps_low=0.2, eps_high=0.28)
    close(per_token[0], [-1.10495, -0.74067, -1.27974, -0.9998])
    close(per_token[4], [0.522257, 1.91632, 0.461747, 0.606776])
    close(per_token[5, :2], [-1.47759, -0.773796])
    dual, _ = pl.clipped_surrogate(LOGPS, OLD, a, MASK, eps_low=0.2, eps_high=0.28, dual_clip=3.0)
    close(dual[4, 1], 1.73155)
    table = {  # aggregation: (ε 0.2/0.2, 0.2/0.28, 0.2/0.28 + dual clip 3)
        "seq_mean_token_mean": (0.112973, 0.101944, 0.0942456),
        "token_mean": (0.0260024, 0.0152316, 0.0036837),
        "seq_mean_token_sum_norm": (0.017335, 0.0101544, 0.0024558),
        "seq_mean_token_sum": (0.0693398, 0.0406176, 0.00982321),
    }
    settings = [dict(eps_high=0.2), dict(eps_high=0.28), dict(eps_high=0.28, dual_clip=3.0)]
    for mode, expected in table.items():
        for kw, value in zip(settings, expected, strict=True):
            close(pl.aggregate(pl.clipped_surrogate(LOGPS, OLD, a, MASK, **kw)[0], MASK, mode, 4), value)
    # On-policy (u ≡ 1): group-centred advantages cancel under seq-mean.
    ones, _ = pl.clipped_surrogate(OLD, OLD, a, MASK)
    close(pl.aggregate(ones, MASK, "seq_mean_token_mean"), 0.0)
    close(pl.aggregate(ones, MASK, "token_mean"), -0.088901)
    close(pl.aggregate(ones, MASK, "seq_mean_token_sum_norm", 4), -0.0592674)
    # Dr. GRPO loss with its own advantages.
    dr, _ = pl.clipped_surrogate(LOGPS, OLD, adv.dr_grpo(R, MASK, group_size=3)[0], MASK)
    close(pl.aggregate(dr, MASK, "seq_mean_token_sum_norm", 4), -0.00424932)


def test_gspo_vector_7():
    a = TRL_A[:, None] * MASK
    close(torch.exp(pl.sequence_log_ratio(LOGPS, OLD, MASK)), [1.01258, 1.19125, 1.05127, 1.16183, 1.25232, 0.951229])
    per_token, _ = pl.gspo(LOGPS, OLD, a, MASK)
    close(per_token[:, 0], [-1.0002, 1.19101, 0, 0.670592, 0.72282, -1.09807])
    close(pl.aggregate(per_token, MASK, "seq_mean_token_mean"), 0.0810253)
    per_token, _ = pl.gspo(LOGPS, OLD, a, MASK, eps_low=0.2, eps_high=0.28)
    close(per_token[0, 0], -1.01238)
    close(pl.aggregate(per_token, MASK, "seq_mean_token_mean"), 0.078996)


def test_gspo_clip_fraction_counts_the_sequences_in_the_loss():
    """Only seq0 is clipped (ε 3e-4/4e-4): 1 of 6, and 1 of the 3 trained when prompt 1's group is masked out
    (dynamic sampling, truncation): the masked sequences were counted as unclipped (1/6)."""
    a = TRL_A[:, None] * MASK
    assert [float(x) for x in pl.gspo(LOGPS, OLD, a, MASK)[1]["clip_fraction"]] == pytest.approx([1 / 6, 6])
    dropped = MASK * torch.tensor([1.0, 1, 1, 0, 0, 0])[:, None]
    assert [float(x) for x in pl.gspo(LOGPS, OLD, a, dropped)[1]["clip_fraction"]] == pytest.approx([1 / 3, 3])


def test_kl_estimators_vector_9():
    close(pl.kl_estimate(LOGPS[0], REF[0], "k1"), [0.05, -0.5, 0.35, 0])
    close(pl.kl_estimate(LOGPS[0], REF[0], "k2"), [0.00125, 0.125, 0.06125, 0])
    close(pl.kl_estimate(LOGPS[0], REF[0], "k3"), [0.00122942, 0.148721, 0.0546881, 0])
    close(pl.kl_estimate(OLD[0], REF[0], "k3"), [0.0012711, 0.0214028, 0.00483742, 0])
    k3 = pl.kl_estimate(LOGPS, REF, "k3") * MASK
    for mode, value in (("seq_mean_token_mean", 0.0940443), ("token_mean", 0.0945311), ("seq_mean_token_sum_norm", 0.0630207)):
        close(pl.aggregate(k3, MASK, mode, 4), value)
    a = TRL_A[:, None] * MASK
    surrogate, _ = pl.clipped_surrogate(LOGPS, OLD, a, MASK, eps_high=0.28)
    for mode, value in (("seq_mean_token_mean", 0.105706), ("token_mean", 0.0190128), ("seq_mean_token_sum_norm", 0.0126752)):
        close(pl.aggregate(surrogate + 0.04 * k3, MASK, mode, 4), value)
    close(pl.aggregate(pl.kl_estimate(LOGPS, REF, "k1") * MASK, MASK), 0.04375)
    close(pl.aggregate(pl.kl_estimate(LOGPS, REF, "k2") * MASK, MASK), 0.108125)
    with pytest.raises(ConfigError, match="k1, k2 or k3"):
        pl.kl_estimate(LOGPS, REF, "k4")


def test_kl_gradients_on_one_categorical_step():
    """E[∇k2] = E[∇(u·k3)] = ∇KL(π‖ref); E[∇k3] = ∇KL(ref‖π) (forward KL); E[∇k1] = 0 (spec §5.2)."""
    theta = torch.tensor([0.5, -0.3, 0.1])
    ref = torch.full((3,), -torch.log(torch.tensor(3.0)))

    def expected_grad(kind, correction=False):
        th = theta.clone().requires_grad_(True)
        lp = torch.log_softmax(th, 0)
        p = lp.exp().detach()
        k = pl.kl_loss_term(lp, lp.detach(), ref, kind, bias_correction=correction)
        (p * k).sum().backward()  # expectation over y ~ π (π held fixed: the estimator's gradient)
        return th.grad

    close(expected_grad("k2"), [0.139685, -0.106822, -0.0328629])
    close(expected_grad("k3", correction=True), [0.139685, -0.106822, -0.0328629])
    close(expected_grad("k3"), [0.138443, -0.121351, -0.0170923])
    close(expected_grad("k1"), [0, 0, 0])


def test_registries_name_the_closest_part():
    assert {"grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae"} <= set(adv.names())
    assert {"clip", "gspo"} <= set(pl.names())
    with pytest.raises(ConfigError, match="did you mean 'rloo'"):
        adv.get("rlo")
    with pytest.raises(ConfigError, match="aggregation"):
        pl.aggregate(torch.ones(2, 2), torch.ones(2, 2), "mean")


def test_ppo_max_running_reward_normalisation_vector_6():
    from pluralign.online.rewards import RunningMoments, normalize_running

    m = RunningMoments()
    first = torch.tensor([1.0, -0.5, 2.0, 0.5])
    close(normalize_running(first, m), [0.240192, -1.20096, 1.20096, -0.240192])
    assert m.mean == pytest.approx(0.75) and m.std == pytest.approx(1.04083, abs=1e-5)
    m2 = RunningMoments()
    close(normalize_running(first, m2, center=False), [0.960769, -0.480384, 1.92154, 0.480384])
    close(normalize_running(first, RunningMoments(), clip=1.0), [0.240192, -1, 1, -0.240192])
    close(normalize_running(torch.tensor([0.0, 3.0]), m), [-0.766965, 1.53393])
    assert m.std == pytest.approx(1.30384, abs=1e-5)
    restored = RunningMoments()
    restored.load_state_dict(m.state_dict())
    assert restored.state_dict() == m.state_dict()


def test_dapo_dynamic_sampling_and_overlong_shaping_vector_8():
    from pluralign.online.rewards import overlong_penalty, varied_groups

    r = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 0.5, 0.5, 0.5, 0.5])
    assert varied_groups(r, 4).tolist() == [False, False, True, True, False]
    close(overlong_penalty(torch.tensor([12, 16, 17, 18, 19, 20, 22]), 20, 4), [0, 0, -0.25, -0.5, -0.75, -1, -1])


def test_online_dpo_pairs_and_rsft_selection_vectors_10_11():
    from pluralign.losses import get

    r = torch.tensor([0.3, 1.2, -0.4, 0.9])
    assert (int(r.argmax()), int(r.argmin())) == (1, 2)
    dpo = get("dpo")
    t = torch.tensor
    loss, _ = dpo(t([-10.0]), t([-12.5]), t([-11.0]), t([-12.0]), beta=0.1)
    close(loss, [0.620957])
    loss, _ = dpo(t([-10.0]), t([-12.5]), t([-13.0]), t([-11.0]), beta=0.1)
    close(loss, [0.493249])
    rewards = torch.tensor([[0.1, 0.7, 0.3, 0.2], [-0.5, -0.2, -0.9, -0.1]])
    assert rewards.argmax(1).tolist() == [1, 3]
    assert sorted(rewards.flatten().topk(2).indices.tolist()) == [1, 2]  # global top-2: both from prompt 0


def test_multi_reward_combination_vector_12():
    from pluralign.online.rewards import combine

    cols = torch.tensor([[1, 0.2], [0, 0.9], [1, 0.5], [0, 0.6], [0, 0.1], [1, 0.4]])
    w = torch.tensor([1.0, 0.5])
    summed = combine(cols, w, 3, "sum")
    close(summed, [1.1, 0.45, 1.25, 0.3, 0.05, 1.2])
    close(adv.group_advantages(summed, 3), [0.391839, -1.13633, 0.744494, -0.358161, -0.771424, 1.12959])
    s = combine(cols, w, 3, "normalize_then_sum")
    close(s, [0.102806, -0.632612, 0.529806, -0.113848, -1.10685, 1.2207])
    close(adv.group_advantages(s, 3, scale="batch"), [0.124297, -0.764855, 0.640557, -0.137647, -1.33823, 1.47588])
    per_prompt = torch.tensor([[1.0, 0.5]] * 3 + [[0.2, 1.0]] * 3)
    close(adv.group_advantages(combine(cols, per_prompt, 3, "sum"), 3),
          [0.391839, -1.13633, 0.744494, 0.57715, -1.1543, 0.57715])
    close(adv.group_advantages(combine(cols, per_prompt, 3, "normalize_then_sum"), 3, scale="batch"),
          [0.135877, -0.836111, 0.700234, 1.07235, -1.55252, 0.480167])
    close(adv.group_advantages(combine(cols, per_prompt, 3, "sum"), 3, scale="none"),
          [0.166667, -0.483333, 0.316667, 0.166667, -0.333333, 0.166667])


def test_reward_sources_judges_and_weighted_multi_output():
    from pluralign.online.rewards import RewardSpec, Source

    class Judge:  # the pluralign.judges interface: one grade per response
        def single(self, prompts, responses):
            return [float(len(r)) for r in responses]

    assert Source(RewardSpec(source="judge"), Judge())(["p", "q"], ["ab", "abcd"]).tolist() == [2.0, 4.0]

    class Ungraded(Judge):  # an LLM judge whose second reply has no grade in it
        rating_range = (1.0, 10.0)

        def single(self, prompts, responses):
            return [7.0, math.nan]

    with pytest.warns(UserWarning, match="lowest grade, 1"):  # it stopped the run, and resume met it again
        assert Source(RewardSpec(source="judge"), Ungraded())(["p", "q"], ["a", "b"]).tolist() == [7.0, 1.0]
    with pytest.raises(ConfigError, match="judge_url and judge_model"):
        Source(RewardSpec(source="judge"))
    # a local judge server without keys: the config can say so (it could not, and OPENAI_API_KEY was required)
    local = {"source": "judge", "judge_url": "http://127.0.0.1:9/v1", "judge_model": "m"}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("OPENAI_API_KEY", raising=False)
        assert Source(RewardSpec(**local, judge_api_key_env=None)).reward.judge.api_key is None
        with pytest.raises(ConfigError, match=r"rewards\[0\]: .*OPENAI_API_KEY.*set judge_api_key_env: null"):
            Source(RewardSpec(**local))

    def two(prompts, responses):
        return [[1.0, 3.0], [2.0, 0.0]]

    assert Source(RewardSpec(source="x:two"), two)(["p", "q"], ["a", "b"]).tolist() == [2.0, 1.0]  # equal weights
    src = Source(RewardSpec(source="x:two", weights={"r0": 1.0, "r1": 0.5}), two)
    assert src(["p", "q"], ["a", "b"]).tolist() == [2.5, 2.0]
    gold = Source(RewardSpec(source="gold", group="minority"))
    assert gold(["Tell me about cats."], ["Cats are calm."]).shape == (1,)


def test_per_prompt_users_and_objective_weights(tmp_path):
    """A prompt row's `user` reaches a per-user reward (PAL) and its `weights` replace the source's
    objective weights for that prompt (multi-objective reward models)."""
    from pluralign.online.rewards import RewardSpec, Source
    from pluralign.online.rollout import read_prompts

    class PerUser:
        objectives = ["a", "b"]

        def score(self, prompts, responses, user=None):
            return torch.tensor([[1.0, 2.0] if user == "u1" else [10.0, 20.0] for _ in responses])

    src = Source(RewardSpec(source="x:y"), PerUser())
    out = src(["p"] * 3, ["r"] * 3, users=["u1", None, "u1"], weights=[{"a": 1.0}, {"b": 1.0}, None])
    assert out.tolist() == [1.0, 20.0, 1.5]
    # the source's own user scores every row: rows read from a feedback file carry whoever gave the
    # feedback, and used to override the one user the README's PAL rejection sampling names
    one_user = Source(RewardSpec(source="x:y", user="u1"), PerUser())
    assert one_user(["p"] * 2, ["r"] * 2, users=["u2", None]).tolist() == [1.5, 1.5]

    class Known(PerUser):
        def user_index(self, user):
            if user != "u1":
                raise ConfigError(f"unknown user {user!r}")
            return 0

    with pytest.raises(ConfigError, match=r"rewards\[2\]\.user: unknown user 'nobody'"):
        Source(RewardSpec(source="x:y", user="nobody"), Known(), "rewards[2].source")  # before any rollout
    with pytest.raises(ConfigError, match=r"rewards\[0\]\.user: reward 'gold' does not score per user"):
        Source(RewardSpec(source="gold", user="u1"), None, "rewards[0].source")
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "hi", "user": "u1", "weights": {"a": 2}}\n{"prompt": "yo", "weights": [1]}\n'
                    '{"prompt": "yo", "weights": {"a": "x"}}\n')
    with pytest.raises(Exception, match=r"p.jsonl:2: field 'weights'.*\n.*p.jsonl:3: field 'weights'"):
        read_prompts([str(path)])
    path.write_text('{"prompt": "hi", "user": "u1", "weights": {"a": 2}}\n')
    assert read_prompts([str(path)])[0].user == "u1"


def test_prompts_are_read_from_any_form_of_feedback_data(tmp_path):
    """UltraFeedback's `instruction`, Arena's conversations (the prompt is their shared turns) and chat
    messages held as JSON text in a CSV cell are all prompts to roll out from."""
    import json

    from pluralign.online.rollout import read_prompts

    user = [{"role": "user", "content": "Name a prime."}]
    rows = [{"instruction": "Explain rain.", "completions": [{"response": "Water.", "annotations": {"h": {"Rating": "3"}}}]},
            {"winner": "model_a", "judge": "u7", "conversation_a": user + [{"role": "assistant", "content": "7"}],
             "conversation_b": user + [{"role": "assistant", "content": "9"}]}]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_prompts([str(tmp_path / "mixed.jsonl")])
    assert [(p.prompt, p.user) for p in got] == [("Explain rain.", None), (user, "u7")]
    (tmp_path / "chat.csv").write_text('prompt\n"' + json.dumps(user).replace('"', '""') + '"\n')
    assert read_prompts([str(tmp_path / "chat.csv")])[0].prompt == user


def test_prompt_rows_sampling_fields_are_refused(tmp_path) -> None:
    """A decode prompt file's per-row n / temperature / max_new_tokens were dropped by online training (silently,
    then with a warning a user could miss); each is now a problem naming file, line and field (the group of a
    feedback row, and the user, weights and stop that rollouts use, are not named)."""
    from pluralign.online.rollout import read_prompts

    path = tmp_path / "decode_prompts.jsonl"
    path.write_text('{"prompt": "a", "n": 4, "temperature": 0.7, "user": "u1", "group": "g"}\n'
                    '{"prompt": "b", "max_new_tokens": 9, "stop": ["x"]}\n{"prompt": "c", "temperature": 0.5}\n')
    with pytest.raises(DataError) as caught:
        read_prompts([str(path)])
    named = sorted((p.line, p.field) for p in caught.value.problems)
    assert named == [(1, "n"), (1, "temperature"), (2, "max_new_tokens"), (3, "temperature")]
    assert "decode_prompts.jsonl:1: field 'n': online training samples every prompt with the recipe's group_size" in str(
        caught.value)
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"prompt": "a", "user": "u1", "group": "g", "weights": {"a": 1}, "stop": ["x"]}\n')
    assert read_prompts([str(plain)])[0].stop == ("x",)
