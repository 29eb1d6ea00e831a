"""The paper's network input: three orthogonal patches per lesion, stacked as 3 channels.

Perdigon Romero et al. (ISBI 2019), section 3.3: the first patch lies in the plane where the lesion
is largest, the other two in the orthogonal planes through the lesion; each is cropped to the
lesion's bounding box, padded to a common size (252 x 210 there, to fit the largest lesion) with
the bounding box's mean value, and standardised (mean 0, standard deviation 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from skimage.transform import resize

#: The paper's padded patch size (rows, columns), chosen there to fit the largest lesion.
PAPER_CANVAS = (252, 210)
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


def largest_cross_section(lesion: np.ndarray, spacing: tuple[float, float, float]) -> tuple[int, int, float]:
    """The axis and slice where the lesion's cross-section (in mm²) is largest.

    Ties go to the axial plane (axis 2), then the coronal (axis 1): for a round lesion the axial
    slice, which is where a radiologist looks first.

    Returns:
        ``(axis, slice_index, area_mm2)`` with ``slice_index`` in ``lesion``'s own coordinates.
    """
    if not lesion.any():
        raise ValueError("empty lesion mask: no cross-section to choose")
    best = None
    for axis in (2, 1, 0):
        others = [a for a in range(3) if a != axis]
        pixel_mm2 = spacing[others[0]] * spacing[others[1]]
        areas = lesion.sum(axis=tuple(others)) * pixel_mm2
        index = int(np.argmax(areas))
        if best is None or areas[index] > best[2] + 1e-9:
            best = (axis, index, float(areas[index]))
    return best


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
    margin: int = 5,
    canvas: tuple[int, int] = PAPER_CANVAS,
    output_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, PatchInfo]:
    """Three orthogonal, padded, standardised patches of one lesion as an (H, W, 3) array.

    Args:
        image: the CT in HU.
        lesion: boolean mask of this lesion only, same shape as ``image``.
        spacing: voxel size in mm along the array axes (the largest cross-section is in mm²).
        margin: voxels added around the lesion's bounding box on each side (clipped at the edge).
        canvas: the common size every crop is padded to, (rows, columns).
        output_size: resize the padded canvas to this (rows, columns) for the network; None keeps
            the canvas size.

    Returns:
        The patch stack (channel 0: largest cross-section; 1, 2: the orthogonal planes through its
        centre, in increasing axis order) and how it was cut.
    """
    if image.shape != lesion.shape:
        raise ValueError(f"image shape {image.shape} differs from lesion mask shape {lesion.shape}")
    if not lesion.any():
        raise ValueError("empty lesion mask: nothing to cut patches from")
    coords = np.argwhere(lesion)
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
    for a in [axis, *others]:
        crop = plane(local_image, a, center[a])
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
