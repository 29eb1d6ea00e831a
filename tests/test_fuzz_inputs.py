"""Hostile headers, generated: every NIfTI header and DICOM tag variation is imported or refused in one line.

Hypothesis writes a small valid case, then changes what an attacker or a broken exporter would: a NIfTI header's
dimensions, data type, voxel offset, scaling, spacing and orientation, its magic and the data's length (plain and
gzipped); a DICOM series' size, bit depth, sign, rescale, geometry, frame count, modality, transfer syntax and pixel
data length, in one file or all. Each example must end as a case or a ``ContractError`` (the one-line refusal of
the CLI, exit 2); any other exception is a traceback a user would see. The Python memory it takes (tracemalloc,
numpy's arrays included) stays under ``MEMORY_BOUND``: no header makes the readers allocate what it claims.

Bounded for CI: ``HYPOTHESIS_PROFILE=ci`` (the default) runs a fixed, derandomised set of examples;
``HYPOTHESIS_PROFILE=deep`` runs thousands with fresh randomness (see docs/data.md).
"""

from __future__ import annotations

import gzip
import os
import tempfile
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_fixtures import rewrite, write_ct_series
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st

from liverlesion.contract import ContractError
from liverlesion.dicomio import read_ct_series
from liverlesion.imaging import affine_from_spacing, check_hu, load_nifti
from liverlesion.lesions import instance_map

settings.register_profile(
    "ci",
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep", max_examples=3000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: the most Python memory one example may take: its files are a few KB, whatever their headers claim
MEMORY_BOUND = 64 * 2**20
SHAPE = (12, 10, 4)


def within_bound(read):
    """``read()``'s result or ContractError, and the peak memory it took."""
    tracemalloc.start()
    try:
        try:
            result = read()
        except ContractError as err:
            result = err
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def _air_and_tissue() -> np.ndarray:
    hu = np.full(SHAPE, -1000, np.int16)
    hu[2:10, 2:8, 1:3] = 60
    return hu


# --- NIfTI --------------------------------------------------------------------------------------

ODD_FLOATS = st.sampled_from([0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), float("-inf"), 0.8, 2.5])
DIM_SIZES = st.sampled_from([-1, 0, 1, 2, 4, 12, 255, 1024, 4096, 32767])
DATATYPES = st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 255])


@st.composite
def nifti_headers(draw):
    header = nib.Nifti1Header()
    header.set_data_shape(SHAPE)
    header.set_data_dtype(np.int16)
    header.set_zooms((0.8, 0.8, 2.5))
    header.set_sform(affine_from_spacing((0.8, 0.8, 2.5), (0.0, 0.0, 0.0)), code=1)
    header.set_qform(affine_from_spacing((0.8, 0.8, 2.5), (0.0, 0.0, 0.0)), code=1)
    header["vox_offset"] = 352
    changes = draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4, unique=True))
    for field in changes:
        FIELDS_DRAW[field](draw, header)
    return header


def _dim(draw, header):
    dim = header["dim"].copy()
    dim[0] = draw(st.integers(-1, 8))
    for k in range(1, 8):
        if draw(st.booleans()):
            dim[k] = draw(DIM_SIZES)
    header["dim"] = dim


def _datatype(draw, header):
    header["datatype"] = draw(DATATYPES)
    header["bitpix"] = draw(st.sampled_from([0, 8, 16, 32, 64, 128, 7]))


def _pixdim(draw, header):
    pixdim = header["pixdim"].copy()
    for k in range(0, 4):
        if draw(st.booleans()):
            pixdim[k] = draw(ODD_FLOATS)
    header["pixdim"] = pixdim


def _offset(draw, header):
    header["vox_offset"] = draw(st.sampled_from([0.0, 1.0, 351.0, 353.0, 4096.0, 1e12, -352.0, float("nan")]))


def _scaling(draw, header):
    header["scl_slope"] = draw(ODD_FLOATS)
    header["scl_inter"] = draw(ODD_FLOATS)


