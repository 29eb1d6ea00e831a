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
