"""BCO's underlying-distribution matching: the balanced logistic prompt classifier, the density-ratio weights,
and the recipe applying them to undesirable examples only."""

from __future__ import annotations

import math

import pytest
import torch
from loop_toys import make_model_dir

from pluralign.data.io import write_records
from pluralign.data.records import Binary
from pluralign.errors import ConfigError
from pluralign.models.load import load_model, load_tokenizer
from pluralign.runs import RunDir
from pluralign.train import run_preference
from pluralign.train.udm import bco_udm_weights, fit_logistic


def test_uninformative_features_give_probability_half_whatever_the_class_imbalance():
    x = torch.ones(10, 3)  # the same prompt embedding for every example
    y = torch.tensor([1.0] * 8 + [0.0] * 2)
    theta = fit_logistic(x, y)
    prob = torch.sigmoid(x.double() @ theta[:-1] + theta[-1])
    torch.testing.assert_close(prob, torch.full((10,), 0.5, dtype=torch.float64), atol=1e-6, rtol=0)


def test_fit_reaches_the_optimum_of_the_balanced_l2_objective():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=gen)
    y = (x[:, 0] + 0.5 * torch.randn(40, generator=gen) > 0.3).float()
    theta = fit_logistic(x, y).requires_grad_(True)
    n, n_pos = 40, float(y.sum())
    s = torch.where(y > 0, n / (2 * n_pos), n / (2 * (n - n_pos))).double()
    logits = x.double() @ theta[:-1] + theta[-1]
    value = (s * torch.nn.functional.binary_cross_entropy_with_logits(logits, y.double(), reduction="none")).sum()
    (value + 0.5 * theta[:-1].square().sum()).backward()
    assert theta.grad.abs().max() < 1e-5  # stationary point of a strictly convex objective: the optimum
    assert theta[0] > 0  # the informative feature points toward the positive class
    with pytest.raises(ValueError, match="both"):
        fit_logistic(x, torch.ones(40))


def records() -> list[Binary]:
    """Desirable answers mostly to 'cat' prompts, undesirable ones mostly to 'dog' prompts; three undesirable
    'cat' prompts look like desirable ones and should weigh more than the 'dog' ones."""
    rows = [Binary("tell me about the cat", "the cat is very good", True) for _ in range(8)]
    rows += [Binary("tell me about the dog", "the dog is bad", False) for _ in range(8)]
    rows += [Binary("tell me about the cat", "no", False) for _ in range(3)]
    rows += [Binary("tell me about the dog", "the dog is good", True) for _ in range(1)]
    return rows


def test_density_ratio_weights_favour_undesirable_examples_with_desirable_looking_prompts(tmp_path):
    base = make_model_dir(tmp_path / "base")
    model, tok = load_model(base), load_tokenizer(base)
    w = bco_udm_weights(model, tok, records())
    labels = torch.tensor([r.label for r in records()])
    assert torch.all(w[labels] == 1.0)
    assert torch.all((w >= 0.5) & (w <= 10.0))
    dog, cat = w[8:16], w[16:19]
    assert torch.all(cat > dog.max()) and torch.all(cat > 1.0) and torch.all(dog < 1.0)


def test_recipe_multiplies_undesirable_losses_by_the_weights(tmp_path):
    base = make_model_dir(tmp_path / "base")
    data = write_records(tmp_path / "binary.jsonl", records())
    n = len(records())
    run = run_preference(model=str(base), data=[str(data)], loss="bco", udm=True, output_dir=str(tmp_path / "run"),
                         loop={"learning_rate": 1e-3, "batch_size": n, "max_steps": 1, "log_every": 1,
                               "progress": False})
    expected_w = bco_udm_weights(load_model(base), load_tokenizer(base), records())
    first = RunDir(run.run_dir).read_metrics()[0]
    # policy == reference and shift 0 at step 1: every example's BCO loss is log 2, times its weight
    assert first["loss"] == pytest.approx(math.log(2) * float(expected_w.mean()), rel=1e-5)
    assert float(expected_w.mean()) != pytest.approx(1.0, abs=1e-3)  # the weights did change the loss

    with pytest.raises(ConfigError, match="unpaired"):
        run_preference(model=str(base), data=[str(data)], loss="dpo", udm=True, output_dir=str(tmp_path / "x"))
