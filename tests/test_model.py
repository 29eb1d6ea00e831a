import pytest

from liverlesion.model import IMAGENET_NOTOP_FILE, WeightsNotFoundError, resolve_weights
from tests.profiles import network


def test_paper_head_on_inceptionv3():
    model = network((96, 80, 3))
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
        network((64, 64, 3))


def test_missing_imagenet_weights_say_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights("imagenet", "inception_v3")
    message = str(err.value)
    assert IMAGENET_NOTOP_FILE in message and str(tmp_path / "models") in message and "null" in message
    assert resolve_weights(None, "inception_v3") is None
    with pytest.raises(WeightsNotFoundError, match="no weights file"):
        resolve_weights(str(tmp_path / "absent.h5"), "inception_v3")


def test_batch_norm_momentum_is_configurable():
    import keras

    momenta = {
        layer.momentum
        for layer in network((75, 75, 3), bn_momentum=0.9).layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert momenta == {0.9}


@pytest.mark.parametrize("backbone", ["inception_v3", "inception_resnet_v2"])
def test_backbone_weights_load_from_a_file(tmp_path, backbone):
    import keras
    import numpy as np

    from liverlesion.model import BACKBONES

    keras.utils.set_random_seed(1)
    donor = BACKBONES[backbone].application(include_top=False, weights=None, input_shape=(75, 75, 3))
    path = tmp_path / f"{backbone}_notop.weights.h5"
    donor.save_weights(path)
    # another input size: conv weights do not depend on it
    model = network((96, 80, 3), weights=str(path), backbone=backbone)
    first_conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    donor_conv = next(layer for layer in donor.layers if isinstance(layer, keras.layers.Conv2D))
    np.testing.assert_array_equal(first_conv.get_weights()[0], donor_conv.get_weights()[0])


def test_inception_resnet_v2_gets_the_same_head():
    model = network((75, 75, 3), backbone="inception_resnet_v2")
    assert model.name == "inceptionresnetv2_fc512"
    assert [layer.name for layer in model.layers[-6:]] == ["gap", "fc1", "dropout1", "fc2", "dropout2", "softmax"]
    assert model.get_layer("gap").output.shape[-1] == 1536  # InceptionResNetV2's feature width
    # InceptionResNetV2 without its top (54.3 M) + 1536*512+512 + 512*512+512 + 512*2+2
    assert model.count_params() == pytest.approx(54.34e6 + 1_050_626, rel=0.01)


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="resnet50"):
        network((75, 75, 3), backbone="resnet50")


def test_missing_inception_resnet_v2_weights_name_their_file(tmp_path, monkeypatch):
    from liverlesion.model import BACKBONES

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights("imagenet", "inception_resnet_v2")
    assert BACKBONES["inception_resnet_v2"].imagenet_notop_file in str(err.value)
    assert "InceptionResNetV2" in str(err.value)


def test_a_cached_file_that_is_not_the_keras_release_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / IMAGENET_NOTOP_FILE).write_bytes(b"truncated download")
    with pytest.raises(WeightsNotFoundError, match="MD5"):
        resolve_weights("imagenet", "inception_v3")


def test_a_cached_release_file_is_used_by_path(tmp_path, monkeypatch):
    """The Keras cache is read by path after the MD5 check, so nothing is downloaded."""
    from liverlesion import model as model_module
    from liverlesion.model import BACKBONES, Backbone

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cached = tmp_path / "models" / IMAGENET_NOTOP_FILE
    cached.parent.mkdir()
    cached.write_bytes(b"stand-in")
    spec = BACKBONES["inception_v3"]
    monkeypatch.setitem(
        model_module.BACKBONES,
        "inception_v3",
        Backbone(spec.label, spec.application_name, spec.imagenet_notop_file, model_module._md5(cached)),
    )
    assert resolve_weights("imagenet", "inception_v3") == str(cached)
