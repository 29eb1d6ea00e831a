import numpy as np
import pytest

from liverlesion.patchset import export_patches, load_patch_set
from tests.support import tiny_split


def test_export_round_trip_keeps_sets_labels_ids_and_lineage(tmp_path):
    patches, index, manifest = tiny_split()
    path = export_patches(tmp_path / "p.npz", patches, index, manifest, {"data_version": "abc.dir"})
    data = load_patch_set(path)
    assert data.meta["data_version"] == "abc.dir" and data.meta["counts"] == {"train": 6, "val": 3, "test": 3}
    assert data.meta["patch_shape"] == [75, 75, 3]
    test = data["test"]
    assert list(test.lesion_id) == ["L09", "L10", "L11"] and list(test.patient_key) == ["P4", "P5", "P5"]
    assert list(test.y) == [1, 0, 1] and test.x.dtype == np.float32
    row = dict(zip(index["lesion_id"], index["row"]))["L10"]
    # float16 storage: standardised values keep ~3 significant digits
    np.testing.assert_allclose(test.x[1], patches[row], rtol=1e-3, atol=1e-3)


def test_a_file_that_is_not_an_export_is_named(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(ValueError, match="other.npz: not a patch export"):
        load_patch_set(path)
