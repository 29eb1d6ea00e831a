"""Cohort ingestion, the one pass that reads the CTs, and the per-lesion work of ``segment``.

The cohort folder follows ``liverlesion.contract``: ``cases.csv`` (``patient_key, case_id, image,
mask`` and optionally ``mask_encoding``), one CT per case as NIfTI in Hounsfield units, one lesion
mask on the same grid, and optionally ``lesion_types.csv``. Patient keys are pseudonymous; nothing
identifying is read or written.

Every problem is a :class:`CohortError` naming the case. Problems of the tables themselves (a
missing column, a case listed twice, one file claimed by two patients) always stop ingestion;
problems of one case (an unreadable or truncated file, a 2D image, a mask on another grid, an empty
mask, NaN or impossible CT numbers, a path outside the cohort folder, an unknown lesion type)
stop it too, unless the run quarantines bad cases: then they are set aside and reported.

Each CT and mask is decompressed once, here: while a case is in memory it is checked, segmented
if the run asks for automatic segmentation (``liverlesion.segmentation``, measured against the
reference masks at the same time), its lesions are numbered and each lesion's box is cut
(``liverlesion.crops``) with the largest margin a later step needs. ``segment_cases`` and
``liverlesion.patches.extract_cohort_patches`` are pure functions of those crops.
Cases are read in threads, one per core the process may use (in processes for the learned cascade).
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from liverlesion.contract import (
    CASE_COLUMNS,
    CASES_FILE,
    CASES_FILE_COLUMNS,
    DEFAULT_MASK_ENCODING,
    LESION_COLUMNS,
    LESION_TYPES_COLUMNS,
    LESION_TYPES_FILE,
    MASK_ENCODINGS,
    ContractError,
)
from liverlesion.crops import LesionCrop, LesionCrops, cut_crops
from liverlesion.imaging import check_hu, load_nifti
from liverlesion.lesions import crop_rows, instance_map, lesion_labels
from liverlesion.parallel import usable_cpus
from liverlesion.progress import Progress, report_progress
from liverlesion.segmentation import (
    SEGMENTATION_CASE_COLUMNS,
    SEGMENTATION_LESION_COLUMNS,
    SegmentSettings,
    automatic_segmentation,
    compare_to_reference,
    load_cascade,
)

QUARANTINE_COLUMNS = ("case_id", "patient_key", "problem")


class CohortError(ContractError):
    """The cohort folder breaks the data contract; the message names the case and the problem."""


@dataclass(frozen=True)
class Ingested:
    cases: pd.DataFrame  # contract.CASE_COLUMNS, the cases that passed
    lesion_types: pd.DataFrame  # contract.LESION_TYPES_COLUMNS, of the cases that passed
    quarantined: pd.DataFrame  # QUARANTINE_COLUMNS, the cases set aside (empty unless quarantining)
    crops: LesionCrops  # every lesion of the cases that passed, cut with the asked margin
    segmentation_cases: pd.DataFrame  # segmentation.SEGMENTATION_CASE_COLUMNS (empty for reference masks)
    segmentation_lesions: pd.DataFrame  # segmentation.SEGMENTATION_LESION_COLUMNS (empty for reference masks)


def contained_path(root: Path, relative: str, what: str) -> Path:
    """``root / relative``, refused if it leads outside ``root`` (an absolute path, ``..``, a link).

    Raises:
        ContractError: naming ``what`` and the path.
    """
    root = Path(root).resolve()
    path = (root / str(relative)).resolve()
    if not path.is_relative_to(root):
        raise ContractError(f"{what}: path {relative!r} leads outside the data root {root}")
    return path


def read_case_table(data_dir: str | Path) -> pd.DataFrame:
    """``cases.csv`` checked as a table: columns, one row per case, one patient per file and case.

    Raises:
        CohortError: missing file or columns, an unknown mask encoding, a duplicated case id,
            or a patient key clash (one case or one image listed under two patient keys).
    """
    data_dir = Path(data_dir)
    table_path = data_dir / CASES_FILE
    if not table_path.exists():
        raise CohortError(f"{data_dir}: no {CASES_FILE}; the cohort folder needs one (see the README's data contract)")
    table = pd.read_csv(table_path, dtype=str, keep_default_na=False)
    missing = [c for c in CASES_FILE_COLUMNS if c not in table.columns]
    if missing:
        raise CohortError(f"{table_path}: missing column(s) {missing}; required: {list(CASES_FILE_COLUMNS)}")
    if "mask_encoding" not in table.columns:
        table["mask_encoding"] = DEFAULT_MASK_ENCODING
    if "liver_mask" not in table.columns:
        table["liver_mask"] = ""
    table["mask_encoding"] = table["mask_encoding"].replace("", DEFAULT_MASK_ENCODING)
    problems = []
    for column in ("patient_key", "case_id", "image", "mask"):
        empty = table.index[table[column].str.strip() == ""].tolist()
        if empty:
            problems.append(f"empty {column} in row(s) {[i + 2 for i in empty]} (counting the header as line 1)")
    bad_encoding = table.loc[~table["mask_encoding"].isin(MASK_ENCODINGS), ["case_id", "mask_encoding"]]
    problems += [
        f"case {r.case_id}: unknown mask_encoding {r.mask_encoding!r}; one of {list(MASK_ENCODINGS)}"
        for r in bad_encoding.itertuples()
    ]
    duplicated = sorted(set(table.loc[table["case_id"].duplicated(), "case_id"]))
    if duplicated:
        problems.append(f"duplicated case_id(s) {duplicated}: one row per CT")
    for column in ("image", "case_id"):
        owners = table.groupby(table[column])["patient_key"].nunique()
        for value in owners[owners > 1].index:
            keys = sorted(set(table.loc[table[column] == value, "patient_key"]))
            problems.append(f"patient key clash: {column} {value!r} is listed under patient keys {keys}")
    if problems:
        raise CohortError(f"{table_path} breaks the data contract:\n  " + "\n  ".join(problems))
    return table


def read_lesion_types(data_dir: str | Path, case_ids: set[str]) -> dict[str, dict[int, str]]:
    """``lesion_types.csv`` (if present) as case id -> {lesion number: type}.

    Raises:
        CohortError: missing columns, a case not in ``cases.csv``, a lesion number that is not a
            positive integer, or a lesion typed twice.
    """
    path = Path(data_dir) / LESION_TYPES_FILE
    if not path.exists():
        return {}
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in LESION_TYPES_COLUMNS if c not in table.columns]
    if missing:
        raise CohortError(f"{path}: missing column(s) {missing}; required: {list(LESION_TYPES_COLUMNS)}")
    problems = []
    unknown = sorted(set(table["case_id"]) - case_ids)
    if unknown:
        problems.append(f"case(s) {unknown} are not in {CASES_FILE}")
    numbers = pd.to_numeric(table["lesion"], errors="coerce")
    bad = table.loc[numbers.isna() | (numbers < 1) | (numbers != numbers.round()), ["case_id", "lesion"]]
    problems += [f"case {r.case_id}: lesion {r.lesion!r} is not a lesion number (1, 2, ...)" for r in bad.itertuples()]
    if problems:
        raise CohortError(f"{path} breaks the data contract:\n  " + "\n  ".join(problems))
    table["lesion"] = numbers.astype(int)
    twice = table.loc[table.duplicated(["case_id", "lesion"]), ["case_id", "lesion"]]
    if not twice.empty:
        raise CohortError(
            f"{path}: lesion(s) typed twice: "
            + ", ".join(f"case {r.case_id} lesion {r.lesion}" for r in twice.itertuples())
        )
    return types_by_case(table)


def _read_on_grid(path: Path, meta, where: str, what: str) -> np.ndarray:
    """A mask that must lie on the CT's own voxels."""
    try:
        mask, mask_meta = load_nifti(path)
    except ContractError as err:
        raise ContractError(f"{where}: {err}") from None
    if mask.shape != meta.shape or not np.allclose(mask_meta.affine, meta.affine, atol=1e-3):
        raise ContractError(
            f"{where}: {what} grid {mask.shape} differs from CT grid {meta.shape} (or their "
            "affines differ: the mask must lie on the CT's own voxels)"
        )
    return mask


