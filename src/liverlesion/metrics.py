"""The paper's seven metrics from one confusion count, plus the plots a reader looks at.

Positive class: metastasis (label 1). Sensitivity is the recall of metastases, specificity the
recall of cysts. Every threshold metric derives from ``confusion_counts``; ROC AUC comes from
scikit-learn on the probabilities. The bootstrap (``report``) uses the same formulas on its counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

METRIC_NAMES = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "precision", "recall", "specificity")


@dataclass(frozen=True)
class ConfusionCounts:
    tp: int
    fp: int
    fn: int
    tn: int


def confusion_counts(y_true, y_pred) -> ConfusionCounts:
    """True/false positives/negatives with metastasis (1) as the positive class."""
    tn, fp, fn, tp = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=[0, 1]).ravel()
    return ConfusionCounts(tp=int(tp), fp=int(fp), fn=int(fn), tn=int(tn))


def metrics_from_counts(tp, fp, fn, tn, undefined: float = 0.0) -> dict[str, np.ndarray]:
    """The six threshold metrics of Table 2 from confusion counts: the one place they are defined.

    Works on scalars or on arrays of counts (one per bootstrap resample, possibly weighted).

    Args:
        undefined: the value of a ratio whose denominator is 0 (precision with no positive call,
            specificity with no cyst, ...), and of every metric built on one. A single test set
            reports 0 (scikit-learn's ``zero_division=0``); a bootstrap passes NaN, so that a
            resample without cysts says nothing about specificity instead of claiming it is 0.
    """
    tp, fp, fn, tn = (np.asarray(v, dtype=float) for v in (tp, fp, fn, tn))

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, undefined, dtype=float), where=den != 0)

    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    specificity = ratio(tn, tn + fp)
    return {
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "balanced_accuracy": (recall + specificity) / 2.0,
        # 2PR / (P + R) = 2TP / (2TP + FP + FN): 0 when metastases were all missed, undefined only
        # when there is neither a metastasis nor a metastasis call
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
    }


def classification_metrics(y_true, probability, threshold: float, undefined: float = 0.0) -> dict[str, float]:
    """The seven metrics of the paper's Table 2 for metastasis probabilities.

    Args:
        y_true: 0 cyst, 1 metastasis.
        probability: predicted probability of metastasis.
        threshold: probability at or above which a lesion is called a metastasis.
        undefined: a ratio with a zero denominator (``metrics_from_counts``); 0 by default.

    ROC AUC with a single class present is NaN.
    """
    y_true = np.asarray(y_true).astype(int)
    probability = np.asarray(probability, dtype=float)
    c = confusion_counts(y_true, (probability >= threshold).astype(int))
    values = {k: float(v) for k, v in metrics_from_counts(c.tp, c.fp, c.fn, c.tn, undefined).items()}
    values["roc_auc"] = roc_auc(y_true, probability)
    return {name: values[name] for name in METRIC_NAMES}


def roc_auc(y_true, probability) -> float:
    """The area under the ROC curve (no threshold); NaN with a single class present."""
    y_true = np.asarray(y_true).astype(int)
    return float(roc_auc_score(y_true, np.asarray(probability, dtype=float))) if len(set(y_true)) == 2 else float("nan")


def best_threshold_accuracy(
    values: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[float, float]:
    """Best accuracy that one threshold on one feature reaches, and that threshold.

    It measures how easy a cohort is: if one number per lesion (say mean HU) split the classes
    perfectly, a deep network would prove nothing. The candidate thresholds are those of an ROC
    curve (``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: +inf, then every distinct
    value from high to low), computed with NumPy. Both
    directions count: positives at or above the threshold (``value >= threshold``) or below it
    (``value < threshold``), whichever is more accurate.

    Args:
        values: one feature value per sample.
        labels: 1 for the positive class (metastasis), 0 for the negative one.

    Returns:
        (accuracy, threshold); among equally good thresholds, the highest.

    Raises:
        ValueError: no samples, lengths differ, or labels other than 0 and 1.
    """
    x = np.asarray(values, dtype=float).ravel()
    y = np.asarray(labels).ravel()
    if x.size == 0 or x.size != y.size:
        raise ValueError(f"need as many labels as values, at least one (got {x.size} values and {y.size} labels)")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    if np.isnan(x).any():
        raise ValueError("values must not be NaN")
    order = np.argsort(-x, kind="stable")
    xs, ys = x[order], y[order].astype(np.int64)
    last_of_value = np.r_[np.flatnonzero(np.diff(xs) != 0), xs.size - 1]  # end of each run of equal values
    true_pos = np.r_[0, np.cumsum(ys)[last_of_value]]
    false_pos = np.r_[0, last_of_value + 1] - true_pos
    thresholds = np.r_[np.inf, xs[last_of_value]]
    n_neg = int(ys.size - ys.sum())
    correct_above = true_pos + (n_neg - false_pos)  # rule: value >= threshold -> positive
    accuracy = np.maximum(correct_above, x.size - correct_above) / x.size
    best = int(np.argmax(accuracy))
    return float(accuracy[best]), float(thresholds[best])


def fitted_threshold_accuracy(train_values, train_labels, test_values, test_labels) -> tuple[float, float]:
    """A one-feature classifier: the best threshold (and direction) on train, its accuracy on test.

    The fair counterpart of ``best_threshold_accuracy`` on the test set itself, which picks the
    threshold on the very lesions it scores and so flatters the feature.

    Returns:
        (test accuracy, threshold).
    """
    train_values = np.asarray(train_values, dtype=float)
    train_labels = np.asarray(train_labels).astype(int)
    _, threshold = best_threshold_accuracy(train_values, train_labels)
    positive_above = np.mean((train_values >= threshold) == train_labels) >= 0.5
    predicted = (np.asarray(test_values, dtype=float) >= threshold) == positive_above
    return float(np.mean(predicted == np.asarray(test_labels).astype(bool))), float(threshold)


def plot_confusion_matrix(y_true, probability, threshold: float, path: Path, title: str = "") -> Path:
    """The confusion matrix as a labelled PNG (rows: truth, columns: prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_pred = (np.asarray(probability) >= threshold).astype(int)
    matrix = confusion_matrix(np.asarray(y_true).astype(int), y_pred, labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    names = ["cyst", "metastasis"]
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(count),
            ha="center",
            va="center",
            color="white" if count > matrix.max() / 2 else "black",
            fontsize=14,
        )
    ax.set_title(title or f"Confusion matrix (test, P(metastasis) >= {threshold:g})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def threshold_for(labels, probability, metric: str, at_least: float) -> float:
    """The operating point: the highest threshold at which ``metric`` (``recall``: the sensitivity to
    metastases; ``specificity``: to cysts) reaches ``at_least`` on these lesions (the validation split).

    For sensitivity, the highest threshold keeping ``ceil(at_least * metastases)`` metastases at or above it
    (so as many cysts as possible below it); for specificity, the lowest keeping that many cysts below it (so
    as many metastases as possible at or above it). Clipped into (0, 1), where a threshold means something.

    Raises:
        ValueError: an unknown metric, a target outside (0, 1], or no lesion of the class it counts.
    """
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probability, dtype=float).ravel()
    if metric not in ("recall", "specificity"):
        raise ValueError(f"an operating point is a recall or a specificity, not {metric!r}")
    if not 0.0 < at_least <= 1.0:
        raise ValueError(f"the operating point's target must lie in (0, 1] (got {at_least})")
    counted = p[y == (1 if metric == "recall" else 0)]
    if counted.size == 0:
        kind = "metastasis" if metric == "recall" else "cyst"
        raise ValueError(f"the operating point ({metric} >= {at_least:g}) needs a {kind} among the validation lesions")
    needed = max(int(np.ceil(at_least * counted.size - 1e-9)), 1)
    if metric == "recall":
        threshold = np.sort(counted)[::-1][needed - 1]  # the needed-th most likely metastasis is still called one
    else:
        threshold = np.nextafter(np.sort(counted)[needed - 1], np.inf)  # the needed-th least likely cyst is not
    return float(np.clip(threshold, 1e-6, 1.0 - 1e-6))
