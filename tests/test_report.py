import time

import numpy as np
import pandas as pd
import pytest

from liverlesion.metrics import METRIC_NAMES, classification_metrics
from liverlesion.report import (
    PAPER_TABLE2,
    PAPER_TABLE2_LABEL,
    _weighted_metrics,
    bootstrap_metrics,
    patient_weights,
    plot_roc_curves,
    table2,
    write_report,
)
from tests.profiles import QUICK


def boot(y_true, probability, groups, **chosen):
    """``bootstrap_metrics`` with the profile's settings, except those a test chooses."""
    b = QUICK.evaluate.bootstrap
    settings = {
        "threshold": QUICK.evaluate.threshold,
        "n_boot": b.resamples,
        "seed": b.seed,
        "confidence": b.confidence,
    }
    return bootstrap_metrics(y_true, probability, groups, **{**settings, **chosen})


def ten_patient_cohort():
    """20 lesions, 10 patients (2 lesions each), both classes and some errors at 0.5."""
    groups = np.repeat([f"P{i}" for i in range(10)], 2)
    y_true = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 1])
    prob = np.array(
        [0.9, 0.8, 0.2, 0.1, 0.7, 0.6, 0.4, 0.95, 0.3, 0.05, 0.85, 0.65, 0.45, 0.15, 0.55, 0.35, 0.25, 0.52, 0.75, 0.3]
    )
    return y_true, prob, groups


def forty_six_lesion_cohort(seed=1):
    """Like the test set: 46 lesions from 11 patients."""
    rng = np.random.default_rng(seed)
    sizes = [6, 5, 5, 4, 4, 4, 4, 4, 4, 3, 3]
    groups = np.repeat([f"P{i:02d}" for i in range(11)], sizes)
    y_true = np.concatenate([np.full(s, i % 2) for i, s in enumerate(sizes)])
    y_true[:2] = 1 - y_true[:2]
    prob = np.clip(0.3 * y_true + 0.35 + rng.normal(0, 0.2, y_true.size), 0, 1)
    return y_true, prob, groups


def test_estimate_is_classification_metrics_on_the_full_sample():
    y_true, prob, groups = ten_patient_cohort()
    result = boot(y_true, prob, groups, n_boot=300)
    assert list(result.columns) == ["metric", "estimate", "lower", "upper", "n_boot_valid"]
    assert tuple(result["metric"]) == METRIC_NAMES
    expected = classification_metrics(y_true, prob, threshold=0.5)
    assert dict(zip(result["metric"], result["estimate"])) == pytest.approx(expected)
    # by hand at 0.5: metastases missed 0.4 and 0.3 (tp 8, fn 2); cysts called 0.6 and 0.52 (fp 2, tn 8)
    by_hand = {
        "accuracy": 16 / 20,
        "balanced_accuracy": 0.8,
        "f1": 0.8,
        "precision": 8 / 10,
        "recall": 8 / 10,
        "specificity": 8 / 10,
    }
    assert dict(zip(result["metric"], result["estimate"])) == pytest.approx({**by_hand, "roc_auc": expected["roc_auc"]})
    assert result.attrs["n_patients"] == 10 and result.attrs["n_lesions"] == 20 and result.attrs["n_boot"] == 300


def test_intervals_lie_in_unit_interval_and_contain_the_estimate():
    y_true, prob, groups = ten_patient_cohort()
    result = boot(y_true, prob, groups, n_boot=1000)
    assert ((result["lower"] >= 0) & (result["upper"] <= 1)).all()
    assert (result["lower"] <= result["estimate"]).all() and (result["estimate"] <= result["upper"]).all()
    assert (result["lower"] < result["upper"]).all()  # 10 patients: real uncertainty
    assert (result["n_boot_valid"] <= 1000).all()


def test_wider_confidence_gives_wider_intervals():
    y_true, prob, groups = ten_patient_cohort()
    narrow = boot(y_true, prob, groups, n_boot=500, confidence=0.5)
    wide = boot(y_true, prob, groups, n_boot=500, confidence=0.95)
    assert (wide["lower"] <= narrow["lower"]).all() and (wide["upper"] >= narrow["upper"]).all()


