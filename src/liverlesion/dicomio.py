"""DICOM in and out: a strict CT series reader, IRCADb-style mask series, and DICOM-SEG.

Hospitals and public sets hand over CT as DICOM series, not NIfTI. A series that is silently read
wrong (slices sorted by file name, a missing slice closed up, a tilted gantry taken as orthogonal,
scanner padding taken as tissue) gives lesions with the wrong volume, shape and HU, and a model
trained on them learns the defect. So every reader here refuses what it cannot read exactly, and
says which series and what is wrong, and nothing else:

* messages name a series as ``<folder> (series <SeriesNumber> '<SeriesDescription>')`` and never
  carry a patient name, id, birth date, accession number or any UID (folder and file names that
  look like UIDs are masked), because error messages end up in logs and reports;
* slices are ordered by the projection of ``ImagePositionPatient`` on the slice normal (the cross
  product of the row and column direction cosines), never by ``InstanceNumber`` or file order;
* the volume is made canonical (RAS+) exactly as :func:`liverlesion.imaging.load_nifti` makes a
  NIfTI volume canonical (``nibabel.as_closest_canonical``), so the same anatomy stored in any
  orientation or slice order gives the same array, and the rest of the pipeline never learns that
  the source was DICOM.

Masks come back on the reference CT's canonical grid: an IRCADb-style mask series is matched slice
by slice on position, a DICOM-SEG frame by the SOP instance UID of the CT slice it references
(SEG frames often cover only some slices; the others are empty). :func:`write_seg` writes a label
volume as a DICOM-SEG that references the CT, so results can go back to a PACS viewer.

pydicom does the parsing; highdicom (imported only where a SEG is read or written) does DICOM-SEG.
"""

from __future__ import annotations

import io
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from liverlesion import __version__
from liverlesion.contract import MAX_VOXELS, ContractError, shown, source_label
from liverlesion.imaging import ImageMeta, check_hu

# --- tolerances --------------------------------------------------------------------------------
#: direction cosines are stored as decimal strings; slices of one series may differ in the last
#: digits, not more
ORIENTATION_TOLERANCE = 1e-4
#: the row and column direction cosines must be unit vectors at right angles, up to rounding
ORTHONORMAL_TOLERANCE = 1e-3
#: pixel spacing (mm) may differ between slices by decimal-string rounding, not more
PIXEL_SPACING_TOLERANCE_MM = 1e-3
#: slice steps may deviate from the usual step by this fraction of it, or by the absolute amount
#: below (mm), whichever is larger: positions are decimal strings, rounded by the scanner; a real
#: irregularity (a dropped, repeated or re-acquired slice) is far larger. The same tolerance bounds
#: how far a slice origin may lie off the line through the first origin along the normal (further
#: means a sheared stack: gantry tilt), and how far a mask slice may lie from its CT slice.
SLICE_STEP_RELATIVE_TOLERANCE = 0.01
SLICE_STEP_ABSOLUTE_TOLERANCE_MM = 0.01
#: a GantryDetectorTilt (degrees) beyond rounding means the slices are not orthogonal to the axis
GANTRY_TILT_TOLERANCE_DEG = 1e-3
#: modalities a mask series may declare: IRCADb masks say CT, other exports OT
MASK_MODALITIES = ("CT", "OT")
#: the series number and text written into a DICOM-SEG made here
SEG_SERIES_NUMBER = 300
SEG_MANUFACTURER = "liverlesion"

#: a path component that is a DICOM UID (exports often name folders and files by UID)
_UID_PATTERN = re.compile(r"^\d+(\.\d+){3,}$")
#: NIfTI-style (columns, rows, slices) world directions: LPS (DICOM) -> RAS (NIfTI)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_CANONICAL_ORNT = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])


class DicomSeriesError(ContractError):
    """A DICOM series (or mask, or SEG) the pipeline refuses; the message is ``<where>: <problem>``.

    ``<where>`` names the folder and the series number and description, never anything that
    identifies the patient or any UID, so the message can go into logs and reports.
    """


@dataclass(frozen=True, eq=False)
class CTSeries:
    """A CT series read into Hounsfield units on the canonical (RAS+) grid.

    Attributes:
        hu: float32 Hounsfield units, canonical RAS+ axes (as ``nibabel.as_closest_canonical``).
        meta: spacing (mm along canonical axes), affine (voxel -> RAS mm of ``hu``), orientation
            (axis codes of the series as stored, e.g. ``"LPS"``), shape.
        slice_axis: the canonical axis that runs across the source slices.
        slice_uids: SOPInstanceUID of the source slice at canonical index ``0..n-1`` along
            ``slice_axis``.
        headers: the slices' datasets without pixel data, in the order of ``slice_uids``; in
            memory only (they identify the patient): a DICOM-SEG must reference them.
        description: how messages name the series: ``<folder> (series <n> '<description>')``.
        padding_voxels: voxels that were scanner padding (declared or a single undeclared fill
            value below any real CT number) and were set to air.
        source_affine: voxel -> RAS mm of the series as stored, axes (columns, rows, slices in
            ascending position along the slice normal); masks read for this CT are mapped to the
            canonical grid through it.
    """

    hu: np.ndarray
    meta: ImageMeta
    slice_axis: int
    slice_uids: tuple[str, ...]
    headers: tuple[Dataset, ...]
    description: str
    padding_voxels: int
    source_affine: np.ndarray


