import pytest

from liverlesion.model import IMAGENET_NOTOP_FILE, WeightsNotFoundError, build_model, resolve_weights


def test_paper_head_on_inceptionv3():
    model = build_model((96, 80, 3))
    names = [layer.name for layer in model.layers[-6:]]
    assert names == ["gap", "fc1", "dropout1", "fc2", "dropout2", "softmax"]
    assert model.get_layer("fc1").units == 512 and model.get_layer("fc2").units == 512
    assert model.get_layer("dropout1").rate == 0.4 and model.get_layer("dropout2").rate == 0.4
    assert model.output_shape == (None, 2)
    assert model.get_layer("softmax").activation.__name__ == "softmax"
    # InceptionV3 without its top (21.8 M) + 2048*512+512 + 512*512+512 + 512*2+2
    assert model.count_params() == pytest.approx(23.1e6, rel=0.01)


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match=">= 75"):
        build_model((64, 64, 3))


def test_missing_imagenet_weights_say_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights("imagenet")
    message = str(err.value)
    assert IMAGENET_NOTOP_FILE in message and str(tmp_path / "models") in message and "null" in message
    assert resolve_weights(None) is None
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        resolve_weights(str(tmp_path / "absent.h5"))


def test_batch_norm_momentum_is_configurable():
    import keras

    momenta = {layer.momentum for layer in build_model((75, 75, 3), bn_momentum=0.9).layers
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}


def test_backbone_weights_load_from_a_file(tmp_path):
    import keras
    import numpy as np

    keras.utils.set_random_seed(1)
    donor = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3))
    path = tmp_path / "inception_v3_notop.weights.h5"
    donor.save_weights(path)
    model = build_model((96, 80, 3), weights=str(path))  # another input size: conv weights do not depend on it
    first_conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    donor_conv = next(layer for layer in donor.layers if isinstance(layer, keras.layers.Conv2D))
    np.testing.assert_array_equal(first_conv.get_weights()[0], donor_conv.get_weights()[0])