def _orientation(draw, header):
    header["qform_code"] = draw(st.sampled_from([0, 1, 2, 5, 255]))
    header["sform_code"] = draw(st.sampled_from([0, 1, 2, 5, 255]))
    for name in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x"):
        if draw(st.booleans()):
            header[name] = draw(ODD_FLOATS)
    for name in ("srow_x", "srow_y", "srow_z"):
        if draw(st.booleans()):
            header[name] = [draw(ODD_FLOATS) for _ in range(4)]


def _magic(draw, header):
    header["magic"] = draw(st.sampled_from([b"n+1", b"ni1", b"n+2", b"xyz", b""]))
    header["sizeof_hdr"] = draw(st.sampled_from([348, 0, 540, 347, -1]))


FIELDS_DRAW = {
    "dim": _dim,
    "datatype": _datatype,
    "pixdim": _pixdim,
    "offset": _offset,
    "scaling": _scaling,
    "orientation": _orientation,
    "magic": _magic,
}
FIELDS = sorted(FIELDS_DRAW)


@given(
    header=nifti_headers(),
    data_length=st.sampled_from(["exact", "none", "short", "long"]),
    compressed=st.booleans(),
    role=st.sampled_from(["image", "mask"]),
)
def test_any_nifti_header_is_read_or_refused_in_one_line_within_the_memory_bound(header, data_length, compressed, role):
    note(f"the header, as bytes: {header.binaryblock.hex()}")
    data = _air_and_tissue().tobytes(order="F")
    data = {"exact": data, "none": b"", "short": data[: len(data) // 3], "long": data + os.urandom(4096)}[data_length]
    raw = header.binaryblock + b"\0" * 4 + data
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("case.nii.gz" if compressed else "case.nii")
        path.write_bytes(gzip.compress(raw, compresslevel=1) if compressed else raw)

        def read():
            array, _ = load_nifti(path)
            if role == "image":
                return check_hu(array, "case")
            return instance_map(array, "case", "binary")

        result, peak = within_bound(read)
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB for a header claiming {header.get_data_shape()}"
    event("refused" if isinstance(result, ContractError) else "read")
    if isinstance(result, ContractError):
        message = str(result)
        assert message and "\n" not in message and "Traceback" not in message


# --- DICOM --------------------------------------------------------------------------------------

US = st.sampled_from([0, 1, 2, 7, 10, 12, 255, 4096, 65535])
DS_VALUES = st.sampled_from(["0", "-1", "1e30", "1e-30", "NaN", "inf", "0.8", "abc", "1\\2"])


@st.composite
def dicom_changes(draw):
    """Tag -> value (None: deleted; bytes: raw value) for the slices, or for the middle one."""
    pool = {
        "Rows": US,
        "Columns": US,
        "BitsAllocated": st.sampled_from([0, 1, 8, 12, 16, 32, 64]),
        "BitsStored": st.sampled_from([0, 1, 8, 12, 16, 33]),
        "HighBit": st.sampled_from([0, 7, 15, 31, 40]),
        "PixelRepresentation": st.sampled_from([0, 1, 2]),
        "SamplesPerPixel": st.sampled_from([0, 1, 3]),
        "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", ""]),
        "RescaleSlope": DS_VALUES,
        "RescaleIntercept": DS_VALUES,
        "PixelSpacing": st.sampled_from([["0", "0"], ["-1", "1"], ["NaN", "1"], ["1"], ["1", "1", "1"]]),
        "SliceThickness": DS_VALUES,
        "ImagePositionPatient": st.sampled_from([["0", "0"], ["NaN", "0", "0"], ["inf", "0", "0"], ["1e30"] * 3]),
        "ImageOrientationPatient": st.sampled_from([["0"] * 6, ["1", "0", "0", "1", "0", "0"], ["NaN"] * 6, ["1"]]),
        "NumberOfFrames": st.sampled_from(["0", "1", "2", "1000000", "-3"]),
        "Modality": st.sampled_from(["CT", "MR", "SEG", "", "ct"]),
        "PixelPaddingValue": st.sampled_from([-2048, 0, 32767, -32768]),
        "GantryDetectorTilt": DS_VALUES,
    }
    names = draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=4, unique=True))
    changes = {name: (None if draw(st.integers(0, 9)) == 0 else draw(pool[name])) for name in names}
    return changes