# --- naming -----------------------------------------------------------------------------------
def mask_uids(text: str) -> str:
    """``text`` (a path) with every component that is a DICOM UID replaced by ``<UID>``."""
    parts = re.split(r"([/\\])", text)
    out = []
    for part in parts:
        stem = part[:-4] if part.lower().endswith(".dcm") else part
        out.append(part.replace(stem, "<UID>") if stem and _UID_PATTERN.match(stem) else part)
    return "".join(out)


def _file_name(path: Path) -> str:
    # under an import's label, no file name: a hospital's can carry a patient's name
    return "(one of the case's files)" if source_label() else mask_uids(path.name)


def _series_where(folder_text: str, header: Dataset) -> str:
    number = header.get("SeriesNumber", None)
    number_text = "?" if number in (None, "") else str(number)
    if source_label():  # a description can carry a patient's name ("CT ABD DOE^JOHN")
        return f"{folder_text} (series {number_text})"
    description = str(header.get("SeriesDescription", "") or "")
    return f"{folder_text} (series {number_text} '{description}')"


def _refuse(where: str, problem: str) -> DicomSeriesError:
    return DicomSeriesError(f"{where}: {problem}")


# --- finding files -----------------------------------------------------------------------------
def _candidate_files(folder: Path) -> list[Path]:
    """The plain files directly inside ``folder``, by name (hidden AppleDouble ``._*`` included:
    they are recognised as non-DICOM by content, like any other stray file)."""
    if not folder.is_dir():
        raise DicomSeriesError(f"{shown(mask_uids(str(folder)))}: not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file())


def _is_image_class(sop_class: object) -> bool:
    """Whether a SOP class stores an image (and so must carry pixel data)."""
    return "Image Storage" in getattr(pydicom.uid.UID(str(sop_class)), "name", "")


class _DamagedFile(Exception):
    """A DICOM file that does not parse; raised as a DicomSeriesError once the series is known."""


#: what one deflated file may inflate to: the largest image the contract admits (``MAX_VOXELS`` pixels of two
#: bytes) and its header; a file claiming more is refused before more is allocated (a deflate bomb)
MAX_INFLATED_BYTES = 2 * MAX_VOXELS + 2**20
_PART10_META_START = 132  # 128-byte preamble, "DICM"
_GROUP_LENGTH_ELEMENT = 12  # (0002,0000) UL: tag, VR, length, value


def _deflated(path: Path) -> bool:
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:
        return False
    return str(meta.get("TransferSyntaxUID", "")) == pydicom.uid.DeflatedExplicitVRLittleEndian


def _source(path: Path) -> Path | io.BytesIO:
    """What ``pydicom.dcmread`` reads for ``path``: the file itself, or, for the deflated transfer syntax, the
    same file inflated here within ``MAX_INFLATED_BYTES`` (pydicom inflates it whole, without a limit) and
    marked explicit VR little endian, which is what deflate wraps.

    Raises:
        _DamagedFile: the deflated stream is cut short or corrupt, or inflates past the limit.
    """
    if not _deflated(path):
        return path
    meta = pydicom.filereader.read_file_meta_info(path)
    if "FileMetaInformationGroupLength" not in meta:
        raise _DamagedFile(f"corrupt DICOM file {_file_name(path)}: a deflated file without its meta group length")
    with open(path, "rb") as handle:
        handle.seek(_PART10_META_START + _GROUP_LENGTH_ELEMENT + int(meta.FileMetaInformationGroupLength))
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        body = bytearray()
        try:
            while chunk := handle.read(2**20):
                body += inflater.decompress(chunk, MAX_INFLATED_BYTES + 1 - len(body))
                if len(body) > MAX_INFLATED_BYTES or inflater.unconsumed_tail:
                    raise _DamagedFile(
                        f"DICOM file {_file_name(path)} inflates past {MAX_INFLATED_BYTES:,} bytes, more than the "
                        "largest image the contract admits (contract.MAX_VOXELS)"
                    )
        except zlib.error as exc:
            raise _DamagedFile(f"truncated or corrupt DICOM file {_file_name(path)}: its deflated data") from exc
    if not inflater.eof:
        raise _DamagedFile(f"truncated or corrupt DICOM file {_file_name(path)}: it ends early")
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    out = pydicom.filebase.DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\0" * 128 + b"DICM")
    pydicom.filewriter.write_file_meta_info(out, meta, enforce_standard=True)
    return io.BytesIO(out.getvalue() + bytes(body))


def _read_header(path: Path) -> Dataset | None:
    """The header of one file, or ``None`` when the file is not a DICOM image at all.

    A file with the DICOM Part 10 marker (``DICM`` after the 128-byte preamble) that does not
    parse, or that ends before the pixel data an image must have, is truncated or corrupt and
    refused (pydicom reads a file cut short between two elements without complaint). A file
    without the marker is tried once without the preamble (old exports) and skipped when that
    does not give an image header; so are files without pixel data (DICOMDIR, reports).
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError as exc:
        raise _DamagedFile(f"cannot read file {_file_name(path)}") from exc
    if len(head) == 132 and head[128:132] == b"DICM":
        source = _source(path)
        try:
            with source if isinstance(source, io.BytesIO) else open(source, "rb") as handle:
                size = len(source.getvalue()) if isinstance(source, io.BytesIO) else os.fstat(handle.fileno()).st_size
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    header = pydicom.dcmread(handle, stop_before_pixels=True)
                at_end = handle.tell() >= size  # stop_before_pixels stops *before* the pixel data
        except Exception as exc:  # any parse failure of a marked DICOM file means it is damaged
            raise _DamagedFile(f"truncated or corrupt DICOM file {_file_name(path)}") from exc
        sop_class = header.file_meta.get("MediaStorageSOPClassUID", None) or header.get("SOPClassUID", None)
        cut_short = any("end of file" in str(w.message).lower() for w in caught)
        if cut_short or (at_end and (sop_class is None or "Rows" in header or _is_image_class(sop_class))):
            raise _DamagedFile(f"truncated or corrupt DICOM file {_file_name(path)}: it ends early")
        return header if "Rows" in header else None
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # not DICOM: a stray file such as ._junk or a README
        return None
    if "SOPInstanceUID" not in header or "SeriesInstanceUID" not in header or "Rows" not in header:
        return None
    return header


def _scan(files: Sequence[Path], folder_text: str) -> dict[str, list[tuple[Path, Dataset]]]:
    """SeriesInstanceUID -> [(file, header)] of the image files among ``files`` (DICOMDIR,
    reports and other files without an image are skipped)."""
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    damaged: list[_DamagedFile] = []
    for path in files:
        try:
            header = _read_header(Path(path))
        except _DamagedFile as exc:
            damaged.append(exc)
            continue
        if header is None or "SeriesInstanceUID" not in header or "SOPInstanceUID" not in header:
            continue
        groups.setdefault(str(header.SeriesInstanceUID), []).append((Path(path), header))
    if damaged:
        # name the series when the intact files tell which one the damaged file belongs to
        where = _series_where(folder_text, next(iter(groups.values()))[0][1]) if len(groups) == 1 else folder_text
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        raise _refuse(where, f"{damaged[0]}{more}") from damaged[0]
    return groups


def find_series(folder: Path) -> dict[str, list[Path]]:
    """Group the DICOM files directly inside ``folder`` by SeriesInstanceUID, reading headers only.

    Non-DICOM files (``._*`` AppleDouble files, notes) are skipped; a damaged DICOM file is
    refused, because skipping it would silently drop a slice.

    Raises:
        DicomSeriesError: ``folder`` is not a folder, or holds a truncated or corrupt DICOM file.
    """
    folder = Path(folder)
    groups = _scan(_candidate_files(folder), shown(mask_uids(str(folder))))
    return {uid: [path for path, _ in members] for uid, members in groups.items()}


def _one_series(path: Path | Sequence[Path], kind: str) -> tuple[str, list[tuple[Path, Dataset]]]:
    """(folder text, [(file, header)]) of the single series at ``path`` (folder or file list)."""
    if isinstance(path, (str, os.PathLike)):
        folder = Path(path)
        folder_text = shown(mask_uids(str(folder)))
        files = _candidate_files(folder)
    else:
        files = [Path(p) for p in path]
        if not files:
            raise DicomSeriesError(f"(empty file list): no readable DICOM {kind} file")
        folder_text = shown(mask_uids(os.path.commonpath([str(p.parent) for p in files])))
    groups = _scan(files, folder_text)
    if not groups:
        raise _refuse(folder_text, f"no readable DICOM {kind} file ({len(files)} files looked at)")
    if len(groups) > 1:
        listed = sorted(
            (
                str(members[0][1].get("SeriesNumber", "?")),
                str(members[0][1].get("SeriesDescription", "") or ""),
                len(members),
            )
            for members in groups.values()
        )
        names = ", ".join(
            f"series {n} ({k} files)" if source_label() else f"series {n} '{d}' ({k} files)" for n, d, k in listed
        )
        raise _refuse(folder_text, f"mixed series: {len(groups)} series in one folder: {names}")
    return folder_text, next(iter(groups.values()))


# --- geometry ----------------------------------------------------------------------------------
def _number(header: Dataset, keyword: str, default, kind, where: str):
    """One number of a header (``default`` when absent or empty), or a one-line refusal: several values, text or
    a number that is not finite where one number is expected."""
    value = header.get(keyword, None)
    if value is None or value == "":
        return default
    try:
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            raise TypeError("several values")
        number = kind(float(value)) if kind is int else kind(value)
        if not np.isfinite(number):
            raise ValueError("not finite")
    except (TypeError, ValueError, OverflowError) as exc:
        raise _refuse(where, f"{keyword} is not one finite number ({str(value)[:40]!r})") from exc
    return number


def _floats(header: Dataset, keyword: str, count: int, where: str, path: Path) -> np.ndarray:
    value = header.get(keyword, None)
    try:
        array = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError) as exc:
        raise _refuse(where, f"{keyword} missing or unreadable in {_file_name(path)}") from exc
    if array.shape != (count,):
        raise _refuse(where, f"{keyword} has {array.size} values in {_file_name(path)}, expected {count}")
    if not np.isfinite(array).all():
        raise _refuse(where, f"{keyword} holds a value that is not a finite number in {_file_name(path)}")
    return array


@dataclass(frozen=True)
class _Stack:
    """The checked geometry of a series' slices, sorted by position along the normal."""

    members: list[tuple[Path, Dataset]]  # sorted, ascending along the normal
    row_cosine: np.ndarray
    column_cosine: np.ndarray
    normal: np.ndarray
    pixel_spacing: np.ndarray  # (between rows, between columns) mm
    positions: np.ndarray  # (n, 3) LPS mm, sorted
    step: float  # mm along the normal
    rows: int
    columns: int

    def affine_lps(self) -> np.ndarray:
        affine = np.eye(4)
        affine[:3, 0] = self.row_cosine * self.pixel_spacing[1]  # i: column index, along a row
        affine[:3, 1] = self.column_cosine * self.pixel_spacing[0]  # j: row index, down a column
        affine[:3, 2] = self.normal * self.step
        affine[:3, 3] = self.positions[0]
        return affine


def _step_tolerance(step: float) -> float:
    return max(SLICE_STEP_RELATIVE_TOLERANCE * abs(step), SLICE_STEP_ABSOLUTE_TOLERANCE_MM)


def _check_stack(members: list[tuple[Path, Dataset]], where: str) -> _Stack:
    """Check that the slices form one regular, orthogonal 3D grid, and sort them on it."""
    first_path, first = members[0]
    rows, columns = _number(first, "Rows", 0, int, where), _number(first, "Columns", 0, int, where)
    iop = _floats(first, "ImageOrientationPatient", 6, where, first_path)
    spacing = _floats(first, "PixelSpacing", 2, where, first_path)
    for path, header in members:
        if (_number(header, "Rows", 0, int, where), _number(header, "Columns", 0, int, where)) != (rows, columns):
            raise _refuse(
                where,
                f"slices disagree on size: {header.get('Rows')}x{header.get('Columns')} in "
                f"{_file_name(path)}, {rows}x{columns} in {_file_name(first_path)}",
            )
        if np.max(np.abs(_floats(header, "PixelSpacing", 2, where, path) - spacing)) > PIXEL_SPACING_TOLERANCE_MM:
            raise _refuse(where, f"slices disagree on PixelSpacing ({_file_name(path)} vs {_file_name(first_path)})")
        other = _floats(header, "ImageOrientationPatient", 6, where, path)
        if np.max(np.abs(other - iop)) > ORIENTATION_TOLERANCE:
            raise _refuse(
                where, f"slices disagree on ImageOrientationPatient ({_file_name(path)} vs {_file_name(first_path)})"
            )
    if rows < 1 or columns < 1 or np.any(spacing <= 0):
        raise _refuse(where, f"invalid slice size {rows}x{columns} or PixelSpacing {spacing.tolist()}")
    row_cosine, column_cosine = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row_cosine) - 1.0) > ORTHONORMAL_TOLERANCE
        or abs(np.linalg.norm(column_cosine) - 1.0) > ORTHONORMAL_TOLERANCE
        or abs(float(row_cosine @ column_cosine)) > ORTHONORMAL_TOLERANCE
    ):
        raise _refuse(where, f"ImageOrientationPatient {iop.tolist()} is not two orthogonal unit vectors")
    row_cosine = row_cosine / np.linalg.norm(row_cosine)
    column_cosine = column_cosine / np.linalg.norm(column_cosine)
    normal = np.cross(row_cosine, column_cosine)
    normal = normal / np.linalg.norm(normal)

    positions = np.stack([_floats(h, "ImagePositionPatient", 3, where, p) for p, h in members])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    members = [members[k] for k in order]
    positions, along = positions[order], along[order]
    steps = np.diff(along)

    duplicates = np.flatnonzero(steps <= SLICE_STEP_ABSOLUTE_TOLERANCE_MM)
    if duplicates.size:
        k = int(duplicates[0])
        raise _refuse(
            where,
            f"duplicate slice positions: {duplicates.size} pair(s) of slices share a position (e.g. "
            f"{_file_name(members[k][0])} and {_file_name(members[k + 1][0])} at {along[k]:.3f} mm along the normal)",
        )
    step = float(np.median(steps))
    tolerance = _step_tolerance(step)

    # gantry tilt: every origin must lie on the line through the first along the normal
    offsets = positions - positions[0]
    in_plane = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1)
    tilt = _number(first, "GantryDetectorTilt", 0.0, float, where)
    if abs(tilt) > GANTRY_TILT_TOLERANCE_DEG:
        raise _refuse(where, f"gantry tilt of {tilt:g} degrees: slices are not orthogonal to the stack; resample first")
    if np.max(in_plane) > tolerance:
        raise _refuse(
            where,
            f"gantry tilt or sheared stack: slice origins drift up to {np.max(in_plane):.3f} mm across the "
            f"slice plane (tolerance {tolerance:.3f} mm); resample first",
        )

    off = np.abs(steps - step) > tolerance
    if np.any(off):
        multiples = np.rint(steps / step)
        missing = off & (multiples >= 2) & (np.abs(steps - multiples * step) <= tolerance * multiples)
        if np.any(missing):
            k = int(np.flatnonzero(missing)[0])
            raise _refuse(
                where,
                f"missing slice: a gap of {steps[k]:.3f} mm ({int(multiples[k])} x the usual step of {step:.3f} mm) "
                f"after {_file_name(members[k][0])}; {int(np.sum(multiples[missing] - 1))} slice(s) absent",
            )
        raise _refuse(
            where,
            f"uneven slice spacing: steps from {steps.min():.3f} to {steps.max():.3f} mm, usual {step:.3f} mm "
            f"(tolerance {tolerance:.3f} mm)",
        )
    # the step used for the grid: the mean over the whole stack, exact for evenly spaced slices
    step = float((along[-1] - along[0]) / (len(along) - 1))
    return _Stack(members, row_cosine, column_cosine, normal, spacing, positions, step, rows, columns)


