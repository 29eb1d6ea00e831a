"""NIfTI I/O: every read returns ``(array, meta)``; orientation is made canonical (RAS+) once, here.

Writes are byte-reproducible: gzip stores a modification time and a file name in its header, so
``.nii.gz`` files are compressed with both fixed, and the same array gives the same bytes (and the
same DVC hash) whenever it is written.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from isal import igzip
from isal.isal_zlib import error as IsalError
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from nibabel.wrapstruct import WrapStructError

from liverlesion.contract import (
    HU_AIR,
    HU_IMPOSSIBLE_ABOVE,
    HU_IMPOSSIBLE_BELOW,
    MAX_VOXELS,
    ContractError,
    shown,
    source_label,
)

#: no voxel of a CT in HU is below this, then it holds no air at all: an MR image, or CT stored
#: without its rescale (air at 0); every abdominal CT has air around the body and in the bowel
CT_AIR_EVIDENCE_HU = -500.0


@dataclass(frozen=True)
class ImageMeta:
    """What every loaded image carries besides its voxels."""

    spacing: tuple[float, float, float]  # mm along array axes 0, 1, 2
    affine: np.ndarray  # 4x4 voxel -> RAS mm
    orientation: str  # axis codes of the array as stored on disk, e.g. "LPS"
    shape: tuple[int, int, int]
    source_affine: np.ndarray | None = None  # 4x4 voxel -> RAS mm of the array as stored (None: as canonical)

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


#: ``sizeof_hdr`` of a NIfTI-1 header, and of a NIfTI-2 header
_NIFTI1_HEADER_SIZE, _NIFTI2_HEADER_SIZE = 348, 540


#: bytes read at a time from a ``.nii.gz``
_CHUNK = 1 << 20


def _check_size(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse a volume whose header claims more than ``contract.MAX_VOXELS`` voxels, before allocating it."""
    voxels = int(np.prod([int(s) for s in shape], dtype=object)) if len(shape) else 0
    if voxels > MAX_VOXELS:
        raise ContractError(
            f"{shown(str(path))}: its header claims {' x '.join(str(int(s)) for s in shape)} = {voxels:,} voxels, "
            f"more than the limit of {MAX_VOXELS:,} (contract.MAX_VOXELS); nothing was read"
        )


