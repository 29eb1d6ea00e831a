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


def test_a_network_round_trips_and_the_materializer_takes_only_networks(tmp_path):
    import keras

    from liverlesion_ops.steps.materializers import KerasModelMaterializer

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(inputs))
    materializer = KerasModelMaterializer(uri=str(tmp_path))
    materializer.validate_save_type_compatibility(type(model))
    materializer.save(model)
    loaded = materializer.load(keras.Model)
    assert [w.tolist() for w in loaded.get_weights()] == [w.tolist() for w in model.get_weights()]
    assert materializer.extract_metadata(model)["parameters"] == 10
    assert KerasModelMaterializer.can_load_type(keras.Model) and KerasModelMaterializer.can_load_type(type(model))
    with pytest.raises(TypeError, match="KerasModelMaterializer"):
        materializer.validate_save_type_compatibility(np.ndarray)
    assert not KerasModelMaterializer.can_load_type(dict)


#: importing every pipeline, as ZenML's entrypoint does in each step's container: no Keras, no TensorFlow (their
#: import is ~5 s of a step's start); the steps that take or give a network import them when they run
PIPELINES = """
import sys
import liverlesion_ops.pipelines
from liverlesion_ops.runs import WeightsMissing, require_weights
try:  # KERAS_HOME is empty: each backbone's ImageNet file is looked up, and missing
    require_weights([("train.weights", "imagenet", "inception_v3"), ("compare", "imagenet", "inception_resnet_v2")])
except WeightsMissing as err:
    assert "InceptionResNetV2" in str(err), err
else:
    raise AssertionError("weights found in an empty KERAS_HOME")
print(sorted({name.split(".")[0] for name in sys.modules} & {"keras", "tensorflow", "jax"}))
"""


def test_importing_the_pipelines_and_checking_weights_loads_no_keras(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "entry.py"  # ZenML finds its source root from the main module's file
    script.write_text(PIPELINES)
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras")}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