def _canonical_ornt(source_affine: np.ndarray) -> np.ndarray:
    """The nibabel orientation that takes the source layout to canonical RAS+ (as
    ``as_closest_canonical`` does)."""
    return nib.io_orientation(source_affine)


# Volumes are kept in Fortran order (the first axis fastest), as NIfTI stores them and nibabel reads them: a
# series' slices fill a Fortran-ordered volume slice by slice in one stride, an axial series reaches canonical axes
# by flips alone, and nibabel writes it without transposing; a C-ordered volume cost a transposing copy at each of
# those steps (0.2-0.25 s each for a 512x512x120 volume; bench/import_speed.py).
def _source_to_canonical(array: np.ndarray, source_affine: np.ndarray) -> np.ndarray:
    return np.asfortranarray(nib.orientations.apply_orientation(array, _canonical_ornt(source_affine)))


def _canonical_to_source(array: np.ndarray, source_affine: np.ndarray) -> np.ndarray:
    back = nib.orientations.ornt_transform(_CANONICAL_ORNT, _canonical_ornt(source_affine))
    return np.asfortranarray(nib.orientations.apply_orientation(array, back))


# --- CT ----------------------------------------------------------------------------------------
def _check_ct_headers(members: list[tuple[Path, Dataset]], where: str) -> None:
    for path, header in members:
        modality = str(header.get("Modality", "") or "")
        if modality != "CT":
            raise _refuse(where, f"modality {modality or '(none)'!r} in {_file_name(path)}, not CT")
        image_type = [str(v).upper() for v in (header.get("ImageType", None) or [])]
        if "LOCALIZER" in image_type:
            raise _refuse(where, "a localiser (scout) image, not a 3D volume")
        if str(header.get("BurnedInAnnotation", "") or "").upper() == "YES":
            raise _refuse(where, f"BurnedInAnnotation is YES in {_file_name(path)}: the pixels carry identifying text")
        if _number(header, "NumberOfFrames", 1, int, where) > 1:
            raise _refuse(where, "a multi-frame (enhanced) image: only one-slice-per-file series are read")
        if _number(header, "SamplesPerPixel", 1, int, where) != 1:
            raise _refuse(where, f"{header.get('SamplesPerPixel')} samples per pixel: not a CT image")
    if len(members) < 2:
        raise _refuse(where, f"not a 3D volume: a single slice ({len(members)} image)")


