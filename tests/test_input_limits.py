"""Untrusted input never allocates beyond a stated limit (``contract.MAX_VOXELS``, ``MAX_LESIONS_PER_CASE``):
a header is checked before its voxels are read, a gzip is never inflated past what its header describes, and
every refusal is one ContractError naming the file or case and the limit, never a MemoryError."""

from __future__ import annotations

import gzip
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from dicom_fixtures import rewrite, write_ct_series

from liverlesion.contract import MAX_LESIONS_PER_CASE, MAX_VOXELS, ContractError
from liverlesion.dicomio import read_ct_series
from liverlesion.imaging import load_nifti, save_nifti
from liverlesion.lesions import instance_map
from liverlesion.predict import number_lesions

#: what reading any of these refusals may allocate, at most
BOUND_BYTES = 64 * 2**20


def _refused_within_bound(read, *args) -> str:
    tracemalloc.start()
    try:
        with pytest.raises(ContractError) as refused:
            read(*args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < BOUND_BYTES, f"{peak / 2**20:.0f} MiB allocated before the refusal"
    return str(refused.value)


def _header(shape, dtype=np.int16) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_a_nifti_header_claiming_a_huge_volume_is_refused_before_anything_is_allocated(tmp_path, suffix):
    """A 59-byte .nii.gz claiming 1024^3 int16 took 2.1 GiB before its refusal; 4096^3 ended in MemoryError."""
    for side in (1024, 4096, 32767):
        path = tmp_path / f"claims-{side}{suffix}"
        block = _header((side, side, side))
        path.write_bytes(gzip.compress(block) if suffix.endswith(".gz") else block)
        message = _refused_within_bound(load_nifti, path)
        assert f"{side} x {side} x {side}" in message and f"{MAX_VOXELS:,}" in message and str(path) in message


def test_a_gzip_that_inflates_past_its_header_is_refused_without_inflating_it(tmp_path):
    path = tmp_path / "bomb.nii.gz"
    path.write_bytes(gzip.compress(_header((10, 10, 10)) + b"\0" * (200 * 2**20)))  # 200 MiB of zeros: 200 KB
    assert path.stat().st_size < 400_000
    assert "inflates to more than" in _refused_within_bound(load_nifti, path)


def test_a_volume_within_the_limits_loads_as_before(tmp_path):
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    save_nifti(volume, np.eye(4), tmp_path / "ok.nii.gz")
    loaded, meta = load_nifti(tmp_path / "ok.nii.gz")
    assert np.array_equal(loaded, volume) and meta.shape == (4, 5, 6)


def test_the_fast_compression_holds_the_same_voxels_in_any_gzip_reader_and_the_same_bytes_each_time(tmp_path):
    """Import and predict write ISA-L gzip; the phantom keeps zlib's level 6 (its bytes are a data version)."""
    volume = np.random.default_rng(0).integers(-1024, 400, size=(64, 64, 40)).astype(np.int16)
    volume[:, :20] = -1024  # something to compress
    fast, again, archive = (tmp_path / f"{name}.nii.gz" for name in ("fast", "again", "archive"))
    save_nifti(volume, np.eye(4), fast, "fast")
    save_nifti(volume, np.eye(4), again, "fast")
    save_nifti(volume, np.eye(4), archive)
    assert fast.read_bytes() == again.read_bytes() and fast.read_bytes() != archive.read_bytes()
    assert gzip.decompress(fast.read_bytes()) == gzip.decompress(archive.read_bytes())  # the standard library reads it
    assert np.array_equal(load_nifti(fast)[0], volume)
    with pytest.raises(ValueError, match="compression"):
        save_nifti(volume, np.eye(4), tmp_path / "x.nii.gz", "zstd")


def test_a_damaged_deflate_stream_is_one_line_naming_the_file(tmp_path):
    """ISA-L reports a corrupt block with its own exception type: still a ContractError, never a traceback."""
    path = tmp_path / "damaged.nii.gz"
    save_nifti(np.arange(4096, dtype=np.int16).reshape(16, 16, 16), np.eye(4), path, "fast")
    raw = bytearray(path.read_bytes())
    raw[12:40] = b"\xff" * 28  # inside the first deflate block
    path.write_bytes(bytes(raw))
    with pytest.raises(ContractError, match="damaged.nii.gz: not a readable NIfTI image"):
        load_nifti(path)


def test_a_dicom_series_claiming_huge_slices_is_refused_before_its_pixels(tmp_path):
    """Rows = Columns = 65535 raised MemoryError ("Unable to allocate 32.0 GiB"), aborting a whole import."""
    files = write_ct_series(tmp_path / "ct", np.full((8, 8, 4), 40.0), shuffle=False)
    rewrite(files, Rows=65535, Columns=65535)
    message = _refused_within_bound(read_ct_series, tmp_path / "ct")
    assert "65535x65535" in message and f"{MAX_VOXELS:,}" in message


def test_a_mask_of_more_lesions_than_the_limit_is_refused_before_they_are_cut():
    """A 200-byte mask of isolated voxels gave 4,096 lesions and a 360 MiB patch array."""
    mask = np.zeros((32, 32, 32), dtype=np.uint8)
    mask[::2, ::2, ::2] = 1  # 4,096 isolated voxels
    for encoding in ("binary", "class"):
        with pytest.raises(ContractError, match=f"4,096 lesions, more than the limit of {MAX_LESIONS_PER_CASE}"):
            instance_map(mask, "c1", encoding)
    with pytest.raises(ContractError, match="more than the limit"):
        number_lesions(mask, "auto", "case c1")
    instances = np.zeros((32, 32, 32), dtype=np.int32)
    instances.flat[: MAX_LESIONS_PER_CASE + 1] = np.arange(1, MAX_LESIONS_PER_CASE + 2)
    with pytest.raises(ContractError, match="more than the limit"):
        instance_map(instances, "c1", "instance")
    sparse = np.zeros((8, 8, 8), dtype=np.int32)
    sparse[0, 0, 0] = 2**31 - 1  # one lesion, numbered so that find_objects would make 2^31 slots
    assert "renumber the lesions" in _refused_within_bound(instance_map, sparse, "c1", "instance")
    # at the limit, every lesion is numbered
    mask = np.zeros((64, 64, 64), dtype=np.uint8)
    grid = np.zeros((32, 32, 32), dtype=np.uint8)
    grid.reshape(-1)[:MAX_LESIONS_PER_CASE] = 1
    mask[::2, ::2, ::2] = grid  # isolated voxels, even diagonally
    assert len(instance_map(mask, "c1", "binary")[1]) == MAX_LESIONS_PER_CASE
