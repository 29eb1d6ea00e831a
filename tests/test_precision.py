import keras
import numpy as np
import pytest

from liverlesion.precision import (
    FoldedBatchNormalization,
    cpu_bfloat16_units,
    fold_batch_norm,
    inference_model,
    resolve_precision,
    with_precision,
)
from tests.profiles import network


def trained_looking(backbone: str = "inception_v3") -> keras.Model:
    """A model whose batch-norm layers hold non-trivial statistics, as after training."""
    keras.utils.set_random_seed(0)
    model = network((75, 75, 3), bn_momentum=0.9, backbone=backbone)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, n))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, n))
    return model


def features(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.Model(model.input, model.get_layer("gap").output).predict_on_batch(x), dtype=np.float32)


@pytest.mark.parametrize("backbone", ["inception_v3", "inception_resnet_v2"])
def test_folding_batch_norm_keeps_the_outputs(backbone):
    model = trained_looking(backbone)
    folded = fold_batch_norm(model)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    assert sum(isinstance(layer, FoldedBatchNormalization) for layer in folded.layers) == sum(
        isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers
    )
    x = np.random.default_rng(1).normal(size=(4, 75, 75, 3)).astype("float32")
    reference = features(model, x)
    np.testing.assert_allclose(features(folded, x), reference, rtol=0, atol=1e-4 * np.abs(reference).max())
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)  # original untouched


def test_the_fast_path_is_bfloat16_with_a_float32_softmax_and_close_outputs(tmp_path):
    model = trained_looking()
    fast = inference_model(model, "bfloat16")
    assert fast.get_layer("fc1").dtype_policy.name == "bfloat16"
    assert fast.get_layer("softmax").dtype_policy.name == "float32"
    x = np.random.default_rng(2).normal(size=(4, 75, 75, 3)).astype("float32")
    reference = features(model, x)
    # bfloat16 keeps 8 significant bits: ~0.4% relative error per value, not another network
    assert np.abs(features(fast, x) - reference).max() < 0.02 * np.abs(reference).max()
    probabilities = fast.predict_on_batch(x)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    fast.save(tmp_path / "fast.keras")  # the fast model saves and loads like any Keras model
    again = keras.models.load_model(tmp_path / "fast.keras")
    np.testing.assert_array_equal(again.predict_on_batch(x), probabilities)


def test_float32_scoring_is_the_model_itself_and_precisions_are_checked():
    model = network((75, 75, 3))
    assert inference_model(model, "float32") is model and with_precision(model, "float32") is model
    with pytest.raises(ValueError, match="float16"):
        inference_model(model, "float16")
    mixed = with_precision(model, "mixed_bfloat16")
    assert mixed.get_layer("fc1").dtype_policy.name == "mixed_bfloat16"
    for a, b in zip(model.get_weights(), mixed.get_weights()):
        np.testing.assert_array_equal(a, b)


SAPPHIRE_RAPIDS = (
    "processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n"
)
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_auto_precision_is_the_fast_path_only_where_the_cpu_computes_bfloat16():
    assert cpu_bfloat16_units(SAPPHIRE_RAPIDS) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bfloat16_units(GRAVITON3) == ["bf16"]
    assert cpu_bfloat16_units(SKYLAKE) == [] and cpu_bfloat16_units("") == []
    precision, why = resolve_precision("auto", SAPPHIRE_RAPIDS)
    assert precision == "bfloat16" and "amx_bf16" in why
    precision, why = resolve_precision("auto", SKYLAKE)
    assert precision == "float32" and "no bfloat16 units" in why
    assert resolve_precision("float32", SAPPHIRE_RAPIDS)[0] == "float32"
    assert resolve_precision("bfloat16", SKYLAKE)[0] == "bfloat16"  # set by hand: obeyed
    with pytest.raises(ValueError, match="'auto' or one of"):
        resolve_precision("int8")


@pytest.mark.parametrize("precision", ["bfloat16", "mixed_bfloat16"])
def test_one_copy_folds_and_casts_exactly_as_the_two_copies_did(precision):
    """``inference_model`` clones the network once (folding and precision together): the same layers, weights and
    probabilities, bit for bit, as folding first and then casting a second copy."""
    model = trained_looking()
    one, two = inference_model(model, precision), with_precision(fold_batch_norm(model), precision)
    assert [(layer.name, layer.dtype_policy.name) for layer in one.layers] == [
        (layer.name, layer.dtype_policy.name) for layer in two.layers
    ]
    for a, b in zip(one.weights, two.weights, strict=True):
        assert a.dtype == b.dtype and np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    x = np.random.default_rng(3).normal(size=(4, 75, 75, 3)).astype("float32")
    np.testing.assert_array_equal(one.predict_on_batch(x), two.predict_on_batch(x))
