"""Binary morphology on CT grids: structuring elements in millimetres, components, holes."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: face, edge and corner neighbours: what a lesion instance is connected by (``contract``)
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


def ball(radius_mm: float, spacing) -> np.ndarray:
    """An ellipsoidal structuring element of ``radius_mm`` on a grid of ``spacing``."""
    radii = np.maximum(np.floor(radius_mm / np.asarray(spacing, dtype=float)), 0).astype(int)
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    inside = sum((g / max(r, 1)) ** 2 if r > 0 else g.astype(float) ** 2 for g, r in zip(grids, radii))
    return inside <= 1.0


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=CONNECTIVITY_26)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3D and in every axial slice (a lesion at the dome is a hole only in-plane)."""
    filled = ndimage.binary_fill_holes(mask)
    for k in range(filled.shape[2]):
        filled[:, :, k] = ndimage.binary_fill_holes(filled[:, :, k])
    return filled


# Morphology by distance transform: the cost does not grow with the radius, so a centimetre-scale opening
# or closing of a whole CT takes a second where a structuring element of that size takes minutes.
def dilate_mm(mask: np.ndarray, radius_mm: float, spacing) -> np.ndarray:
    """Every voxel within ``radius_mm`` of ``mask`` (a ball in millimetres, anisotropic grids included)."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius_mm


def erode_mm(mask: np.ndarray, radius_mm: float, spacing) -> np.ndarray:
    """The voxels of ``mask`` farther than ``radius_mm`` from outside it (the volume's edge counts as outside)."""
    inside = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)
    return inside[1:-1, 1:-1, 1:-1] > radius_mm


def open_mm(mask: np.ndarray, radius_mm: float, spacing) -> np.ndarray:
    """Opening by a ball of ``radius_mm``: what a ball of that size cannot enter (bridges, thin parts) removed."""
    return dilate_mm(erode_mm(mask, radius_mm, spacing), radius_mm, spacing) & mask


def close_mm(mask: np.ndarray, radius_mm: float, spacing) -> np.ndarray:
    """Closing by a ball of ``radius_mm``, not cut short at the volume's edge: gaps and bays narrower than it filled."""
    pad = [int(np.ceil(radius_mm / s)) + 1 for s in np.asarray(spacing, dtype=float)]
    padded = np.pad(mask, [(p, p) for p in pad])
    closed = erode_mm(dilate_mm(padded, radius_mm, spacing), radius_mm, spacing)
    return closed[tuple(slice(p, -p) for p in pad)] | mask


def reconstruct(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The components of ``mask`` that ``seed`` touches (reconstruction by dilation)."""
    labels, _ = ndimage.label(mask, structure=CONNECTIVITY_26)
    touched = np.unique(labels[seed & (labels > 0)])
    return np.isin(labels, touched[touched > 0])
