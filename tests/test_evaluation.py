import numpy as np
import pandas as pd
import pytest

from liverlesion.evaluation import evaluate_test_set
from liverlesion.metrics import classification_metrics
from tests.profiles import QUICK


def test_test_set_evaluation():
    # train: metastases are dark (mean HU < 50); test: one dark cyst fools the HU rule, not the model
    lesions = pd.DataFrame(
        {
            "lesion_id": [f"L{i}" for i in range(10)],
            "patient_key": ["P1", "P1", "P2", "P2", "P3", "P4", "P4", "P5", "P6", "P6"],
            "volume_ml": 1.0,
            "mean_hu": [20, 30, 80, 90, 25, 85, 15, 95, 70, 40],
            "label": [1, 1, 0, 0, 1, 0, 0, 0, 1, 0],
        }
    )
    manifest = lesions[["lesion_id", "patient_key", "label"]].assign(set=["train"] * 4 + ["test"] * 6)
    test_ids = [f"L{i}" for i in range(4, 10)]
    labels = np.array([1, 0, 0, 0, 1, 0])
    probability = np.array([0.9, 0.2, 0.3, 0.1, 0.8, 0.4])
    result = evaluate_test_set(test_ids, labels, probability, manifest, lesions, 0.5, QUICK.evaluate.bootstrap)
    assert result.metrics == pytest.approx(classification_metrics(labels, probability, 0.5), nan_ok=True)
    assert result.metrics["accuracy"] == 1.0
    assert result.predictions["patient_key"].tolist() == ["P3", "P4", "P4", "P5", "P6", "P6"]
    assert result.predictions["predicted"].tolist() == [1, 0, 0, 0, 1, 0]
    # the train-fitted rule "mean HU < 80 -> metastasis" calls L6 (15 HU cyst) and L9 (40 HU cyst) wrong
    assert result.mean_hu_threshold_accuracy == pytest.approx(4 / 6)
    assert result.mean_hu_best_threshold_accuracy >= result.mean_hu_threshold_accuracy
    assert set(result.intervals["metric"]) == set(result.metrics)


def _predictions(ids, patients, labels, probability):
    return pd.DataFrame({"lesion_id": ids, "patient_key": patients, "label": labels, "p_metastasis": probability})


def test_comparison_reports_every_model_on_the_same_lesions(tmp_path):
    from liverlesion.evaluation import write_comparison

    ids = [f"L{i}" for i in range(8)]
    patients = ["P1", "P1", "P2", "P2", "P3", "P3", "P4", "P4"]
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    perfect = _predictions(ids, patients, labels, labels * 0.8 + 0.1)
    # the same lesions in another row order, one of them wrong
    shuffled = _predictions(ids[::-1], patients[::-1], labels[::-1], np.array([0.2, 0.7, 0.3, 0.9, 0.2, 0.8, 0.1, 0.4]))
    files = write_comparison(
        {"Proposed model (IPW)": perfect, "SVM with texture features": shuffled},
        tmp_path,
        0.5,
        QUICK.evaluate.bootstrap,
        model_notes={"Proposed model (IPW)": "initial weights from /w/iv3.h5"},
    )
    table = pd.read_csv(files["csv"])
    assert table["model"].tolist() == ["Proposed model (IPW)", "SVM with texture features"]
    assert table.loc[0, "accuracy"] == 1.0
    expected = classification_metrics(labels[::-1], np.array([0.2, 0.7, 0.3, 0.9, 0.2, 0.8, 0.1, 0.4]), threshold=0.5)
    assert table.loc[1, "accuracy"] == pytest.approx(expected["accuracy"]) == 7 / 8
    assert (table["accuracy_lower"] <= table["accuracy"]).all() and (table["accuracy"] <= table["accuracy_upper"]).all()
    long = pd.read_csv(files["predictions"])
    assert len(long) == 16 and set(long.columns) == {
        "model",
        "lesion_id",
        "patient_key",
        "label",
        "p_metastasis",
        "predicted",
    }
    svm = long[long["model"] == "SVM with texture features"].set_index("lesion_id")
    assert svm.loc["L0", "p_metastasis"] == pytest.approx(0.4) and svm.loc["L0", "predicted"] == 0
    assert files["roc"].exists() and files["confusion_2"].exists()
    md = files["md"].read_text()
    assert "| Proposed model (IPW) | 1.00" in md and "different (in-house, 63-patient) cohort" in md
    assert md.index("- Proposed model (IPW): initial weights from /w/iv3.h5") < md.index("## The paper's Table 2")


def test_comparison_refuses_models_scored_on_other_lesions(tmp_path):
    from liverlesion.evaluation import write_comparison

    a = _predictions(["L1", "L2"], ["P1", "P2"], [0, 1], [0.1, 0.9])
    b = _predictions(["L1", "L3"], ["P1", "P3"], [0, 1], [0.1, 0.9])
    with pytest.raises(ValueError, match="model b scored other test lesions than model a"):
        write_comparison({"model a": a, "model b": b}, tmp_path, 0.5, QUICK.evaluate.bootstrap)