def _read_pixels(path: Path, where: str) -> tuple[Dataset, np.ndarray]:
    """The full dataset (pixel data removed) and the stored values of one slice."""
    try:
        dataset = pydicom.dcmread(_source(path))
        stored = np.asarray(dataset.pixel_array)
    except Exception as exc:  # truncated pixel data, unsupported compression: the slice is unreadable
        raise _refuse(where, f"truncated or corrupt DICOM file {_file_name(path)}: pixel data unreadable") from exc
    if "PixelData" in dataset:
        del dataset.PixelData
    return dataset, stored


def _padding_mask(dataset: Dataset, stored: np.ndarray) -> np.ndarray:
    """Voxels marked as padding by PixelPaddingValue (and PixelPaddingRangeLimit), on stored values."""
    value = dataset.get("PixelPaddingValue", None)
    if value is None:
        return np.zeros(stored.shape, dtype=bool)
    limit = dataset.get("PixelPaddingRangeLimit", None)
    if limit is None:
        return stored == int(value)
    low, high = sorted((int(value), int(limit)))
    return (stored >= low) & (stored <= high)


def read_ct_series(path: Path | Sequence[Path]) -> CTSeries:
    """Read one CT series into Hounsfield units on the canonical RAS+ grid, refusing any defect.

    Args:
        path: a folder holding exactly one series (stray non-DICOM files are skipped), or the
            series' files.

    Returns:
        The series: HU, geometry, the source slices' UIDs and headers in canonical order.

    Raises:
        DicomSeriesError: no DICOM file; a truncated or corrupt file; several series; not CT; a
            localiser or a single slice; burned-in annotation; slices disagreeing on size,
            spacing or orientation; duplicate, missing or unevenly spaced slices; gantry tilt;
            values below any CT number that are not a single padding value; values above any.
    """
    folder_text, members = _one_series(path, "CT")
    where = _series_where(folder_text, members[0][1])
    _check_ct_headers(members, where)
    stack = _check_stack(members, where)
    voxels = stack.rows * stack.columns * len(stack.members)
    if voxels > MAX_VOXELS:  # before a voxel is read or allocated
        raise _refuse(
            where,
            f"{len(stack.members)} slices of {stack.rows}x{stack.columns} are {voxels:,} voxels, more than the limit "
            f"of {MAX_VOXELS:,} (contract.MAX_VOXELS)",
        )

    volume = np.empty((stack.columns, stack.rows, len(stack.members)), dtype=np.float32, order="F")
    padding = np.zeros(volume.shape, dtype=bool, order="F")
    headers: list[Dataset] = []
    for k, (file_path, _) in enumerate(stack.members):
        dataset, stored = _read_pixels(file_path, where)
        if stored.shape != (stack.rows, stack.columns):
            raise _refuse(where, f"pixel data of {_file_name(file_path)} has shape {stored.shape}")
        slope = _number(dataset, "RescaleSlope", 1.0, float, where)
        intercept = _number(dataset, "RescaleIntercept", 0.0, float, where)
        volume[:, :, k] = (stored.astype(np.float64) * slope + intercept).T
        padding[:, :, k] = _padding_mask(dataset, stored).T
        headers.append(dataset)

    try:  # padding to air, and the refusals of values no CT holds: the same rules as for NIfTI
        volume, padding_voxels = check_hu(volume, where, padding)
    except ContractError as err:
        raise DicomSeriesError(str(err)) from None

    source_affine = _LPS_TO_RAS @ stack.affine_lps()
    image = nib.Nifti1Image(volume, source_affine)
    canonical = nib.as_closest_canonical(image)
    hu = np.asfortranarray(np.asarray(canonical.dataobj, dtype=np.float32))
    affine = np.asarray(canonical.affine, dtype=float).copy()
    ornt = _canonical_ornt(source_affine)
    slice_axis, flip = int(ornt[2, 0]), int(ornt[2, 1])
    if flip < 0:
        headers = headers[::-1]
    meta = ImageMeta(
        spacing=tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)),
        affine=affine,
        orientation="".join(nib.aff2axcodes(source_affine)),
        shape=tuple(int(s) for s in hu.shape),
        source_affine=source_affine,
    )
    return CTSeries(
        hu=hu,
        meta=meta,
        slice_axis=slice_axis,
        slice_uids=tuple(str(h.SOPInstanceUID) for h in headers),
        headers=tuple(headers),
        description=where,
        padding_voxels=padding_voxels,
        source_affine=source_affine,
    )


