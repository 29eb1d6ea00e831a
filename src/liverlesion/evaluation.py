"""Scoring the held-out test lesions: metrics with patient-level intervals and a one-feature baseline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from liverlesion.metrics import best_threshold_accuracy, fitted_threshold_accuracy
from liverlesion.report import bootstrap_metrics


@dataclass(frozen=True)
class TestEvaluation:
    predictions: pd.DataFrame  # lesion_id, label, p_metastasis, predicted, patient_key, volume_ml, mean_hu
    intervals: pd.DataFrame  # metric, estimate, lower, upper (95% patient-level bootstrap)
    mean_hu_threshold_accuracy: float  # threshold fitted on the train lesions, scored on test
    mean_hu_best_threshold_accuracy: float  # the best threshold for the test lesions themselves

    @property
    def metrics(self) -> dict[str, float]:
        return {row.metric: float(row.estimate) for row in self.intervals.itertuples()}


def evaluate_test_set(
    lesion_ids: list[str],
    labels: np.ndarray,
    probability: np.ndarray,
    manifest: pd.DataFrame,
    lesions: pd.DataFrame,
    threshold: float = 0.5,
) -> TestEvaluation:
    """Per-lesion predictions, the 7 metrics with intervals, and the mean-HU baselines.

    The intervals resample patients, not lesions (46 test lesions give wide intervals). The
    baselines say how far one number (mean HU inside the mask) gets on the same lesions: fitted on
    the train lesions (a fair one-feature classifier) and at the test set's own best threshold (an
    upper bound: how separable the split is).
    """
    predictions = pd.DataFrame({"lesion_id": lesion_ids, "label": np.asarray(labels), "p_metastasis": probability,
                                "predicted": (np.asarray(probability) >= threshold).astype(int)})
    predictions = predictions.merge(lesions[["lesion_id", "patient_key", "volume_ml", "mean_hu"]], on="lesion_id")
    intervals = bootstrap_metrics(predictions["label"], predictions["p_metastasis"],
                                  predictions["patient_key"].to_numpy(), threshold)
    train = manifest[manifest["set"] == "train"].merge(lesions[["lesion_id", "mean_hu"]], on="lesion_id")
    fitted, _ = fitted_threshold_accuracy(train["mean_hu"], train["label"], predictions["mean_hu"], predictions["label"])
    best, _ = best_threshold_accuracy(predictions["mean_hu"], predictions["label"])
    return TestEvaluation(predictions, intervals, fitted, best)
