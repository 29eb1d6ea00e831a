"""What a probability means: calibration measured (Brier score, expected calibration error, a reliability
diagram, patient-bootstrap intervals) and, optionally, corrected after training.

A network trained with cross-entropy on a few hundred lesions is rarely calibrated: among lesions it scores
0.9, far more or fewer than 90% may be metastases. Post-hoc calibration maps its probability ``p`` through
its logit ``z = log(p / (1 - p))``, fitted on the validation split only (never the test lesions it is judged
on), and is carried with the registered model so that every answer is the calibrated one:

- ``temperature`` (Guo et al., 2017): ``sigmoid(z / T)``. One parameter; it keeps ``p = 0.5`` at 0.5 and the
  order of every pair of lesions, so accuracy at a threshold of 0.5 and ROC AUC are unchanged.
- ``platt`` (Platt, 1999): ``sigmoid(a z + b)``. Two parameters; ``b`` moves the decision at 0.5.
- ``none``: the network's probability as it is.

Both are fitted by minimising the cross-entropy against Platt's smoothed targets, ``(N+ + 1) / (N+ + 2)``
for a metastasis and ``1 / (N- + 2)`` for a cyst: a validation split that the network separates perfectly
(common with 40 lesions) would otherwise drive the fit to infinitely confident probabilities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

#: the post-hoc calibrations ``evaluate.calibration`` can name
CALIBRATIONS = ("none", "temperature", "platt")
CalibrationMethod = Literal["none", "temperature", "platt"]

#: probabilities are clipped this far from 0 and 1 before taking logits (float32 softmax outputs reach both)
_EPS = 1e-7


def logit(probability) -> np.ndarray:
    p = np.clip(np.asarray(probability, dtype=float), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # exact sigmoid without overflow


@dataclass(frozen=True)
class Calibration:
    """A fitted map from the network's P(metastasis) to a calibrated one (``method`` ``none`` is the identity)."""

    method: CalibrationMethod = "none"
    temperature: float = 1.0  # temperature: z / T
    slope: float = 1.0  # platt: a z + b
    intercept: float = 0.0
    fitted_on: int = 0  # validation lesions it was fitted on

    def __call__(self, probability) -> np.ndarray:
        p = np.asarray(probability, dtype=float)
        if self.method == "none":
            return p
        z = logit(p)
        return _sigmoid(z / self.temperature if self.method == "temperature" else self.slope * z + self.intercept)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> Calibration:
        """The calibration a registered model carries; a model registered before calibration existed has none."""
        if not values:
            return cls()
        if values.get("method") not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {values.get('method')!r}; expected one of {CALIBRATIONS}")
        return cls(
            **{k: values[k] for k in ("method", "temperature", "slope", "intercept", "fitted_on") if k in values}
        )

    def describe(self) -> str:
        if self.method == "temperature":
            return f"temperature scaling, T = {self.temperature:.3f} (fitted on {self.fitted_on} validation lesions)"
        if self.method == "platt":
            return (
                f"Platt scaling, sigmoid({self.slope:.3f} logit + {self.intercept:.3f}) "
                f"(fitted on {self.fitted_on} validation lesions)"
            )
        return "none: the network's probability as it is"


def fit_calibration(labels, probability, method: CalibrationMethod) -> Calibration:
    """``method`` fitted on the validation lesions' labels (0 cyst, 1 metastasis) and probabilities.

    Raises:
        ValueError: an unknown method, no lesions, lengths differ, or (for a fit) a single class: one class
            says nothing about how confident the network may be.
    """
    from scipy.optimize import minimize  # here, not at import: predict needs only Calibration (a cold start)

    if method not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {method!r}; expected one of {CALIBRATIONS}")
    y = np.asarray(labels).astype(int).ravel()
    z = logit(probability).ravel()
    if y.size == 0 or y.size != z.size:
        raise ValueError(f"need one label per probability, at least one (got {y.size} and {z.size})")
    if method == "none":
        return Calibration(fitted_on=int(y.size))
    positives, negatives = int(y.sum()), int(y.size - y.sum())
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"{method} calibration needs both metastases and cysts among the validation lesions "
            f"(got {positives} and {negatives}); set evaluate.calibration: none"
        )
    target = np.where(y == 1, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))

    def loss(z_new: np.ndarray) -> float:
        # cross-entropy written with logaddexp: exact where the sigmoid saturates
        return float(np.mean(target * np.logaddexp(0.0, -z_new) + (1.0 - target) * np.logaddexp(0.0, z_new)))

    if method == "temperature":
        # log T keeps T positive; bounded so that a degenerate split cannot send it to 0 or infinity
        fit = minimize(lambda v: loss(z / np.exp(v[0])), x0=[0.0], method="L-BFGS-B", bounds=[(-5.0, 5.0)])
        return Calibration("temperature", temperature=float(np.exp(fit.x[0])), fitted_on=int(y.size))
    fit = minimize(lambda v: loss(v[0] * z + v[1]), x0=[1.0, 0.0], method="L-BFGS-B")
    return Calibration("platt", slope=float(fit.x[0]), intercept=float(fit.x[1]), fitted_on=int(y.size))