def _header_of(head: bytes) -> nib.Nifti1Header | nib.Nifti2Header:
    """The NIfTI-1 or -2 header at the start of ``head`` (its checks are nibabel's, when the image is made)."""
    sizes = {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")}
    if _NIFTI1_HEADER_SIZE in sizes:
        header_class = nib.Nifti1Header
    elif _NIFTI2_HEADER_SIZE in sizes:
        header_class = nib.Nifti2Header
    else:
        raise ImageFileError("no NIfTI-1 or NIfTI-2 header")
    return header_class.from_fileobj(io.BytesIO(head[: header_class.template_dtype.itemsize]), check=False)


def _read_image(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """The image of a NIfTI file, its size checked from the header before the voxels are read.

    A ``.gz`` is decompressed as a stream, never beyond what its header says it holds: a file that inflates
    to more is refused (a decompression bomb), and it is read to its end, so a damaged file fails its CRC
    check instead of loading with wrong voxels (nibabel stops reading before the trailer).
    """
    if not path.name.endswith(".gz"):
        image = nib.load(str(path))
        _check_size(path, image.shape)
        _check_length(path, image.header, path.stat().st_size)
        return image
    if path.stat().st_size == 0:
        raise ImageFileError(f"Empty file: '{path}'")  # as nibabel says it for a .nii
    with igzip.open(path, "rb") as stream:  # ISA-L: twice zlib's speed, the same bytes and checks
        raw = bytearray(stream.read(_NIFTI2_HEADER_SIZE))  # a NIfTI-1 header and its extension flag fit too
        header = _header_of(bytes(raw))
        _check_size(path, header.get_data_shape())
        expected = _described_bytes(path, header)
        limit = max(expected, len(raw)) + _CHUNK  # room for extensions a header does not count
        while chunk := stream.read(_CHUNK):
            raw += chunk
            if len(raw) > limit:
                raise ContractError(
                    f"{shown(str(path))}: inflates to more than the {expected:,} bytes its header describes (a "
                    "decompression bomb or a damaged file); nothing was loaded"
                )
    _check_length(path, header, len(raw))
    # the image class of the header that was checked (a Nifti2Header is a Nifti1Header too: ask for it first)
    return (nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image).from_bytes(raw)


def _data_dtype(path: Path, header) -> np.dtype:
    """The voxels' stored type, or a refusal naming an unknown NIfTI data type code."""
    try:
        return header.get_data_dtype()
    except KeyError:
        raise ContractError(
            f"{shown(str(path))}: unknown NIfTI data type code {int(header['datatype'])}; not a readable image"
        ) from None


def _described_bytes(path: Path, header) -> int:
    """The bytes a file must hold for its header: the voxels it describes, after its offset (which covers any
    extension)."""
    voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
    return int(header.get_data_offset()) + voxels * _data_dtype(path, header).itemsize


def _check_length(path: Path, header, length: int) -> None:
    """Refuse a file shorter than the voxels its header describes before they are read: nibabel would allocate
    the array the header claims, then find the bytes missing."""
    expected = _described_bytes(path, header)
    if length < expected:
        raise ContractError(
            f"{shown(str(path))}: holds {length:,} bytes, fewer than the {expected:,} its header describes (a "
            "truncated or damaged file); nothing was loaded"
        )


def load_nifti(path: str | Path, dtype: np.dtype | type | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Load a 3D NIfTI volume reoriented to canonical RAS+ axes.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        dtype: cast the voxels to this type (default: the stored type with scaling applied).

    Raises:
        ContractError: the file is missing, truncated, not a NIfTI image, or not a 3D volume
            (a trailing axis of length 1 is dropped), naming the file.
    """
    path = Path(path)
    try:
        img = _read_image(path)
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1 and min(shape[:3]) >= 2:  # nibabel cannot slice an empty axis
            img = img.slicer[..., 0]
        if len(img.shape) != 3 or min(img.shape) < 2:
            raise ContractError(f"{shown(str(path))}: not a 3D volume (shape {shape}); a CT and its mask are 3D")
        _check_geometry(img, path)
        stored = _data_dtype(path, img.header)
        if stored.kind not in "iuf" or stored.fields is not None:
            raise ContractError(
                f"{shown(str(path))}: voxels of type {stored.name}; a CT and its mask hold real numbers (integers or "
                "floats), not complex or RGB values"
            )
        orientation = "".join(nib.aff2axcodes(img.affine))
        canonical = nib.as_closest_canonical(img)
        if dtype is None:
            array = np.asanyarray(canonical.dataobj)
        else:
            array = np.asarray(canonical.dataobj, dtype=dtype)
    except ContractError:
        raise
    except FileNotFoundError:
        raise ContractError(f"{shown(str(path))}: no such file") from None
    except (OSError, EOFError, ValueError, ImageFileError, WrapStructError, HeaderDataError, IsalError) as err:
        detail = f"{type(err).__name__}: {' '.join(str(err).split())}"  # one line
        if source_label():  # nibabel's text names the file
            detail = detail.replace(str(path), "<file>").replace(Path(path).name, "<file>")
        raise ContractError(f"{shown(str(path))}: not a readable NIfTI image ({detail})") from None
    zooms = canonical.header.get_zooms()[:3]
    meta = ImageMeta(
        spacing=tuple(float(z) for z in zooms),
        affine=canonical.affine.copy(),
        orientation=orientation,
        shape=tuple(int(s) for s in array.shape),
        source_affine=img.affine.copy(),
    )
    return np.asarray(array), meta


def _check_geometry(img, path: Path) -> None:
    """A voxel-to-world transform that places a 3D volume: finite, of full rank, with positive finite spacing (a
    header of zeros or NaN would otherwise fail deep in the reorientation, or give a volume without geometry)."""
    affine = np.asarray(img.affine, dtype=float)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if not np.isfinite(affine).all() or not np.isfinite(zooms).all() or (zooms <= 0).any():
        problem = "non-finite values in its affine or voxel spacing"
    elif np.linalg.matrix_rank(affine[:3, :3], tol=1e-6 * max(float(np.abs(affine[:3, :3]).max()), 1e-30)) < 3:
        problem = "its affine does not span three dimensions"
    else:
        return
    raise ContractError(
        f"{shown(str(path))}: no valid geometry ({problem}); a CT and its mask must say where their voxels lie"
    )


def to_source_orientation(array: np.ndarray, meta: ImageMeta) -> tuple[np.ndarray, np.ndarray]:
    """A canonical (RAS+) array put back in the axis order and directions the image was stored in.

    Returns:
        The array and the affine of the stored image, so a result volume (a label map) opens in a
        viewer exactly over its CT.
    """
    if meta.source_affine is None:
        return array, meta.affine
    source = nib.orientations.io_orientation(meta.source_affine)
    canonical = nib.orientations.io_orientation(meta.affine)
    transform = nib.orientations.ornt_transform(canonical, source)
    return nib.orientations.apply_orientation(array, transform), meta.source_affine


def check_hu(volume: np.ndarray, where: str, padding: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """A CT volume in Hounsfield units as float32 with scanner padding set to air, or a named refusal.

    Scanners fill what lies outside the reconstructed field of view with a value far below air
    (-2048, -3024, ...): air, not an error. That fill is ``padding`` where the file declares it
    (DICOM ``PixelPaddingValue``), and otherwise recognised as one single value below
    ``HU_IMPOSSIBLE_BELOW``. Anything else no CT can hold is refused.

    Args:
        volume: the voxels after any rescale.
        where: names the case or file in messages.
        padding: voxels the file declares as padding (True), or None.

    Returns:
        The float32 volume and how many voxels were padding.

    Raises:
        ContractError: NaN or infinite voxels, impossible values inside the field of view, or no
            air anywhere (not CT in HU: MR, or stored values without their rescale).
    """
    hu = np.array(volume, dtype=np.float32, copy=True)  # one copy (asarray then copy made two of an int16 CT)
    if np.asarray(volume).dtype.kind not in "iub":  # integers are finite: one pass over a 512x512x120 CT saved
        finite = np.isfinite(hu)
        if not finite.all():
            raise ContractError(f"{where}: {int((~finite).sum())} voxels are NaN or infinite; a CT holds numbers only")
    # reductions and masked copies, not boolean indexing: they follow the volume's memory layout (DICOM series are
    # read in Fortran order), where indexing walks C order and strides through a Fortran-ordered volume
    n_padding = 0
    if padding is not None and padding.any():
        n_padding = int(padding.sum())
        np.copyto(hu, HU_AIR, where=padding)
    low = hu < HU_IMPOSSIBLE_BELOW
    if low.any():
        lowest, highest = hu.min(where=low, initial=np.inf), hu.max(where=low, initial=-np.inf)
        if lowest != highest:
            raise ContractError(
                f"{where}: {int(low.sum())} voxels between {lowest:.0f} and {highest:.0f} HU, below "
                f"anything a CT holds inside its field of view (air is {HU_AIR:.0f}); a single padding value would be "
                "read as air, several are not"
            )
        n_padding += int(low.sum())
        np.copyto(hu, HU_AIR, where=low)
    high = hu > HU_IMPOSSIBLE_ABOVE
    if high.any():
        raise ContractError(
            f"{where}: {int(high.sum())} voxels above {HU_IMPOSSIBLE_ABOVE:.0f} HU (up to "
            f"{hu.max():.0f}): not CT numbers"
        )
    if hu.min() > CT_AIR_EVIDENCE_HU:
        raise ContractError(
            f"{where}: no voxel below {CT_AIR_EVIDENCE_HU:.0f} HU (minimum {hu.min():.0f}): not a CT in Hounsfield "
            "units (an MR image, or CT values stored without their rescale slope and intercept)"
        )
    return hu, n_padding


def affine_from_spacing(spacing: tuple[float, float, float], origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A RAS+ affine with the given voxel spacing (mm) and origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = origin
    return affine


#: how a ``.nii.gz`` is compressed. ``archive``: zlib at level 6, what the phantom writes (its files are a data
#: version, data.dvc, byte for byte). ``fast``: Intel's ISA-L at its level 2, what import and predict write: on a
#: 512x512x120 CT 0.25 s instead of 3.6 s, 31.0 MiB instead of 28.8 (bench/import_speed.py); any gzip reader
#: reads it, and the same array and ISA-L release give the same bytes.
COMPRESSIONS = ("archive", "fast")
_ZLIB_LEVEL, _ISAL_LEVEL = 6, 2


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path, compression: str = "archive") -> Path:
    """Write a volume as NIfTI-1; ``.nii.gz`` output is byte-for-byte deterministic (``COMPRESSIONS``)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r}: one of {COMPRESSIONS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    data = img.to_bytes()
    tmp = path.with_name(path.name + ".tmp")
    if path.name.endswith(".gz"):
        kind, level = (igzip.IGzipFile, _ISAL_LEVEL) if compression == "fast" else (gzip.GzipFile, _ZLIB_LEVEL)
        with open(tmp, "wb") as raw, kind(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=level) as gz:
            gz.write(data)
    else:
        tmp.write_bytes(data)
    tmp.replace(path)
    return path
