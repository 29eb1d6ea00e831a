import math

import numpy as np
import pytest

from liverlesion.metrics import (
    best_threshold_accuracy,
    classification_metrics,
    confusion_counts,
    fitted_threshold_accuracy,
    plot_confusion_matrix,
    threshold_for,
)


def test_metrics_against_a_hand_computed_confusion_matrix():
    # 10 lesions: 6 metastases (1), 4 cysts (0)
    y_true = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    prob = [0.9, 0.8, 0.7, 0.6, 0.4, 0.2, 0.55, 0.3, 0.1, 0.05]
    c = confusion_counts(y_true, np.asarray(prob) >= 0.5)
    assert (c.tp, c.fn, c.fp, c.tn) == (4, 2, 1, 3)
    m = classification_metrics(y_true, prob, threshold=0.5)
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["precision"] == pytest.approx(4 / 5)
    assert m["recall"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    assert m["f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    # AUC by hand: pairs (metastasis, cyst) ranked correctly out of 6 * 4 = 24
    correct = sum(p > q for p, t in zip(prob, y_true) if t == 1 for q, s in zip(prob, y_true) if s == 0)
    assert m["roc_auc"] == pytest.approx(correct / 24)
    assert set(m) == {"accuracy", "balanced_accuracy", "f1", "roc_auc", "precision", "recall", "specificity"}


def test_no_positive_call_gives_zero_precision_not_an_error():
    m = classification_metrics([1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], threshold=0.5)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["specificity"] == 1.0


def test_one_class_auc_is_nan():
    assert math.isnan(classification_metrics([1, 1], [0.2, 0.9], threshold=0.5)["roc_auc"])


def test_best_threshold_accuracy_separable():
    assert best_threshold_accuracy([1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 1, 1]) == (1.0, 4.0)


def test_best_threshold_accuracy_with_overlap_keeps_first_best_from_the_top():
    # ">= 5" and ">= 3" both misclassify one of six; the scan from high to low finds 5 first.
    accuracy, threshold = best_threshold_accuracy([1, 2, 3, 4, 5, 6], [0, 0, 1, 0, 1, 1])
    assert accuracy == pytest.approx(5 / 6)
    assert threshold == 5.0


def test_best_threshold_accuracy_tries_positives_below():
    # positives are the low values: the rule "value < 3" is perfect
    assert best_threshold_accuracy([1, 2, 3, 4], [1, 1, 0, 0]) == (1.0, 3.0)


@pytest.mark.parametrize("values, labels", [([1, 2], [0]), ([], []), ([1, 2], [0, 2])])
def test_best_threshold_accuracy_rejects_bad_input(values, labels):
    with pytest.raises(ValueError):
        best_threshold_accuracy(values, labels)


def test_best_threshold_accuracy_either_direction():
    acc, t = best_threshold_accuracy([10, 20, 30, 70, 80, 25], [0, 0, 0, 1, 1, 1])
    assert acc == pytest.approx(5 / 6)
    acc, _ = best_threshold_accuracy([80, 70, 60, 10, 5], [0, 0, 0, 1, 1])  # lower means positive
    assert acc == 1.0


def test_plots_are_written(tmp_path):
    y, p = [0, 1, 1, 0], [0.2, 0.7, 0.4, 0.1]
    assert plot_confusion_matrix(y, p, 0.5, tmp_path / "cm.png").stat().st_size > 1000
    from liverlesion.report import plot_roc_curves

    assert plot_roc_curves({"m": (y, p)}, tmp_path / "roc.png").stat().st_size > 1000


def test_fitted_threshold_is_chosen_on_train_and_scored_on_test():
    # train: metastases (1) are dark (< 40 HU); the rule learnt is "mean HU < 50 -> metastasis"
    accuracy, threshold = fitted_threshold_accuracy(
        [10, 20, 30, 60, 70, 80], [1, 1, 1, 0, 0, 0], [15, 45, 65, 90], [1, 0, 0, 0]
    )
    assert threshold == 60.0
    assert accuracy == pytest.approx(3 / 4)  # 45 HU is called metastasis, wrongly


def test_the_operating_point_is_the_highest_threshold_that_reaches_the_target_sensitivity():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    probability = np.array([0.95, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])
    # 3 of 4 metastases (0.75): called at P >= 0.6, which keeps 3 of 4 cysts below
    assert threshold_for(labels, probability, "recall", 0.75) == 0.6
    assert threshold_for(labels, probability, "recall", 0.95) == 0.3  # all four: every cyst at 0.3 or more too
    for target in (0.5, 0.75, 1.0):
        threshold = threshold_for(labels, probability, "recall", target)
        achieved = classification_metrics(labels, probability, threshold)
        assert achieved["recall"] >= target
        # one step higher and the target is missed: the highest such threshold
        above = probability[probability > threshold].min(initial=1.0)
        assert classification_metrics(labels, probability, above)["recall"] < target or above == 1.0


def test_the_operating_point_for_specificity_keeps_that_many_cysts_below_it():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    probability = np.array([0.95, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])
    threshold = threshold_for(labels, probability, "specificity", 0.75)
    assert 0.4 < threshold < 0.41  # just above the third cyst: metastases at 0.6 and up still called
    assert classification_metrics(labels, probability, threshold)["specificity"] == 0.75
    assert classification_metrics(labels, probability, threshold)["recall"] == 0.75


def test_an_operating_point_needs_the_class_it_counts_and_a_sensible_target():
    with pytest.raises(ValueError, match="needs a metastasis among the validation lesions"):
        threshold_for([0, 0], [0.2, 0.3], "recall", 0.9)
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        threshold_for([0, 1], [0.2, 0.3], "recall", 1.5)
    with pytest.raises(ValueError, match="recall or a specificity"):
        threshold_for([0, 1], [0.2, 0.3], "accuracy", 0.9)
    assert threshold_for([1, 0], [1.0, 0.0], "recall", 1.0) == 1.0 - 1e-6  # clipped into (0, 1)
