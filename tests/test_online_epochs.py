"""Several updates per rollout (PPO epochs x minibatches) and DAPO's dynamic-sampling re-draws, through
the one loop: the first update of a rollout is the on-policy one, later ones see ratios != 1 and clip;
a kill between a rollout's updates resumes exactly; re-draws fill the batch deterministically."""

from __future__ import annotations

import pytest
import torch
from online_toys import (
    PROMPTS,
    cat_reward,
    make_model_dir,
    one_second_generation,
    online_config,
    write_prompts,
)
from online_toys import metric_rows as metrics
from online_toys import weights as params

from pluralign.errors import ConfigError, PluralignError
from pluralign.models.load import load_model, load_tokenizer
from pluralign.online.engine import Engine, minibatch_rows
from pluralign.online.methods import PolicyGradient
from pluralign.online.rewards import RewardSpec, Source, varied_groups
from pluralign.train.recipes.online import build_method, run

LOOP = {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 2, "progress": False, "log_every": 1,
        "scheduler": "constant"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("epochs") / "base")


def config(base, tmp_path, **kw):
    return online_config(base, tmp_path, LOOP, **kw)


def dog_is_flat(prompts, responses):
    """cat_reward, except that every answer to a prompt with 'dog' in it gets 0: those groups never vary."""
    r = cat_reward(prompts, responses)
    return [0.0 if "dog" in p else x for p, x in zip(prompts, r, strict=True)]


def test_minibatches_partition_the_rows_anew_each_epoch():
    parts = [minibatch_rows(10, 3, k, seed=5) for k in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10)) and [len(p) for p in parts] == [4, 3, 3]
    assert not torch.equal(minibatch_rows(10, 3, 0, seed=6), parts[0])  # another epoch's seed deals again
    assert torch.equal(minibatch_rows(10, 1, 0, seed=5), torch.arange(10))


def test_second_epoch_has_ratio_off_one_and_clips(base, tmp_path):
    """Epoch 1's update is on-policy (ratio 1: nothing clipped, the same loss and gradient as one update
    per rollout); epoch 2 reuses the rollout after a large step with a tight clip range, so it clips."""
    kw = dict(algorithm="grpo", loss_params={"eps_low": 0.01, "eps_high": 0.01}, loop={"learning_rate": 5e-2})
    run(config(base, tmp_path / "two", ppo_epochs=2, **kw), prompts=PROMPTS, reward_objects=[cat_reward])
    run(config(base, tmp_path / "one", **(kw | {"loop": {"learning_rate": 5e-2, "max_steps": 1}})), prompts=PROMPTS,
        reward_objects=[cat_reward])
    two, one = metrics(tmp_path / "two"), metrics(tmp_path / "one")
    assert [r["ppo_epoch"] for r in two] == [0.0, 1.0]
    assert two[0]["clip_fraction"] == 0.0 and two[1]["clip_fraction"] > 0.0
    assert two[0]["approx_kl"] < 1e-6 < two[1]["approx_kl"]  # KL(sampling policy ‖ updated policy)
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], abs=1e-6)
    assert two[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-5)
    assert two[1]["reward"] == two[0]["reward"]  # the same rollout
    assert two[1]["loss"] != pytest.approx(two[0]["loss"], abs=1e-6)


def test_stored_old_logps_give_ratio_off_one_after_an_update(base):
    tok, model = load_tokenizer(base), load_model(base)
    cfg = config(base, base.parent, algorithm="grpo", ppo_epochs=2).resolved()
    method, _, _ = build_method(cfg, tok, model)
    assert isinstance(method, PolicyGradient) and method.reuse
    from pluralign.online.rollout import generate

    ro = generate(model, tok, ["the cat", "a dog"], 4, max_new_tokens=6, seed=1)
    batch, d = method.build(model, ro, torch.tensor([0.3, -1.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.5]))
    batch["scale"] = torch.tensor(2 / d)
    from pluralign.online.methods import policy_outputs

    now, _ = policy_outputs(model, batch)
    mask = batch["completion_mask"].bool()
    torch.testing.assert_close(now[mask], batch["old_logps"][mask], atol=1e-6, rtol=0)  # ratio 1 before any update
    with torch.no_grad():
        model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))
    moved, _ = policy_outputs(model, batch)
    assert (moved[mask] - batch["old_logps"][mask]).abs().max() > 1e-2
    sub, d_sub = method.minibatch(batch, torch.tensor([0, 5]))
    assert sub["input_ids"].shape[0] == 2 and sub["n_prompts"] == 2 and d_sub == float(batch["loss_mask"][[0, 5]].sum())


