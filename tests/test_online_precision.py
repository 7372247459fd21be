"""Online training under mixed precision: the rollout's stored log-probs (sampling policy, reference) are
taken under the loop's autocast and in the layout the update trains, so that before any update the ratio is
1 and the KL to the (unchanged) reference 0 exactly, as in full precision."""

from __future__ import annotations

import pytest
import torch
from online_toys import PROMPTS, cat_reward, make_model_dir, metric_rows, online_config

from pluralign.models.load import load_model
from pluralign.online import grouped
from pluralign.train.recipes.online import run

LOOP = {"learning_rate": 1e-3, "batch_size": 2, "max_steps": 2, "progress": False, "log_every": 1,
        "scheduler": "constant", "mixed_precision": "bf16"}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("precision") / "base")


@pytest.mark.parametrize("kw", [{"ppo_epochs": 2, "beta": 0.1}, {"beta": 0.1, "kl_in": "reward"}])
def test_bf16_first_update_has_ratio_one_and_kl_zero(base, tmp_path, kw):
    """fp32 weights under bf16 autocast: stored log-probs taken in fp32 (or in the grouped layout while the
    update trains padded rows) round apart from the training forward's, so the first update of a rollout
    saw ratios off 1 (GSPO's 4e-4 clip range clipped every sequence on SmolLM2) and a KL off 0."""
    run(online_config(base, tmp_path, LOOP, algorithm="grpo", **kw), prompts=PROMPTS, reward_objects=[cat_reward])
    first = metric_rows(tmp_path)[0]
    assert first["kl"] == 0.0
    if "ppo_epochs" in kw:
        assert first["approx_kl"] == 0.0 and first["clip_fraction"] == 0.0


def test_the_grouped_check_ignores_the_callers_autocast(base, monkeypatch):
    """The check compares two layouts to 1e-4; under bf16 autocast they round apart (SmolLM2-135M: the check
    failed, and grouping was off for the run), and the rollout's forwards now run inside the loop's autocast.
    The tiny model's layouts agree even in bf16, so the test looks at the precision the check runs in."""
    seen = []
    plain = grouped.token_logps

    def spying(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return plain(*args, **kwargs)

    monkeypatch.setattr(grouped, "token_logps", spying)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert grouped.works(load_model(base))
    assert seen == [False]


def _smollm2():
    from pluralign.runs import cache_root

    path = cache_root() / "smollm2-135m-instruct"  # scripts/real_model.py converts it there
    return path if (path / "config.json").exists() else None


def brevity(prompts, responses):
    return [-len(r.split()) / 10 for r in responses]


@pytest.mark.slow
@pytest.mark.skipif(_smollm2() is None, reason="SmolLM2-135M-Instruct is not cached (make real-model converts it)")
def test_smollm2_gspo_under_bf16_starts_unclipped(tmp_path):
    """The case the tiny model cannot show: on SmolLM2 (fp32 weights, bf16 autocast) fp32 and grouped-layout
    log-probs were ~0.03 a token off the update's, and GSPO's 4e-4 clip range clipped every sequence of the
    first update (clip_fraction 1.0); the grouped check also failed under the autocast."""
    chats = [[{"role": "user", "content": "Name a colour."}],
             [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"}]]
    loop = LOOP | {"learning_rate": 1e-6, "max_steps": 2}
    run(online_config(_smollm2(), tmp_path, loop, algorithm="gspo", ppo_epochs=2, beta=0.05, group_size=2,
                      max_new_tokens=8), prompts=chats, reward_objects=[brevity])
    first = metric_rows(tmp_path)[0]
    assert first["clip_fraction"] == 0.0 and first["approx_kl"] == 0.0 and first["kl"] == 0.0
    assert grouped.works(load_model(_smollm2()))
