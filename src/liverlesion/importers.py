"""Importers: a hospital's or a public dataset's files in, a canonical, de-identified cohort folder out.

Every layout is read into the same thing, one :class:`SourceCase` per CT (a CT in Hounsfield
units on canonical RAS+ axes, its lesions numbered in an instance mask, and the lesions' types where
known), and :func:`import_cohort` writes them in the contract's form (``liverlesion.contract``):
``images/<case>.nii.gz`` (int16 HU), ``masks/<case>.nii.gz`` (instance mask), ``cases.csv``,
``lesion_types.csv`` and ``cohort.json``; and where the source has the liver's own mask (LiTS and Decathlon
labels, an IRCADb ``liver`` structure, a DICOM-SEG ``Liver`` segment, a manifest's or cohort's ``liver_mask``),
``livers/<case>.nii.gz`` with the lesions inside it, listed as ``liver_mask``: what automatic segmentation is
trained and measured against. Patient and case keys are keyed-hash pseudonyms
(``liverlesion.deid``); no header, path or name of the source is written. The cohort folder, not the
raw files, is what DVC, ZenML and MLflow see.

Layouts (``LAYOUTS``):

| layout | source |
| --- | --- |
| ``manifest`` | a biobank's CSV (``patient_id, case, image, mask`` and optionally ``mask_encoding``, ``liver_mask``), paths relative to its folder (or a data root); NIfTI |
| ``lits`` | LiTS: ``volume-N.nii[.gz]`` + ``segmentation-N.nii[.gz]`` (0 background, 1 liver, 2 tumour) |
| ``msd`` | Medical Segmentation Decathlon (Task03 liver, Task08 hepatic vessel): ``imagesTr/``, ``labelsTr/``, ``dataset.json`` (the tumour label found by name); ``._*`` files skipped |
| ``dicom-seg`` | DICOM CT series, each with a DICOM-SEG whose segments are lesions, named by a segment-name map |
| ``crlm`` | TCIA Colorectal-Liver-Metastases: ``dicom-seg`` whose ``Tumor_n`` segments are metastases |
| ``ircadb`` | 3D-IRCADb-01: ``3Dircadb1.N/PATIENT_DICOM/`` + ``MASKS_DICOM/<structure>/``, structures by a name map |
| ``cohort`` | a cohort folder in this project's contract (``cases.csv``, ``lesion_types.csv``; e.g. written by ``liverlesion generate`` or ``import --out``): new cases to add to ``data/`` |

Lesion types come from the layout (a segment or structure name map) or from a types table
(``case, lesion, type``; ``case`` as the source names it, ``lesion`` numbered as
``lesions.instance_map`` numbers the mask's lesions), or ``default_type``; a lesion with none is
imported without a type (usable at inference, left out of training, and counted).
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import io
import json
import os
import re
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from liverlesion.contract import (
    CASES_FILE,
    COHORT_FILE,
    IMAGES_DIR,
    LABEL_NAMES,
    LESION_TYPES,
    LESION_TYPES_COLUMNS,
    LESION_TYPES_FILE,
    LIVERS_DIR,
    MASK_ENCODINGS,
    MASKS_DIR,
    ContractError,
    shown,
    source_label,
    source_named_as,
)
from liverlesion.deid import Pseudonymiser, deidentification_record
from liverlesion.imaging import ImageMeta, check_hu, load_nifti, save_nifti
from liverlesion.ingestion import contained_path, read_case_table, read_lesion_types
from liverlesion.lesions import instance_map, labels_present, lesion_labels

Progress = Callable[[int, int, str], None] | None
IMPORTER_VERSION = "1.1.0"  # 1.1: the source's liver masks kept (``liver_mask``)
#: a type in a name map that means "not a lesion to classify" (organs, vessels, resection beds)
IGNORE = "ignore"
LAYOUTS = ("manifest", "lits", "msd", "dicom-seg", "crlm", "ircadb", "cohort")

#: 3D-IRCADb-01 structure folders (lower case, glob): tumours and cysts of the liver. Everything
#: else is not a liver lesion or not one to classify: organs and vessels, ``surretumor`` (adrenal
#: tumour), ``tumor`` in some patients (adrenal), ``metastasectomie`` (a resection bed).
#: Its tumours are not all colorectal metastases (some are primary liver tumours).
IRCADB_NAME_MAP = {"livertumor*": "metastasis", "liverkyst*": "cyst", "livercyst*": "cyst"}
#: TCIA Colorectal-Liver-Metastases DICOM-SEG segments: ``Tumor_n`` are metastases; ``Liver``,
#: ``Liver Remnant``, ``Hepatic`` and ``Portal`` (veins) are not lesions
CRLM_NAME_MAP = {"tumor*": "metastasis"}
#: a generic DICOM-SEG: tumour or metastasis segments are metastases, cyst segments cysts
DICOM_SEG_NAME_MAP = {"*metast*": "metastasis", "tumo*r*": "metastasis", "*cyst*": "cyst", "*kyst*": "cyst"}
#: DICOM-SEG segments that are anatomy, not lesions (``liverlesion predict`` skips them)
NON_LESION_SEGMENTS = {
    name: IGNORE
    for name in (
        "liver*",
        "hepatic*",
        "portal*",
        "*vein*",
        "*vessel*",
        "*artery*",
        "spleen*",
        "kidney*",
        "gallbladder*",
        "pancreas*",
        "body*",
    )
}
#: LiTS and the Decathlon's liver / hepatic-vessel tasks: the tumour label
LITS_TUMOUR_LABEL = 2
#: LiTS: the liver label (its tumours, label 2, lie inside the liver too)
LITS_LIVER_LABEL = 1
#: the names a liver's own mask goes by: an IRCADb structure folder, a DICOM-SEG segment (CRLM's ``Liver``), a
#: Decathlon label; it becomes the cohort's ``liver_mask`` (``Liver Remnant`` and the like are not the liver)
LIVER_NAMES = ("liver", "liver parenchyma", "whole liver")
_NIFTI = re.compile(r"\.nii(\.gz)?$")


@dataclass
class CaseData:
    """One CT read from a source: canonical HU, geometry, an instance mask, the lesions' types."""

    hu: np.ndarray
    meta: ImageMeta
    instances: np.ndarray  # int32, 0 background, k = lesion k
    types: dict[int, str]  # lesion number -> contract type; lesions without one have no type
    padding_voxels: int = 0  # scanner padding outside the field of view, set to air by ``check_hu``
    notes: list[str] = field(default_factory=list)  # e.g. structures skipped (by position under an import's label)
    liver: np.ndarray | None = None  # bool, the source's own liver mask where it has one
    structures: list[str] = field(default_factory=list)  # the source's structure / segment names, in order


