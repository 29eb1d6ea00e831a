import numpy as np
import pandas as pd
import pytest

from liverlesion.config import OperatingPointConfig
from liverlesion.evaluation import (
    breakdown,
    choose_threshold,
    evaluate_test_set,
    plot_failure_gallery,
    worst_scored,
)
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


def _scored_lesions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lesion_id": [f"c{k}-L01" for k in range(6)],
            "label": [0, 1, 0, 1, 1, 0],
            "p_metastasis": [0.2, 0.9, 0.7, 0.4, 0.8, 0.1],  # lesions 2 and 3 called wrongly
            "patient_key": ["P1", "P1", "P2", "P2", "P3", "P3"],
            "volume_ml": [0.1, 10.0, 1.0, 1.0, 10.0, 0.1],  # 5.8, 26.7, 12.4, 12.4, 26.7, 5.8 mm
            "slice_mm": [1.0, 1.0, 2.5, 2.5, 5.0, np.nan],
        }
    )


def test_the_breakdown_says_where_the_model_fails_by_size_slice_spacing_and_patient():
    table = breakdown(_scored_lesions(), 0.5, (10.0, 20.0), (2.5, 5.0)).set_index(["by", "group"])
    size = table.loc["lesion diameter"]
    assert list(size.index) == ["<10 mm", "10-20 mm", ">=20 mm"]  # in size order, smallest first
    assert size["lesions"].to_dict() == {"10-20 mm": 2, "<10 mm": 2, ">=20 mm": 2}
    assert size.loc["10-20 mm", "correct"] == 0 and size.loc["<10 mm", "accuracy"] == 1.0
    assert np.isnan(size.loc["<10 mm", "recall"])  # no metastasis under 10 mm: undefined, not 0
    assert np.isnan(size.loc[">=20 mm", "specificity"]) and size.loc[">=20 mm", "recall"] == 1.0
    spacing = table.loc["slice spacing"]
    assert list(spacing.index) == ["<2.5 mm", "2.5-5 mm", ">=5 mm", "unknown"]
    assert spacing["lesions"].to_dict() == {"2.5-5 mm": 2, "<2.5 mm": 2, ">=5 mm": 1, "unknown": 1}
    patients = table.loc["patient"]
    assert patients["correct"].to_dict() == {"P1": 2, "P2": 0, "P3": 2}
    assert patients.loc["P2", "brier"] == pytest.approx((0.7**2 + 0.6**2) / 2)
    assert table["lesions"].groupby(level="by").sum().eq(6).all()  # every lesion once per breakdown


def test_the_failure_gallery_shows_the_worst_scored_lesions_first(tmp_path):
    lesions = _scored_lesions()
    assert worst_scored(lesions, 3).tolist() == [2, 3, 0]  # 0.7 and 0.6 off (called wrongly), then 0.2 (the first)
    patches = np.random.default_rng(0).normal(size=(6, 20, 16, 3)).astype(np.float32)
    from PIL import Image

    heights = []
    for count in (1, 3):
        with Image.open(plot_failure_gallery(patches, lesions, 0.5, count, tmp_path / f"{count}.png")) as image:
            heights.append(image.size[1])
    assert heights[1] == 3 * heights[0]  # one row of three patches per lesion
    none = plot_failure_gallery(patches[:0], lesions.iloc[:0], 0.5, 3, tmp_path / "none.png")
    assert none.stat().st_size > 0


def test_the_threshold_is_the_profile_s_unless_an_operating_point_chooses_it_on_validation_lesions():
    validation = pd.DataFrame(
        {"label": [1, 1, 1, 1, 0, 0, 0, 0], "p_metastasis": [0.95, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1]}
    )
    fixed, how = choose_threshold(validation, QUICK.evaluate)
    assert fixed == QUICK.evaluate.threshold and how["chosen"].startswith("fixed")
    target = QUICK.evaluate.model_copy(update={"operating_point": OperatingPointConfig(metric="recall", at_least=0.95)})
    threshold, how = choose_threshold(validation, target)
    assert threshold == 0.3 and how["validation"]["recall"] == 1.0 and how["validation"]["specificity"] == 0.5
    assert "recall >= 0.95 on the 8 validation lesions" in how["chosen"]


def _case_on_disk(tmp_path, case_id="c1"):
    from liverlesion.imaging import save_nifti
    from liverlesion.lesions import lesion_instances

    image = np.full((40, 40, 12), 60.0, dtype=np.float32)
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[5:12, 5:12, 3:8] = 1  # a cyst (class code 1)
    mask[22:34, 20:32, 2:10] = 2  # a metastasis (class code 2)
    image[mask == 2] = 20.0
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    save_nifti(image, affine, tmp_path / "ct.nii.gz")
    save_nifti(mask, affine, tmp_path / "mask.nii.gz")
    lesions = lesion_instances(mask, image, (1.0, 1.0, 2.5), case_id, "P1", "class")
    cases = pd.DataFrame(
        {
            "case_id": [case_id],
            "image_path": [str(tmp_path / "ct.nii.gz")],
            "mask_path": [str(tmp_path / "mask.nii.gz")],
            "mask_encoding": ["class"],
        }
    )
    return lesions, cases


def test_the_lesion_map_example_draws_the_test_ct_with_its_scored_lesions(tmp_path):
    from liverlesion.evaluation import lesion_map_example

    lesions, cases = _case_on_disk(tmp_path)
    scored = lesions[["lesion_id"]].assign(p_metastasis=[0.2, 0.9])
    path = lesion_map_example(scored, lesions, cases, 0.5, tmp_path / "lesion_map.png", "an example")
    assert path == tmp_path / "lesion_map.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # lesions that are not the mask's own (an automatic segmentation's, numbered otherwise): nothing drawn
    other = lesions.assign(n_voxels=lesions["n_voxels"] + 1)
    assert lesion_map_example(scored, other, cases, 0.5, tmp_path / "other.png", "x") is None
    assert not (tmp_path / "other.png").exists()
    assert lesion_map_example(scored.iloc[:0], lesions, cases, 0.5, tmp_path / "none.png", "x") is None
