"""The step artifacts that hold arrays load without pickles: a doctored artifact cannot run code in a step."""

import numpy as np
import pytest

from liverlesion_ops.steps.materializers import PATCHES_FILE, PatchArrayMaterializer


def test_patch_arrays_round_trip_and_a_pickled_artifact_is_refused(tmp_path):
    patches = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype(np.float32)
    materializer = PatchArrayMaterializer(uri=str(tmp_path))
    materializer.save(patches)
    assert np.array_equal(materializer.load(np.ndarray), patches)
    # what ZenML's own numpy materializer would load (allow_pickle=True): an object array that runs code
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    np.save(tmp_path / PATCHES_FILE, np.array([Payload()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        materializer.load(np.ndarray)
    assert not ran.exists()
    with pytest.raises(ValueError):
        materializer.save(np.array([{"a": 1}], dtype=object))
