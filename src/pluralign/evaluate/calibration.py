"""Calibration of pairwise preference probabilities: ECE / ACE / MCE, reliability diagrams, temperature scaling.

A reward model turns a pair into a probability P(a ≻ b) = σ((r_a − r_b) / T). Following MORE (Zeng et al.,
"On Diversified Preferences of LLM Alignment", `utils.calibration_error`), every pair enters in BOTH
orientations — (p, 1) and (1 − p, 0) — so the prediction set is symmetric about ½ and a constant p = ½
predictor has ECE 0. Temperature scaling is Guo et al. 2017, "On Calibration of Modern Neural Networks":
one scalar T fitted by minimising the held-out negative log-likelihood.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pluralign.errors import ConfigError
from pluralign.runs import atomic_write_bytes

_GOLDEN = (math.sqrt(5) - 1) / 2


def _as_tensor(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64).detach().flatten().cpu()


def pair_probabilities(chosen_rewards, rejected_rewards, temperature: float = 1.0) -> torch.Tensor:
    """P(chosen ≻ rejected) = σ((r_chosen − r_rejected) / T) for each pair."""
    margin = _as_tensor(chosen_rewards) - _as_tensor(rejected_rewards)
    return torch.sigmoid(margin / temperature)


def symmetrize(probs, labels=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both orientations of each pair: probabilities (p, 1 − p) with labels (y, 1 − y).

    `probs` are P(first ≻ second); `labels` default to 1 (the first item is the preferred one, the usual
    chosen/rejected layout)."""
    p = _as_tensor(probs)
    y = torch.ones_like(p) if labels is None else _as_tensor(labels)
    return torch.cat([p, 1 - p]), torch.cat([y, 1 - y])


def _bins(probs: torch.Tensor, n_bins: int, binning: str) -> tuple[torch.Tensor, list[float]]:
    """Each probability's bin and the n_bins + 1 bin edges: uniform on [0, 1], or at the probabilities'
    quantiles (whose edges are the quantiles, not the uniform ones: a quantile bin was labelled as if uniform)."""
    if binning == "uniform":
        inner = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1]
    elif binning == "quantile":
        inner = torch.quantile(probs, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1])
    else:
        raise ValueError(f"binning must be 'uniform' or 'quantile', got {binning!r}")
    return torch.searchsorted(inner, probs.contiguous(), right=False), [0.0, *inner.tolist(), 1.0]


def _checked(probs: Any, labels: Any, n_bins: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """`probs` and `labels` as tensors, or a `ConfigError` naming the argument: `n_bins=0` gave NaN errors
    as if there were no pairs, labels of another length an IndexError from the binning, and probabilities
    outside [0, 1] (margins passed by mistake) errors that mean nothing."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise ConfigError(f"n_bins must be an integer >= 1, got {n_bins!r}", field="n_bins")
    p, y = _as_tensor(probs), _as_tensor(labels)
    if p.numel() != y.numel():
        raise ConfigError(f"{p.numel()} probabilities but {y.numel()} labels", field="labels")
    if bool(((p < 0) | (p > 1)).any()):
        raise ConfigError("probs must be probabilities in [0, 1] (pairwise_calibration takes reward margins)",
                          field="probs")
    return p, y


def reliability_data(probs, labels, n_bins: int = 10, binning: str = "uniform") -> list[dict]:
    """One row per non-empty bin: bin index, edges, count, mean confidence, empirical frequency.

    Pass already-symmetrized pairs (see `symmetrize`) to get the pairwise-RM convention."""
    p, y = _checked(probs, labels, n_bins)
    if p.numel() == 0:
        return []
    ids, edges = _bins(p, n_bins, binning)
    rows = []
    for b in range(n_bins):
        mask = ids == b
        n = int(mask.sum())
        if n == 0:
            continue
        rows.append({"bin": b, "lo": edges[b], "hi": edges[b + 1], "count": n,
                     "confidence": float(p[mask].mean()), "accuracy": float(y[mask].mean())})
    return rows


def calibration_errors(probs, labels, n_bins: int = 10, binning: str = "uniform") -> dict[str, float]:
    """ECE = Σ_b |Σ_{i∈b} p_i − Σ_{i∈b} y_i| / n;  ACE = mean_b |conf_b − acc_b|;  MCE = max_b |conf_b − acc_b|
    (MORE `calibration_error`; ACE and MCE over non-empty bins)."""
    rows = reliability_data(probs, labels, n_bins, binning)
    if not rows:
        return {"ece": float("nan"), "ace": float("nan"), "mce": float("nan")}
    n = sum(r["count"] for r in rows)
    gaps = [abs(r["confidence"] - r["accuracy"]) for r in rows]
    ece = sum(r["count"] * g for r, g in zip(rows, gaps, strict=True)) / n
    return {"ece": ece, "ace": sum(gaps) / len(gaps), "mce": max(gaps)}


def pairwise_calibration(margins, n_bins: int = 10, temperature: float = 1.0, binning: str = "uniform") -> dict[str, float]:
    """ECE/ACE/MCE of σ(margin / T) where margin = r_chosen − r_rejected, with both orientations."""
    p, y = symmetrize(torch.sigmoid(_as_tensor(margins) / temperature))
    return calibration_errors(p, y, n_bins, binning)


def _nll(margins: torch.Tensor, labels: torch.Tensor, inv_t: float) -> float:
    # −log σ(s·m/T) with s = ±1 is the same for both orientations, so symmetrising would not change it.
    signs = 2 * labels - 1
    return float(-torch.nn.functional.logsigmoid(signs * margins * inv_t).mean())


def fit_temperature(margins, labels=None, *, lo: float = 1e-3, hi: float = 1e3, iters: int = 100) -> float:
    """Temperature T > 0 minimising the NLL of σ(margin / T) on held-out pairs (Guo et al. 2017).

    `margins` are r_first − r_second and `labels` whether the first was preferred (default all 1). The NLL
    is convex in 1/T, hence unimodal in log(1/T): golden-section search over [1/hi, 1/lo] is exact up to
    the tolerance and deterministic. Perfectly separated data pushes T to `lo`."""
    m = _as_tensor(margins)
    y = torch.ones_like(m) if labels is None else _as_tensor(labels)
    if m.numel() == 0:
        raise ValueError("fit_temperature needs at least one pair")
    a, b = math.log(1 / hi), math.log(1 / lo)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = _nll(m, y, math.exp(c)), _nll(m, y, math.exp(d))
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = _nll(m, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = _nll(m, y, math.exp(d))
    return 1 / math.exp((a + b) / 2)


def plot_reliability(rows: Sequence[dict], path: str | Path, *, title: str = "Reliability",
                     rows_after: Sequence[dict] | None = None, labels: tuple[str, str] = ("before", "after")) -> Path:
    """Reliability diagram (empirical frequency vs mean confidence per bin) saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    for data, name, marker in ((rows, labels[0], "o"), (rows_after, labels[1], "s")):
        if data:
            ax.plot([r["confidence"] for r in data], [r["accuracy"] for r in data], marker=marker, label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(preferred)", ylabel="observed frequency", title=title)
    ax.legend(loc="upper left")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