TRANSFER_SYNTAXES = st.sampled_from(
    [
        None,
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.ExplicitVRBigEndian,
        pydicom.uid.DeflatedExplicitVRLittleEndian,
        pydicom.uid.JPEGBaseline8Bit,
        pydicom.uid.RLELossless,
        "1.2.3.4.5",
    ]
)


@pytest.fixture(scope="module")
def series_template(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("template") / "ct"
    write_ct_series(folder, _air_and_tissue().astype(np.float32), (0.8, 0.8, 2.5), shuffle=False)
    return folder


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    changes=dicom_changes(),
    everywhere=st.booleans(),
    syntax=TRANSFER_SYNTAXES,
    pixel_bytes=st.sampled_from(["as written", "none", "short", "long"]),
)
def test_any_dicom_tag_variation_is_read_or_refused_in_one_line_within_the_memory_bound(
    series_template, changes, everywhere, syntax, pixel_bytes
):
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for k, template in enumerate(sorted(series_template.iterdir())):
            path = Path(folder) / f"slice{k:03d}"
            path.write_bytes(template.read_bytes())
            files.append(path)
        targets = files if everywhere else files[len(files) // 2 : len(files) // 2 + 1]
        try:
            _change(targets, changes, syntax, pixel_bytes)
        except Exception:  # pydicom will not write such a value: not a file anyone could send
            assume(False)
        result, peak = within_bound(lambda: read_ct_series(Path(folder)))
    assert peak < MEMORY_BOUND, f"{peak / 2**20:.0f} MiB for {changes}"
    event("refused" if isinstance(result, ContractError) else "read")
    if isinstance(result, ContractError):
        message = str(result)
        assert message and "\n" not in message and "Traceback" not in message
    else:
        assert np.isfinite(result.hu).all() and result.hu.ndim == 3


def _change(files, changes, syntax, pixel_bytes) -> None:
    """Write the changes as a broken exporter would: pydicom's validation of written values off meanwhile."""
    config = pydicom.config.settings
    saved = config.writing_validation_mode, config.reading_validation_mode
    config.writing_validation_mode = config.reading_validation_mode = pydicom.config.IGNORE
    try:
        _write_changes(files, changes, syntax, pixel_bytes)
    finally:
        config.writing_validation_mode, config.reading_validation_mode = saved


def _write_changes(files, changes, syntax, pixel_bytes) -> None:
    rewrite(files, **changes)
    for path in files:
        ds = pydicom.dcmread(path)
        if pixel_bytes != "as written" and "PixelData" in ds:
            pixels = ds.PixelData
            ds.PixelData = {"none": b"", "short": pixels[: len(pixels) // 3], "long": pixels + b"\1\2" * 64}[
                pixel_bytes
            ]
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = syntax
            if syntax == pydicom.uid.ExplicitVRBigEndian or syntax == pydicom.uid.ImplicitVRLittleEndian:
                ds.save_as(path, enforce_file_format=True)
                continue
            if syntax not in (pydicom.uid.DeflatedExplicitVRLittleEndian,):
                # an encapsulated syntax declared over native pixels: the bytes lie about their encoding
                _write_declaring(ds, path)
                continue
        ds.save_as(path, enforce_file_format=True)


def _write_declaring(ds, path: Path) -> None:
    """Write ``ds`` as explicit VR little endian, then rewrite the file meta's transfer syntax to what ``ds`` says
    (pydicom will not encode native pixels under an encapsulated syntax; a broken exporter does)."""
    declared = str(ds.file_meta.TransferSyntaxUID)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    old = str(pydicom.uid.ExplicitVRLittleEndian).encode() + b"\0"
    new = declared.encode()
    new = new + b"\0" * (len(old) - len(new)) if len(new) <= len(old) else new[: len(old)]
    path.write_bytes(raw.replace(old, new, 1))
