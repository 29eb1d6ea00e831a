"""Answers for one patient (``liverlesion predict``): a CT and its lesions in, every lesion classified by a
registered model version, and the files a radiologist opens out.

The CT is a NIfTI file or a DICOM series folder; the lesions come from a mask (NIfTI on the CT's grid, or
a DICOM-SEG of the series) or from automatic segmentation (the profile's ``segment`` settings, classical or
the registered cascade). The input is read and checked before the model is loaded, so a bad file is
refused in a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liverlesion.contract import ContractError
from liverlesion.segmentation import SegmentSettings
from liverlesion_ops.registry.store import CHAMPION, RegistryError

#: what ``predict`` writes beside the table: each lesion coded by its predicted class in a DICOM-SEG
SEG_SEGMENTS = {1: "cyst (predicted)", 2: "metastasis (predicted)"}


@dataclass(frozen=True)
class CaseInput:
    """A CT read for prediction, with the lesions to classify and where they came from."""

    name: str  # the case's name in the results
    image: Any  # HU on canonical axes
    meta: Any  # imaging.ImageMeta
    series: Any  # dicomio series (DICOM input) or None (NIfTI)
    lesion_mask: Any
    encoding: str
    liver: Any  # the liver an automatic segmentation found, else None
    lesions_from: str  # "the given mask", "classical segmentation", "learned segmentation (models:/...)"


def model_reference(model: str, version: str | None) -> str:
    """``models:/<name>/<version>``, ``models:/<name>@champion``, or an MLflow model URI as it is."""
    if model.startswith(("models:/", "runs:/")):
        return model
    return f"models:/{model}/{version}" if version is not None else f"models:/{model}@{CHAMPION}"


def read_ct(path: Path):
    """A CT from a NIfTI file or a DICOM series folder: (HU on canonical axes, meta, series or None).

    Raises:
        ContractError: no such file, not a CT, or a CT the data contract refuses.
    """
    from liverlesion.imaging import check_hu, load_nifti

    if path.is_dir():
        from liverlesion.dicomio import read_ct_series

        series = read_ct_series(path)
        return series.hu, series.meta, series
    if not path.exists():
        raise ContractError(f"{path}: no such file or folder")
    image, meta = load_nifti(path)
    image, _ = check_hu(image, str(path))
    return image, meta, None


def is_dicom(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def read_mask(path: Path, meta, series, encoding: str, name: str):
    """The lesion mask: a NIfTI file on the CT's grid, or a DICOM-SEG of the series (lesion segments only).

    Returns:
        The mask and its encoding.
    """
    from liverlesion.predict import read_mask_nifti

    if not path.is_file():
        raise ContractError(f"{path}: no such mask file")
    if is_dicom(path):
        if series is None:
            raise ContractError(f"{path}: a DICOM-SEG needs its CT as a DICOM series folder, not a NIfTI file")
        from liverlesion.dicomio import read_seg
        from liverlesion.importers import NON_LESION_SEGMENTS, match_name, stack_lesions

        lesions = [
            (f"segment {label!r}", segment, "")
            for _, (label, segment) in sorted(read_seg(path, series).items())
            if match_name(label, NON_LESION_SEGMENTS) is None and segment.any()
        ]
        # numbered as the import numbers them
        instances, _ = stack_lesions(meta.shape, lesions, f"case {name}", components=False)
        return instances, "instance"
    return read_mask_nifti(path, meta, f"case {name}"), encoding


def segment_automatically(image, meta, settings: SegmentSettings, name: str):
    """The liver and lesions of a CT by ``settings.method`` (classical, or the registered cascade named by
    ``settings.learned_model``); and what segmented it, in words.

    Raises:
        ContractError: the segmentation found no liver or no lesion, naming the case.
        RegistryError: no such registered cascade.
    """
    from liverlesion.segmentation import automatic_segmentation, load_cascade

    cascade, by = None, f"{settings.method} segmentation"
    if settings.method == "learned":
        from liverlesion_ops.segmenters import download_cascade, resolve_segmenter

        uri = resolve_segmenter(settings.learned_model)
        cascade, by = load_cascade(download_cascade(uri)), f"learned segmentation ({uri})"
    found = automatic_segmentation(image, meta.spacing, settings, cascade)
    if not found.liver.any():
        raise ContractError(f"case {name}: the {by} found no liver in this CT")
    if not found.lesions.any():
        raise ContractError(f"case {name}: the {by} found no lesion in the liver; give a mask (--mask) if there is one")
    return found, by


def read_case(
    ct: Path, mask: Path | None, mask_encoding: str, segment: SegmentSettings, case_id: str | None
) -> CaseInput:
    """Read a CT and its lesions: from ``mask``, or, without one, by automatic segmentation (``segment``).

    Raises:
        ContractError: a file the data contract refuses, or no lesion found, naming the case.
        RegistryError: a learned segmentation whose cascade is not registered.
    """
    if mask is None and not segment.automatic:
        raise ContractError("without --mask, the lesions must be segmented: --segment classical or learned")
    image, meta, series = read_ct(ct)
    if case_id:
        name = case_id
    elif series is not None:
        name = series_name(series)
    else:
        name = ct.name.split(".nii")[0]
    if mask is not None:
        lesion_mask, encoding = read_mask(mask, meta, series, mask_encoding, name)
        return CaseInput(name, image, meta, series, lesion_mask, encoding, None, "the given mask")
    found, by = segment_automatically(image, meta, segment, name)
    return CaseInput(name, image, meta, series, found.lesions.astype("uint8"), "binary", found.liver, by)


def series_name(series) -> str:
    """A DICOM case's name in the results: ``series-<SeriesNumber>``, or, where the series has no number,
    ``series-<8 hex digits>`` digested from its SeriesInstanceUID (stable, and not the UID itself); never
    a description or a folder's name, which can identify the patient."""
    import hashlib

    header = series.headers[0]
    number = str(header.get("SeriesNumber", None) or "").strip()
    if number:
        return f"series-{number}"
    uid = str(header.get("SeriesInstanceUID", None) or "")
    return f"series-{hashlib.sha256(uid.encode()).hexdigest()[:8]}" if uid else "series"


