"""Online group DRO (Sagawa et al. 2020) as a registered group objective: the exponentiated-gradient
weights by hand over two steps, evaluation leaves them alone, and they resume from a checkpointed state."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from pluralign.errors import ConfigError
from pluralign.personal import group_fair

LOSSES = torch.tensor([1.0, 2.0, 3.0, 6.0])
GROUPS = torch.tensor([0, 0, 1, 1])


def test_group_dro_weights_by_hand():
    combine, stateful = group_fair.make("group_dro", 2, {"step_size": 1.0})
    assert stateful
    # group means L = (1.5, 4.5); q ∝ (½e^1.5, ½e^4.5) = (1, e^3)/(1 + e^3)
    q1 = 1 / (1 + math.exp(3))
    out = combine(LOSSES, GROUPS)
    assert combine.q.tolist() == pytest.approx([q1, 1 - q1])
    assert out.tolist() == pytest.approx([1.5 * q1 + 4.5 * (1 - q1)] * 4)
    # second step: q ∝ (e^3, e^9); an evaluation call (update=False) uses q and leaves it
    combine(LOSSES, GROUPS)
    q2 = 1 / (1 + math.exp(6))
    assert combine.q.tolist() == pytest.approx([q2, 1 - q2])
    combine(LOSSES * 100, GROUPS, update=False)
    assert combine.q.tolist() == pytest.approx([q2, 1 - q2])
    # the gradient: q_g / n_g on each example of group g
    x = LOSSES.clone().requires_grad_(True)
    combine(x, GROUPS, update=False).mean().backward()
    assert x.grad.tolist() == pytest.approx([q2 / 2, q2 / 2, (1 - q2) / 2, (1 - q2) / 2])


def test_group_dro_absent_group_and_state():
    combine, _ = group_fair.make("group_dro", 3, {"step_size": 0.5})
    out = combine(torch.tensor([2.0, 4.0]), torch.tensor([0, 0]))  # groups 1 and 2 absent: their loss is 0
    q = torch.tensor([math.exp(1.5), 1.0, 1.0])
    assert combine.q.tolist() == pytest.approx((q / q.sum()).tolist())
    assert out[0].item() == pytest.approx(3.0 * float(q[0] / q.sum()))
    fresh, _ = group_fair.make("group_dro", 3, {})
    fresh.load_state_dict(combine.state_dict())
    assert torch.equal(fresh.q, combine.q)
    assert group_fair.make("group_dro", 2, {})[0].step_size == 0.01
    # step 0: the plain weighted mean with uniform weights, every step
    zero, _ = group_fair.make("group_dro", 2, {"step_size": 0.0})
    assert zero(LOSSES, GROUPS)[0].item() == pytest.approx(3.0)


def test_group_dro_bad_params():
    with pytest.raises(ConfigError, match="step_size"):
        group_fair.make("group_dro", 2, {"step_size": -1.0})
    with pytest.raises(ConfigError, match="bad group_objective_params"):
        group_fair.make("group_dro", 2, {"eta": 1.0})
    with pytest.raises(ConfigError, match="no"):
        group_fair.make("group_dro", 2, {})[0](LOSSES, torch.full((4,), -1))
    # functions get their parameters bound once
    soft, stateful = group_fair.make("worst_group", 2, {"temperature": 1.0})
    assert not stateful and soft(LOSSES, GROUPS).mean().item() == pytest.approx(3.855440, abs=1e-6)


def test_group_dro_through_the_recipe_is_checkpointed_and_resumes_exactly(tmp_path):
    from loop_toys import make_model_dir
    from test_personal import _opposed, _write

    from pluralign.models.load import load_model
    from pluralign.train import run_preference
    from pluralign.train.recipes.preference import from_kwargs
    from pluralign.train.state import load_checkpoint

    base = make_model_dir(tmp_path / "base")
    data = _write(tmp_path / "pairs.jsonl", _opposed(12) + [r | {"group": "c"} for r in _opposed(4)])
    loop = {"learning_rate": 1e-2, "batch_size": 4, "max_steps": 8, "progress": False, "log_every": 1,
            "save_every": 2, "keep_checkpoints": 0}
    personal = {"group_objective": "group_dro", "group_objective_params": {"step_size": 1.0, "adjustment": 2.0}}

    def train(out):
        return run_preference(from_kwargs(model=str(base), data=[data], loss="dpo", output_dir=str(out),
                                          loop=loop, personal=personal))

    full = train(tmp_path / "full")
    q = load_checkpoint(full.run_dir / "checkpoints" / "step-8").extra["group_objective"]["q"]
    assert len(q) == 3 and sum(q) == pytest.approx(1.0) and q != pytest.approx([1 / 3] * 3)
    # a run that stopped after step 4 continues from its checkpoint to the same weights and group weights
    shutil.copytree(full.run_dir, tmp_path / "half")
    for name in ("step-6", "step-8"):
        shutil.rmtree(tmp_path / "half" / "checkpoints" / name)
    shutil.rmtree(tmp_path / "half" / "model")
    resumed = train(tmp_path / "half")
    assert resumed.train.resumed_from.name == "step-4"
    assert load_checkpoint(resumed.run_dir / "checkpoints" / "step-8").extra["group_objective"]["q"] == pytest.approx(q)
    a, b = load_model(full.model_dir).state_dict(), load_model(resumed.model_dir).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_balanced_weights_by_hand():
    # group means L = (1.5, 4.5); training sizes n = (9, 1)
    combine, stateful = group_fair.make("balanced", 2, {}, sizes=[9, 1])
    assert not stateful
    assert combine(LOSSES, GROUPS).tolist() == pytest.approx([3.0] * 4)  # p = 0: (1.5 + 4.5) / 2
    sqrt, _ = group_fair.make("balanced", 2, {"power": 0.5}, sizes=[9, 1])
    assert sqrt(LOSSES, GROUPS)[0].item() == pytest.approx((3 * 1.5 + 1 * 4.5) / 4)  # w ∝ (√9, √1)
    by_size, _ = group_fair.make("balanced", 2, {"power": 1.0}, sizes=[9, 1])
    assert by_size(LOSSES, GROUPS)[0].item() == pytest.approx((9 * 1.5 + 4.5) / 10)
    # without sizes and p = 1: the batch's own counts, i.e. the plain average of the grouped examples
    uneven = torch.tensor([0, 0, 0, 1])
    assert group_fair.balanced(LOSSES, uneven, power=1.0)[0].item() == pytest.approx(3.0)
    assert group_fair.balanced(LOSSES, uneven)[0].item() == pytest.approx((2.0 + 6.0) / 2)
    # a group absent from the batch drops out: only group 0 is left, whatever the sizes
    assert combine(LOSSES[:2], GROUPS[:2]).tolist() == pytest.approx([1.5, 1.5])
    # the gradient: w_g / n_g(batch) on each example of group g, w = (¾, ¼)
    x = LOSSES.clone().requires_grad_(True)
    sqrt(x, GROUPS).mean().backward()
    assert x.grad.tolist() == pytest.approx([0.375, 0.375, 0.125, 0.125])


def test_balanced_bad_params():
    with pytest.raises(ConfigError, match="finite"):
        group_fair.make("balanced", 2, {"power": float("nan")}, sizes=[1, 1])  # at once, not in the first step
    with pytest.raises(ConfigError, match="finite numbers"):
        group_fair.make("worst_group", 2, {"temperature": "hot"})
    with pytest.raises(ConfigError, match="training records"):
        group_fair.make("balanced", 2, {"sizes": [1, 1]})


@pytest.mark.parametrize("objective, params, vectors, loss", [
    ("worst_group", {}, False, "dpo"), ("nash", {}, False, "dpo"), ("balanced", {"power": 0.0}, False, "dpo"),
    ("group_dro", {"step_size": 1.0}, False, "dpo"),
    ("worst_group", {}, True, "dpo"),  # per-user vectors, half the examples without: the first pass draws alike
    ("nash", {}, False, "wpo")])  # WPO's pair weights, computed in training steps: the first pass is one
def test_group_objective_over_micro_batches_equals_the_big_batch(tmp_path, objective, params, vectors, loss):
    """The objective is over the whole optimizer step: batch 2 x grad_accum 2 trains exactly as batch 4. Per
    micro-batch, a non-linear objective (a max, a log of means, weights updated per micro-batch) changed with
    the split: the worst group of each half is not the worst group of the step."""
    from loop_toys import make_model_dir
    from test_personal import _opposed, _write

    from pluralign.models.load import load_model
    from pluralign.personal.conditioned import load_vectors
    from pluralign.train import run_preference
    from pluralign.train.recipes.preference import from_kwargs

    base = make_model_dir(tmp_path / "base")
    # three groups of unequal sizes, so that micro-batches hold different mixes of them
    rows = _opposed(12) + [r | {"group": "c"} for r in _opposed(6)]
    data = _write(tmp_path / "pairs.jsonl", rows)
    personal = {"group_objective": objective, "group_objective_params": params}
    if vectors:
        personal |= {"condition_on": "user", "population_dropout": 0.5}

    def train(name, batch, accum):
        # adam_eps 1: updates proportional to the gradients (Adam's own normalisation would blow float noise up)
        loop = {"learning_rate": 1.0, "adam_eps": 1.0, "batch_size": batch, "grad_accum": accum, "max_steps": 3,
                "progress": False}
        out = run_preference(from_kwargs(model=str(base), data=[data], loss=loss, output_dir=str(tmp_path / name),
                                         loop=loop, personal=personal)).model_dir
        vectors = load_vectors(out)
        return load_model(out).state_dict() | ({"vectors": vectors[0].stored()} if vectors else {})

    big, split = train("big", 4, 1), train("split", 2, 2)
    assert big.keys() == split.keys() and ("vectors" in big) == vectors
    assert all(torch.allclose(big[k], split[k], atol=1e-5) for k in big)
