"""The strict DICOM reader/writer, on real files written to tmp_path by ``dicom_fixtures``."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pydicom
import pytest
from dicom_fixtures import (
    IDENTIFYING,
    ORIENTATION_CODES,
    ORIGIN_RAS,
    rewrite,
    write_ct_series,
    write_mask_series,
    write_seg_file,
)

from liverlesion.contract import HU_AIR, ContractError
from liverlesion.dicomio import (
    CTSeries,
    DicomSeriesError,
    find_series,
    read_ct_series,
    read_mask_series,
    read_seg,
    write_seg,
)
from liverlesion.imaging import affine_from_spacing, load_nifti, save_nifti

SHAPE = (40, 36, 12)
SPACING = (0.8, 0.8, 2.5)
#: a DICOM UID as it would appear in text
UID_IN_TEXT = re.compile(r"\d+\.\d+\.\d+\.\d+")


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    rng = np.random.default_rng(7)
    volume = rng.integers(-200, 300, size=SHAPE).astype(np.float32)
    volume[:3] = -1000.0  # air beside the body: every CT in HU has some
    return volume


def _blob(center, radius) -> np.ndarray:
    grid = np.indices(SHAPE).astype(float)
    scale = np.array([1.0, 1.0, 0.35])[:, None, None, None]  # slices are thicker than pixels
    distance = np.sqrt((((grid - np.array(center, float)[:, None, None, None]) * scale) ** 2).sum(axis=0))
    return distance <= radius


def _assert_clean(message: str) -> None:
    """A refusal message repeats nothing that identifies the patient, and no UID."""
    for value in IDENTIFYING.values():
        assert value not in message
        assert value.replace("^", " ") not in message
    assert not UID_IN_TEXT.search(message), message


def _uids(files) -> set[str]:
    out = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    return out


# --- reading CT --------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", sorted(ORIENTATION_CODES))
def test_every_orientation_and_order_gives_the_canonical_array_nifti_gives(orientation, hu, tmp_path):
    files = write_ct_series(tmp_path / "ct", hu, SPACING, orientation=orientation, shuffle=True, seed=3)
    # the fixture put voxel (3, 5, 7) where the headers say it is (checked without the reader)
    marker = (3, 5, 7)
    expected_ras = np.asarray(ORIGIN_RAS) + np.asarray(marker) * np.asarray(SPACING)
    probe = hu.copy()
    probe[marker] = 999.0
    probe_files = write_ct_series(tmp_path / "probe", probe, SPACING, orientation=orientation, seed=4)
    hits = []
    for path in probe_files:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        for j, i in zip(*np.nonzero(pixels == 999.0)):
            iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            dr, dc = (float(v) for v in ds.PixelSpacing)
            lps = np.asarray([float(v) for v in ds.ImagePositionPatient]) + i * dc * iop[:3] + j * dr * iop[3:]
            hits.append(lps * [-1, -1, 1])
    assert len(hits) == 1 and np.allclose(hits[0], expected_ras, atol=1e-4)

    ct = read_ct_series(tmp_path / "ct")
    assert isinstance(ct, CTSeries)
    assert ct.hu.dtype == np.float32 and ct.hu.shape == SHAPE
    np.testing.assert_array_equal(ct.hu, hu)
    assert ct.meta.spacing == pytest.approx(SPACING, abs=1e-6)
    assert ct.meta.shape == SHAPE
    assert ct.padding_voxels == 0
    assert len(ct.slice_uids) == len(ct.headers) == SHAPE[ct.slice_axis] == len(files)
    assert all("PixelData" not in h for h in ct.headers)

    nifti = save_nifti(hu, affine_from_spacing(SPACING, ORIGIN_RAS), tmp_path / "ct.nii.gz")
    array, meta = load_nifti(nifti)
    np.testing.assert_array_equal(ct.hu, array)
    assert ct.meta.spacing == pytest.approx(meta.spacing, rel=1e-6)
    np.testing.assert_allclose(ct.meta.affine, meta.affine, atol=1e-4)

    # the header at canonical index k along slice_axis lies in canonical slice k
    axis_vector = ct.meta.affine[:3, ct.slice_axis]
    for k, header in enumerate(ct.headers):
        assert str(header.SOPInstanceUID) == ct.slice_uids[k]
        ras = np.asarray([float(v) for v in header.ImagePositionPatient]) * [-1, -1, 1]
        offset = (ras - ct.meta.affine[:3, 3]) @ axis_vector / (axis_vector @ axis_vector)
        assert offset == pytest.approx(k, abs=1e-4)


def test_orientation_codes_name_the_layout_as_stored(hu, tmp_path):
    expected = {"axial": "LPS", "axial_flipped": "RAS", "axial_transposed": "PLI", "coronal": "LIP"}
    for orientation, codes in expected.items():
        write_ct_series(tmp_path / orientation, hu, SPACING, orientation=orientation)
        assert read_ct_series(tmp_path / orientation).meta.orientation == codes


def test_order_comes_from_positions_not_instance_numbers_or_file_names(hu, tmp_path):
    files = write_ct_series(tmp_path / "ct", hu, SPACING, shuffle=False)
    rng = np.random.default_rng(1)
    for path, number in zip(files, rng.permutation(len(files)) + 1):
        rewrite([path], InstanceNumber=int(number))
    for k, path in enumerate(rng.permutation(files)):
        path.rename(path.with_name(f"z{k:03d}"))
    np.testing.assert_array_equal(read_ct_series(tmp_path / "ct").hu, hu)
    # a file list reads as the folder does
    np.testing.assert_array_equal(read_ct_series(sorted((tmp_path / "ct").iterdir())).hu, hu)


@pytest.mark.parametrize(("slope", "intercept"), [(1.0, -1024.0), (0.5, -1024.0), (2.0, -1000.0)])
def test_rescale_slope_and_intercept_are_applied(slope, intercept, tmp_path):
    rng = np.random.default_rng(2)
    hu = (rng.integers(-100, 150, size=SHAPE) * 2).astype(np.float32) / (2.0 if slope == 0.5 else 1.0)
    hu[:2] = -1000.0  # air
    files = write_ct_series(tmp_path / "ct", hu, SPACING, slope=slope, intercept=intercept)
    stored = pydicom.dcmread(files[0]).pixel_array
    assert not np.allclose(stored, np.rint(stored * slope + intercept))  # the rescale is not a no-op
    ct = read_ct_series(tmp_path / "ct")
    np.testing.assert_array_equal(ct.hu, hu)


def test_find_series_groups_by_series_and_skips_non_dicom_files(hu, tmp_path):
    folder = tmp_path / "mixed"
    first = write_ct_series(folder, hu, SPACING, series_number=1, seed=1)
    second = write_ct_series(folder, hu[:, :, :5], SPACING, series_number=2, seed=2)
    (folder / "._image_0").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(200))
    (folder / "README.txt").write_text("exported by hand")
    groups = find_series(folder)
    assert sorted(len(v) for v in groups.values()) == [len(second), len(first)]
    assert {p for v in groups.values() for p in v} == set(first) | set(second)
    single = tmp_path / "single"
    files = write_ct_series(single, hu, SPACING)
    shutil.copy(folder / "._image_0", single / "._image_0")
    np.testing.assert_array_equal(read_ct_series(single).hu, hu)
    assert len(files) == SHAPE[2]


# --- padding and impossible values --------------------------------------------------------------
def test_declared_pixel_padding_becomes_air(hu, tmp_path):
    padded = hu.copy()
    padded[:4] = -3024.0  # stored -2000 with intercept -1024
    write_ct_series(tmp_path / "ct", padded, SPACING, padding_value=-2000)
    ct = read_ct_series(tmp_path / "ct")
    assert np.all(ct.hu[:4] == HU_AIR)
    np.testing.assert_array_equal(ct.hu[4:], hu[4:])
    assert ct.padding_voxels == 4 * SHAPE[1] * SHAPE[2]

    ranged = hu.copy()
    ranged[:3] = np.random.default_rng(0).integers(-3024, -3014, size=ranged[:3].shape)
    files = write_ct_series(tmp_path / "range", ranged, SPACING, padding_value=-2000)
    rewrite(files, PixelPaddingRangeLimit=-1990)
    ct = read_ct_series(tmp_path / "range")
    assert np.all(ct.hu[:3] == HU_AIR) and ct.padding_voxels == 3 * SHAPE[1] * SHAPE[2]


def test_an_undeclared_single_fill_value_becomes_air(hu, tmp_path):
    filled = hu.copy()
    filled[:, :5] = -3024.0
    write_ct_series(tmp_path / "ct", filled, SPACING)
    ct = read_ct_series(tmp_path / "ct")
    assert np.all(ct.hu[:, :5] == HU_AIR)
    np.testing.assert_array_equal(ct.hu[:, 5:], hu[:, 5:])
    assert ct.padding_voxels == SHAPE[0] * 5 * SHAPE[2]


def test_scattered_impossible_values_are_refused(hu, tmp_path):
    broken = hu.copy()
    broken[1, 2, 3], broken[5, 6, 7], broken[8, 9, 10] = -3024.0, -2500.0, -1500.0
    write_ct_series(tmp_path / "low", broken, SPACING, series_number=5)
    with pytest.raises(DicomSeriesError, match=r"3 voxels between -3024 and -1500 HU, below anything") as info:
        read_ct_series(tmp_path / "low")
    assert "(series 5 'synthetic CT axial')" in str(info.value)
    _assert_clean(str(info.value))

    metal = hu.copy()
    metal[4, 4, 4] = 31000.0
    write_ct_series(tmp_path / "high", metal, SPACING)
    with pytest.raises(DicomSeriesError, match="1 voxels above 30000 HU"):
        read_ct_series(tmp_path / "high")


def _deflate(files) -> None:
    for path in files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)


def test_a_deflated_series_reads_as_the_plain_one(hu, tmp_path):
    files = write_ct_series(tmp_path / "ct", hu, SPACING)
    _deflate(files)
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID.name.startswith("Deflated")
    np.testing.assert_array_equal(read_ct_series(tmp_path / "ct").hu, hu)


def test_a_deflated_file_cut_short_or_inflating_past_the_limit_is_refused_naming_it(hu, tmp_path, monkeypatch):
    import liverlesion.dicomio as dicomio

    files = write_ct_series(tmp_path / "cut", hu, SPACING)
    _deflate(files)
    _truncate(files, 0.7)
    with pytest.raises(DicomSeriesError, match=f"truncated or corrupt DICOM file {files[len(files) // 2].name}"):
        read_ct_series(tmp_path / "cut")
    files = write_ct_series(tmp_path / "bomb", hu, SPACING)
    _deflate(files)
    # a slice of this test's size stands for one inflating to gigabytes: the same check, a smaller limit
    monkeypatch.setattr(dicomio, "MAX_INFLATED_BYTES", 1000)
    with pytest.raises(DicomSeriesError, match="inflates past 1,000 bytes"):
        read_ct_series(tmp_path / "bomb")


# --- refusals ----------------------------------------------------------------------------------
def _truncate(files, keep: float) -> None:
    path = files[len(files) // 2]
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _duplicate(files) -> None:
    shutil.copy(files[0], files[0].with_name("copy_of_a_slice"))


def _tilt_tag(files) -> None:
    rewrite(files, GantryDetectorTilt=12.5)


def _burned_in(files) -> None:
    rewrite(files[:1], BurnedInAnnotation="YES")


REFUSALS = {
    # name: (write_ct_series keywords, edit of the written files, expected words)
    "missing slice": ({"drop_slice": 5}, None, r"missing slice: a gap of 5\.000 mm \(2 x"),
    "uneven spacing": ({"uneven": True}, None, "uneven slice spacing"),
    "gantry tilt (sheared stack)": ({"tilt_mm": 0.5}, None, "gantry tilt or sheared stack"),
    "gantry tilt (tag)": ({}, _tilt_tag, "gantry tilt of 12.5 degrees"),
    "duplicate slice": ({}, _duplicate, "duplicate slice positions"),
    "MR modality": ({"modality": "MR"}, None, "modality 'MR'"),
    "localiser": ({"localizer": True}, None, "localiser"),
    "burned-in annotation": ({}, _burned_in, "BurnedInAnnotation is YES"),
    "truncated pixel data": ({}, lambda f: _truncate(f, 0.6), "truncated or corrupt DICOM file"),
    "truncated header": ({}, lambda f: _truncate(f, 0.12), "truncated or corrupt DICOM file"),
    "truncated file meta": ({}, lambda f: _truncate(f, 0.04), "truncated or corrupt DICOM file"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_defective_series_are_refused_naming_the_series_only(case, hu, tmp_path):
    keywords, edit, expected = REFUSALS[case]
    folder = tmp_path / "patient_folder"
    files = write_ct_series(folder, hu, SPACING, series_number=7, **keywords)
    if edit is not None:
        edit(files)
    with pytest.raises(DicomSeriesError, match=expected) as info:
        read_ct_series(folder)
    message = str(info.value)
    assert isinstance(info.value, ContractError)
    assert message.startswith(f"{folder}")
    assert f"{folder} (series 7 'synthetic CT axial')" in message
    if "truncated" in case:
        assert files[len(files) // 2].name in message
    _assert_clean(message)
    for uid in _uids(f for f in files if "truncated" not in case):
        assert uid not in message


def test_a_single_slice_is_not_a_volume(hu, tmp_path):
    folder = tmp_path / "single"
    write_ct_series(folder, hu[:, :, :1], SPACING, series_number=3)
    with pytest.raises(DicomSeriesError, match="not a 3D volume") as info:
        read_ct_series(folder)
    assert f"{folder} (series 3 'synthetic CT axial')" in str(info.value)
    _assert_clean(str(info.value))


def test_mixed_series_are_refused_listing_numbers_not_uids(hu, tmp_path):
    folder = tmp_path / "mixed"
    files = write_ct_series(folder, hu, SPACING, series_number=1, seed=1)
    files += write_ct_series(folder, hu, SPACING, series_number=2, seed=2, orientation="axial_flipped")
    with pytest.raises(DicomSeriesError, match="mixed series: 2 series") as info:
        read_ct_series(folder)
    message = str(info.value)
    assert message.startswith(str(folder))
    assert "series 1 'synthetic CT axial' (12 files)" in message
    assert "series 2 'synthetic CT axial_flipped' (12 files)" in message
    _assert_clean(message)
    assert not any(uid in message for uid in _uids(files))


def test_an_empty_folder_is_refused(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "._junk").write_bytes(b"\x00\x05\x16\x07")
    with pytest.raises(DicomSeriesError, match="no readable DICOM CT file") as info:
        read_ct_series(folder)
    assert str(info.value).startswith(str(folder))
    _assert_clean(str(info.value))


def test_folder_and_file_names_that_are_uids_are_masked(hu, tmp_path):
    folder = tmp_path / "1.2.826.0.1.3680043.8.498.12345"
    files = write_ct_series(folder, hu, SPACING, modality="MR")
    with pytest.raises(DicomSeriesError) as info:
        read_ct_series(folder)
    assert "<UID> (series 1" in str(info.value)
    _assert_clean(str(info.value))
    assert len(files) == SHAPE[2]


# --- masks and DICOM-SEG ---------------------------------------------------------------------
def test_mask_series_is_mapped_by_position(hu, tmp_path):
    files = write_ct_series(tmp_path / "ct", hu, SPACING, orientation="axial_transposed", seed=5)
    ct = read_ct_series(tmp_path / "ct")
    mask = _blob((20, 15, 6), 5.0)
    mask[30:35, 2:5, 9] = True
    write_mask_series(tmp_path / "livertumor01", mask, files, seed=11)
    np.testing.assert_array_equal(read_mask_series(tmp_path / "livertumor01", ct), mask)
    write_mask_series(tmp_path / "liverkyst", ~mask, list(reversed(files)), modality="OT", seed=12)
    np.testing.assert_array_equal(read_mask_series(tmp_path / "liverkyst", ct), ~mask)


def test_mask_on_another_grid_is_refused(hu, tmp_path):
    write_ct_series(tmp_path / "ct", hu, SPACING)
    ct = read_ct_series(tmp_path / "ct")
    other = write_ct_series(tmp_path / "other", hu, (0.8, 0.8, 3.0))
    write_mask_series(tmp_path / "livertumor02", np.ones(SHAPE, bool), other)
    with pytest.raises(DicomSeriesError, match="mask geometry differs") as info:
        read_mask_series(tmp_path / "livertumor02", ct)
    assert str(info.value).startswith(str(tmp_path / "livertumor02"))
    _assert_clean(str(info.value))


def test_seg_frames_are_mapped_by_referenced_instance(hu, tmp_path):
    files = write_ct_series(tmp_path / "ct", hu, SPACING, orientation="axial", seed=8)
    ct = read_ct_series(tmp_path / "ct")
    liver = _blob((20, 18, 6), 9.0)
    liver[:, :, :2] = liver[:, :, 10:] = False
    tumour = _blob((24, 14, 7), 3.0)
    tumour[:, :, :5] = tumour[:, :, 9:] = False
    seg_path = write_seg_file(tmp_path / "seg.dcm", {"Liver": liver, "Tumor_1": tumour}, files)
    frames = int(pydicom.dcmread(seg_path, stop_before_pixels=True).NumberOfFrames)
    covered = sorted(set(np.nonzero(liver.any(axis=(0, 1)))[0]) | set(np.nonzero(tumour.any(axis=(0, 1)))[0]))
    assert len(covered) < SHAPE[2] and frames < 2 * SHAPE[2]  # the SEG covers only some slices

    masks = read_seg(seg_path, ct)
    assert {n: label for n, (label, _) in masks.items()} == {1: "Liver", 2: "Tumor_1"}
    np.testing.assert_array_equal(masks[1][1], liver)
    np.testing.assert_array_equal(masks[2][1], tumour)

    # the same SEG on the same anatomy stored flipped: frames follow the instances
    flipped = write_ct_series(tmp_path / "flipped", hu, SPACING, orientation="axial_flipped", seed=9)
    seg_flipped = write_seg_file(tmp_path / "seg_flipped.dcm", {"Liver": liver}, flipped)
    np.testing.assert_array_equal(read_seg(seg_flipped, read_ct_series(tmp_path / "flipped"))[1][1], liver)


@pytest.mark.parametrize("orientation", ["axial", "axial_flipped", "sagittal"])
def test_volumes_come_in_fortran_order_as_nifti_stores_them(hu, tmp_path, orientation):
    """The CT and its masks in the layout nibabel reads and writes NIfTI in (the first axis fastest): written
    without a transposing copy, and one layout for every operation between two volumes (``dicomio``'s note)."""
    files = write_ct_series(tmp_path / "ct", hu, SPACING, orientation=orientation, seed=5)
    ct = read_ct_series(tmp_path / "ct")
    np.testing.assert_array_equal(ct.hu, hu)  # the values as before: only the layout is the reader's choice
    mask = read_seg(write_seg_file(tmp_path / "seg.dcm", {"Liver": _blob((20, 18, 6), 9.0)}, files), ct)[1][1]
    assert ct.hu.flags.f_contiguous and mask.flags.f_contiguous


def test_a_seg_of_another_series_is_refused(hu, tmp_path):
    write_ct_series(tmp_path / "ct", hu, SPACING, series_number=1)
    ct = read_ct_series(tmp_path / "ct")
    other = write_ct_series(tmp_path / "other", hu, SPACING, series_number=2, seed=3)
    seg_path = write_seg_file(tmp_path / "segs" / "other_seg.dcm", {"Tumor_1": _blob((20, 18, 6), 4.0)}, other)
    with pytest.raises(DicomSeriesError, match="references another series") as info:
        read_seg(seg_path, ct)
    message = str(info.value)
    assert message.startswith(str(seg_path))
    assert ct.description in message
    _assert_clean(message)


def test_write_seg_round_trips_through_read_seg(hu, tmp_path):
    write_ct_series(tmp_path / "ct", hu, SPACING, orientation="sagittal", seed=6)
    ct = read_ct_series(tmp_path / "ct")
    labels = np.zeros(SHAPE, np.uint8)
    labels[_blob((12, 12, 4), 4.0)] = 1
    labels[_blob((28, 24, 8), 5.0)] = 2
    out = write_seg(labels, {1: "cyst", 2: "metastasis"}, ct, tmp_path / "out" / "seg.dcm")
    header = pydicom.dcmread(out, stop_before_pixels=True)
    assert header.Manufacturer == "liverlesion" and "liverlesion" in str(header.SoftwareVersions)
    assert header.SeriesDescription == "liverlesion lesion classes"
    assert header.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.headers[0].SeriesInstanceUID
    masks = read_seg(out, ct)
    assert {n: label for n, (label, _) in masks.items()} == {1: "cyst", 2: "metastasis"}
    for number in (1, 2):
        np.testing.assert_array_equal(masks[number][1], labels == number)
    with pytest.raises(DicomSeriesError, match="have no segment"):
        write_seg(labels, {1: "cyst"}, ct, tmp_path / "bad.dcm")