def seg_not_written(series) -> str | None:
    """Why no DICOM-SEG can be written for ``series`` (None: it can).

    A segmentation shares the Frame of Reference of the images it segments (DICOM PS3.3, the Segmentation
    IOD's Frame of Reference module); a series without a Frame of Reference UID gives it none to share.
    """
    if not str(series.headers[0].get("FrameOfReferenceUID", None) or "").strip():
        return (
            "no DICOM-SEG written: the CT series has no Frame of Reference UID for a segmentation to share; "
            "lesion_classes.nii.gz holds the same classes"
        )
    return None


def answer_notes(case: CaseInput) -> list[str]:
    """What a reader of the answer should know that is not an error (a file that could not be written)."""
    why = seg_not_written(case.series) if case.series is not None else None
    return [why] if why else []


def load_predictor(reference: str):
    """The registered model's predictor (``models:/<name>/<version>``, ``models:/<name>@<alias>`` or a run's
    model URI), named by its model name and version; and the reference resolved to a version.

    A registered version's files are looked up by a second process while this one imports Keras
    (``registry.lookup``); where it has no answer, here.

    Raises:
        RegistryError: no such model, version or alias, or an incomplete registration.
    """
    from liverlesion_ops.registry.lookup import Lookup, predictor_from_files, resolve

    lookup = Lookup(reference)
    from liverlesion import precision  # noqa: F401 -- Keras and TensorFlow (~3 s), while the child looks

    found = lookup.result()
    if found is not None:
        return predictor_from_files(found), found.reference

    import mlflow
    from mlflow.exceptions import MlflowException

    from liverlesion_ops.registry.registration import load_registered_predictor
    from liverlesion_ops.tracking import server_problem

    try:
        if reference.startswith("models:/"):
            name, version = resolve(reference)
            return load_registered_predictor(name, version), f"models:/{name}/{version}"
        served = mlflow.pyfunc.load_model(reference).unwrap_python_model()
    except MlflowException as err:
        if server_problem(err) is not None:
            raise
        raise RegistryError(
            f"no model {reference}: {err.message.splitlines()[0]} (`liverlesion models` lists the registered versions)"
        ) from None
    predictor = served.predictor
    predictor.model_name = predictor.model_name or served.settings.get("model_name", "")
    return predictor, reference


def write_answers(case: CaseInput, prediction, predictor, resolved: str, out: Path) -> dict[str, Path]:
    """The files of one answer: the table (CSV, JSON), the label volume, Figure 5, the liver an automatic
    segmentation found, and for DICOM input a DICOM-SEG referencing the CT series (where the series has a
    Frame of Reference; else ``lesions.json`` says why there is none, in ``notes``)."""
    from liverlesion.imaging import save_nifti, to_source_orientation
    from liverlesion.predict import class_volume, write_outputs

    extra = predictor.record(
        model=resolved,
        case_id=case.name,
        input="DICOM series" if case.series is not None else "NIfTI",
        lesions_from=case.lesions_from,
        notes=answer_notes(case),
    )
    title = f"{case.name}: {predictor.model_name} v{predictor.model_version}"
    files = write_outputs(prediction, out, title=title, extra=extra)
    if case.liver is not None:
        files["liver"] = save_nifti(
            *to_source_orientation(case.liver.astype("uint8"), case.meta), out / "liver.nii.gz", "fast"
        )
    if case.series is not None and seg_not_written(case.series) is None:
        from liverlesion.dicomio import write_seg

        volume = class_volume(prediction.instances, prediction.results)
        files["seg"] = write_seg(volume, SEG_SEGMENTS, case.series, out / "lesion_classes.seg.dcm")
    return files


def predict(
    ct: Path,
    mask: Path | None,
    out: Path | None,
    segment: SegmentSettings,
    reference: str,
    mask_encoding: str = "auto",
    case_id: str | None = None,
) -> dict[str, Any]:
    """Classify every lesion of one CT with a registered model and write the answer's files.

    Returns:
        ``{"case", "model", "model_name", "model_version", "threshold", "results", "files"}`` (``results``: one
        row per lesion, ``liverlesion.predict.RESULT_COLUMNS``).
    """
    case = read_case(ct, mask, mask_encoding, segment, case_id)  # the input first: refused before the model loads
    predictor, resolved = load_predictor(reference)
    prediction = predictor.predict(case.image, case.meta, case.lesion_mask, case.name, case.encoding)
    files = write_answers(case, prediction, predictor, resolved, out or Path(f"prediction-{case.name}"))
    return {
        "case": case.name,
        "model": resolved,
        "model_name": predictor.model_name,
        "model_version": predictor.model_version,
        "threshold": predictor.threshold,
        "lesions_from": case.lesions_from,
        "results": prediction.results,
        "files": files,
        "notes": answer_notes(case),
    }