@dataclass(frozen=True)
class SourceCase:
    """A CT of the source before it is read: identifiers for pseudonyms (never written) and a reader."""

    patient: str
    case: str
    where: str  # the case in the source (its path): the source map's, never a message's on import
    read: Callable[[], CaseData]


@dataclass
class ImportReport:
    out: Path
    layout: str
    imported: list[dict]  # case_id, patient_key, lesions, typed, per type
    refused: list[str]  # "<where>: <problem>"
    notes: list[str]

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "layout": self.layout,
            "imported": self.imported,
            "refused": self.refused,
            "notes": self.notes,
            "cases": len(self.imported),
            "lesions": sum(c["lesions"] for c in self.imported),
        }


# --- name maps and type tables ------------------------------------------------------------------


def match_name(name: str, name_map: dict[str, str]) -> str | None:
    """The type a structure or segment name maps to (first matching glob, case-insensitive), or None."""
    lowered = name.strip().lower()
    for pattern, kind in name_map.items():
        if fnmatch.fnmatchcase(lowered, pattern.lower()):
            return kind
    return None


def is_liver(name: str) -> bool:
    """Whether a structure, segment or label name is the liver itself (``LIVER_NAMES``, case and ``_`` ignored)."""
    return " ".join(name.replace("_", " ").strip().lower().split()) in LIVER_NAMES


def check_name_map(name_map: dict[str, str]) -> dict[str, str]:
    """Refuse a map to a type the contract does not know."""
    bad = {p: t for p, t in name_map.items() if t != IGNORE and t not in LESION_TYPES}
    if bad:
        raise ContractError(f"name map: unknown type(s) {bad}; known types: {sorted(LESION_TYPES)} or {IGNORE!r}")
    return dict(name_map)