def test_same_seed_same_intervals_other_seed_other_intervals():
    y_true, prob, groups = ten_patient_cohort()
    a = boot(y_true, prob, groups, n_boot=500, seed=7)
    b = boot(y_true, prob, groups, n_boot=500, seed=7)
    c = boot(y_true, prob, groups, n_boot=500, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a[["lower", "upper"]].equals(c[["lower", "upper"]])
    assert a["estimate"].equals(c["estimate"])  # the seed moves the intervals only


def test_lesion_order_does_not_change_the_result():
    y_true, prob, groups = ten_patient_cohort()
    order = np.random.default_rng(0).permutation(y_true.size)
    a = boot(y_true, prob, groups, n_boot=300)
    b = boot(y_true[order], prob[order], groups[order], n_boot=300)
    pd.testing.assert_frame_equal(a, b)


def test_one_patient_holding_every_lesion_collapses_the_interval():
    # Resampling patients can only redraw the same patient: every resample is the full sample.
    # Resampling lesions would give a wide interval here.
    y_true, prob, _ = ten_patient_cohort()
    result = boot(y_true, prob, np.full(y_true.size, "only"), n_boot=200)
    assert np.array_equal(result["lower"], result["estimate"])
    assert np.array_equal(result["upper"], result["estimate"])
    assert (result["n_boot_valid"] == 200).all()


def test_whole_patients_are_resampled_not_lesions():
    # Patient A: 9 metastases called right; patient B: 1 cyst called wrong. Patient resamples are
    # {A, A} (accuracy 1), {A, B} (0.9) or {B, B} (0, probability 1/4), so the 2.5 % quantile is 0.
    # Lesion resamples would almost never hold only the wrong lesion (lower bound ~0.7).
    y_true = np.array([1] * 9 + [0])
    prob = np.array([0.9] * 9 + [0.9])
    groups = np.array(["A"] * 9 + ["B"])
    result = boot(y_true, prob, groups, n_boot=2000).set_index("metric")
    assert result.loc["accuracy", "estimate"] == pytest.approx(0.9)
    assert result.loc["accuracy", "lower"] == 0.0 and result.loc["accuracy", "upper"] == 1.0
    # ROC AUC and balanced accuracy need both classes: only {A, B} resamples (about half); recall
    # needs a metastasis (A drawn, about 3/4), specificity a cyst (B drawn, about 3/4); accuracy,
    # F1 and precision (every lesion is called metastasis) are defined in every resample.
    valid = result["n_boot_valid"]
    assert 850 < valid["roc_auc"] < 1150 and 850 < valid["balanced_accuracy"] < 1150
    assert 1350 < valid["recall"] < 1650 and 1350 < valid["specificity"] < 1650
    assert valid["recall"] + valid["specificity"] - valid["balanced_accuracy"] == 2000
    assert (valid[["accuracy", "f1", "precision"]] == 2000).all()


def test_a_resample_without_cysts_says_nothing_about_specificity():
    # Patient A: 9 metastases, patient B: 1 cyst, every lesion called right. A resample {A, A} has
    # no cyst: its specificity is undefined, not 0, so the interval stays at the estimate, 1.
    y_true = np.array([1] * 9 + [0])
    prob = np.array([0.9] * 9 + [0.1])
    result = boot(y_true, prob, np.array(["A"] * 9 + ["B"]), n_boot=2000).set_index("metric")
    for name in ("specificity", "recall", "balanced_accuracy", "accuracy", "roc_auc"):
        assert (result.loc[name, "lower"], result.loc[name, "estimate"], result.loc[name, "upper"]) == (1.0, 1.0, 1.0)
    assert result.loc["specificity", "n_boot_valid"] < 2000


def test_resample_weights_are_whole_patients():
    groups = np.array([0, 0, 0, 1, 2, 2, 3])
    weights = patient_weights(groups, 500, np.random.default_rng(3))
    assert weights.shape == (500, 7)
    for patient in range(4):
        lesions = weights[:, groups == patient]
        assert (lesions == lesions[:, :1]).all()  # a patient's lesions come and go together
    per_patient = np.stack([weights[:, groups == k][:, 0] for k in range(4)], axis=1)
    assert (per_patient.sum(axis=1) == 4).all()  # 4 patients drawn per resample


def test_vectorised_path_equals_classification_metrics_on_materialised_resamples():
    y_true, prob, groups = ten_patient_cohort()
    prob = prob.copy()
    prob[1] = prob[2]  # a tie between a metastasis and a cyst
    patient = pd.factorize(groups, sort=True)[0]
    weights = patient_weights(patient, 150, np.random.default_rng(11))
    fast = _weighted_metrics(y_true, prob, weights, 0.5)
    for b in range(len(weights)):
        rows = np.repeat(np.arange(y_true.size), weights[b])
        reference = classification_metrics(y_true[rows], prob[rows], threshold=0.5)
        for name in METRIC_NAMES:
            assert fast[name][b] == pytest.approx(reference[name], abs=1e-12, nan_ok=True), (b, name)


def test_2000_resamples_of_46_lesions_are_fast():
    y_true, prob, groups = forty_six_lesion_cohort()
    start = time.perf_counter()
    result = boot(y_true, prob, groups, n_boot=2000)
    assert time.perf_counter() - start < 2.0
    assert result.attrs["n_patients"] == 11 and result.attrs["n_lesions"] == 46


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(y_true=[1, 0], probability=[0.5], groups=["a", "b"]),
        dict(y_true=[], probability=[], groups=[]),
        dict(y_true=[1, 2], probability=[0.5, 0.5], groups=["a", "b"]),
        dict(y_true=[1, 0], probability=[np.nan, 0.5], groups=["a", "b"]),
        dict(y_true=[1, 0], probability=[0.5, 0.5], groups=["a", None]),
        dict(y_true=[1, 0], probability=[0.5, 0.5], groups=["a", "b"], n_boot=0),
        dict(y_true=[1, 0], probability=[0.5, 0.5], groups=["a", "b"], confidence=1.0),
    ],
)
def test_bad_input_is_refused(kwargs):
    with pytest.raises(ValueError):
        boot(**kwargs)


