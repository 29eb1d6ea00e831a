"""Cohort ingestion and the per-case loops of ``segment`` and ``extract_patches``.

The cohort contract (``data/``, see the README's "Data contract"): ``cases.csv`` with columns
``patient_key, case_id, image, mask`` (paths relative to the folder), one CT per case as NIfTI in
Hounsfield units and one class-coded lesion mask (0 background, 1 cyst, 2 metastasis) on the same
grid. Patient keys are pseudonymous; nothing identifying is read or written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from liverlesion.imaging import load_nifti
from liverlesion.lesions import LESION_COLUMNS, bounding_box, instance_map, lesion_instances
from liverlesion.patches import lesion_patches

Progress = Callable[[int, int, str], None] | None
CASES_FILE = "cases.csv"
REQUIRED_CASE_COLUMNS = ("patient_key", "case_id", "image", "mask")
CASE_COLUMNS = [
    "patient_key", "case_id", "image_path", "mask_path",
    "spacing_0", "spacing_1", "spacing_2", "shape_0", "shape_1", "shape_2",
    "orientation", "hu_min", "hu_max", "data_version",
]


class CohortError(ValueError):
    """The cohort folder breaks the data contract; the message names the case and the problem."""


def _report(progress: Progress, i: int, n: int, case_id: str) -> None:
    if progress is not None:
        progress(i, n, case_id)


def ingest_cases(data_dir: str | Path, data_version: str, progress: Progress = None) -> pd.DataFrame:
    """Load every case (canonical RAS orientation) and record its geometry and the data version.

    Raises:
        CohortError: missing ``cases.csv`` or columns, duplicate case ids, a missing or unreadable
            file, or a mask whose grid differs from its CT; every problem found is listed.
    """
    data_dir = Path(data_dir)
    table_path = data_dir / CASES_FILE
    if not table_path.exists():
        raise CohortError(f"{data_dir}: no {CASES_FILE}; the cohort folder needs one (see the README's data contract)")
    table = pd.read_csv(table_path, dtype={"patient_key": str, "case_id": str})
    missing = [c for c in REQUIRED_CASE_COLUMNS if c not in table.columns]
    if missing:
        raise CohortError(f"{table_path}: missing column(s) {missing}; required: {list(REQUIRED_CASE_COLUMNS)}")
    duplicated = table.loc[table["case_id"].duplicated(), "case_id"].tolist()
    if duplicated:
        raise CohortError(f"{table_path}: duplicated case_id(s) {duplicated}")

    rows, problems = [], []
    for i, case in enumerate(table.itertuples(index=False), start=1):
        image_path, mask_path = data_dir / case.image, data_dir / case.mask
        try:
            image, meta = load_nifti(image_path)
            mask, mask_meta = load_nifti(mask_path)
        except (FileNotFoundError, OSError, ValueError, EOFError) as err:
            problems.append(f"case {case.case_id}: cannot read its image or mask: {err}")
            continue
        if mask.shape != image.shape or not np.allclose(mask_meta.affine, meta.affine, atol=1e-3):
            problems.append(
                f"case {case.case_id}: mask grid {mask.shape} differs from CT grid {image.shape} (or their affines differ)"
            )
            continue
        rows.append(
            {
                "patient_key": str(case.patient_key),
                "case_id": str(case.case_id),
                "image_path": str(image_path.resolve()),
                "mask_path": str(mask_path.resolve()),
                **{f"spacing_{a}": meta.spacing[a] for a in range(3)},
                **{f"shape_{a}": meta.shape[a] for a in range(3)},
                "orientation": meta.orientation,
                "hu_min": float(image.min()),
                "hu_max": float(image.max()),
                "data_version": data_version,
            }
        )
        _report(progress, i, len(table), str(case.case_id))
    if problems:
        raise CohortError(f"{len(problems)} case(s) of {data_dir} break the data contract:\n  " + "\n  ".join(problems))
    return pd.DataFrame(rows, columns=CASE_COLUMNS)


def _load_case(case) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    image, meta = load_nifti(case.image_path, dtype=np.float32)
    mask, _ = load_nifti(case.mask_path)
    return image, np.asarray(mask).astype(np.int16), meta.spacing


def segment_cases(cases: pd.DataFrame, progress: Progress = None) -> pd.DataFrame:
    """The lesion table from the reference masks: one row per 3D connected component.

    Raises:
        CohortError: a case has no lesion or an unknown mask code, naming the case.
    """
    tables = []
    for i, case in enumerate(cases.itertuples(index=False), start=1):
        image, mask, spacing = _load_case(case)
        try:
            table = lesion_instances(mask, image, spacing, case.case_id, case.patient_key)
        except ValueError as err:
            raise CohortError(str(err)) from err
        if table.empty:
            raise CohortError(f"case {case.case_id}: its mask holds no lesion")
        tables.append(table)
        _report(progress, i, len(cases), case.case_id)
    return pd.concat(tables, ignore_index=True)[LESION_COLUMNS]


def extract_cohort_patches(
    cases: pd.DataFrame,
    lesions: pd.DataFrame,
    margin_mm: float,
    canvas: tuple[int, int],
    output_size: tuple[int, int] | None,
    square_pixels: bool = True,
    progress: Progress = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Three orthogonal patches for every lesion, in lesion-table order.

    Returns:
        ``patches`` (N, rows, cols, 3) float32 and the patch index (``lesion_id``, ``row`` and how
        each stack was cut).
    """
    size = tuple(output_size or canvas)
    patches = np.zeros((len(lesions), *size, 3), dtype=np.float32)
    index_rows = []
    row_of = {lesion_id: row for row, lesion_id in enumerate(lesions["lesion_id"])}
    by_case = lesions.groupby("case_id", sort=False)
    for i, case in enumerate(cases.itertuples(index=False), start=1):
        if case.case_id not in by_case.groups:
            continue
        image, mask, spacing = _load_case(case)
        instances, _ = instance_map(mask, case.case_id)
        margin = np.ceil(margin_mm / np.asarray(spacing)).astype(int)
        for lesion in by_case.get_group(case.case_id).itertuples(index=False):
            # cut around the lesion first: the patch geometry then never scans the whole volume
            box = bounding_box(lesion._asdict(), margin)
            lo = [b.start for b in box]
            stack, info = lesion_patches(
                image[box], instances[box] == lesion.instance, spacing, margin_mm, canvas, output_size, square_pixels
            )
            info = replace(info, main_slice=info.main_slice + lo[info.main_axis],
                           center_0=info.center_0 + lo[0], center_1=info.center_1 + lo[1], center_2=info.center_2 + lo[2])
            row = row_of[lesion.lesion_id]
            patches[row] = stack
            index_rows.append({"lesion_id": lesion.lesion_id, "row": row, **info.as_row()})
        _report(progress, i, len(cases), case.case_id)
    index = pd.DataFrame(index_rows).sort_values("row").reset_index(drop=True)
    return patches, index
