"""The paper's Table 2 baseline, "SVM with texture features": hand-made lesion features and an SVM.

Perdigon Romero et al. (ISBI 2019) compare their network with a texture-based SVM without saying
which features it used. This module gives a conventional, documented stand-in: first-order HU
statistics over the whole 3D lesion, grey-level co-occurrence (Haralick-style) features on the
lesion's largest axial cross-section, and an RBF SVM whose hyper-parameters are chosen on the
validation split. It is pure (NumPy, scikit-image, scikit-learn) and reads no file: it works on
the per-lesion crops ingestion cut (``liverlesion.crops``).

Geometry: arrays are indexed (x, y, z) in canonical RAS+ (see ``imaging.load_nifti``), so axial
slices are planes of constant array axis 2 (``AXIAL_AXIS``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from skimage.feature import graycomatrix, graycoprops
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from liverlesion.contract import LABEL_METASTASIS
from liverlesion.crops import LesionCrop

Progress = Callable[[int, int, str], None] | None

# ---------------------------------------------------------------------------------------------
# Feature extraction
# ---------------------------------------------------------------------------------------------
#: Array axis normal to axial slices (arrays are (x, y, z) in RAS+).
AXIAL_AXIS = 2
#: Grey levels the HU window is quantised to, for the GLCM and the HU histogram entropy.
DEFAULT_LEVELS = 32
#: HU window quantised into ``levels`` bins: soft-tissue range covering water-like cysts (~0-20 HU),
#: hypoattenuating metastases (~20-80 HU) and enhanced liver (~100-120 HU). Values outside it are
#: clipped to the end bins, so a fixed bin width (here ~9.4 HU) keeps features comparable across
#: lesions, as recommended for CT (IBSI), rather than rescaling each lesion to its own range.
DEFAULT_HU_WINDOW = (-100.0, 200.0)
#: GLCM pixel distances and angles (radians: 0, 45, 90, 135 degrees); properties are averaged over
#: every (distance, angle) pair that has at least one in-lesion pixel pair.
GLCM_DISTANCES = (1, 2)
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
#: GLCM properties computed with ``skimage.feature.graycoprops``; feature name -> property name.
GLCM_PROPERTIES = {
    "glcm_contrast": "contrast",
    "glcm_dissimilarity": "dissimilarity",
    "glcm_homogeneity": "homogeneity",
    "glcm_energy": "energy",
    "glcm_correlation": "correlation",
    "glcm_asm": "ASM",
}
#: Percentiles of the lesion's HU values reported as features.
HU_PERCENTILES = (10, 50, 90)
#: A lesion whose HU standard deviation is below this (HU) is treated as constant: skewness and
#: excess kurtosis are undefined there (0/0) and are reported as 0, the value of a symmetric,
#: normal-tailed distribution, instead of NaN or float round-off noise.
STD_FLOOR_HU = 1e-6
#: ``levels`` must leave room for the reserved outside-lesion level in a uint8 image.
MIN_LEVELS, MAX_LEVELS = 2, 255

FIRST_ORDER_FEATURES = (
    "hu_mean",
    "hu_std",
    "hu_skewness",
    "hu_kurtosis",
    *(f"hu_p{p}" for p in HU_PERCENTILES),
    "hu_entropy",
    "volume_ml",
)
#: Every feature, in column order of ``cohort_texture_table``.
TEXTURE_FEATURES = (*FIRST_ORDER_FEATURES, *GLCM_PROPERTIES)
ID_COLUMN = "lesion_id"


def _check_window(levels: int, hu_window: Sequence[float]) -> tuple[float, float]:
    if not MIN_LEVELS <= int(levels) <= MAX_LEVELS:
        raise ValueError(f"levels must be in [{MIN_LEVELS}, {MAX_LEVELS}], got {levels}")
    lo, hi = (float(v) for v in hu_window)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"hu_window must be an increasing pair of finite HU values, got {tuple(hu_window)}")
    return lo, hi


def quantise(hu: np.ndarray, levels: int = DEFAULT_LEVELS, hu_window=DEFAULT_HU_WINDOW) -> np.ndarray:
    """Grey levels 0..levels-1 of HU values: equal-width bins over ``hu_window``, clipped at both ends.

    Clipping (rather than dropping) out-of-window voxels keeps every lesion voxel counted: a very
    dark or very bright voxel is still texture, just saturated.
    """
    lo, hi = _check_window(levels, hu_window)
    scaled = (np.clip(np.asarray(hu, dtype=np.float64), lo, hi) - lo) / (hi - lo) * levels
    return np.minimum(np.floor(scaled), levels - 1).astype(np.uint8)


def _first_order(values: np.ndarray, levels: int, hu_window, voxel_ml: float) -> dict[str, float]:
    """HU statistics of all lesion voxels; always finite (see ``STD_FLOOR_HU``)."""
    mean = float(values.mean())
    centred = values - mean
    m2 = float(np.mean(centred**2))
    std = float(np.sqrt(m2))
    if std < STD_FLOOR_HU:
        std, skewness, kurtosis = 0.0, 0.0, 0.0
    else:
        skewness = float(np.mean(centred**3) / m2**1.5)
        kurtosis = float(np.mean(centred**4) / m2**2 - 3.0)  # excess (Fisher): 0 for a normal
    counts = np.bincount(quantise(values, levels, hu_window), minlength=levels)
    frequencies = counts[counts > 0] / values.size
    entropy = float(-(frequencies * np.log2(frequencies)).sum()) + 0.0  # + 0.0 turns -0.0 (one bin) into 0.0
    percentiles = np.percentile(values, HU_PERCENTILES)
    return {
        "hu_mean": mean,
        "hu_std": std,
        "hu_skewness": skewness,
        "hu_kurtosis": kurtosis,
        **{f"hu_p{p}": float(v) for p, v in zip(HU_PERCENTILES, percentiles)},
        "hu_entropy": entropy,
        "volume_ml": float(values.size) * voxel_ml,
    }


def largest_axial_slice(lesion: np.ndarray) -> int:
    """Index (along ``AXIAL_AXIS``) of the axial slice with the most lesion pixels; ties: the lowest."""
    return int(np.argmax(lesion.sum(axis=tuple(a for a in range(3) if a != AXIAL_AXIS))))


def glcm_matrices(
    image_2d: np.ndarray, lesion_2d: np.ndarray, levels: int = DEFAULT_LEVELS, hu_window=DEFAULT_HU_WINDOW
) -> np.ndarray:
    """Symmetric co-occurrence counts of in-lesion pixel pairs only, (levels, levels, n_dist, n_angle).

    Pixels outside the lesion are set to a reserved grey level ``levels`` (one above the quantised
    range) and the GLCM is computed with ``levels + 1`` levels; dropping that last row and column
    then removes every pair with at least one outside pixel, whatever the background holds. The
    slice is first cropped to the lesion's bounding box: pairs reaching beyond it would touch an
    outside pixel and be dropped anyway, so the crop only saves time.
    """
    inside = np.asarray(lesion_2d, dtype=bool)
    if not inside.any():
        raise ValueError("the lesion section is empty")
    rows, cols = np.nonzero(inside)
    crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    grey = quantise(image_2d[crop], levels, hu_window)
    grey[~inside[crop]] = levels
    counts = graycomatrix(grey, list(GLCM_DISTANCES), list(GLCM_ANGLES), levels=levels + 1, symmetric=True)
    return counts[:levels, :levels]


def _glcm_features(image_2d: np.ndarray, lesion_2d: np.ndarray, levels: int, hu_window) -> dict[str, float]:
    """GLCM properties averaged over the (distance, angle) pairs that have in-lesion pixel pairs.

    A (distance, angle) pair with no in-lesion pixel pair (e.g. distance 2 across a lesion one or
    two pixels thick) is left out of the average rather than counted as an all-zero GLCM. A
    cross-section with no in-lesion pair at all (a single pixel, or a few pixels further than two
    apart) has no measurable texture; it gets the properties of a one-entry diagonal GLCM at its
    mean grey level, i.e. a perfectly uniform texture: contrast 0, dissimilarity 0, homogeneity 1, energy 1, ASM 1,
    correlation 1 (scikit-image's convention for zero variance). That keeps every value finite and
    in its usual range instead of NaN.
    """
    lesion_2d = np.asarray(lesion_2d, dtype=bool)
    counts = glcm_matrices(image_2d, lesion_2d, levels, hu_window)
    counts = counts.reshape(levels, levels, -1)
    counts = counts[:, :, counts.sum(axis=(0, 1)) > 0]
    if counts.shape[2] == 0:
        level = int(quantise(np.mean(image_2d[lesion_2d]), levels, hu_window))
        counts = np.zeros((levels, levels, 1), dtype=np.uint32)
        counts[level, level, 0] = 1
    glcm = counts[:, :, np.newaxis, :].astype(np.float64)
    glcm /= glcm.sum(axis=(0, 1), keepdims=True)
    return {name: float(graycoprops(glcm, prop).mean()) for name, prop in GLCM_PROPERTIES.items()}


def texture_features(
    image: np.ndarray,
    lesion: np.ndarray,
    spacing: Sequence[float],
    levels: int = DEFAULT_LEVELS,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
) -> dict[str, float]:
    """First-order and GLCM texture features of one lesion, keyed as in ``TEXTURE_FEATURES``.

    First-order features use every lesion voxel in 3D: HU mean, standard deviation (population),
    skewness, excess kurtosis, 10th/50th/90th percentiles, the Shannon entropy (bits) of the HU
    histogram with ``levels`` equal bins over ``hu_window`` (out-of-window values clipped to the end
    bins), and the volume in mL (voxel count x voxel volume).

    GLCM features (contrast, dissimilarity, homogeneity, energy, correlation, ASM) come from the
    axial slice where the lesion has most pixels, the cross-section that carries the most texture
    (and the plane of the paper's first patch), after quantising ``hu_window`` to ``levels`` grey
    levels; distances ``GLCM_DISTANCES`` and the four angles ``GLCM_ANGLES``, each (distance,
    angle) GLCM normalised on its own and the properties averaged with equal weight. Only pairs of
    two lesion pixels are counted (see ``glcm_matrices``), so the surrounding liver, vessels or
    air never leak into the texture. Distances are in pixels, not mm: in-plane spacing is taken as
    is (CT is usually isotropic in-plane).

    Very small lesions still give finite values: a one-voxel lesion has standard deviation,
    skewness, kurtosis and entropy 0, and a cross-section with no in-lesion pixel pair gets the
    GLCM properties of a uniform texture (see ``_glcm_features``).

    Args:
        image: CT volume (or a crop of it) in HU, indexed (x, y, z).
        lesion: boolean mask of the lesion's voxels, same shape as ``image``.
        spacing: voxel size in mm along the array axes, for the volume.
        levels: grey levels of the HU window (2 to 255).
        hu_window: (low, high) HU mapped onto the grey levels.

    Raises:
        ValueError: shapes differ, the arrays are not 3D, the mask is empty, the image holds
            non-finite values inside the lesion, or ``levels``/``hu_window`` are invalid.
    """
    image = np.asarray(image)
    lesion = np.asarray(lesion, dtype=bool)
    if image.ndim != 3 or image.shape != lesion.shape:
        raise ValueError(f"image {image.shape} and lesion {lesion.shape} must be 3D volumes of the same shape")
    _check_window(levels, hu_window)
    if len(spacing) != 3:
        raise ValueError(f"spacing needs 3 values (mm per array axis), got {spacing}")
    values = image[lesion].astype(np.float64)
    if values.size == 0:
        raise ValueError("the lesion mask is empty")
    if not np.isfinite(values).all():
        raise ValueError("the image holds non-finite values inside the lesion")
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    features = _first_order(values, int(levels), hu_window, voxel_ml)
    k = largest_axial_slice(lesion)
    features.update(
        _glcm_features(np.take(image, k, axis=AXIAL_AXIS), np.take(lesion, k, axis=AXIAL_AXIS), int(levels), hu_window)
    )
    return {name: features[name] for name in TEXTURE_FEATURES}


def cohort_texture_table(
    lesions: pd.DataFrame,
    crops: Mapping[str, LesionCrop],
    levels: int = DEFAULT_LEVELS,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    progress: Progress = None,
) -> pd.DataFrame:
    """Texture features of every lesion of a cohort, one row per lesion in lesion-table order.

    Computed on each lesion's crop (``ingestion.ingest_cases``): the mask selects the voxels and the
    GLCM ignores everything outside it, so the crop gives the same features as the whole volume.

    Args:
        lesions: ``segment_cases`` output (``lesion_id``, ``case_id``).
        crops: the ingested crops by lesion id (``crops.LesionCrops``).
        levels, hu_window: as in ``texture_features``.
        progress: called as ``progress(done, total, case_id)`` after each case.

    Returns:
        Columns ``lesion_id`` and ``TEXTURE_FEATURES``, rows in the order of ``lesions``.

    Raises:
        KeyError: a lesion has no crop (the lesion table does not match the ingested cases), naming it.
    """
    rows: dict[str, dict[str, float]] = {}
    by_case = list(lesions.groupby("case_id", sort=False))
    for i, (case_id, group) in enumerate(by_case, start=1):
        for lid in group[ID_COLUMN]:
            crop = crops[lid]
            rows[lid] = texture_features(crop.image, crop.mask, crop.spacing, levels, hu_window)
        if progress is not None:
            progress(i, len(by_case), str(case_id))
    table = pd.DataFrame([{ID_COLUMN: lid, **rows[lid]} for lid in lesions[ID_COLUMN]])
    return table.reindex(columns=[ID_COLUMN, *TEXTURE_FEATURES])


# ---------------------------------------------------------------------------------------------
# The SVM
# ---------------------------------------------------------------------------------------------
#: Validation scores closer than this count as tied.
SCORE_TOLERANCE = 1e-12
#: scikit-learn 1.9 deprecates ``SVC(probability=True)`` (removal planned for 1.11) in favour of
#: ``CalibratedClassifierCV(SVC(), ensemble=False)``. The project pins 1.9.1 and this baseline is
#: specified as libsvm's own Platt scaling, so exactly that warning is silenced where the SVC is
#: fitted; an upgrade past 1.10 fails loudly (unknown parameter) and must switch to the calibrator.
_PROBABILITY_DEPRECATION = r"The `probability` parameter was deprecated"


def best_candidate(scores: Sequence[dict]) -> int:
    """Index of the best grid point: highest ``val_roc_auc``, ties by ``val_accuracy``, then first.

    "First" is the earliest in grid order, i.e. the smaller C and then the smaller gamma: among
    equally good models on the validation split the more regularised one is kept.
    """
    best = 0
    for i, s in enumerate(scores[1:], start=1):
        b = scores[best]
        if s["val_roc_auc"] > b["val_roc_auc"] + SCORE_TOLERANCE or (
            abs(s["val_roc_auc"] - b["val_roc_auc"]) <= SCORE_TOLERANCE
            and s["val_accuracy"] > b["val_accuracy"] + SCORE_TOLERANCE
        ):
            best = i
    return best


class TextureSVM:
    """RBF SVM on standardised texture features, tuned on the validation split.

    ``fit`` trains one ``StandardScaler`` + ``SVC`` pipeline per (C, gamma) of the grids on the
    training split only and scores each on the validation split (ROC AUC of P(metastasis), ties
    broken by accuracy at the decision threshold, then by grid order). The kept model is the chosen grid
    point's pipeline, trained on train only: validation is never trained on, so it stays a
    validation set for this baseline exactly as for the network, and test is never seen.
    ``SVC(probability=True, random_state=seed)`` makes Platt scaling's internal cross-validation
    reproducible, so the same data and seed give the same model and probabilities.

    Attributes:
        chosen: ``{"C", "gamma", "val_roc_auc", "val_accuracy"}`` of the kept model.
        grid_scores: one row per grid point (C, gamma, val_roc_auc, val_accuracy), in grid order.
        feature_names: the feature columns, in the order the model uses them.
        pipeline: the fitted scikit-learn ``Pipeline``.

    The grids (``compare.svm_c_grid``, ``compare.svm_gamma_grid``) go from most to least regularised and are
    small because the validation split is small (tens of lesions): a large grid would over-fit it.
    Features are standardised first, so gamma = 1 / n_features (~0.07 for 15 features) lies inside
    ``configs/base.yaml``'s gamma grid.
    """

    def __init__(self, c_grid: Sequence[float], gamma_grid: Sequence[float]):
        if not c_grid or not gamma_grid:
            raise ValueError("c_grid and gamma_grid must not be empty")
        self.c_grid = tuple(float(c) for c in c_grid)
        self.gamma_grid = tuple(float(g) for g in gamma_grid)
        self.chosen: dict[str, float] | None = None
        self.grid_scores: pd.DataFrame | None = None
        self.feature_names: list[str] | None = None
        self.pipeline: Pipeline | None = None

    @staticmethod
    def _names_of(features) -> list[str]:
        if isinstance(features, pd.DataFrame):
            return [str(c) for c in features.columns if c != ID_COLUMN]
        return [f"feature_{i}" for i in range(np.asarray(features).shape[1])]

    def _matrix(self, features, what: str) -> np.ndarray:
        """Features as a float matrix in ``feature_names`` order (a DataFrame may reorder columns)."""
        if isinstance(features, pd.DataFrame):
            absent = [n for n in self.feature_names if n not in features.columns]
            if absent:
                raise ValueError(f"{what}: missing feature column(s) {absent}")
            x = features[self.feature_names].to_numpy(dtype=np.float64)
        else:
            x = np.asarray(features, dtype=np.float64)
            if x.ndim != 2 or x.shape[1] != len(self.feature_names):
                raise ValueError(
                    f"{what}: expected a matrix with {len(self.feature_names)} columns, got shape {x.shape}"
                )
        if not np.isfinite(x).all():
            raise ValueError(f"{what}: features hold NaN or infinite values")
        return x

    @staticmethod
    def _labels(y, n: int, what: str) -> np.ndarray:
        y = np.asarray(y).astype(int).ravel()
        if y.size != n:
            raise ValueError(f"{what}: {y.size} labels for {n} feature rows")
        if set(np.unique(y).tolist()) != {0, 1}:
            raise ValueError(f"{what}: labels must hold both classes 0 (cyst) and 1 (metastasis)")
        return y

    def _pipeline(self, c: float, gamma: float, seed: int) -> Pipeline:
        return Pipeline(
            [
                ("scale", StandardScaler()),
                ("svm", SVC(kernel="rbf", C=c, gamma=gamma, probability=True, random_state=seed)),
            ]
        )

    @staticmethod
    def _proba(pipeline: Pipeline, x: np.ndarray) -> np.ndarray:
        column = list(pipeline.classes_).index(LABEL_METASTASIS)
        return pipeline.predict_proba(x)[:, column]

    def fit(self, features_train, y_train, features_val, y_val, seed: int, threshold: float) -> TextureSVM:
        """Choose C and gamma on the validation split and keep that model, trained on train only.

        Args:
            features_train, features_val: DataFrames (a ``lesion_id`` column is ignored; columns are
                matched by name) or matrices with the same columns.
            y_train, y_val: 0 cyst, 1 metastasis; each split needs both classes (ROC AUC).
            seed: ``SVC``'s random state (Platt scaling); same seed and data, same model.
            threshold: P(metastasis) at or above which the validation accuracy calls a metastasis.

        Returns:
            ``self``.
        """
        self.feature_names = self._names_of(features_train)
        x_train = self._matrix(features_train, "train")
        x_val = self._matrix(features_val, "val")
        y_train = self._labels(y_train, len(x_train), "train")
        y_val = self._labels(y_val, len(x_val), "val")
        scores, fitted = [], []
        for c in self.c_grid:
            for gamma in self.gamma_grid:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_PROBABILITY_DEPRECATION, category=FutureWarning)
                    pipeline = self._pipeline(c, gamma, seed).fit(x_train, y_train)
                p_val = self._proba(pipeline, x_val)
                scores.append(
                    {
                        "C": c,
                        "gamma": gamma,
                        "val_roc_auc": float(roc_auc_score(y_val, p_val)),
                        "val_accuracy": float(np.mean((p_val >= threshold).astype(int) == y_val)),
                    }
                )
                fitted.append(pipeline)
        best = best_candidate(scores)
        self.grid_scores = pd.DataFrame(scores)
        self.chosen = dict(scores[best])
        self.pipeline = fitted[best]
        return self

    def predict_proba(self, features) -> np.ndarray:
        """P(metastasis) for each row, shape (n,).

        Raises:
            RuntimeError: called before ``fit``.
        """
        if self.pipeline is None:
            raise RuntimeError("TextureSVM.predict_proba called before fit")
        return self._proba(self.pipeline, self._matrix(features, "predict"))


def features_for_set(
    features: pd.DataFrame, manifest: pd.DataFrame, name: str
) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """The feature rows, labels and lesion ids of one split set, in manifest order.

    Raises:
        ValueError: a lesion of the set has no feature row, naming it.
    """
    chosen = manifest[manifest["set"] == name]
    indexed = features.set_index(ID_COLUMN)
    missing = [lid for lid in chosen[ID_COLUMN] if lid not in indexed.index]
    if missing:
        raise ValueError(f"{len(missing)} lesion(s) of the {name} set have no texture features, e.g. {missing[:3]}")
    rows = indexed.loc[chosen[ID_COLUMN]].reset_index()
    return rows, chosen["label"].to_numpy(dtype=np.int32), chosen[ID_COLUMN].tolist()