def _check_case(
    data_dir: Path,
    case: dict,
    types: dict[int, str],
    data_version: str,
    crop_margin_mm: float,
    segment: SegmentSettings | None,
    cascade_dir: str | None,
) -> tuple[dict, list[LesionCrop], dict | None, list[dict]]:
    """Read one case, check it against the contract, segment it if asked, and cut its lesions' crops.

    With an automatic ``segment`` method the lesions are the automatic ones, each labelled by the
    reference lesion that holds most of it (none: invented), and the case is measured against its
    reference masks (``segmentation.compare_to_reference``).

    Returns:
        Its row of the case table, its crops, and its segmentation measures (case row, lesion rows;
        None and [] for ``reference``).

    Raises:
        ContractError: the first problem of this case, naming it.
    """
    case_id = case["case_id"]
    where = f"case {case_id}"
    image_path = contained_path(data_dir, case["image"], f"{where}, image")
    mask_path = contained_path(data_dir, case["mask"], f"{where}, mask")
    liver_path = (
        contained_path(data_dir, case["liver_mask"], f"{where}, liver mask") if case.get("liver_mask") else None
    )
    try:
        image, meta = load_nifti(image_path)
    except ContractError as err:
        raise ContractError(f"{where}: {err}") from None
    mask = _read_on_grid(mask_path, meta, where, "mask")
    hu, _ = check_hu(image, where)
    if not np.any(mask):
        raise ContractError(f"{where}: its mask holds no lesion")
    instances, described = instance_map(mask, case_id, case["mask_encoding"])
    labels = lesion_labels(described, types, case_id)  # an unknown type or a stray lesion number is this case's problem
    row = {
        "patient_key": str(case["patient_key"]),
        "case_id": str(case_id),
        "image_path": str(image_path),
        "mask_path": str(mask_path),
        "mask_encoding": case["mask_encoding"],
        "liver_mask_path": str(liver_path) if liver_path else "",
        **{f"spacing_{a}": meta.spacing[a] for a in range(3)},
        **{f"shape_{a}": meta.shape[a] for a in range(3)},
        "orientation": meta.orientation,
        "hu_min": float(hu.min()),
        "hu_max": float(hu.max()),
        "data_version": data_version,
    }
    if segment is None or not segment.automatic:
        return row, cut_crops(hu, instances, described, meta.spacing, str(case_id), crop_margin_mm), None, []
    liver = _read_on_grid(liver_path, meta, where, "liver mask") != 0 if liver_path else None
    started = time.perf_counter()
    automatic = automatic_segmentation(hu, meta.spacing, segment, load_cascade(cascade_dir))
    auto_instances, auto_described = instance_map(automatic.lesions.astype(np.uint8), case_id, "binary")
    measures, lesion_rows_, auto_labels = compare_to_reference(
        str(case_id),
        str(case["patient_key"]),
        segment.method,
        meta.spacing,
        automatic,
        auto_instances,
        instances,
        labels,
        liver,
        segment.detection_dice,
        time.perf_counter() - started,
        outside_liver_mm=segment.outside_liver_mm,
    )
    for lesion in auto_described:
        lesion["label"] = auto_labels[lesion["instance"]]
    crops = cut_crops(hu, auto_instances, auto_described, meta.spacing, str(case_id), crop_margin_mm)
    return row, crops, measures, lesion_rows_


