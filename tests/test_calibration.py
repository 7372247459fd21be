"""Calibration metrics (inference spec §B4) and temperature scaling (Guo et al. 2017)."""

import math

import pytest
import torch

from pluralign.errors import ConfigError
from pluralign.evaluate import calibration as cal


def test_calibrated_synthetic_predictor_has_ece_near_zero():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(200_000, generator=g)
    y = (torch.rand(200_000, generator=g) < p).float()
    errs = cal.calibration_errors(p, y, n_bins=10)
    assert errs["ece"] < 0.01 and errs["mce"] < 0.02
    # the same probabilities against flipped labels are maximally wrong
    assert cal.calibration_errors(p, 1 - y)["ece"] > 0.4


def test_constant_half_is_calibrated_on_symmetrized_pairs():
    p, y = cal.symmetrize(torch.full((37,), 0.5))
    assert cal.calibration_errors(p, y)["ece"] == 0.0
    assert y.sum() == 37 and len(y) == 74  # both orientations: labels 1 and 0


def test_hand_computed_ece_ace_mce():
    # bins of width 0.5: {0.2, 0.4} with labels {0, 1} → conf 0.3, acc 0.5; {0.9} with label 1 → conf 0.9, acc 1
    errs = cal.calibration_errors([0.2, 0.4, 0.9], [0, 1, 1], n_bins=2)
    assert errs["ece"] == pytest.approx((2 * 0.2 + 1 * 0.1) / 3)
    assert errs["ace"] == pytest.approx(0.15)
    assert errs["mce"] == pytest.approx(0.2)
    rows = cal.reliability_data([0.2, 0.4, 0.9], [0, 1, 1], n_bins=2)
    assert [r["count"] for r in rows] == [2, 1]


def test_pair_probabilities_and_symmetrized_ece():
    p = cal.pair_probabilities([1.0, 0.0], [0.0, 0.0])
    assert p.tolist() == pytest.approx([1 / (1 + math.exp(-1)), 0.5])
    # pairwise_calibration = ECE of σ(margin) in both orientations
    direct = cal.calibration_errors(*cal.symmetrize(torch.sigmoid(torch.tensor([2.0, -1.0, 0.5]))))
    assert cal.pairwise_calibration([2.0, -1.0, 0.5]) == pytest.approx(direct)


def test_temperature_scaling_recovers_the_true_temperature_and_lowers_ece():
    g = torch.Generator().manual_seed(1)
    margins = torch.randn(20_000, generator=g) * 4
    labels = (torch.rand(20_000, generator=g) < torch.sigmoid(margins / 3.0)).float()
    t = cal.fit_temperature(margins, labels)
    assert t == pytest.approx(3.0, rel=0.08)
    p_raw, y = cal.symmetrize(torch.sigmoid(margins), labels)
    p_cal, _ = cal.symmetrize(torch.sigmoid(margins / t), labels)
    assert cal.calibration_errors(p_cal, y)["ece"] < 0.3 * cal.calibration_errors(p_raw, y)["ece"]


def test_reliability_plot_writes_png(tmp_path):
    rows = cal.reliability_data(*cal.symmetrize(torch.tensor([0.9, 0.7, 0.6, 0.95])))
    path = cal.plot_reliability(rows, tmp_path / "rel.png", rows_after=rows)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("probs, labels, n_bins, field", [
    ([0.2, 0.8], [0, 1], 0, "n_bins"),            # NaN errors, as if there were no pairs
    ([0.2, 0.8], [0, 1], 2.5, "n_bins"),
    ([0.2, 0.8], [0, 1, 1], 10, "labels"),        # an IndexError from the binning
    ([1.5, -0.5], [1, 0], 10, "probs"),           # reward margins where probabilities belong
])
def test_calibration_inputs_a_caller_got_wrong_are_named(probs, labels, n_bins, field):
    for fn in (cal.calibration_errors, cal.reliability_data):
        with pytest.raises(ConfigError) as e:
            fn(probs, labels, n_bins=n_bins)
        assert e.value.field == field


def test_quantile_bins_report_their_own_edges():
    # Quantile bins were labelled with the uniform bins' edges: the bin holding 0.25 (the top quarter of
    # these probabilities) read lo 0.75, hi 1.0.
    p = torch.tensor([0.1, 0.15, 0.2, 0.25])
    rows = cal.reliability_data(p, torch.tensor([0.0, 1.0, 1.0, 1.0]), n_bins=2, binning="quantile")
    assert [(r["lo"], r["hi"], r["count"]) for r in rows] == [(0.0, pytest.approx(0.175), 2), (pytest.approx(0.175), 1.0, 2)]
    for r in rows:  # every bin's mean confidence lies within its edges
        assert r["lo"] <= r["confidence"] <= r["hi"]
    uniform = cal.reliability_data(p, torch.tensor([0.0, 1.0, 1.0, 1.0]), n_bins=4)
    assert [(r["lo"], r["hi"]) for r in uniform] == [(0.0, 0.25)]
