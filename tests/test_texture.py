"""Texture features and the texture SVM baseline (the paper's Table 2 "SVM with texture features")."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from liverlesion.ingestion import ingest_cases, segment_cases
from liverlesion.phantom import generate_cohort
from liverlesion.texture import (
    GLCM_ANGLES,
    GLCM_DISTANCES,
    GLCM_PROPERTIES,
    TEXTURE_FEATURES,
    TextureSVM,
    best_candidate,
    cohort_texture_table,
    glcm_matrices,
    quantise,
    texture_features,
)
from tests.profiles import QUICK, with_changes

C_GRID, GAMMA_GRID = QUICK.compare.svm_c_grid, QUICK.compare.svm_gamma_grid
THRESHOLD = QUICK.evaluate.threshold

SHAPE = (32, 32, 16)
UNIFORM_GLCM = {
    "glcm_contrast": 0.0,
    "glcm_dissimilarity": 0.0,
    "glcm_homogeneity": 1.0,
    "glcm_energy": 1.0,
    "glcm_correlation": 1.0,
    "glcm_asm": 1.0,
}


def ball(shape=SHAPE, center=(16, 16, 8), radius=(9, 9, 5)):
    grid = np.indices(shape).astype(float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radius)) <= 1.0


def lesion_image(noise_sd, seed=0, background=100.0):
    rng = np.random.default_rng(seed)
    lesion = ball()
    image = np.full(SHAPE, background, np.float32)
    image[lesion] = 40.0 + rng.normal(0.0, noise_sd, lesion.sum())
    return image, lesion


def assert_finite(features):
    assert list(features) == list(TEXTURE_FEATURES)
    assert all(np.isfinite(v) for v in features.values()), features


def test_heterogeneous_lesion_has_more_contrast_and_less_homogeneity():
    smooth = texture_features(*lesion_image(noise_sd=3.0), spacing=(0.8, 0.8, 2.5))
    noisy = texture_features(*lesion_image(noise_sd=40.0), spacing=(0.8, 0.8, 2.5))
    assert_finite(smooth)
    assert_finite(noisy)
    assert noisy["glcm_contrast"] > 10 * smooth["glcm_contrast"]
    assert noisy["glcm_dissimilarity"] > smooth["glcm_dissimilarity"]
    assert noisy["hu_std"] > 10 * smooth["hu_std"]
    assert noisy["glcm_homogeneity"] < smooth["glcm_homogeneity"]
    assert noisy["glcm_energy"] < smooth["glcm_energy"]
    assert noisy["hu_entropy"] > smooth["hu_entropy"]
    assert smooth["hu_mean"] == pytest.approx(40.0, abs=0.5)


def test_outside_pixels_do_not_change_the_features():
    image, lesion = lesion_image(noise_sd=20.0)
    reference = texture_features(image, lesion, (1.0, 1.0, 1.0))
    rng = np.random.default_rng(5)
    for background in (np.float32(-1000.0), np.float32(3000.0), rng.normal(40, 80, SHAPE).astype(np.float32)):
        other = np.where(lesion, image, background).astype(np.float32)
        assert texture_features(other, lesion, (1.0, 1.0, 1.0)) == reference


def test_glcm_counts_only_in_lesion_pairs():
    # brute force: count pairs of lesion pixels at skimage's offsets, compare with the reserved-level GLCM
    rng = np.random.default_rng(1)
    hu = rng.uniform(-150, 250, (12, 10))
    inside = rng.random((12, 10)) < 0.6
    levels = 8
    grey = quantise(hu, levels)
    expected = np.zeros((levels, levels, len(GLCM_DISTANCES), len(GLCM_ANGLES)))
    for d_i, d in enumerate(GLCM_DISTANCES):
        for a_i, angle in enumerate(GLCM_ANGLES):
            dr, dc = int(round(np.sin(angle) * d)), int(round(np.cos(angle) * d))
            for r in range(12):
                for c in range(10):
                    r2, c2 = r + dr, c + dc  # skimage's offset (its 45 and 135 degrees)
                    if 0 <= r2 < 12 and 0 <= c2 < 10 and inside[r, c] and inside[r2, c2]:
                        expected[grey[r, c], grey[r2, c2], d_i, a_i] += 1
                        expected[grey[r2, c2], grey[r, c], d_i, a_i] += 1
    np.testing.assert_array_equal(glcm_matrices(hu, inside, levels), expected)


def test_only_the_largest_axial_slice_feeds_the_glcm():
    image, lesion = lesion_image(noise_sd=20.0)
    before = texture_features(image, lesion, (1.0, 1.0, 1.0))
    changed = image.copy()
    changed[:, :, :8] += 50.0  # every slice but the largest (z = 8) and those above it
    after = texture_features(changed, lesion, (1.0, 1.0, 1.0))
    assert after["hu_mean"] > before["hu_mean"]
    assert {k: after[k] for k in GLCM_PROPERTIES} == {k: before[k] for k in GLCM_PROPERTIES}


@pytest.mark.parametrize("voxels", [[(5, 5, 5)], [(5, 5, 5), (5, 5, 6)], [(5, 5, 5), (6, 6, 6), (7, 7, 7)]])
def test_tiny_lesions_give_finite_features(voxels):
    image = np.full((12, 12, 12), 60.0, np.float32)
    lesion = np.zeros(image.shape, bool)
    for i, v in enumerate(voxels):
        lesion[v] = True
        image[v] = 10.0 + 25.0 * i
    features = texture_features(image, lesion, (0.7, 0.7, 2.5))
    assert_finite(features)
    # one pixel per axial slice: no in-lesion pair, so the GLCM is that of a uniform texture
    assert {k: features[k] for k in UNIFORM_GLCM} == pytest.approx(UNIFORM_GLCM)
    if len(voxels) == 1:
        assert features["hu_std"] == 0 and features["hu_skewness"] == 0 and features["hu_kurtosis"] == 0
        assert features["hu_entropy"] == 0 and features["hu_p10"] == features["hu_p90"] == 10.0


def test_constant_lesion_and_out_of_window_values_stay_finite():
    lesion = ball()
    for value in (40.0, -1000.0, 2500.0):
        features = texture_features(np.full(SHAPE, value, np.float32), lesion, (1.0, 1.0, 1.0))
        assert_finite(features)
        assert features["hu_std"] == 0.0 and features["glcm_contrast"] == 0.0


def test_volume_is_voxel_count_times_voxel_volume():
    spacing = (0.7, 0.8, 2.5)
    _, lesion = lesion_image(noise_sd=0.0)
    features = texture_features(np.zeros(SHAPE, np.float32), lesion, spacing)
    assert features["volume_ml"] == pytest.approx(lesion.sum() * 0.7 * 0.8 * 2.5 / 1000.0)


def test_bad_inputs_are_refused():
    image, lesion = lesion_image(noise_sd=1.0)
    with pytest.raises(ValueError, match="same shape"):
        texture_features(image[:-1], lesion, (1, 1, 1))
    with pytest.raises(ValueError, match="empty"):
        texture_features(image, np.zeros_like(lesion), (1, 1, 1))
    with pytest.raises(ValueError, match="levels"):
        texture_features(image, lesion, (1, 1, 1), levels=300)
    with pytest.raises(ValueError, match="hu_window"):
        texture_features(image, lesion, (1, 1, 1), hu_window=(200.0, -100.0))


# ---------------------------------------------------------------------------------------------
# TextureSVM
# ---------------------------------------------------------------------------------------------
def clouds(n, seed, shift=2.5, n_features=6):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, n_features)) + shift * y[:, None]
    x[:, 0] *= 100.0  # features on very different scales: the scaler has to matter
    return pd.DataFrame(x, columns=[f"f{i}" for i in range(n_features)]), y


def test_svm_separates_clouds_and_chooses_from_the_grid():
    (xt, yt), (xv, yv), (xs, ys) = clouds(60, 1), clouds(40, 2), clouds(200, 3)
    model = TextureSVM(C_GRID, GAMMA_GRID).fit(xt, yt, xv, yv, seed=2019, threshold=THRESHOLD)
    proba = model.predict_proba(xs)
    assert proba.shape == (200,) and ((proba >= 0) & (proba <= 1)).all()
    assert roc_auc_score(ys, proba) > 0.95
    assert model.chosen["C"] in C_GRID and model.chosen["gamma"] in GAMMA_GRID
    assert len(model.grid_scores) == len(C_GRID) * len(GAMMA_GRID)
    assert model.chosen["val_roc_auc"] == model.grid_scores["val_roc_auc"].max()
    assert model.feature_names == list(xt.columns)
    # columns are matched by name; a lesion_id column is ignored
    shuffled = xs[xs.columns[::-1]].assign(lesion_id="x")
    np.testing.assert_array_equal(model.predict_proba(shuffled), proba)
    with pytest.raises(ValueError, match="missing feature"):
        model.predict_proba(xs.drop(columns="f2"))


def test_svm_is_deterministic_for_a_seed():
    (xt, yt), (xv, yv), (xs, _) = clouds(40, 4, shift=1.0), clouds(30, 5, shift=1.0), clouds(50, 6, shift=1.0)
    small = {"c_grid": (1.0, 10.0), "gamma_grid": (0.01, 0.1)}
    a = TextureSVM(**small).fit(xt, yt, xv, yv, seed=7, threshold=THRESHOLD)
    b = TextureSVM(**small).fit(xt, yt, xv, yv, seed=7, threshold=THRESHOLD)
    assert a.chosen == b.chosen
    pd.testing.assert_frame_equal(a.grid_scores, b.grid_scores)
    np.testing.assert_array_equal(a.predict_proba(xs), b.predict_proba(xs))


def test_ties_on_auc_are_broken_by_accuracy_then_grid_order():
    scores = [
        {"val_roc_auc": 0.8, "val_accuracy": 0.9},
        {"val_roc_auc": 0.9, "val_accuracy": 0.7},
        {"val_roc_auc": 0.9, "val_accuracy": 0.8},
        {"val_roc_auc": 0.9, "val_accuracy": 0.8},
    ]
    assert best_candidate(scores) == 2


def test_svm_needs_both_classes_and_a_fit():
    x, y = clouds(20, 0)
    with pytest.raises(ValueError, match="both classes"):
        TextureSVM(C_GRID, GAMMA_GRID).fit(x, y, x, np.zeros_like(y), seed=1, threshold=THRESHOLD)
    with pytest.raises(RuntimeError, match="before fit"):
        TextureSVM(C_GRID, GAMMA_GRID).predict_proba(x)


# ---------------------------------------------------------------------------------------------
# A tiny phantom cohort, end to end
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = generate_cohort(
        with_changes(QUICK.cohort, seed=3, n_patients=3, n_lesions=7, size_scale=0.4),
        tmp_path_factory.mktemp("tex") / "data",
    )
    ingested = ingest_cases(out, "v")
    return ingested.cases, segment_cases(ingested.cases, ingested.crops), ingested.crops


def test_cohort_table_has_one_finite_row_per_lesion(cohort):
    cases, lesions, crops = cohort
    calls = []
    table = cohort_texture_table(lesions, crops, progress=lambda *a: calls.append(a))
    assert table.columns.tolist() == ["lesion_id", *TEXTURE_FEATURES]
    assert table["lesion_id"].tolist() == lesions["lesion_id"].tolist()
    assert np.isfinite(table[list(TEXTURE_FEATURES)].to_numpy()).all()
    # the same voxels as the lesion table
    np.testing.assert_allclose(table["volume_ml"], lesions["volume_ml"])
    np.testing.assert_allclose(table["hu_mean"], lesions["mean_hu"], rtol=1e-9)
    np.testing.assert_allclose(table["hu_std"], lesions["std_hu"], rtol=1e-6)
    assert [c[2] for c in calls] == cases["case_id"].tolist()
    # lesion order follows the lesion table, not the case loop
    reordered = lesions.iloc[::-1].reset_index(drop=True)
    pd.testing.assert_frame_equal(cohort_texture_table(reordered, crops), table.iloc[::-1].reset_index(drop=True))


def test_cohort_table_names_a_lesion_without_its_crop(cohort):
    _, lesions, crops = cohort
    stray = lesions.copy()
    stray.loc[0, "lesion_id"] = "elsewhere-L01"
    with pytest.raises(KeyError, match="no crop of lesion elsewhere-L01"):
        cohort_texture_table(stray, crops)


def test_features_for_set_follow_the_manifest_order():
    from liverlesion.texture import features_for_set

    features = pd.DataFrame({"lesion_id": ["L1", "L2", "L3"], "mean_hu": [10.0, 20.0, 30.0]})
    manifest = pd.DataFrame({"lesion_id": ["L3", "L1", "L2"], "label": [1, 0, 1], "set": ["test", "test", "train"]})
    rows, y, ids = features_for_set(features, manifest, "test")
    assert ids == ["L3", "L1"] and rows["mean_hu"].tolist() == [30.0, 10.0] and y.tolist() == [1, 0]
    with pytest.raises(ValueError, match="1 lesion\\(s\\) of the train set have no texture features"):
        features_for_set(features[features["lesion_id"] != "L2"], manifest, "train")