def _check_case_job(args: tuple) -> tuple[dict, list[LesionCrop], dict | None, list[dict]] | str:
    """``_check_case`` in a worker (thread or process): a contract problem comes back as its message."""
    try:
        return _check_case(*args)
    except ContractError as err:
        return str(err)


def ingest_cases(
    data_dir: str | Path,
    data_version: str,
    progress: Progress = None,
    quarantine: bool = False,
    crop_margin_mm: float = 0.0,
    workers: int | None = None,
    segment: SegmentSettings | None = None,
    cascade_dir: str | None = None,
) -> Ingested:
    """Read every case once (canonical RAS orientation): check it, record its geometry, cut its lesions.

    Args:
        segment: where the lesions come from (default: the reference masks); an automatic method
            segments each CT here, while it is in memory, and measures it against the reference.
        cascade_dir: the learned cascade's folder (``segnet.Cascade.save``), for ``learned``.
        quarantine: set bad cases aside (listed in ``Ingested.quarantined``) instead of stopping.
        crop_margin_mm: the margin around each lesion's box that the crops keep (the largest any
            later step needs: the patch margin).
        workers: cases read at once (default: one per core this process may use; 1 reads here, one case after
            another): threads, or processes for the learned cascade. The result does not depend on it.

    Raises:
        CohortError: a problem of the tables; or of any case unless ``quarantine``, listing every
            bad case; or no case left at all.
    """
    data_dir = Path(data_dir)
    table = read_case_table(data_dir)
    types = read_lesion_types(data_dir, set(table["case_id"]))
    cases = table.to_dict("records")
    if segment is not None and segment.method == "learned" and cascade_dir is None:
        raise ValueError("segment method learned needs the cascade's folder (cascade_dir)")
    jobs = [
        (data_dir, case, types.get(case["case_id"], {}), data_version, crop_margin_mm, segment, cascade_dir)
        for case in cases
    ]
    workers = min(workers or usable_cpus(), len(jobs))
    rows, crops, problems, measured, outcomes = [], [], [], [], []

    def collect(results):
        for i, (case, result) in enumerate(zip(cases, results), start=1):
            if isinstance(result, str):
                problems.append({"case_id": case["case_id"], "patient_key": case["patient_key"], "problem": result})
            else:
                rows.append(result[0])
                crops.extend(result[1])
                if result[2] is not None:
                    measured.append(result[2])
                outcomes.extend(result[3])
            report_progress(progress, i, len(cases), str(case["case_id"]))

    if workers <= 1:
        collect(map(_check_case_job, jobs))
    elif cascade_dir is not None:
        # processes: each loads the cascade once and runs its networks alone (a Keras model's predict is not made
        # to be called from two threads at once); spawn: the step's process may hold threads (ZenML, TensorFlow)
        # that fork would copy half-way
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            collect(pool.map(_check_case_job, jobs))
    else:
        # threads: decompressing and the array work of the checks and the classical method leave the interpreter
        # free, and no process has to start and import (about a second each): on 2 cores the default cohort read
        # in 1.7 s (processes 2.7-3.0, one after another 2.6-2.8), the tiny one in 0.15 s (processes 1.3, one 0.2)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            collect(pool.map(_check_case_job, jobs))
    if problems and not quarantine:
        raise CohortError(
            f"{len(problems)} case(s) of {data_dir} break the data contract:\n  "
            + "\n  ".join(p["problem"] for p in problems)
        )
    if not rows:
        raise CohortError(f"{data_dir}: no case is left to ingest ({len(problems)} quarantined)")
    kept = [row["case_id"] for row in rows]
    type_rows = [(case, lesion, kind) for case in kept for lesion, kind in sorted(types.get(case, {}).items())]
    return Ingested(
        pd.DataFrame(rows, columns=list(CASE_COLUMNS)),
        pd.DataFrame(type_rows, columns=list(LESION_TYPES_COLUMNS)),
        pd.DataFrame(problems, columns=list(QUARANTINE_COLUMNS)),
        LesionCrops(crops, crop_margin_mm, source=segment.method if segment is not None else "reference"),
        pd.DataFrame(measured, columns=list(SEGMENTATION_CASE_COLUMNS)),
        pd.DataFrame(outcomes, columns=list(SEGMENTATION_LESION_COLUMNS)),
    )