# --- masks -------------------------------------------------------------------------------------
def _source_headers(reference: CTSeries) -> list[Dataset]:
    """The reference's headers in source order (ascending along the slice normal)."""
    flip = int(_canonical_ornt(reference.source_affine)[2, 1])
    return list(reference.headers[::-1]) if flip < 0 else list(reference.headers)


def _reference_positions(reference: CTSeries) -> np.ndarray:
    return np.stack([np.asarray([float(v) for v in h.ImagePositionPatient]) for h in _source_headers(reference)])


def read_mask_series(path: Path, reference: CTSeries) -> np.ndarray:
    """Read an IRCADb-style mask series (one 0/255 slice per CT slice) onto the reference's grid.

    Slices are matched to the CT by position, not by file name or order, and the mask must have
    the CT's geometry: a mask drawn on another grid cannot be mapped voxel for voxel.

    Args:
        path: the folder of the mask series (e.g. ``MASKS_DICOM/livertumor01``).
        reference: the CT the mask was drawn on.

    Returns:
        bool array on ``reference``'s canonical grid: voxels whose mask value is above zero.

    Raises:
        DicomSeriesError: no or several series; a modality other than CT or OT; a geometry
            (size, spacing, orientation, positions) that differs from the CT's; slices missing or
            repeated.
    """
    folder_text, members = _one_series(path, "mask")
    where = _series_where(folder_text, members[0][1])
    for file_path, header in members:
        modality = str(header.get("Modality", "") or "")
        if modality not in MASK_MODALITIES:
            raise _refuse(where, f"modality {modality or '(none)'!r} in {_file_name(file_path)}: not a mask series")
    source_headers = _source_headers(reference)
    ct = source_headers[0]
    rows, columns = int(ct.Rows), int(ct.Columns)
    ct_iop = np.asarray([float(v) for v in ct.ImageOrientationPatient])
    ct_spacing = np.asarray([float(v) for v in ct.PixelSpacing])
    ct_positions = _reference_positions(reference)
    normal = np.cross(ct_iop[:3], ct_iop[3:])
    normal /= np.linalg.norm(normal)
    ct_along = ct_positions @ normal
    step = float(np.median(np.abs(np.diff(ct_along)))) if len(ct_along) > 1 else 1.0
    tolerance = _step_tolerance(step)

    volume = np.zeros((columns, rows, len(source_headers)), dtype=bool, order="F")
    seen = np.zeros(len(source_headers), dtype=bool)
    for file_path, header in members:
        if (_number(header, "Rows", 0, int, where), _number(header, "Columns", 0, int, where)) != (rows, columns):
            raise _refuse(
                where,
                f"mask geometry differs from the CT {reference.description}: slice size "
                f"{header.get('Rows')}x{header.get('Columns')} vs {rows}x{columns}",
            )
        if (
            np.max(np.abs(_floats(header, "ImageOrientationPatient", 6, where, file_path) - ct_iop))
            > ORIENTATION_TOLERANCE
        ):
            raise _refuse(where, f"mask geometry differs from the CT {reference.description}: orientation")
        if (
            np.max(np.abs(_floats(header, "PixelSpacing", 2, where, file_path) - ct_spacing))
            > PIXEL_SPACING_TOLERANCE_MM
        ):
            raise _refuse(where, f"mask geometry differs from the CT {reference.description}: pixel spacing")
        position = _floats(header, "ImagePositionPatient", 3, where, file_path)
        distance = np.linalg.norm(ct_positions - position, axis=1)
        k = int(np.argmin(distance))
        if distance[k] > tolerance:
            raise _refuse(
                where,
                f"mask geometry differs from the CT {reference.description}: slice {_file_name(file_path)} is "
                f"{distance[k]:.3f} mm from the nearest CT slice",
            )
        if seen[k]:
            raise _refuse(where, f"two mask slices at the same CT slice position ({_file_name(file_path)})")
        seen[k] = True
        _, stored = _read_pixels(file_path, where)
        if stored.shape != (rows, columns):
            raise _refuse(where, f"pixel data of {_file_name(file_path)} has shape {stored.shape}")
        volume[:, :, k] = (stored > 0).T
    if not np.all(seen):
        raise _refuse(
            where,
            f"mask covers {int(seen.sum())} of the {seen.size} slices of {reference.description}",
        )
    return _source_to_canonical(volume, reference.source_affine).astype(bool)


