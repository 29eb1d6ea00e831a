import numpy as np
import pytest

from liverlesion.calibration import (
    Calibration,
    brier_score,
    calibration_intervals,
    expected_calibration_error,
    fit_calibration,
    plot_reliability,
    reliability_table,
)
from liverlesion.metrics import classification_metrics


def _lesions(n: int, seed: int, confidence: float, shift: float = 0.0):
    """Labels drawn from a true probability sigmoid(z), and a model that reports sigmoid(confidence z + shift):
    over-confident for confidence > 1, biased towards metastasis for shift > 0."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, n)
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-z))).astype(int)
    return labels, 1.0 / (1.0 + np.exp(-(confidence * z + shift)))


def test_temperature_scaling_fitted_on_validation_lesions_improves_calibration_on_held_out_ones():
    val_labels, val_p = _lesions(400, seed=1, confidence=3.0)
    test_labels, test_p = _lesions(2000, seed=2, confidence=3.0)
    calibration = fit_calibration(val_labels, val_p, "temperature")
    assert 2.0 < calibration.temperature < 4.5  # the model is three times too confident
    calibrated = calibration(test_p)
    before = expected_calibration_error(test_labels, test_p, bins=10)
    after = expected_calibration_error(test_labels, calibrated, bins=10)
    assert after < 0.5 * before
    assert brier_score(test_labels, calibrated) < brier_score(test_labels, test_p)
    # one parameter that keeps 0.5 and the order: the decisions at 0.5 and ROC AUC are the network's
    assert classification_metrics(test_labels, calibrated, 0.5) == pytest.approx(
        classification_metrics(test_labels, test_p, 0.5)
    )
    assert calibration.fitted_on == 400


def test_platt_scaling_removes_a_bias_that_temperature_cannot():
    val_labels, val_p = _lesions(400, seed=3, confidence=1.0, shift=2.0)
    test_labels, test_p = _lesions(2000, seed=4, confidence=1.0, shift=2.0)
    platt = fit_calibration(val_labels, val_p, "platt")
    assert platt.intercept == pytest.approx(-2.0, abs=0.6)
    temperature = fit_calibration(val_labels, val_p, "temperature")
    ece = {
        name: expected_calibration_error(test_labels, c(test_p), 10)
        for name, c in (("platt", platt), ("t", temperature))
    }
    assert ece["platt"] < 0.5 * expected_calibration_error(test_labels, test_p, 10)
    assert ece["platt"] < ece["t"]


def test_a_perfectly_separated_validation_split_does_not_make_the_model_certain():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probability = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    for method in ("temperature", "platt"):
        calibrated = fit_calibration(labels, probability, method)(probability)
        assert np.all((calibrated > 0.01) & (calibrated < 0.99)), method  # Platt's smoothed targets hold it back


def test_none_is_the_identity_and_a_calibration_survives_the_registered_model_s_settings():
    p = np.array([0.0, 0.2, 0.5, 1.0])
    assert np.array_equal(Calibration()(p), p)
    fitted = fit_calibration([0, 1, 0, 1, 1], [0.2, 0.9, 0.6, 0.7, 0.99], "platt")
    again = Calibration.from_dict(fitted.to_dict())
    assert again == fitted and np.array_equal(again(p), fitted(p))
    assert Calibration.from_dict(None) == Calibration()  # a model registered before calibration existed
    with pytest.raises(ValueError, match="unknown calibration 'isotonic'"):
        Calibration.from_dict({"method": "isotonic"})


def test_a_fit_needs_both_classes_and_says_which_setting_to_change():
    with pytest.raises(ValueError, match=r"both metastases and cysts.*evaluate.calibration: none"):
        fit_calibration([1, 1, 1], [0.6, 0.7, 0.8], "temperature")
    assert fit_calibration([1, 1, 1], [0.6, 0.7, 0.8], "none").method == "none"


def test_brier_score_and_ece_on_known_values():
    labels = np.array([0, 1, 0, 1])
    assert brier_score(labels, np.full(4, 0.5)) == pytest.approx(0.25)
    assert expected_calibration_error(labels, np.full(4, 0.5), bins=10) == pytest.approx(0.0)
    # two lesions at 0.95 of which one is a metastasis, two at 0.05 of which one is: both bins 0.45 off
    assert expected_calibration_error(labels, np.array([0.95, 0.95, 0.05, 0.05]), bins=10) == pytest.approx(0.45)
    assert expected_calibration_error([1], [1.0], bins=10) == pytest.approx(0.0)  # 1.0 falls in the last bin
    table = reliability_table(labels, np.array([0.95, 0.95, 0.05, 0.05]), bins=10)
    assert table["lesions"].tolist() == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert table.loc[9, "fraction_metastases"] == pytest.approx(0.5)


def test_calibration_intervals_resample_patients_and_hold_the_estimate(tmp_path):
    labels, probability = _lesions(120, seed=5, confidence=2.0)
    patients = np.repeat(np.arange(30), 4)
    table = calibration_intervals(labels, probability, patients, bins=10, n_boot=300, seed=7, confidence=0.95)
    assert table["metric"].tolist() == ["brier", "ece"]
    assert table.loc[0, "estimate"] == pytest.approx(brier_score(labels, probability))
    assert table.loc[1, "estimate"] == pytest.approx(expected_calibration_error(labels, probability, 10))
    assert (table["lower"] < table["upper"]).all() and (table["lower"] <= table["estimate"]).all()
    again = calibration_intervals(labels[::-1], probability[::-1], patients[::-1], 10, 300, 7, 0.95)
    assert np.allclose(again[["lower", "upper"]], table[["lower", "upper"]])  # lesion order does not matter
    path = plot_reliability({"network": (labels, probability)}, 10, tmp_path / "reliability.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