def read_types_table(path: Path | None) -> dict[str, dict[int, str]]:
    """A types table (``case, lesion, type``) as source case -> {lesion number: type}."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise ContractError(f"{path}: no such types table")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("case", "lesion", "type") if c not in table.columns]
    if missing:
        raise ContractError(f"{path}: missing column(s) {missing}; a types table has case, lesion, type")
    types: dict[str, dict[int, str]] = {}
    for row in table.itertuples(index=False):
        if not row.lesion.strip().isdigit() or int(row.lesion) < 1:
            raise ContractError(f"{path}: case {row.case}: lesion {row.lesion!r} is not a lesion number (1, 2, ...)")
        types.setdefault(row.case.strip(), {})[int(row.lesion)] = row.type.strip()
    return types


def _types_for(
    instances_found: list[dict], given: dict[int, str], default_type: str | None, where: str
) -> dict[int, str]:
    """Each lesion's type: from the table or a class-coded mask, else the default; unknown types and stray
    lesion numbers refused."""
    labels = lesion_labels(instances_found, given, where)  # raises on an unknown type or a stray lesion
    types = {k: LABEL_NAMES[label] for k, label in labels.items() if label is not None}  # table or class code
    if default_type is not None:
        for k in labels:
            types.setdefault(k, default_type)
    return types


def _components_as_instances(binary: np.ndarray, where: str) -> tuple[np.ndarray, list[dict]]:
    return instance_map(binary.astype(np.uint8), where, "binary")


# --- NIfTI layouts ------------------------------------------------------------------------------


def _nifti_case(
    image: Path,
    mask: Path,
    where: str,
    to_instances: Callable[[np.ndarray], tuple[np.ndarray, list[dict]]],
    given: dict[int, str],
    default_type: str | None,
    liver_of: Callable[[np.ndarray], np.ndarray] | None = None,
    liver_file: Path | None = None,
) -> CaseData:
    """One NIfTI CT with its lesion mask; its liver from the same label file (``liver_of``) or its own file."""
    hu, meta = load_nifti(image)
    mask_array = _on_grid(mask, meta, hu.shape, where, "mask")
    hu, padding = check_hu(hu, where)
    instances, found = to_instances(mask_array)
    liver = liver_of(mask_array) if liver_of is not None else None
    if liver_file is not None:
        liver = _on_grid(liver_file, meta, hu.shape, where, "liver mask") != 0
    return CaseData(hu, meta, instances, _types_for(found, given, default_type, where), padding, liver=liver)


def _on_grid(path: Path, meta: ImageMeta, shape, where: str, what: str) -> np.ndarray:
    array, its_meta = load_nifti(path)
    if array.shape != shape or not np.allclose(its_meta.affine, meta.affine, atol=1e-3):
        raise ContractError(
            f"{where}: {what} grid {array.shape} differs from CT grid {shape} (or their affines "
            "differ: the mask must lie on the CT's own voxels)"
        )
    return array


def scan_manifest(
    manifest: Path,
    root: Path | None = None,
    types: dict[str, dict[int, str]] | None = None,
    default_type: str | None = None,
) -> list[SourceCase]:
    """A biobank's manifest CSV: ``patient_id, case, image, mask`` [``mask_encoding``], NIfTI paths relative to
    ``root``.

    Raises:
        ContractError: missing columns, a case listed twice, a path outside the root.
    """
    manifest = Path(manifest)
    root = Path(root) if root is not None else manifest.parent
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    required = ("patient_id", "case", "image", "mask")
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ContractError(
            f"{manifest}: missing column(s) {missing}; a manifest has {list(required)} and optionally mask_encoding "
            "and liver_mask"
        )
    twice = sorted(set(table.loc[table["case"].duplicated(), "case"]))
    if twice:
        raise ContractError(f"{manifest}: duplicated case(s) {twice}")
    cases = []
    for row in table.itertuples(index=False):
        where = f"{manifest.name}: case {row.case}"
        encoding = (getattr(row, "mask_encoding", "") or "class").strip()
        if encoding not in MASK_ENCODINGS:
            raise ContractError(f"{where}: unknown mask_encoding {encoding!r}; one of {list(MASK_ENCODINGS)}")
        cases.append(
            _nifti_source(
                root,
                row.patient_id,
                row.case,
                row.image,
                row.mask,
                encoding,
                where,
                (types or {}).get(row.case, {}),
                default_type,
                (getattr(row, "liver_mask", "") or "").strip(),
            )
        )
    return cases


def _nifti_source(
    root: Path,
    patient: str,
    case: str,
    image: str,
    mask: str,
    encoding: str,
    where: str,
    types: dict[int, str],
    default_type: str | None,
    liver_mask: str = "",
) -> SourceCase:
    """One NIfTI CT and its mask (and liver mask, where listed) in a table (paths relative to ``root``, kept
    inside it)."""
    image_path = contained_path(root, image, f"{where}, image")
    mask_path = contained_path(root, mask, f"{where}, mask")
    liver_path = contained_path(root, liver_mask, f"{where}, liver mask") if liver_mask else None

    def read() -> CaseData:
        named = shown(where)
        return _nifti_case(
            image_path,
            mask_path,
            named,
            lambda array: instance_map(array, named, encoding),
            types,
            default_type,
            liver_file=liver_path,
        )

    return SourceCase(patient=patient, case=case, where=where, read=read)


def scan_cohort(folder: Path, default_type: str | None = None) -> list[SourceCase]:
    """A cohort folder in this project's contract: its ``cases.csv`` and ``lesion_types.csv`` as they are
    (the keys are pseudonymised again on import, like any source's).

    Raises:
        ContractError: the folder breaks the contract (``ingestion.read_case_table``).
    """
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    table = read_case_table(folder)
    types = read_lesion_types(folder, set(table["case_id"]))
    return [
        _nifti_source(
            folder,
            row.patient_key,
            row.case_id,
            row.image,
            row.mask,
            row.mask_encoding,
            f"{folder.name}: case {row.case_id}",
            types.get(row.case_id, {}),
            default_type,
            row.liver_mask,
        )
        for row in table.itertuples(index=False)
    ]


def _tumour_reader(
    image: Path,
    label: Path,
    where: str,
    tumour: int,
    given: dict[int, str],
    default_type: str | None,
    liver: int | None,
) -> Callable[[], CaseData]:
    """A label volume's tumour components as lesions; its liver label and the tumours in it as the liver."""

    def read() -> CaseData:
        named = shown(where)
        return _nifti_case(
            image,
            label,
            named,
            lambda a: _components_as_instances(np.asarray(a) == tumour, named),
            given,
            default_type,
            liver_of=None if liver is None else (lambda a: np.isin(np.asarray(a), (liver, tumour))),
        )

    return read


def scan_lits(
    folder: Path, types: dict[str, dict[int, str]] | None = None, default_type: str | None = None
) -> list[SourceCase]:
    """LiTS: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]``; tumour (label 2) components are lesions.

    Each volume is its own patient (LiTS gives no patient ids). ``types`` keys: ``volume-N``.
    """
    folder = Path(folder)
    volumes = {}
    for path in sorted(folder.rglob("volume-*.nii*")):
        if path.name.startswith("._"):
            continue
        volumes[_NIFTI.sub("", path.name)] = path
    if not volumes:
        raise ContractError(f"{folder}: no LiTS volume-N.nii[.gz] files")
    cases = []
    for name, volume in sorted(
        volumes.items(), key=lambda kv: int(kv[0].split("-")[1]) if kv[0].split("-")[1].isdigit() else 0
    ):
        number = name.split("-", 1)[1]
        labels = [p for p in volume.parent.glob(f"segmentation-{number}.nii*") if not p.name.startswith("._")]
        if not labels:
            raise ContractError(f"{volume}: no segmentation-{number}.nii[.gz] beside it")
        cases.append(
            SourceCase(
                f"lits-{number}",
                name,
                str(volume),
                _tumour_reader(
                    volume,
                    labels[0],
                    str(volume),
                    LITS_TUMOUR_LABEL,
                    (types or {}).get(name, {}),
                    default_type,
                    LITS_LIVER_LABEL,
                ),
            )
        )
    return cases


def _msd_labels(dataset_json: Path) -> tuple[int, int | None]:
    """The Decathlon task's tumour label and liver label, by their names in ``dataset.json`` (Task03: 2 and 1;
    Task08, hepatic vessels: 2 and none); without the file, LiTS's."""
    if not dataset_json.exists():
        return LITS_TUMOUR_LABEL, LITS_LIVER_LABEL
    labels = json.loads(dataset_json.read_text()).get("labels", {})
    tumour = [int(key) for key, name in labels.items() if re.search(r"tumou?r|cancer|lesion", str(name), re.I)]
    if not tumour:
        raise ContractError(f"{dataset_json}: no tumour label among {labels}")
    liver = [int(key) for key, name in labels.items() if is_liver(str(name))]
    return tumour[0], liver[0] if liver else None


def scan_msd(
    folder: Path, types: dict[str, dict[int, str]] | None = None, default_type: str | None = None
) -> list[SourceCase]:
    """The Medical Segmentation Decathlon: ``imagesTr/X.nii.gz`` + ``labelsTr/X.nii.gz``; ``._*`` skipped."""
    folder = Path(folder)
    tumour, liver = _msd_labels(folder / "dataset.json")
    images = sorted(p for p in (folder / "imagesTr").glob("*.nii*") if not p.name.startswith("._"))
    if not images:
        raise ContractError(
            f"{folder}: no imagesTr/*.nii.gz (a Decathlon task folder has imagesTr/, labelsTr/, dataset.json)"
        )
    cases = []
    for image in images:
        name = _NIFTI.sub("", image.name)
        label = folder / "labelsTr" / image.name
        if not label.exists():
            raise ContractError(f"{image}: no labelsTr/{image.name}")
        cases.append(
            SourceCase(
                f"msd-{name}",
                name,
                str(image),
                _tumour_reader(image, label, str(image), tumour, (types or {}).get(name, {}), default_type, liver),
            )
        )
    return cases


# --- DICOM layouts ------------------------------------------------------------------------------


def stack_lesions(
    shape: tuple[int, ...], masks: Iterable[tuple[str, np.ndarray, str]], where: str, components: bool
) -> tuple[np.ndarray, dict[int, str]]:
    """Named lesion masks (name, mask, type) into one instance mask; overlapping lesions refused, named as given
    (``_named_lesions`` names them by position under an import's label)."""
    masks = list(masks)
    # in the masks' memory layout (the DICOM readers' Fortran order): across two layouts every voxel step strides
    instances = np.zeros(shape, dtype=np.int32, order="F" if masks and np.isfortran(masks[0][1]) else "C")
    types: dict[int, str] = {}
    owner: dict[int, str] = {}
    number = 0
    for name, mask, kind in masks:
        parts = [mask]
        if components:
            numbered, found = _components_as_instances(mask, where)
            parts = [numbered == d["instance"] for d in found]
        for part in parts:
            overlap = part & (instances > 0)
            if overlap.any():
                clash = np.unique(instances[overlap])
                raise ContractError(
                    f"{where}: lesion {name} overlaps {owner[int(clash[0])]}; a voxel belongs to one lesion"
                )
            number += 1
            np.copyto(instances, number, where=part)
            types[number] = kind
            owner[number] = name
    return instances, types


def _named_lesions(
    named: Sequence[tuple[str, Callable[[], np.ndarray]]], name_map: dict[str, str], what: str, unmatched: str
) -> tuple[list[tuple[str, np.ndarray, str]], list[str]]:
    """The masks whose names the map types as lesions, (how messages call it, mask, type); the others listed, not
    read."""
    kept, notes = [], []
    for position, (name, load) in enumerate(named, start=1):
        kind = match_name(name, name_map)
        # under an import's label, a structure by its position (the source map has its name): label texts are
        # free text, which can carry a patient's name
        called = f"{what} {position} of {len(named)}" if source_label() else f"{what} {name!r}"
        if is_liver(name) and kind in (None, IGNORE):
            notes.append(f"{called}: the liver, kept as the liver mask (not a lesion)")
            continue
        if kind is None or kind == IGNORE:
            notes.append(f"{called} {'ignored by the name map' if kind else unmatched}")
            continue
        mask = load()
        if mask.any():
            kept.append((called, mask, kind))
    return kept, notes


def _dicom_seg_reader(
    ct_files: Sequence[Path], seg: Path, where: str, name_map: dict[str, str]
) -> Callable[[], CaseData]:
    def read() -> CaseData:
        from liverlesion.dicomio import read_ct_series, read_seg

        series = read_ct_series(ct_files)
        segments = read_seg(seg, series)
        kept, notes = _named_lesions(
            [(label, lambda mask=mask: mask) for _, (label, mask) in sorted(segments.items())],
            name_map,
            "segment",
            "not in the name map: skipped",
        )
        instances, types = stack_lesions(series.hu.shape, kept, shown(where), components=False)
        livers = [mask for label, mask in segments.values() if is_liver(label)]
        liver = functools.reduce(np.logical_or, livers) if livers else None  # not stacked: layout kept
        names = [label for _, (label, _) in sorted(segments.items())]
        return CaseData(series.hu, series.meta, instances, types, series.padding_voxels, notes, liver, names)

    return read


def scan_dicom_seg(folder: Path, name_map: dict[str, str] | None = None) -> list[SourceCase]:
    """Every DICOM-SEG under ``folder`` with the CT series it references; segments named by ``name_map``."""
    import pydicom

    from liverlesion.dicomio import find_series, mask_uids

    folder = Path(folder)
    name_map = check_name_map(name_map or DICOM_SEG_NAME_MAP)
    series: dict[str, list[Path]] = {}  # find_series reads one folder; TCIA nests patient/study/series
    for sub in [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]:
        for uid, files in find_series(sub).items():
            series.setdefault(uid, []).extend(files)
    if not series:
        raise ContractError(f"{folder}: no DICOM files")
    headers = {uid: pydicom.dcmread(files[0], stop_before_pixels=True) for uid, files in series.items()}
    cases = []
    for uid, files in series.items():
        header = headers[uid]
        if getattr(header, "Modality", "") != "SEG":
            continue
        referenced = [item.SeriesInstanceUID for item in getattr(header, "ReferencedSeriesSequence", [])]
        targets = [r for r in referenced if r in series and getattr(headers[r], "Modality", "") == "CT"]
        where = f"{mask_uids(str(files[0].parent))} (segmentation series {getattr(header, 'SeriesNumber', '?')})"
        if not targets:
            raise ContractError(f"{shown(where)}: the CT series this DICOM-SEG references is not under {folder}")
        ct = headers[targets[0]]
        patient = str(getattr(ct, "PatientID", "") or getattr(ct, "PatientName", ""))
        for seg_file in files:
            cases.append(
                SourceCase(
                    patient,
                    f"{targets[0]}|{seg_file.name}",
                    where,
                    _dicom_seg_reader(series[targets[0]], seg_file, where, name_map),
                )
            )
    if not cases:
        raise ContractError(
            f"{folder}: no DICOM-SEG (Modality SEG) among {len(series)} series; lesion masks are needed"
        )
    return cases


def _ircadb_reader(patient_dir: Path, name_map: dict[str, str]) -> Callable[[], CaseData]:
    def read() -> CaseData:
        from liverlesion.dicomio import read_ct_series, read_mask_series

        where = shown(str(patient_dir))
        series = read_ct_series(patient_dir / "PATIENT_DICOM")
        masks_dir = patient_dir / "MASKS_DICOM"
        structures = sorted(p for p in masks_dir.iterdir() if p.is_dir()) if masks_dir.is_dir() else []
        kept, notes = _named_lesions(
            [(s.name, lambda s=s: read_mask_series(s, series)) for s in structures],
            name_map,
            "structure",
            "not a liver lesion: skipped",
        )
        instances, types = stack_lesions(series.hu.shape, kept, where, components=True)
        livers = [read_mask_series(s, series) for s in structures if is_liver(s.name)]
        liver = functools.reduce(np.logical_or, livers) if livers else None  # not stacked: layout kept
        names = [s.name for s in structures]
        return CaseData(series.hu, series.meta, instances, types, series.padding_voxels, notes, liver, names)

    return read


def scan_ircadb(folder: Path, name_map: dict[str, str] | None = None) -> list[SourceCase]:
    """3D-IRCADb-01: one ``3Dircadb1.N`` folder per patient (or ``folder`` itself is one)."""
    folder = Path(folder)
    name_map = check_name_map(name_map or IRCADB_NAME_MAP)
    patients = (
        [folder]
        if (folder / "PATIENT_DICOM").is_dir()
        else sorted((p for p in folder.iterdir() if (p / "PATIENT_DICOM").is_dir()), key=lambda p: p.name)
    )
    if not patients:
        raise ContractError(f"{folder}: no 3D-IRCADb patient folder (3Dircadb1.N/PATIENT_DICOM)")
    return [SourceCase(f"ircadb-{p.name}", p.name, str(p), _ircadb_reader(p, name_map)) for p in patients]


def scan_source(
    source: Path,
    layout: str,
    *,
    types: dict[str, dict[int, str]] | None = None,
    default_type: str | None = None,
    name_map: dict[str, str] | None = None,
    root: Path | None = None,
) -> list[SourceCase]:
    """The cases of ``source`` read as ``layout`` (see the module's table)."""
    if default_type is not None and default_type not in LESION_TYPES:
        raise ContractError(f"default type {default_type!r} is not in the map; known types: {sorted(LESION_TYPES)}")
    source = Path(source)
    if not source.exists():
        raise ContractError(f"{source}: no such file or folder")
    if layout == "manifest":
        return scan_manifest(source, root, types, default_type)
    if layout == "lits":
        return scan_lits(source, types, default_type)
    if layout == "msd":
        return scan_msd(source, types, default_type)
    if layout == "dicom-seg":
        return scan_dicom_seg(source, name_map)
    if layout == "crlm":
        return scan_dicom_seg(source, name_map or CRLM_NAME_MAP)
    if layout == "ircadb":
        return scan_ircadb(source, name_map)
    if layout == "cohort":
        return scan_cohort(source, default_type)
    raise ContractError(f"unknown layout {layout!r}; one of {list(LAYOUTS)}")


# --- writing the cohort folder ------------------------------------------------------------------


def _existing(out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    cases = pd.read_csv(out / CASES_FILE, dtype=str, keep_default_na=False)
    types_path = out / LESION_TYPES_FILE
    types = (
        pd.read_csv(types_path, dtype=str, keep_default_na=False)
        if types_path.exists()
        else pd.DataFrame(columns=list(LESION_TYPES_COLUMNS))
    )
    meta_path = out / COHORT_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return cases, types, meta


@dataclass
class _Converted:
    """One source case read, checked and written by a worker: what the import's bookkeeping needs of it."""

    structures: str  # the source map's (its names, by position)
    problem: ContractError | None = None  # why it is refused (nothing written)
    files: dict[str, Path] = field(default_factory=dict)  # cohort sub-folder -> the file written for it
    lesions: list[int] = field(default_factory=list)
    types: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    padding_voxels: int = 0


def _convert(source: SourceCase, label: str, case_id: str, folder: Path) -> _Converted:
    """Read one source case, check it and write its volumes to ``folder`` (a worker's part of ``import_cohort``;
    the case's arrays are freed when it returns)."""
    structures = ""
    try:
        with source_named_as(label):
            data = source.read()
        structures = "; ".join(f"{k}: {name}" for k, name in enumerate(data.structures, start=1))
        if data.instances.shape != data.hu.shape:
            raise ContractError(f"{label}: mask shape {data.instances.shape} differs from CT {data.hu.shape}")
        lesions = sorted(int(k) for k in labels_present(data.instances) if k)
        if not lesions:
            raise ContractError(f"{label}: its mask holds no lesion")
    except ContractError as err:
        return _Converted(structures, err)
    files = {
        IMAGES_DIR: save_nifti(
            np.round(data.hu).astype(np.int16), data.meta.affine, folder / IMAGES_DIR / f"{case_id}.nii.gz", "fast"
        ),
        MASKS_DIR: save_nifti(
            data.instances.astype(np.int16 if data.instances.max() < 2**15 else np.int32),
            data.meta.affine,
            folder / MASKS_DIR / f"{case_id}.nii.gz",
            "fast",
        ),
    }
    if data.liver is not None and data.liver.any():  # the lesions lie in the liver (the contract)
        files[LIVERS_DIR] = save_nifti(
            (data.liver | (data.instances > 0)).astype(np.uint8),
            data.meta.affine,
            folder / LIVERS_DIR / f"{case_id}.nii.gz",
            "fast",
        )
    typed = {k: t for k, t in data.types.items() if k in lesions}
    return _Converted(structures, None, files, lesions, typed, list(data.notes), data.padding_voxels)


def import_cohort(
    cases: Sequence[SourceCase],
    out: Path,
    pseudonymiser: Pseudonymiser,
    layout: str,
    settings: dict | None = None,
    append: bool = False,
    skip_bad: bool = False,
    progress: Progress = None,
    source_map: Path | None = None,
    workers: int = 1,
) -> ImportReport:
    """Read every source case, check it and write the cohort folder, all or nothing.

    The new files are written to a staging folder beside ``out`` and moved in only when every case
    has been read (or, with ``skip_bad``, the bad ones set aside and listed): a failed import leaves
    ``out`` as it was.

    Every message, note and refusal names a case as ``source case <position> of <n> (<case id>)``: never its
    folder, file names, series description or structure names, which can carry a patient's name (the readers
    run under ``contract.source_named_as``). Which source case that is, and the names, are in ``source_map``.

    Args:
        append: add to the cohort already in ``out`` (its cases stay; a case already there is refused).
        skip_bad: import the good cases and list the refused ones, instead of importing nothing.
        source_map: where to write the custodian's map (``write_source_map``), also when the import fails; a
            file the caller keeps outside the cohort.
        workers: cases read and written at once (threads: reading, decompressing and compressing release the GIL
            for most of their time); at most this many cases are held in memory. Messages, progress, the tables
            and the outcome are those of reading one case after another, whatever the number.

    Raises:
        ContractError: ``out`` is not empty (and not ``append``), a case breaks the contract
            (unless ``skip_bad``), or no case is left; every problem is named.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not append:
        raise ContractError(f"{out} is not empty: import into a new folder, or add to its cohort with append")
    if append and not (out / CASES_FILE).exists():
        raise ContractError(f"{out}: no {CASES_FILE} to append to")
    check = pseudonymiser.check_value()
    old_cases, old_types, old_meta = (
        _existing(out)
        if append
        else (
            pd.DataFrame(columns=["patient_key", "case_id", "image", "mask", "mask_encoding", "liver_mask"]),
            pd.DataFrame(columns=list(LESION_TYPES_COLUMNS)),
            {},
        )
    )
    recorded = old_meta.get("deidentification", {}).get("secret_check")
    if append and recorded is not None and recorded != check:
        raise ContractError(
            f"{out}: its cohort was imported with another pseudonym secret (cohort.json's secret_check differs): "
            "appending would give a patient already there a second key, which a patient-level split could put in "
            "training and test; import with the custodian's secret of that cohort"
        )
    staging = out.parent / f".{out.name}.importing"
    if staging.exists():
        shutil.rmtree(staging)
    for sub in (IMAGES_DIR, MASKS_DIR, LIVERS_DIR):
        (staging / sub).mkdir(parents=True)
    rows, type_rows, refused, notes, imported = [], [], [], [], []
    mapped = [
        {"position": i, "source": source.where, "case_id": "", "patient_key": "", "outcome": "not reached"}
        for i, source in enumerate(cases, start=1)
    ]
    taken = set(old_cases["case_id"])
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="import")
    try:
        queued: deque[tuple[int, str, str, str, Future]] = deque()
        upcoming = iter(enumerate(cases, start=1))

        def queue_next() -> None:
            if (upcoming_case := next(upcoming, None)) is None:
                return
            i, source = upcoming_case
            patient_key = pseudonymiser.patient_key(source.patient)
            case_id = pseudonymiser.case_id(patient_key, source.case)
            label = f"source case {i} of {len(cases)} ({case_id})"
            work = pool.submit(_convert, source, label, case_id, staging / ".cases" / str(i))
            queued.append((i, patient_key, case_id, label, work))

        for _ in range(max(1, workers)):
            queue_next()
        while queued:
            i, patient_key, case_id, label, work = queued.popleft()
            converted = work.result()
            queue_next()
            entry = mapped[i - 1]
            entry.update(case_id=case_id, patient_key=patient_key)
            # in source order, as one case after another: a case whose pseudonym an earlier one took is refused
            if case_id in taken:
                problem = ContractError(f"{label}: duplicated case: already in the cohort as {case_id}")
            else:
                entry["structures"] = converted.structures
                problem = converted.problem
            if problem is not None:
                for path in converted.files.values():
                    path.unlink(missing_ok=True)
                entry.update(outcome="refused", problem=str(problem))
                if not skip_bad:
                    raise problem
                refused.append(str(problem))
                continue
            entry["outcome"] = "imported"
            for sub, path in converted.files.items():
                path.replace(staging / sub / path.name)
            image, mask = f"{IMAGES_DIR}/{case_id}.nii.gz", f"{MASKS_DIR}/{case_id}.nii.gz"
            liver = f"{LIVERS_DIR}/{case_id}.nii.gz" if LIVERS_DIR in converted.files else ""
            taken.add(case_id)
            rows.append(
                {
                    "patient_key": patient_key,
                    "case_id": case_id,
                    "image": image,
                    "mask": mask,
                    "mask_encoding": "instance",
                    "liver_mask": liver,
                }
            )
            typed, lesions = converted.types, converted.lesions
            type_rows += [{"case_id": case_id, "lesion": k, "type": t} for k, t in sorted(typed.items())]
            notes += [f"case {case_id}: {note}" for note in converted.notes]
            if converted.padding_voxels:
                notes.append(
                    f"case {case_id}: {converted.padding_voxels} padding voxels (outside the field of view) set to air"
                )
            imported.append(
                {
                    "case_id": case_id,
                    "patient_key": patient_key,
                    "lesions": len(lesions),
                    "typed": len(typed),
                    **{kind: sum(t == kind for t in typed.values()) for kind in LESION_TYPES},
                }
            )
            if progress is not None:
                progress(i, len(cases), case_id)
        if not rows:
            raise ContractError(
                f"no case of the source could be imported ({len(refused)} refused):\n  " + "\n  ".join(refused)
            )
        cases_table = pd.concat([old_cases, pd.DataFrame(rows)], ignore_index=True)
        cases_table["mask_encoding"] = cases_table["mask_encoding"].replace("", "class").fillna("class")
        cases_table["liver_mask"] = cases_table["liver_mask"].fillna("")
        types_table = pd.concat(
            [old_types, pd.DataFrame(type_rows, columns=list(LESION_TYPES_COLUMNS))], ignore_index=True
        )
        imports = [
            *old_meta.get("imports", []),
            {
                "importer_version": IMPORTER_VERSION,
                "layout": layout,
                "settings": settings or {},
                "cases": len(rows),
                "lesions": sum(c["lesions"] for c in imported),
                "refused": len(refused),
            },
        ]
        meta = {
            "source": "liverlesion import",
            "imports": imports,
            "deidentification": {**deidentification_record(), "secret_check": check},
            "mask_codes": "instance masks: 0 background, k = lesion k; types in lesion_types.csv",
            "liver_mask_codes": {"background": 0, "liver": 1},
            "units": {"image": "HU (int16)", "spacing": "mm"},
        }
        cases_table.to_csv(staging / CASES_FILE, index=False, lineterminator="\n")
        types_table.to_csv(staging / LESION_TYPES_FILE, index=False, lineterminator="\n")
        (staging / COHORT_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        # all read and written: move in (the tables last, so a cohort never lists a missing file)
        out.mkdir(parents=True, exist_ok=True)
        for sub in (IMAGES_DIR, MASKS_DIR, LIVERS_DIR):
            if sub == LIVERS_DIR and not any((staging / sub).iterdir()):
                continue
            (out / sub).mkdir(exist_ok=True)
            for path in (staging / sub).iterdir():
                path.replace(out / sub / path.name)
        for name in (LESION_TYPES_FILE, COHORT_FILE, CASES_FILE):
            (staging / name).replace(out / name)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # no worker writes into the staging folder once it is gone
        shutil.rmtree(staging, ignore_errors=True)
        if source_map is not None:
            write_source_map(source_map, mapped)
    return ImportReport(out, layout, imported, refused, notes)


SOURCE_MAP_COLUMNS = ("position", "case_id", "patient_key", "outcome", "source", "structures", "problem")


def write_source_map(path: Path, rows: Sequence[dict]) -> None:
    """The custodian's map from each source case (its position, as messages name it) to its pseudonyms, its
    outcome, its place in the source and its structure names: identifying, so owner-only (0600), written whole
    (a temporary file renamed), never into the cohort."""
    path = Path(path)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SOURCE_MAP_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: row.get(column, "") for column in SOURCE_MAP_COLUMNS})
    temporary = path.with_name(f".{path.name}.writing")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text.getvalue())
    temporary.replace(path)