# --- DICOM-SEG ---------------------------------------------------------------------------------
def read_seg(path: Path, reference: CTSeries) -> dict[int, tuple[str, np.ndarray]]:
    """Read a DICOM-SEG drawn on ``reference`` onto the reference's canonical grid.

    Frames are mapped through the CT slice (SOP instance) each one references; slices no frame
    references are empty, as SEG writers omit empty frames.

    Args:
        path: the DICOM-SEG file.
        reference: the CT series it was drawn on.

    Returns:
        Segment number -> (SegmentLabel, bool mask on ``reference``'s canonical grid).

    Raises:
        DicomSeriesError: the file is no readable DICOM-SEG; it references another series or
            instances that are not slices of ``reference``; its frames do not match the CT's size.
    """
    import highdicom as hd

    path = Path(path)
    where = shown(mask_uids(str(path)))
    try:  # its size from the header before its frames are read
        header = pydicom.dcmread(path, stop_before_pixels=True)
        frames = int(header.get("NumberOfFrames", 1) or 1) * int(header.get("Rows", 0) or 0)
        frames *= int(header.get("Columns", 0) or 0)
    except Exception as exc:  # not DICOM, truncated: refuse naming the file
        raise _refuse(where, f"not a readable DICOM-SEG ({type(exc).__name__})") from exc
    if frames > MAX_VOXELS:
        raise _refuse(
            where,
            f"its frames hold {frames:,} pixels, more than the limit of {MAX_VOXELS:,} (contract.MAX_VOXELS)",
        )
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # not a SEG, truncated, unsupported: refuse naming the file
        raise _refuse(where, f"not a readable DICOM-SEG ({type(exc).__name__})") from exc
    reference_series = str(reference.headers[0].SeriesInstanceUID)
    referenced_series = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    source_uids = {str(sop) for _, _, sop in seg.get_source_image_uids()}
    known = set(reference.slice_uids)
    if referenced_series and reference_series not in referenced_series:
        raise _refuse(where, f"the DICOM-SEG references another series, not {reference.description}")
    if not source_uids or not source_uids <= known:
        raise _refuse(
            where,
            f"the DICOM-SEG references {len(source_uids - known)} of {len(source_uids)} source instances "
            f"that are not slices of {reference.description}",
        )
    if (int(seg.Rows), int(seg.Columns)) != (int(reference.headers[0].Rows), int(reference.headers[0].Columns)):
        raise _refuse(where, f"frames are {seg.Rows}x{seg.Columns}, the slices of {reference.description} are not")
    numbers = [int(n) for n in seg.segment_numbers]
    source_order = [str(h.SOPInstanceUID) for h in _source_headers(reference)]
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=source_order,
            segment_numbers=numbers,
            assert_missing_frames_are_empty=True,
        )
    except Exception as exc:  # frames that cannot be tied to CT slices: refuse rather than guess
        raise _refuse(
            where, f"frames cannot be mapped to the slices of {reference.description} ({type(exc).__name__})"
        ) from exc
    masks: dict[int, tuple[str, np.ndarray]] = {}
    for index, number in enumerate(numbers):
        label = str(seg.get_segment_description(number).segment_label)
        source = np.asarray(pixels[..., index], dtype=np.float32) >= 0.5  # binary 0/1, fractional 0..1
        volume = np.transpose(source, (2, 1, 0))  # (slices, rows, columns) -> (columns, rows, slices)
        masks[number] = (label, _source_to_canonical(volume, reference.source_affine).astype(bool))
    return masks