def hand_made_result(estimate=0.87, lower=0.78, upper=0.94):
    rows = [
        {"metric": m, "estimate": estimate, "lower": lower, "upper": upper, "n_boot_valid": 2000}
        for m in reversed(METRIC_NAMES)
    ]  # any row order
    result = pd.DataFrame(rows)
    result.attrs.update(n_boot=2000, n_patients=11, n_lesions=46, confidence=0.95)
    return result


def test_table2_formats_cells_in_metric_order():
    result = hand_made_result()
    result.loc[result["metric"] == "roc_auc", ["lower", "upper"]] = np.nan
    table = table2({"proposed": hand_made_result(), "baseline": result})
    assert list(table.columns) == list(METRIC_NAMES)
    assert list(table.index) == ["proposed", "baseline"] and table.index.name == "model"
    assert table.loc["proposed", "accuracy"] == "0.87 [0.78, 0.94]"
    assert table.loc["baseline", "roc_auc"] == "0.87 [n/a]"
    assert table2({"x": hand_made_result(1.0, 0.956, 1.0)}).loc["x", "f1"] == "1.00 [0.96, 1.00]"


def test_paper_table2_as_printed():
    assert list(PAPER_TABLE2) == [
        "SVM with texture features",
        "InceptionResNet-V2 (NPW)",
        "InceptionResNet-V2 (IPW)",
        "Inception-V3 (NPW)",
        "Proposed model (IPW)",
    ]
    for values in PAPER_TABLE2.values():
        assert tuple(values) == METRIC_NAMES
    proposed = PAPER_TABLE2["Proposed model (IPW)"]
    assert proposed["accuracy"] == 0.96 and proposed["f1"] == 0.92  # also in the abstract
    assert PAPER_TABLE2["SVM with texture features"]["specificity"] == 0.65
    assert PAPER_TABLE2["InceptionResNet-V2 (NPW)"]["recall"] == 0.90


