import numpy as np
import pandas as pd
import pytest

from liverlesion.patchset import export_patches, load_patch_set


def tiny_split(n: int = 12, shape=(75, 75, 3)):
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(n, *shape)).astype("float32")
    index = pd.DataFrame({"lesion_id": [f"L{i:02d}" for i in range(n)], "row": np.arange(n)[::-1]})
    patches = patches[::-1].copy()  # rows in another order than lesion ids: the index is followed
    manifest = pd.DataFrame(
        {
            "lesion_id": [f"L{i:02d}" for i in range(n)],
            "patient_key": [f"P{i // 2}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "set": ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4),
        }
    )
    return patches, index, manifest


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
