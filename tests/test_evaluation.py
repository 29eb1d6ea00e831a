import numpy as np
import pandas as pd
import pytest

from liverlesion.evaluation import evaluate_test_set
from liverlesion.metrics import classification_metrics


def test_test_set_evaluation():
    # train: metastases are dark (mean HU < 50); test: one dark cyst fools the HU rule, not the model
    lesions = pd.DataFrame({
        "lesion_id": [f"L{i}" for i in range(10)],
        "patient_key": ["P1", "P1", "P2", "P2", "P3", "P4", "P4", "P5", "P6", "P6"],
        "volume_ml": 1.0,
        "mean_hu": [20, 30, 80, 90, 25, 85, 15, 95, 70, 40],
        "label": [1, 1, 0, 0, 1, 0, 0, 0, 1, 0],
    })
    manifest = lesions[["lesion_id", "patient_key", "label"]].assign(set=["train"] * 4 + ["test"] * 6)
    test_ids = [f"L{i}" for i in range(4, 10)]
    labels = np.array([1, 0, 0, 0, 1, 0])
    probability = np.array([0.9, 0.2, 0.3, 0.1, 0.8, 0.4])
    result = evaluate_test_set(test_ids, labels, probability, manifest, lesions, threshold=0.5)
    assert result.metrics == pytest.approx(classification_metrics(labels, probability, 0.5), nan_ok=True)
    assert result.metrics["accuracy"] == 1.0
    assert result.predictions["patient_key"].tolist() == ["P3", "P4", "P4", "P5", "P6", "P6"]
    assert result.predictions["predicted"].tolist() == [1, 0, 0, 0, 1, 0]
    # the train-fitted rule "mean HU < 80 -> metastasis" calls L6 (15 HU cyst) and L9 (40 HU cyst) wrong
    assert result.mean_hu_threshold_accuracy == pytest.approx(4 / 6)
    assert result.mean_hu_best_threshold_accuracy >= result.mean_hu_threshold_accuracy
    assert set(result.intervals["metric"]) == set(result.metrics)
