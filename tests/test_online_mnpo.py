"""MNPO rounds (Wu et al. 2026) on online DPO's code path: round 1 has no opponents and is online DPO with
the mnpo loss; each round's start adds the policy to the history (capped); resume between and within
rounds restores the opponents exactly."""

from __future__ import annotations

import pytest
import torch
from online_toys import PROMPTS, cat_reward, make_model_dir, online_config
from online_toys import metric_rows as metrics
from online_toys import weights as params

from pluralign.errors import ConfigError
from pluralign.models.load import load_model
from pluralign.train.recipes.online import run

LOOP = {"learning_rate": 1e-3, "batch_size": 2, "max_steps": 4, "progress": False, "log_every": 1,
        "scheduler": "constant"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("mnpo") / "base")


def config(base, tmp_path, **kw):
    return online_config(base, tmp_path, LOOP, **kw)


def test_round_one_is_online_dpo_and_the_history_grows(base, tmp_path):
    mnpo = {"preference_params": {"eta": 0.05}}
    run(config(base, tmp_path / "m", algorithm="mnpo_rounds", mnpo_history=2, **mnpo), prompts=PROMPTS,
        reward_objects=[cat_reward])
    run(config(base, tmp_path / "d", algorithm="online_dpo", preference_loss="mnpo", ref_policy="initial", **mnpo),
        prompts=PROMPTS, reward_objects=[cat_reward])
    m, d = metrics(tmp_path / "m"), metrics(tmp_path / "d")
    assert [r["opponents"] for r in m] == [0.0, 1.0, 2.0, 2.0]  # one per round start, at most mnpo_history
    # Round 1: no opponent, the reference takes its place: online DPO with the mnpo loss, at init 1/(4η²).
    assert m[0]["loss"] == pytest.approx(d[0]["loss"], abs=1e-6) and m[0]["grad_norm"] == pytest.approx(d[0]["grad_norm"], rel=1e-6)
    assert m[0]["loss"] == pytest.approx(1 / (4 * 0.05**2), rel=1e-5)
    # Round 2 samples the same completions as online DPO (same weights) but the opponent is the round-1 policy.
    assert m[1]["reward"] == pytest.approx(d[1]["reward"], abs=1e-6)
    assert m[1]["loss"] != pytest.approx(d[1]["loss"], rel=1e-4)
    assert "opponents" not in d[0]


# Under LoRA the opponents and the round-start reference are snapshots of the adapters alone (`Snapshot`).
@pytest.mark.parametrize("algorithm,lora", [("mnpo_rounds", False), ("mnpo_rounds", True), ("online_dpo", True)])
def test_resume_between_and_within_rounds_is_exact(base, tmp_path, algorithm, lora):
    params_of = {"mnpo_rounds": {"preference_params": {"eta": 0.05}}, "online_dpo": {"ref_policy": "round_start"}}
    kw = dict(algorithm=algorithm, round_steps=2, use_lora=lora, merge_lora=True, loop={"max_steps": 6, "save_every": 1},
              **params_of[algorithm])
    straight = run(config(base, tmp_path / "a", **kw), prompts=PROMPTS, reward_objects=[cat_reward])
    for stop in (4, 5):  # at a round boundary, then in the middle of the third round
        run(config(base, tmp_path / "b", **(kw | {"loop": {"max_steps": stop, "save_every": 1}})), prompts=PROMPTS,
            reward_objects=[cat_reward])
    resumed = run(config(base, tmp_path / "b", **kw), prompts=PROMPTS, reward_objects=[cat_reward])
    assert resumed.train.resumed_from.name == "step-5"
    a, b = params(load_model(straight.model_dir)), params(load_model(resumed.model_dir))
    assert any(not torch.equal(a[k], v) for k, v in params(load_model(base)).items())
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=0)
    if algorithm == "mnpo_rounds":
        assert [r["opponents"] for r in metrics(tmp_path / "a")] == [0, 0, 1, 1, 2, 2]


def test_mnpo_rounds_needs_a_loss_that_reads_opponents(base, tmp_path):
    with pytest.raises(ConfigError, match="does not read them"):
        run(config(base, tmp_path, algorithm="mnpo_rounds", preference_loss="dpo"), prompts=PROMPTS,
            reward_objects=[cat_reward])

