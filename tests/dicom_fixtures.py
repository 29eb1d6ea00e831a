"""Test helpers that WRITE synthetic DICOM: CT series, IRCADb-style mask series and DICOM-SEG.

The volumes are given on the canonical RAS+ grid (axes x, y, z as ``load_nifti`` returns them)
and stored in a chosen orientation and slice order, with header defects on request, so that the
readers in ``liverlesion.dicomio`` can be checked against the array that went in.

Mask slices and SEG frames are placed by the world position of each pixel of the reference
files (computed here from their headers), not through the reader's code, so the tests do not
check the reader against itself.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import DSfloat

from liverlesion.imaging import affine_from_spacing

#: what a real header would carry about the patient; no reader message may repeat any of it
IDENTIFYING = {
    "PatientName": "DOE^JANE",
    "PatientID": "MRN-884422",
    "PatientBirthDate": "19580214",
    "AccessionNumber": "ACC-55123",
    "InstitutionName": "St Elsewhere General Hospital",
    "ReferringPhysicianName": "HOUSE^GREGORY",
}
#: RAS position (mm) of voxel (0, 0, 0) of the canonical array written by the fixtures
ORIGIN_RAS = (-15.0, -20.0, -40.0)
#: axis codes (nibabel, direction of increasing index) of the stored (columns, rows, slices)
#: layout for each orientation, and thereby the ImageOrientationPatient written:
ORIENTATION_CODES = {
    "axial": ("L", "P", "I"),  # IOP [1,0,0,0,1,0]; instance 1 at the head, descending
    "axial_flipped": ("R", "A", "S"),  # IOP [-1,0,0,0,-1,0]
    "axial_transposed": ("P", "L", "S"),  # IOP [0,1,0,1,0,0]
    "feet_first": ("R", "P", "S"),  # IOP [-1,0,0,0,1,0]; instance 1 at the feet, ascending
    "coronal": ("L", "I", "P"),  # IOP [1,0,0,0,0,-1]
    "sagittal": ("P", "I", "L"),  # IOP [0,1,0,0,0,-1]
}
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _ds(values) -> list[DSfloat]:
    return [DSfloat(float(v), auto_format=True) for v in values]


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _base_header(identifying: dict, study_uid: str) -> Dataset:
    ds = Dataset()
    ds.PatientSex = "F"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "1"
    ds.StudyInstanceUID = study_uid
    for keyword, value in identifying.items():
        setattr(ds, keyword, value)
    return ds


def _names(n: int, shuffle: bool, rng: np.random.Generator) -> tuple[list[int], list[str]]:
    """The order files are written in and their names."""
    order = list(rng.permutation(n)) if shuffle else list(range(n))
    if shuffle:
        names = [f"{int(v):012x}" for v in rng.integers(0, 2**47, size=n)]
    else:
        names = [f"image_{k}" for k in range(n)]
    return [int(k) for k in order], names


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    spacing=(0.8, 0.8, 2.5),
    *,
    orientation: str = "axial",
    shuffle: bool = True,
    intercept: float = -1024.0,
    slope: float = 1.0,
    identifying: dict | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    drop_slice: int | None = None,
    uneven: bool = False,
    tilt_mm: float = 0.0,
    modality: str = "CT",
    localizer: bool = False,
    padding_value: int | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write ``hu`` (canonical RAS+ x, y, z; voxel (0,0,0) at ``ORIGIN_RAS``) as a DICOM series.

    Args:
        folder: where the files go (created).
        hu: Hounsfield units; each value must be ``stored * slope + intercept`` for an int16.
        spacing: mm along x, y, z.
        orientation: a key of ``ORIENTATION_CODES``.
        shuffle: random file names, written in random order (else ``image_<k>`` in slice order).
        intercept, slope: RescaleIntercept and RescaleSlope.
        identifying: patient header values (default ``IDENTIFYING``).
        study_uid, series_uid: default: derived from the folder, seed and series number.
        series_number: SeriesNumber (the description is ``synthetic CT <orientation>``).
        drop_slice: leave out this slice (index in the stored order): a missing slice.
        uneven: move the upper half of the stack by 30% of a step: uneven spacing.
        tilt_mm: shift slice ``k`` by ``k * tilt_mm`` along the column direction (a sheared,
            gantry-tilted stack; GantryDetectorTilt stays 0).
        modality: Modality (``"MR"`` writes MR Image Storage).
        localizer: ImageType LOCALIZER.
        padding_value: write PixelPaddingValue with this stored value (put
            ``padding_value * slope + intercept`` HU where the padding is).
        seed: file names and order.

    Returns:
        The files, in the order written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    identifying = IDENTIFYING if identifying is None else identifying
    rng = np.random.default_rng(seed)
    study_uid = study_uid or _uid("study", folder, seed)
    series_uid = series_uid or _uid("series", folder, seed, series_number)
    frame_uid = _uid("frame", study_uid, series_uid)

    image = nib.Nifti1Image(np.asarray(hu, dtype=np.float64), affine_from_spacing(spacing, ORIGIN_RAS))
    transform = nib.orientations.ornt_transform(
        nib.io_orientation(image.affine), nib.orientations.axcodes2ornt(ORIENTATION_CODES[orientation])
    )
    stored_image = image.as_reoriented(transform)
    source = np.asarray(stored_image.dataobj)
    lps = _LPS_TO_RAS @ stored_image.affine
    column_step, row_step = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_cosine, column_cosine = lps[:3, 0] / column_step, lps[:3, 1] / row_step
    slice_vector, origin = lps[:3, 2], lps[:3, 3]

    stored = np.rint((source - intercept) / slope)
    if not np.allclose(stored * slope + intercept, source, atol=1e-6) or stored.min() < -32768 or stored.max() > 32767:
        raise ValueError("hu is not stored_int16 * slope + intercept")
    stored = stored.astype(np.int16)

    n = source.shape[2]
    order, names = _names(n, shuffle, rng)
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    written: list[Path] = []
    for k in order:
        if drop_slice is not None and k == drop_slice:
            continue
        position = origin + k * slice_vector + k * tilt_mm * column_cosine
        if uneven and k >= n // 2:
            position = position + 0.3 * slice_vector
        sop_uid = _uid("sop", series_uid, k)
        ds = _base_header(identifying, study_uid)
        ds.file_meta = _file_meta(sop_class, sop_uid)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.SeriesNumber = series_number
        ds.SeriesDescription = f"synthetic CT {orientation}"
        ds.InstanceNumber = k + 1
        ds.Manufacturer = "fixture"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localizer else "AXIAL"]
        ds.BurnedInAnnotation = "NO"
        ds.GantryDetectorTilt = 0
        ds.KVP = 120
        ds.SliceThickness = DSfloat(float(np.linalg.norm(slice_vector)), auto_format=True)
        ds.ImageOrientationPatient = _ds([*row_cosine, *column_cosine])
        ds.ImagePositionPatient = _ds(position)
        ds.PixelSpacing = _ds([row_step, column_step])
        ds.Rows, ds.Columns = source.shape[1], source.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept = DSfloat(float(intercept), auto_format=True)
        ds.RescaleSlope = DSfloat(float(slope), auto_format=True)
        ds.RescaleType = "HU"
        if padding_value is not None:
            ds.PixelPaddingValue = int(padding_value)
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def rewrite(files, **values) -> None:
    """Set header attributes (keyword=value; None deletes) in existing files."""
    for path in files:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
                element = ds[keyword]
                if element.VR == "US or SS":  # e.g. PixelPaddingRangeLimit: follows PixelRepresentation
                    element.VR = "SS" if int(ds.get("PixelRepresentation", 0)) == 1 else "US"
        ds.save_as(path)


def _canonical_indices(datasets: list[Dataset]) -> list[np.ndarray]:
    """For each slice, the canonical (x, y, z) index of each pixel: (rows, columns, 3) ints.

    World positions of all pixels (from IPP, IOP, PixelSpacing; LPS -> RAS) are ranked along
    each RAS axis: the grid must be axis-aligned, as every fixture orientation is.
    """
    coordinates = []
    for ds in datasets:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        j, i = np.mgrid[0 : int(ds.Rows), 0 : int(ds.Columns)]
        lps = ipp + i[..., None] * dc * iop[:3] + j[..., None] * dr * iop[3:]
        coordinates.append(lps * np.array([-1.0, -1.0, 1.0]))
    all_coordinates = np.concatenate([c.reshape(-1, 3) for c in coordinates]).round(3)
    axes = [np.unique(all_coordinates[:, a]) for a in range(3)]
    indices = []
    for c in coordinates:
        c = c.round(3)
        indices.append(np.stack([np.searchsorted(axes[a], c[..., a]) for a in range(3)], axis=-1))
    return indices


def write_mask_series(
    folder: Path, mask_bool: np.ndarray, reference_files, *, modality: str = "CT", shuffle: bool = True, seed: int = 1
) -> list[Path]:
    """Write an IRCADb-style mask series: one uint8 0/255 slice per reference slice, same geometry.

    Args:
        folder: where the mask files go.
        mask_bool: the mask on the canonical grid of the reference series.
        reference_files: the CT files (any order).
        modality: IRCADb masks say CT; others OT.
        shuffle: random names and order, unrelated to the CT files'.
        seed: names and order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    references = [pydicom.dcmread(p, stop_before_pixels=True) for p in reference_files]
    indices = _canonical_indices(references)
    mask_bool = np.asarray(mask_bool, dtype=bool)
    series_uid = _uid("mask", folder, seed)
    order, names = _names(len(references), shuffle, np.random.default_rng(seed))
    written = []
    for k in order:
        ref = references[k]
        idx = indices[k]
        pixels = np.where(mask_bool[idx[..., 0], idx[..., 1], idx[..., 2]], 255, 0).astype(np.uint8)
        sop_uid = _uid("masksop", series_uid, k)
        ds = _base_header({kw: ref.get(kw) for kw in IDENTIFYING if kw in ref}, str(ref.StudyInstanceUID))
        ds.file_meta = _file_meta(CTImageStorage, sop_uid)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = ref.FrameOfReferenceUID
        ds.Modality = modality
        ds.SeriesNumber = 2
        ds.SeriesDescription = "livertumor01"
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = ref.ImageOrientationPatient
        ds.ImagePositionPatient = ref.ImagePositionPatient
        ds.PixelSpacing = ref.PixelSpacing
        ds.Rows, ds.Columns = ref.Rows, ref.Columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.tobytes()
        path = folder / names[k]
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


