"""NIfTI I/O: every read returns ``(array, meta)``; orientation is made canonical (RAS+) once, here.

Writes are byte-reproducible: gzip stores a modification time and a file name in its header, so
``.nii.gz`` files are compressed with both fixed, and the same array gives the same bytes (and the
same DVC hash) whenever it is written.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np


@dataclass(frozen=True)
class ImageMeta:
    """What every loaded image carries besides its voxels."""

    spacing: tuple[float, float, float]  # mm along array axes 0, 1, 2
    affine: np.ndarray  # 4x4 voxel -> RAS mm
    orientation: str  # axis codes of the array as stored on disk, e.g. "LPS"
    shape: tuple[int, int, int]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


def load_nifti(path: str | Path, dtype: np.dtype | type | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Load a 3D NIfTI volume reoriented to canonical RAS+ axes.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        dtype: cast the voxels to this type (default: the stored type with scaling applied).

    Raises:
        ValueError: the file is not a 3D volume, naming the file.
    """
    path = Path(path)
    img = nib.load(str(path))
    if len(img.shape) != 3:
        raise ValueError(f"{path}: expected a 3D volume, found shape {img.shape}")
    orientation = "".join(nib.aff2axcodes(img.affine))
    canonical = nib.as_closest_canonical(img)
    if dtype is None:
        array = np.asanyarray(canonical.dataobj)
    else:
        array = np.asarray(canonical.dataobj, dtype=dtype)
    zooms = canonical.header.get_zooms()[:3]
    meta = ImageMeta(
        spacing=tuple(float(z) for z in zooms),
        affine=canonical.affine.copy(),
        orientation=orientation,
        shape=tuple(int(s) for s in array.shape),
    )
    return np.asarray(array), meta


def affine_from_spacing(spacing: tuple[float, float, float], origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A RAS+ affine with the given voxel spacing (mm) and origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = origin
    return affine


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write a volume as NIfTI-1; ``.nii.gz`` output is byte-for-byte deterministic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    data = img.to_bytes()
    tmp = path.with_name(path.name + ".tmp")
    if path.name.endswith(".gz"):
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
            gz.write(data)
    else:
        tmp.write_bytes(data)
    tmp.replace(path)
    return path