def types_by_case(lesion_types: pd.DataFrame) -> dict[str, dict[int, str]]:
    """A lesion-type table (``contract.LESION_TYPES_COLUMNS``) as case id -> {lesion number: type}."""
    types: dict[str, dict[int, str]] = {}
    for row in lesion_types.itertuples(index=False):
        types.setdefault(row.case_id, {})[int(row.lesion)] = row.type
    return types


def segment_cases(
    cases: pd.DataFrame, crops: LesionCrops, types: dict[str, dict[int, str]] | None = None, progress: Progress = None
) -> pd.DataFrame:
    """The lesion table from the ingested crops: one row per lesion, labelled where the type is known.

    Args:
        crops: ``ingest_cases``'s crops of these cases: of the reference masks, or of an automatic
            segmentation (``crops.source``), whose lesions already carry their reference lesion's label.
        types: case id -> {lesion number: type} (``read_lesion_types``), for reference masks that
            are not class-coded.

    Raises:
        CohortError: a case's reference mask has no lesion, an unknown lesion type, naming the case.
    """
    tables = []
    automatic = crops.source != "reference"
    types = {} if automatic else (types or {})
    for i, case in enumerate(cases.itertuples(index=False), start=1):
        found = sorted(crops.of_case(case.case_id), key=lambda c: c.instance)
        if not found and not automatic:  # an automatic segmentation may find nothing: its measures count that
            raise CohortError(f"case {case.case_id}: its mask holds no lesion")
        described = [{"instance": c.instance, "label": c.mask_label} for c in found]
        labels = lesion_labels(described, types.get(case.case_id, {}), case.case_id)
        tables.append(crop_rows(found, case.patient_key, labels))
        report_progress(progress, i, len(cases), case.case_id)
    table = pd.concat(tables, ignore_index=True)[list(LESION_COLUMNS)]
    table["label"] = table["label"].astype("Int64")
    return table


def labelled_lesions(lesions: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the lesion table into the lesions with a known type (int labels) and those without."""
    known = lesions["label"].notna()
    labelled = lesions[known].reset_index(drop=True)
    labelled = labelled.astype({"label": np.int64})
    return labelled, lesions[~known].reset_index(drop=True)