def test_kill_between_a_rollouts_epochs_resumes_exactly(base, tmp_path, monkeypatch):
    """2 epochs x 2 minibatches per rollout, DAPO re-draws on: killed at step 7 (mid second rollout),
    resumed from the step-4 checkpoint, the rollout is regenerated (seeded by seed, step, prompts) from
    the same weights and the run ends where the uninterrupted one does."""
    kw = dict(algorithm="grpo", ppo_epochs=2, num_minibatches=2, dynamic_sampling=True, redraw_tries=2,
              beta=0.05, loop={"max_steps": 8, "save_every": 4})
    straight = run(config(base, tmp_path / "a", **kw), prompts=PROMPTS, reward_objects=[dog_is_flat])
    calls = {"n": 0}
    real = PolicyGradient.step

    def dies_at_step_7(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")
        return real(self, model, batch)

    monkeypatch.setattr(PolicyGradient, "step", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        run(config(base, tmp_path / "b", **kw), prompts=PROMPTS, reward_objects=[dog_is_flat])
    monkeypatch.setattr(PolicyGradient, "step", real)
    resumed = run(config(base, tmp_path / "b", **kw), prompts=PROMPTS, reward_objects=[dog_is_flat])
    assert resumed.train.resumed_from.name == "step-4"
    a, b = params(load_model(straight.model_dir)), params(load_model(resumed.model_dir))
    assert any(not torch.equal(a[k], v) for k, v in params(load_model(base)).items())
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    rows = metrics(tmp_path / "a")
    assert [r["ppo_epoch"] for r in rows] == [0.0, 0.0, 1.0, 1.0] * 2
    assert any(r["redraw_tries"] > 0 for r in rows)


def test_updates_per_rollout_need_rollout_boundaries(base, tmp_path):
    with pytest.raises(ConfigError, match="multiples of 2"):
        run(config(base, tmp_path, ppo_epochs=2, loop={"save_every": 1}), prompts=PROMPTS, reward_objects=[cat_reward])
    with pytest.raises(ConfigError, match="one step per rollout"):
        run(config(base, tmp_path, algorithm="online_dpo", num_minibatches=2), prompts=PROMPTS, reward_objects=[cat_reward])
    with pytest.raises(ConfigError, match="set dynamic_sampling=true"):
        run(config(base, tmp_path, redraw_tries=2), prompts=PROMPTS, reward_objects=[cat_reward])


def engine_for(base, reward, redraw_tries, prompts=PROMPTS, **kw):
    from pluralign.online.rollout import Prompt

    tok, model = load_tokenizer(base), load_model(base)
    cfg = config(base, base.parent, dynamic_sampling=redraw_tries > 0, redraw_tries=redraw_tries, **kw).resolved()
    method, reference, trainee = build_method(cfg, tok, model)
    return Engine(policy=model, tokenizer=tok, prompts=[Prompt(i, p) for i, p in enumerate(prompts)],
                  sources=[Source(RewardSpec(), reward)], source_weights=[1.0], method=method, group_size=4, seed=0,
                  sampling={"max_new_tokens": 6, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "chat_template": "auto"},
                  redraw_tries=redraw_tries, ppo_epochs=cfg.ppo_epochs, num_minibatches=cfg.num_minibatches,
                  reference=reference, trainee=trainee, reward_norm=cfg.reward_norm, reward_clip=cfg.reward_clip,
                  calibrate_samples=cfg.calibrate_samples)


def test_each_step_of_a_rollout_gets_its_minibatch_with_its_own_denominator(base):
    """2 epochs x 2 minibatches: steps 0-3 share one rollout; each epoch's two minibatches partition the
    rows, and each step's scale makes its loss the token mean over its own minibatch."""
    engine = engine_for(base, cat_reward, 0, ppo_epochs=2, num_minibatches=2)
    micro = [[0, 3], [5, 6]]
    served = []
    for step in range(4):
        engine.prepare(step, micro)
        served.append([engine.collate([engine.prompts[i] for i in idx]) for idx in micro])
    full = engine._rollout[1]
    for m, (_, whole, _) in enumerate(full):
        for epoch in (0, 1):
            a, b = served[2 * epoch][m], served[2 * epoch + 1][m]
            rows = sorted(map(tuple, torch.cat([a["input_ids"], b["input_ids"]]).tolist()))
            assert rows == sorted(map(tuple, whole["input_ids"].tolist())) and len(a["input_ids"]) == 4
            assert a["n_prompts"] == 2 and float(a["metrics"]["ppo_epoch"]) == epoch
    for step in range(4):
        tokens = sum(float(b["loss_mask"].sum()) for b in served[step])
        assert float(served[step][0]["scale"]) == pytest.approx(4 / tokens)  # 4 prompts / this step's tokens
    assert not torch.equal(served[0][0]["input_ids"], served[2][0]["input_ids"])  # epoch 2 deals the rows anew
    with pytest.raises(PluralignError, match="rollout boundaries"):
        engine_for(base, cat_reward, 0, ppo_epochs=2).prepare(1, micro)  # a step whose rollout was never made


def test_redraws_replace_flat_groups_deterministically(base):
    engine = engine_for(base, dog_is_flat, redraw_tries=5)
    idx = [1, 4]  # "a dog", "the big red dog": both flat
    ro, rewards, m, _ = engine._sample(3, idx)
    assert varied_groups(rewards, 4).all() and m["filled_fraction"] == 1.0 and m["redraw_tries"] >= 1
    assert all("dog" not in p for p in ro.prompts) and len(ro.prompts) == 8
    again, rewards2, _, _ = engine_for(base, dog_is_flat, redraw_tries=5)._sample(3, idx)
    assert again.completion_ids == ro.completion_ids and torch.equal(rewards, rewards2)
    # Without re-draws the flat groups stay and get no loss.
    ro0, r0, m0, _ = engine_for(base, dog_is_flat, redraw_tries=0)._sample(3, idx)
    assert not varied_groups(r0, 4).any() and "filled_fraction" not in m0


def test_redraws_give_up_after_the_tries_and_log_it(base):
    engine = engine_for(base, lambda prompts, responses: [1.0] * len(responses), redraw_tries=3)
    ro, rewards, m, _ = engine._sample(0, [0, 2])
    assert m["redraw_tries"] == 3 and m["filled_fraction"] == 0.0
    assert ro.prompts[::4] == ["the cat", "hello world"]  # the original (flat) groups keep their slots
    batch, d = engine.method.build(engine.trainee, ro, rewards)
    assert d == 0 and batch["loss_mask"].sum() == 0


def test_generation_speed_counts_the_time_spent_generating_only(base, monkeypatch):
    """gen_tokens_per_s divided by the whole rollout phase, reward scoring and the method's forwards (old and
    reference log-probs) included: with a slow reward model or judge it said nothing of generation."""
    from types import SimpleNamespace

    import pluralign.online.engine as engine_module

    now = [0.0]
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def slow_reward(prompts, responses):
        now[0] += 100.0
        return cat_reward(prompts, responses)

    engine = engine_for(base, slow_reward, 0)
    one_second_generation(engine, now)
    engine.prepare(0, [[0, 1]])
    batch = engine.ready[(0, 1)]
    assert float(batch["metrics"]["gen_tokens_per_s"]) == float(batch["completion_mask"].sum())  # tokens / 1 s


def test_training_speed_is_the_rows_own_step(base, tmp_path, monkeypatch):
    """train_tokens_per_s of a row is its own step's tokens over its own training time: it was measured at the
    next step's rollout and logged there, one step late (step 1's row had none, the last step's was lost)."""
    from types import SimpleNamespace

    import pluralign.online.engine as engine_module

    now = [0.0]
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    trained = []
    step = PolicyGradient.step

    def timed_step(self, model, batch):  # 1 s per 100 trained tokens, a number that differs from step to step
        rows = batch["attention_mask"] if "live" not in batch else batch["attention_mask"][batch["live"]]
        trained.append(float(rows.sum()))
        now[0] += trained[-1] / 100
        return step(self, model, batch)

    monkeypatch.setattr(PolicyGradient, "step", timed_step)
    run(config(base, tmp_path, data=[str(write_prompts(tmp_path / "p.jsonl"))], loop={"max_steps": 3},
               rewards=[{"source": "online_toys:cat_reward"}]))
    rows = metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3] and len(set(trained)) > 1
    for r in rows:
        assert r["train_tokens_per_s"] == pytest.approx(100.0)


class PerPrompt:
    """Each prompt's samples drawn from a seed of its own: the same rollout however the step is split."""

    def __init__(self, native):
        self.native = native

    def sync(self):
        pass

    def generate(self, prompts, n, seed, **sampling):
        from pluralign.online.rollout import Rollout, derived_seed

        return Rollout.concat([self.native.generate([p], n, seed=derived_seed(p), **sampling) for p in prompts])


@pytest.mark.parametrize("kw", [{"algorithm": "reinforce_pp"}, {"algorithm": "ppo"},
                                {"algorithm": "grpo", "advantage_params": {"scale": "batch"}}])
def test_batch_statistics_are_the_whole_rollouts_under_accumulation(base, kw):
    """REINFORCE++'s and GAE's advantage whitening and GRPO's batch std are statistics of the step's rollout:
    2 micro-batches of 2 prompts train on the advantages, value targets and loss of 1 micro-batch of 4 (each
    micro-batch was whitened on its own: its advantages were far from the rollout's)."""
    def step(micro):
        engine = engine_for(base, cat_reward, 0, **kw)
        engine.backend = PerPrompt(engine.backend)
        engine.prepare(0, micro)
        batches = [engine.collate([engine.prompts[i] for i in idx]) for idx in micro]
        picked = {key: torch.cat([b[key][b["completion_mask"].bool()] for b in batches])
                  for key in ("advantages", "returns") if key in batches[0]}
        return picked, sum(float(engine.method.step(engine.trainee, b)[0].detach().sum()) for b in batches)

    (whole, loss), (split, split_loss) = step([[0, 1, 2, 3]]), step([[0, 1], [2, 3]])
    assert whole.keys() == split.keys() and whole["advantages"].std() > 0
    for key in whole:
        torch.testing.assert_close(split[key], whole[key], atol=1e-5, rtol=1e-5)
    assert split_loss == pytest.approx(loss, abs=1e-5)


def test_running_reward_normalisation_sees_the_whole_step_first(base):
    """PPO-max's running moments are updated with the step's whole rollout before any reward is scaled: per
    micro-batch, the first micro-batch's rewards were scaled by moments that lacked the second's (and each
    DDP process kept moments of its own)."""
    def step(micro):
        engine = engine_for(base, cat_reward, 0, algorithm="rloo", reward_norm="running")
        engine.backend = PerPrompt(engine.backend)
        engine.prepare(0, micro)
        batches = [engine.collate([engine.prompts[i] for i in idx]) for idx in micro]
        return torch.cat([b["advantages"][b["completion_mask"].bool()] for b in batches]), engine.moments

    (whole, moments), (split, split_moments) = step([[0, 1, 2, 3]]), step([[0, 1], [2, 3]])
    assert whole.std() > 0 and split_moments.state_dict() == pytest.approx(moments.state_dict())
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [{"algorithm": "grpo"}, {"algorithm": "rsft"}, {"algorithm": "grpo", "use_lora": True}])
def test_infalign_ranks_rewards_among_the_initial_policys_samples(base, monkeypatch, kw):
    """InfAlign calibrates against the reference (the initial policy): without KL (GRPO's beta 0, RAFT) there was
    no reference and the moved policy's own samples were the yardstick."""
    import pluralign.online.engine as engine_module
    from pluralign.online.rollout import derived_seed, generate

    engine = engine_for(base, cat_reward, 0, calibrate_samples=3, **kw)
    with torch.no_grad():  # the policy moves away from where it started
        for p in engine.policy.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    drawn = []
    monkeypatch.setattr(engine_module, "generate", lambda *a, **k: drawn.append(generate(*a, **k)) or drawn[-1])
    idx = [0, 1]
    engine.shaped_rewards(engine._generate(idx, seed=1), 5, idx)
    tok, initial = load_tokenizer(base), load_model(base)
    expected = generate(initial, tok, [PROMPTS[i] for i in idx], 3, seed=derived_seed(0, 5, tuple(idx), "reference"),
                        **engine.sampling)
    assert len(drawn) == 1 and drawn[0].completion_ids == expected.completion_ids