def _segment_codes(label: str):
    """Segmented property category and type for a label text (SNOMED CT codes)."""
    from pydicom.sr.codedict import codes

    text = label.lower()
    if "liver" in text:
        return codes.SCT.Organ, codes.SCT.Liver
    if "cyst" in text:
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Cyst
    if "metasta" in text or "tumo" in text or "neoplasm" in text:
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
    return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion


def write_seg(
    labels: np.ndarray,
    segments: dict[int, str],
    reference: CTSeries,
    out: Path,
    series_description: str = "liverlesion lesion classes",
) -> Path:
    """Write an integer label volume on the reference's canonical grid as a BINARY DICOM-SEG.

    The SEG references ``reference``'s slices, so a viewer overlays it on the CT; empty frames
    are omitted. :func:`read_seg` reads it back to the same masks.

    Args:
        labels: integer array of ``reference.meta.shape``: 0 background, ``k`` segment ``k``.
        segments: segment number -> label text; numbers 1..N (DICOM-SEG numbers segments so).
        reference: the CT the labels are on.
        out: the file to write.
        series_description: the SEG series' description.

    Returns:
        ``out``.

    Raises:
        DicomSeriesError: ``labels`` is not on the reference's grid, holds values with no
            segment, or the segment numbers are not 1..N.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    labels = np.asarray(labels)
    where = reference.description
    if tuple(labels.shape) != tuple(reference.meta.shape):
        raise _refuse(where, f"label volume of shape {labels.shape} is not on the CT grid {reference.meta.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise _refuse(where, f"label volume of type {labels.dtype}: integer labels expected")
    numbers = sorted(int(n) for n in segments)
    if numbers != list(range(1, len(numbers) + 1)):
        raise _refuse(where, f"segment numbers {numbers}: DICOM-SEG needs 1..N")
    present = {int(v) for v in np.unique(labels)} - {0}
    if not present <= set(numbers):
        raise _refuse(where, f"label values {sorted(present - set(numbers))} have no segment")

    label_type = np.uint8 if numbers[-1:] <= [255] else np.uint16
    source = _canonical_to_source(labels.astype(label_type), reference.source_affine)
    pixel_array = np.ascontiguousarray(np.transpose(source, (2, 1, 0)))  # (slices, rows, columns)
    source_images = _source_headers(reference)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="liverlesion", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = []
    for number in numbers:
        category, kind = _segment_codes(segments[number])
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(segments[number]),
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=SEG_MANUFACTURER,
        manufacturer_model_name="liverlesion",
        software_versions=f"liverlesion {__version__}",
        device_serial_number="none",
        series_description=series_description,
        omit_empty_frames=bool(present),  # an all-empty SEG keeps its frames: it must have some
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out)
    return out