def test_write_report_writes_csv_and_labelled_markdown(tmp_path):
    y_true, prob, groups = forty_six_lesion_cohort()
    results = {
        "InceptionV3 (ImageNet)": boot(y_true, prob, groups, n_boot=400),
        "texture SVM": boot(y_true, 1 - prob, groups, n_boot=400),
    }
    paths = write_report(results, tmp_path / "report", "Test-set metrics", "Test split of the phantom cohort.")
    assert set(paths) == {"csv", "md"} and all(p.exists() for p in paths.values())

    csv = pd.read_csv(paths["csv"])
    assert list(csv["model"]) == list(results)
    assert list(csv.columns[1:4]) == ["accuracy", "accuracy_lower", "accuracy_upper"]
    assert len(csv.columns) == 1 + 3 * len(METRIC_NAMES)
    est = results["texture SVM"].set_index("metric")
    assert csv.loc[1, "roc_auc_upper"] == pytest.approx(est.loc["roc_auc", "upper"])

    md = paths["md"].read_text()
    assert md.startswith("# Test-set metrics") and "Test split of the phantom cohort." in md
    assert "| Model | Accuracy | Balanced accuracy | F1 score | AUC | Precision | Recall | Specificity |" in md
    assert table2(results).loc["texture SVM", "f1"] in md
    assert "95% patient-level" in md and "400 resamples of 11 patients (46 lesions)" in md
    ours, paper = md.split(PAPER_TABLE2_LABEL, 1)
    assert PAPER_TABLE2_LABEL == (
        "as reported by Perdigon Romero et al. on a different (in-house, 63-patient) cohort; not comparable"
    )
    assert "Proposed model (IPW)" not in ours  # the paper's rows sit below the label only
    assert "| Proposed model (IPW) | 0.96 | 0.93 | 0.92 | 0.97 | 1.00 | 0.94 | 0.85 |" in paper


def test_roc_plot_is_written(tmp_path):
    y_true, prob, _ = forty_six_lesion_cohort()
    path = plot_roc_curves(
        {"model a": (y_true, prob), "model b": (y_true, 1 - prob), "one class": (np.ones(4), [0.1, 0.2, 0.3, 0.4])},
        tmp_path / "plots" / "roc.png",
    )
    assert path == tmp_path / "plots" / "roc.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_segmentation_markdown_shows_the_table_and_what_became_of_each_lesion():
    from liverlesion.report import segmentation_markdown

    summary = {
        "cases": 2,
        "patients": 2,
        "liver_dice": 0.98,
        "liver_assd_mm": 0.3,
        "lesion_dice": 0.7,
        "lesion_assd_mm": 2.0,
        "found_lesions": 3,
        "reference_lesions": 4,
        "detection_recall_metastasis": 1.0,
        "detection_recall_cyst": 0.5,
        "false_positives_per_patient": 0.5,
        "seconds_per_case": 1.2,
    }
    counts = {
        "reference_metastasis": 2,
        "reference_cyst": 2,
        "found_called_right_metastasis": 2,
        "found_called_right_cyst": 1,
        "found_called_wrong_metastasis": 0,
        "found_called_wrong_cyst": 0,
        "missed_metastasis": 0,
        "missed_cyst": 1,
        "invented": 1,
        "recall": 1.0,
        "specificity": 0.5,
    }
    text = segmentation_markdown("classical", summary, counts, 0.2)
    assert text.startswith("# Segmentation: classical") and "Dice of at least 0.2" in text
    assert "| lesions found / reference lesions | 3 / 4 |" in text and "| missed | 0 | 1 |" in text
    assert "Invented lesions (matching no reference lesion): 1" in text


def test_a_metric_without_a_denominator_on_the_cohort_is_na_when_asked_not_0():
    """An external cohort of metastases only: specificity (and ROC AUC) cannot be measured on it."""
    y, p, patients = np.array([1, 1, 1, 1]), np.array([0.9, 0.8, 0.3, 0.7]), np.array(["a", "a", "b", "c"])
    paper = bootstrap_metrics(y, p, patients, 0.5, 20, 0, 0.95).set_index("metric")
    assert paper.loc["specificity", "estimate"] == 0.0  # the paper's convention, kept by default
    cohort = bootstrap_metrics(y, p, patients, 0.5, 20, 0, 0.95, float("nan"))
    indexed = cohort.set_index("metric")
    assert np.isnan(indexed.loc["specificity", "estimate"]) and indexed.loc["recall", "estimate"] == 0.75
    assert table2({"m": cohort}).loc["m", "specificity"] == "n/a"
