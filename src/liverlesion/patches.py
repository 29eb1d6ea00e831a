"""The paper's network input: three orthogonal patches per lesion, stacked as 3 channels.

Perdigon Romero et al. (ISBI 2019), section 3.3: the first patch lies in the plane where the lesion
is largest, the other two in the orthogonal planes through the lesion; each is cropped to the
lesion's bounding box, padded to a common size (252 x 210 there, to fit the largest lesion) with
the bounding box's mean value, and standardised (mean 0, standard deviation 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
from skimage.transform import resize

from liverlesion.contract import PATCH_INDEX_COLUMNS
from liverlesion.crops import LesionCrop, LesionCrops, cut_crops
from liverlesion.lesions import bounding_box
from liverlesion.progress import Progress, report_progress

_STD_FLOOR = 1e-6  # a constant patch is centred but not scaled


@dataclass(frozen=True)
class PatchInfo:
    """How one lesion's patches were cut, for the patch index table."""

    main_axis: int  # the array axis normal to the largest cross-section
    main_slice: int
    center_0: int
    center_1: int
    center_2: int
    main_area_mm2: float
    pad_value: float  # the bounding box's mean HU in the main plane
    fit_scale: float  # < 1 where a crop was shrunk to fit the canvas

    def as_row(self) -> dict:
        return asdict(self)


def _extent_factors(n: np.ndarray) -> np.ndarray:
    """(n - 1) / n for lesions spanning n voxels along one axis (one count per slice): their centre-to-centre extent.

    Counting whole voxels overstates a cross-section along a coarse axis: a lesion on two 5 mm
    slices is not 10 mm tall. Measuring between voxel centres removes that bias, so a small lesion
    on thick slices is not seen as "largest" in a reformatted plane. 0 where n <= 1.
    """
    n = n.astype(np.float64)
    return np.where(n > 1, (n - 1) / np.maximum(n, 1), 0.0)


def largest_cross_section(lesion: np.ndarray, spacing: tuple[float, float, float]) -> tuple[int, int, float]:
    """The axis and slice where the lesion's cross-section (in mm², centre-to-centre) is largest.

    Each slice's area is its voxel count times the pixel area, scaled by ``(n-1)/n`` along each
    in-plane axis the cross-section spans ``n`` voxels (see ``_extent_factors``). Ties go to the
    axial plane (axis 2), then the coronal (axis 1): where a radiologist looks first.

    Returns:
        ``(axis, slice_index, area_mm2)`` with ``slice_index`` in ``lesion``'s own coordinates.
    """
    if not lesion.any():
        raise ValueError("empty lesion mask: no cross-section to choose")
    best = None
    for axis in (2, 1, 0):
        others = [a for a in range(3) if a != axis]
        pixel_mm2 = spacing[others[0]] * spacing[others[1]]
        slices = np.moveaxis(lesion, axis, 0)  # (slice, first in-plane axis, second)
        counts = slices.sum(axis=(1, 2))
        # each slice's extent factor along its first and its second in-plane axis, all slices at once
        factors = [_extent_factors(slices.any(axis=2).sum(axis=1)), _extent_factors(slices.any(axis=1).sum(axis=1))]
        for index in np.flatnonzero(counts):
            area = counts[index] * pixel_mm2 * factors[0][index] * factors[1][index]
            if best is None or area > best[2] + 1e-9:
                best = (axis, int(index), float(area))
    if best[2] == 0.0:  # a thread or a single voxel: no measurable section; take the fullest axial slice
        return 2, int(np.argmax(lesion.sum(axis=(0, 1)))), 0.0
    return best


def to_square_pixels(crop: np.ndarray, pixel_mm: tuple[float, float], target_mm: float) -> np.ndarray:
    """Resample a plane so both pixel sides measure ``target_mm``: a reformat in true proportions.

    On 5 mm slices a coronal or sagittal plane is otherwise squashed six-fold along the body axis.
    """
    shape = tuple(max(1, int(round(n * p / target_mm))) for n, p in zip(crop.shape, pixel_mm))
    if shape == crop.shape:
        return crop
    return resize(crop, shape, order=1, anti_aliasing=False, preserve_range=True).astype(np.float32)


def plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice of ``volume`` normal to ``axis`` (rows = lower remaining axis)."""
    return np.take(volume, index, axis=axis)


def pad_to_canvas(crop: np.ndarray, canvas: tuple[int, int], value: float) -> tuple[np.ndarray, float]:
    """Centre ``crop`` on a ``canvas``-sized array filled with ``value``.

    A crop larger than the canvas is first shrunk (aspect ratio kept) to fit.

    Returns:
        The padded array and the scale applied to the crop (1.0 when it fitted).
    """
    rows, cols = canvas
    scale = min(1.0, rows / crop.shape[0], cols / crop.shape[1])
    if scale < 1.0:
        new_shape = (max(1, int(crop.shape[0] * scale)), max(1, int(crop.shape[1] * scale)))
        crop = resize(crop, new_shape, order=1, anti_aliasing=True, preserve_range=True)
    out = np.full(canvas, value, dtype=np.float32)
    r0 = (rows - crop.shape[0]) // 2
    c0 = (cols - crop.shape[1]) // 2
    out[r0 : r0 + crop.shape[0], c0 : c0 + crop.shape[1]] = crop
    return out, scale


def standardise(patch: np.ndarray) -> np.ndarray:
    """Mean 0, standard deviation 1 (a constant patch becomes all zeros)."""
    patch = patch.astype(np.float32)
    centred = patch - patch.mean()
    std = float(centred.std())
    return centred / std if std > _STD_FLOOR else centred


def lesion_patches(
    image: np.ndarray,
    lesion: np.ndarray,
    spacing: tuple[float, float, float],
    margin_mm: float,
    canvas: tuple[int, int],
    output_size: tuple[int, int] | None,
    square_pixels: bool,
) -> tuple[np.ndarray, PatchInfo]:
    """Three orthogonal, padded, standardised patches of one lesion as an (H, W, 3) array.

    Args:
        image: the CT in HU.
        lesion: boolean mask of this lesion only, same shape as ``image``.
        spacing: voxel size in mm along the array axes (the largest cross-section is in mm²).
        margin_mm: added around the lesion's bounding box on each side (whole voxels, at least
            one where > 0; clipped at the volume's edge).
        canvas: the common size every crop is padded to, (rows, columns).
        output_size: resize the padded canvas to this (rows, columns) for the network; None keeps
            the canvas size.
        square_pixels: resample each plane to the volume's finest spacing in both directions
            (true proportions); False keeps the voxel grid, as the paper's patches did.

    Returns:
        The patch stack (channel 0: largest cross-section; 1, 2: the orthogonal planes through its
        centre, in increasing axis order) and how it was cut.
    """
    if image.shape != lesion.shape:
        raise ValueError(f"image shape {image.shape} differs from lesion mask shape {lesion.shape}")
    if not lesion.any():
        raise ValueError("empty lesion mask: nothing to cut patches from")
    coords = np.argwhere(lesion)
    margin = np.ceil(margin_mm / np.asarray(spacing, dtype=float)).astype(int)
    lo = np.maximum(coords.min(axis=0) - margin, 0)
    hi = np.minimum(coords.max(axis=0) + 1 + margin, image.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    local_image = image[box].astype(np.float32)
    local_lesion = lesion[box]

    axis, index, area = largest_cross_section(local_lesion, spacing)
    # centre of the largest cross-section: the other two planes pass through it
    in_plane = np.argwhere(plane(local_lesion, axis, index))
    others = [a for a in range(3) if a != axis]
    center = [0, 0, 0]
    center[axis] = index
    for k, a in enumerate(others):
        center[a] = int(round(in_plane[:, k].mean()))

    channels = []
    pad_value = None
    fit_scale = 1.0
    finest = float(min(spacing))
    for a in [axis, *others]:
        crop = plane(local_image, a, center[a])
        if square_pixels:
            in_plane = [spacing[b] for b in range(3) if b != a]
            crop = to_square_pixels(crop, (in_plane[0], in_plane[1]), finest)
        value = float(crop.mean())  # the paper's padding: the bounding box's mean
        padded, scale = pad_to_canvas(crop, canvas, value)
        if pad_value is None:
            pad_value = value
        fit_scale = min(fit_scale, scale)
        if output_size is not None and tuple(output_size) != tuple(canvas):
            padded = resize(padded, output_size, order=1, anti_aliasing=True, preserve_range=True)
        channels.append(standardise(padded))
    info = PatchInfo(
        main_axis=axis,
        main_slice=int(index + lo[axis]),
        center_0=int(center[0] + lo[0]),
        center_1=int(center[1] + lo[1]),
        center_2=int(center[2] + lo[2]),
        main_area_mm2=area,
        pad_value=float(pad_value),
        fit_scale=float(fit_scale),
    )
    return np.stack(channels, axis=-1).astype(np.float32), info


def crop_patches(
    crops: list[LesionCrop],
    margin_mm: float,
    canvas: tuple[int, int],
    output_size: tuple[int, int] | None,
    square_pixels: bool,
) -> tuple[np.ndarray, list[dict]]:
    """The three orthogonal patches of each crop, in order: the one preprocessing path.

    ``extract_patches`` (training, evaluation) and ``predict`` both cut patches here, so a lesion
    gets the same patches whichever way it comes in. A crop holds the lesion's box plus at least
    ``margin_mm`` (clipped at the volume's edge), so the patch geometry finds there what it would
    find in the whole volume; positions are given in the volume's voxels.

    Returns:
        ``(patches (n, rows, cols, 3) float32, patch-index rows without "row")``.
    """
    size = tuple(output_size or canvas)
    stacks = np.zeros((len(crops), *size, 3), dtype=np.float32)
    rows = []
    for k, crop in enumerate(crops):
        lo = crop.origin
        stack, info = lesion_patches(crop.image, crop.mask, crop.spacing, margin_mm, canvas, output_size, square_pixels)
        info = replace(
            info,
            main_slice=info.main_slice + lo[info.main_axis],
            center_0=info.center_0 + lo[0],
            center_1=info.center_1 + lo[1],
            center_2=info.center_2 + lo[2],
        )
        stacks[k] = stack
        rows.append({"lesion_id": crop.lesion_id, **info.as_row()})
    return stacks, rows


def case_patches(
    image: np.ndarray,
    instances: np.ndarray,
    spacing: tuple[float, float, float],
    lesions: pd.DataFrame,
    margin_mm: float,
    canvas: tuple[int, int],
    output_size: tuple[int, int] | None,
    square_pixels: bool,
) -> tuple[np.ndarray, list[dict]]:
    """The three orthogonal patches of each lesion of one whole case, in the order of ``lesions`` (``crop_patches``)."""
    case_id = str(lesions["case_id"].iloc[0]) if len(lesions) else ""
    described = [
        {"instance": int(r.instance), "label": None, "box": bounding_box(r._asdict())}
        for r in lesions.itertuples(index=False)
    ]
    return crop_patches(
        cut_crops(image, instances, described, spacing, case_id, margin_mm),
        margin_mm,
        canvas,
        output_size,
        square_pixels,
    )


def extract_cohort_patches(
    lesions: pd.DataFrame,
    crops: LesionCrops,
    margin_mm: float,
    canvas: tuple[int, int],
    output_size: tuple[int, int] | None,
    square_pixels: bool,
    progress: Progress = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Three orthogonal patches for every lesion, in lesion-table order, from the ingested crops.

    Returns:
        ``patches`` (N, rows, cols, 3) float32 and the patch index (``lesion_id``, ``row`` and how
        each stack was cut).

    Raises:
        ValueError: the crops were cut with less margin than the patches need (re-run ingest).
    """
    if crops.margin_mm < margin_mm:
        raise ValueError(
            f"the crops keep {crops.margin_mm} mm around each lesion, the patches need {margin_mm} mm: "
            "ingest with crop_margin_mm at least the patch margin"
        )
    lesions = lesions.reset_index(drop=True)
    size = tuple(output_size or canvas)
    patches = np.zeros((len(lesions), *size, 3), dtype=np.float32)
    index_rows = []
    by_case = list(lesions.groupby("case_id", sort=False))
    for i, (case_id, group) in enumerate(by_case, start=1):
        stacks, rows = crop_patches(
            [crops[lid] for lid in group["lesion_id"]], margin_mm, canvas, output_size, square_pixels
        )
        for row_number, stack, row in zip(group.index, stacks, rows):
            patches[row_number] = stack
            index_rows.append({"row": row_number, **row})
        report_progress(progress, i, len(by_case), str(case_id))
    index = pd.DataFrame(index_rows, columns=list(PATCH_INDEX_COLUMNS)).sort_values("row").reset_index(drop=True)
    return patches, index