def write_seg_file(path: Path, masks: dict[str, np.ndarray], reference_files) -> Path:
    """Write a BINARY DICOM-SEG with highdicom, segment ``n`` = the ``n``-th key of ``masks``.

    Empty frames are omitted, as TCIA's SEGs do, so the frames cover only some CT slices.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sources = [pydicom.dcmread(p) for p in reference_files]
    indices = _canonical_indices(sources)
    labels = list(masks)
    pixel_array = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns), len(labels)), dtype=bool)
    for s, idx in enumerate(indices):
        for m, label in enumerate(labels):
            pixel_array[s, :, :, m] = np.asarray(masks[label], dtype=bool)[idx[..., 0], idx[..., 1], idx[..., 2]]
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=m + 1,
            segment_label=label,
            segmented_property_category=codes.SCT.Organ
            if label == "Liver"
            else codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Liver if label == "Liver" else codes.SCT.Neoplasm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for m, label in enumerate(labels)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=_uid("segseries", path),
        series_number=99,
        sop_instance_uid=_uid("segsop", path),
        instance_number=1,
        manufacturer="fixture",
        manufacturer_model_name="fixture",
        software_versions="0",
        device_serial_number="0",
        omit_empty_frames=True,
    )
    seg.save_as(path)
    return path
