"""Answers for one new patient: a CT and its lesion mask in, per-lesion probabilities and a lesion map out.

The preprocessing is the training preprocessing: lesions are numbered by ``lesions.instance_map``,
described by ``lesions.lesion_rows`` and cut into patches by ``patches.case_patches``, the
functions ``segment`` and ``extract_patches`` use; they are scored like ``evaluate`` scores
(``precision.inference_model`` at the precision the profile asks for). The same lesion therefore
gets the probability ``evaluate`` gave it.

Outputs (:func:`write_outputs`): ``lesions.csv`` and ``lesions.json`` (one row per lesion), a
label volume in the CT's own geometry coding each lesion by its predicted class (the contract's
class codes: 1 cyst, 2 metastasis), and the paper's Figure 5 (``lesion_map.png``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverlesion.calibration import Calibration
from liverlesion.config import PatchConfig
from liverlesion.contract import LABEL_METASTASIS, LABEL_NAMES, MASK_CYST, MASK_METASTASIS, MASK_TO_LABEL, ContractError
from liverlesion.imaging import ImageMeta, check_hu, load_nifti, save_nifti, to_source_orientation
from liverlesion.lesions import instance_map, labels_present, lesion_rows, occupied_box
from liverlesion.patches import case_patches

#: ``auto``: 0/1 or 0/255 masks are binary (lesions = connected components), anything else instance-numbered
MASK_ENCODINGS_AT_INFERENCE = ("auto", "binary", "instance", "class")
RESULT_COLUMNS = (
    "case_id",
    "lesion_id",
    "instance",
    "volume_ml",
    "x_mm",
    "y_mm",
    "z_mm",
    "p_metastasis",
    "predicted",
    "predicted_class",
    "model_name",
    "model_version",
)
_LABEL_TO_MASK = {label: code for code, label in MASK_TO_LABEL.items()}


@dataclass(frozen=True)
class CasePrediction:
    results: pd.DataFrame  # RESULT_COLUMNS
    lesions: pd.DataFrame  # contract.LESION_COLUMNS (voxel boxes and centroids), in the order of ``results``
    threshold: float  # P(metastasis) at or above which ``predicted`` is 1
    instances: np.ndarray  # int32 lesion numbers on the canonical grid
    image: np.ndarray  # the CT in HU on the canonical grid
    meta: ImageMeta
    patches: np.ndarray | None = None  # (lesions, rows, cols, 3): what the network saw, in the order of ``results``


def read_mask_nifti(path: Path, meta: ImageMeta, where: str) -> np.ndarray:
    """A NIfTI lesion mask, checked to lie on the CT's grid.

    Raises:
        ContractError: unreadable, another grid, or empty, naming ``where``.
    """
    mask, mask_meta = load_nifti(path)
    if mask.shape != meta.shape or not np.allclose(mask_meta.affine, meta.affine, atol=1e-3):
        raise ContractError(
            f"{where}: mask grid {mask.shape} differs from CT grid {meta.shape} (or their affines "
            "differ: the mask must lie on the CT's own voxels)"
        )
    return mask


def number_lesions(mask: np.ndarray, encoding: str, where: str) -> tuple[np.ndarray, list[dict]]:
    """Lesions of a mask at inference: class codes only separate lesions, they are not used as answers."""
    if encoding not in MASK_ENCODINGS_AT_INFERENCE:
        raise ContractError(f"{where}: unknown mask encoding {encoding!r}; one of {list(MASK_ENCODINGS_AT_INFERENCE)}")
    if encoding == "auto":
        occupied = occupied_box(mask)  # outside it every voxel is 0
        values = set(labels_present(mask[occupied] if occupied else mask[:0]).tolist()) | {0}
        encoding = "binary" if values <= {0, 1} or values <= {0, 255} else "instance"
    instances, described = instance_map(mask, where, encoding)
    if not described:
        raise ContractError(f"{where}: its mask holds no lesion")
    for d in described:
        d["label"] = None
    return instances, described


def patient_mm(meta: ImageMeta, voxel: np.ndarray) -> np.ndarray:
    """Voxel coordinates (canonical grid) -> DICOM patient coordinates in mm (LPS: x right-to-left,
    y anterior-to-posterior, z inferior-to-superior), as a PACS viewer shows them."""
    ras = (meta.affine @ np.c_[voxel, np.ones(len(voxel))].T).T[:, :3]
    return ras * np.array([-1.0, -1.0, 1.0])


class LesionPredictor:
    """A trained classifier with the preprocessing it was trained with.

    Args:
        model: the Keras network as trained (float32).
        patches: how its patches were cut.
        threshold: P(metastasis) at or above which a lesion is called metastasis.
        precision: ``auto``, ``float32`` or ``bfloat16`` (``precision.resolve_precision``).
        model_name, model_version: written in every result row.
        calibration: the post-hoc calibration fitted with the model (``liverlesion.calibration``): every
            probability it answers is the calibrated one; none by default.
        scorer: ``precision.inference_model(model, precision)`` made before (``load_predictor``'s cache); then
            ``model`` may be None.
    """

    def __init__(
        self,
        model,
        patches: PatchConfig,
        threshold: float,
        precision: str,
        model_name: str = "",
        model_version: str = "",
        calibration: Calibration | None = None,
        scorer=None,
    ):
        from liverlesion.precision import inference_model, resolve_precision

        self.model = model
        self.patches = patches
        self.threshold = float(threshold)
        self.precision, self.precision_reason = resolve_precision(precision)
        self._scorer = scorer if scorer is not None else inference_model(model, self.precision)
        self.model_name, self.model_version = model_name, str(model_version)
        self.calibration = calibration or Calibration()

    def record(self, **more: Any) -> dict[str, Any]:
        """What answered, for the outputs: model name and version, threshold, precision (and ``more``)."""
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "threshold": self.threshold,
            "precision": self.precision,
            "calibration": self.calibration.method,
            **more,
        }

    def score_patches(self, patches: np.ndarray) -> np.ndarray:
        from liverlesion.training import predict_metastasis_probability

        return self.calibration(predict_metastasis_probability(self._scorer, patches))

    def predict(
        self, image: np.ndarray, meta: ImageMeta, mask: np.ndarray, case_id: str = "case", mask_encoding: str = "auto"
    ) -> CasePrediction:
        """Score every lesion of one case.

        Args:
            image: the CT in HU, canonical axes (``imaging.load_nifti`` or ``dicomio.read_ct_series``).
            mask: the lesion segmentation on the same grid.

        Raises:
            ContractError: a mask on another grid, an empty mask, NaN or impossible CT numbers.
        """
        where = f"case {case_id}"
        if mask.shape != image.shape:
            raise ContractError(f"{where}: mask shape {mask.shape} differs from CT shape {image.shape}")
        image, _ = check_hu(image, where)
        instances, described = number_lesions(mask, mask_encoding, where)
        lesions = lesion_rows(instances, described, image, meta.spacing, case_id, "")
        p = self.patches
        stacks, _ = case_patches(
            image, instances, meta.spacing, lesions, p.margin_mm, p.canvas, p.output_size, p.square_pixels
        )
        probability = self.score_patches(stacks)
        predicted = (probability >= self.threshold).astype(int)
        centroids = patient_mm(meta, lesions[[f"centroid_{a}" for a in range(3)]].to_numpy())
        results = pd.DataFrame(
            {
                "case_id": case_id,
                "lesion_id": lesions["lesion_id"],
                "instance": lesions["instance"].astype(int),
                "volume_ml": lesions["volume_ml"],
                "x_mm": centroids[:, 0],
                "y_mm": centroids[:, 1],
                "z_mm": centroids[:, 2],
                "p_metastasis": probability.astype(float),
                "predicted": predicted,
                "predicted_class": [LABEL_NAMES[int(k)] for k in predicted],
                "model_name": self.model_name,
                "model_version": self.model_version,
            },
            columns=list(RESULT_COLUMNS),
        )
        return CasePrediction(results, lesions, self.threshold, instances, image, meta, stacks)

    def score_cases(self, cases: pd.DataFrame, lesion_ids: set[str] | None = None) -> pd.Series:
        """P(metastasis) of the lesions of ingested cases (``contract.CASE_COLUMNS``), by lesion id.

        Each CT is read once and cut as at training; ``lesion_ids`` limits the answer to those lesions,
        e.g. a test split (pass only their cases: every case given is read).
        """
        answers = []
        for case in cases.itertuples(index=False):
            image, meta = load_nifti(case.image_path)
            mask, _ = load_nifti(case.mask_path)
            results = self.predict(image, meta, mask, case.case_id, case.mask_encoding).results
            answers.append(results.set_index("lesion_id")["p_metastasis"])
        scored = pd.concat(answers) if answers else pd.Series(dtype=float)
        return scored if lesion_ids is None else scored[scored.index.isin(lesion_ids)]


def load_predictor(settings: dict[str, Any], network_path: Path, scoring_cache: Path | None = None) -> LesionPredictor:
    """The registered model's predictor from its two artifacts: ``settings.json`` (read) and the Keras network.

    The one way a predictor is made from a registered model: the served pyfunc's ``load_context`` and ``predict``'s
    direct path (the registry's files already on this machine) both call it.

    Args:
        scoring_cache: a folder where the network made ready for scoring (``precision.inference_model``: batch
            normalisation folded, cast to the precision) is kept between processes, keyed by the network file,
            the precision, Keras and the folding code (``precision.scoring_network``). None: made in memory.
    """
    from liverlesion.precision import resolve_precision, scoring_network

    precision, _ = resolve_precision(settings["precision"])
    network, scorer = scoring_network(Path(network_path), precision, scoring_cache)
    return LesionPredictor(
        network,
        PatchConfig.model_validate(settings["patches"]),
        settings["threshold"],
        settings["precision"],
        settings["model_name"],
        settings.get("model_version", ""),  # versions registered before 2026-12 did not know their number
        Calibration.from_dict(settings.get("calibration")),  # fitted on the validation split (none before 2026-12)
        scorer=scorer,
    )


def class_volume(instances: np.ndarray, results: pd.DataFrame) -> np.ndarray:
    """Each lesion's voxels coded by its predicted class (``contract``: 1 cyst, 2 metastasis), 0 elsewhere."""
    lookup = np.zeros(int(instances.max()) + 1, dtype=np.uint8)
    for row in results.itertuples(index=False):
        lookup[int(row.instance)] = _LABEL_TO_MASK[int(row.predicted)]
    return lookup[instances]


def write_outputs(
    prediction: CasePrediction, out: Path, title: str = "", extra: dict[str, Any] | None = None
) -> dict[str, Path]:
    """``lesions.csv``, ``lesions.json``, ``lesion_classes.nii.gz`` (the CT's own geometry) and ``lesion_map.png``.

    Args:
        extra: written into ``lesions.json`` beside the rows (model, input, settings).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = prediction.results
    files = {
        "csv": out / "lesions.csv",
        "json": out / "lesions.json",
        "labels": out / "lesion_classes.nii.gz",
        "figure": out / "lesion_map.png",
    }
    results.to_csv(files["csv"], index=False, lineterminator="\n")
    document = {
        **(extra or {}),
        "coordinates": "x_mm, y_mm, z_mm: lesion centroid in DICOM patient coordinates (LPS), mm",
        "classes": {"cyst": MASK_CYST, "metastasis": MASK_METASTASIS},
        "lesions": json.loads(results.to_json(orient="records")),
    }
    files["json"].write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    volume, affine = to_source_orientation(class_volume(prediction.instances, results), prediction.meta)
    save_nifti(volume, affine, files["labels"], "fast")
    draw_lesion_map(prediction, files["figure"], title)
    return files


def draw_lesion_map(prediction: CasePrediction, path: Path, title: str = "") -> Path:
    """The case's colour-coded lesion map (the paper's Figure 5, ``figure.lesion_map_figure``) as a PNG."""
    from liverlesion.figure import lesion_map_figure

    centroids = prediction.lesions[[f"centroid_{a}" for a in range(3)]].reset_index(drop=True)
    return lesion_map_figure(
        prediction.image,
        prediction.meta.spacing,
        prediction.instances,
        pd.concat([prediction.results.reset_index(drop=True), centroids], axis=1),
        Path(path),
        title=title,
        threshold=prediction.threshold,
    )


def metastasis_count(results: pd.DataFrame) -> int:
    return int((results["predicted"] == LABEL_METASTASIS).sum())