def _weighted_calibration(y: np.ndarray, p: np.ndarray, weights: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Brier score and ECE under lesion weights (one row per resample, ``report.patient_weights``)."""
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    total = weights.sum(axis=1)
    brier = weights @ (p - y) ** 2 / total
    which = bin_of(p, bins)
    members = np.stack([which == b for b in range(bins)], axis=1).astype(float)  # lesions x bins
    gap = np.abs(weights @ (members * p[:, None]) - weights @ (members * y[:, None]))  # |sum p - sum y| per bin
    ece = gap.sum(axis=1) / total
    return {"brier": brier, "ece": ece}


def bin_of(probability: np.ndarray, bins: int) -> np.ndarray:
    """The equal-width bin (0..bins-1) of each probability; 1.0 falls in the last."""
    return np.minimum((np.asarray(probability, dtype=float) * bins).astype(int), bins - 1)


def brier_score(labels, probability) -> float:
    """The mean squared difference between P(metastasis) and the truth (0 perfect; 0.25 always saying 0.5)."""
    y, p = np.asarray(labels, dtype=float), np.asarray(probability, dtype=float)
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(labels, probability, bins: int) -> float:
    """The lesion-weighted mean, over ``bins`` equal-width bins of P(metastasis), of the gap between the mean
    probability in a bin and the fraction of metastases in it (0: as many metastases as the model says)."""
    y, p = np.asarray(labels, dtype=float), np.asarray(probability, dtype=float)
    return float(_weighted_calibration(y, p, np.ones((1, y.size)), bins)["ece"][0])


CALIBRATION_METRICS = ("brier", "ece")


def calibration_intervals(
    labels, probability, groups, bins: int, n_boot: int, seed: int, confidence: float
) -> pd.DataFrame:
    """Brier score and ECE with patient-level percentile bootstrap intervals (the resampling of
    ``report.bootstrap_metrics``: whole patients drawn with replacement, with every lesion of each).

    Returns:
        One row per metric (``brier``, ``ece``): ``metric``, ``estimate``, ``lower``, ``upper``.
    """
    from liverlesion.report import patient_weights  # scikit-learn behind it: not on predict's import path

    y = np.asarray(labels, dtype=float).ravel()
    p = np.asarray(probability, dtype=float).ravel()
    patient, _ = pd.factorize(pd.Series(np.asarray(groups).ravel()), sort=True)
    if y.size == 0 or y.size != p.size or y.size != patient.size:
        raise ValueError(f"need one label, probability and patient key per lesion (got {y.size}, {p.size})")
    estimate = _weighted_calibration(y, p, np.ones((1, y.size)), bins)
    resampled = _weighted_calibration(y, p, patient_weights(patient, n_boot, np.random.default_rng(seed)), bins)
    tail = (1.0 - confidence) / 2.0
    rows = []
    for name in CALIBRATION_METRICS:
        lower, upper = np.quantile(resampled[name], [tail, 1.0 - tail])
        rows.append(
            {"metric": name, "estimate": float(estimate[name][0]), "lower": float(lower), "upper": float(upper)}
        )
    return pd.DataFrame(rows, columns=["metric", "estimate", "lower", "upper"])


def reliability_table(labels, probability, bins: int) -> pd.DataFrame:
    """Per equal-width bin of P(metastasis): its range, lesions, mean probability and fraction of metastases."""
    y, p = np.asarray(labels, dtype=float), np.asarray(probability, dtype=float)
    which = bin_of(p, bins)
    rows = []
    for b in range(bins):
        inside = which == b
        rows.append(
            {
                "bin": f"{b / bins:.1f}-{(b + 1) / bins:.1f}",
                "lesions": int(inside.sum()),
                "mean_probability": float(p[inside].mean()) if inside.any() else float("nan"),
                "fraction_metastases": float(y[inside].mean()) if inside.any() else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def plot_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], bins: int, path: Path, title: str = "") -> Path:
    """The reliability diagram: per bin, the fraction of metastases against the mean P(metastasis), one line
    per curve (e.g. before and after calibration), the diagonal of perfect calibration, and how many lesions
    each bin holds beneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.6, 5.4), dpi=120, sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    width = 1.0 / bins / max(len(curves), 1)
    for k, (name, (labels, probability)) in enumerate(curves.items()):
        table = reliability_table(labels, probability, bins)
        filled = table[table["lesions"] > 0]
        ece = expected_calibration_error(labels, probability, bins)
        top.plot(filled["mean_probability"], filled["fraction_metastases"], marker="o", label=f"{name} (ECE {ece:.3f})")
        centres = (np.arange(bins) + 0.5) / bins
        bottom.bar(centres - 0.5 / bins + (k + 0.5) * width, table["lesions"], width=width, label=name)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("fraction of metastases")
    top.legend(loc="upper left", fontsize=7)
    top.set_title(title or "Reliability (test lesions)")
    bottom.set_xlabel("P(metastasis)")
    bottom.set_ylabel("lesions")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
