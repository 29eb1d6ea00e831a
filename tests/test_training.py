"""The paper's training protocol: learning-rate halving, early stopping, augmentation ranges."""

import keras
import numpy as np
import pytest

from liverlesion.config import TrainConfig, load_profile
from liverlesion.precision import with_precision
from liverlesion.protocol import resolve_training_precision
from liverlesion.training import (
    Protocol,
    augmentation,
    best_epoch,
    dtype_policy,
    protocol_callbacks,
    train_classifier,
)
from tests.profiles import CONFIGS, QUICK, with_changes

#: a plain run, the protocols below change: no augmentation, a constant rate, the paper's epoch choice
PLAIN = Protocol(
    epochs=103,
    batch_size=8,
    learning_rate=1e-3,
    lr_patience=None,
    lr_factor=0.5,
    min_lr=1e-10,
    early_stopping_patience=None,
    augment=False,
    rotation_deg=30.0,
    shift_px=25,
    flips=True,
    label_smoothing=0.0,
    seed=2019,
    monitor="val_accuracy",
    tie_break="first",
    lr_schedule="constant",
    full_batches=False,
    run_eagerly=False,
)


def paper_protocol() -> Protocol:
    """The paper's protocol as the ``paper`` profile writes it (its one definition)."""
    return load_profile("paper", CONFIGS).train.protocol()


def tiny_model(shape=(8, 8, 3)):
    """No bias: on all-zero inputs it outputs (0.5, 0.5) whatever its weights, so predicts class 0."""
    inputs = keras.Input(shape)
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", use_bias=False)(x))


def stuck_data(n=16, shape=(8, 8, 3)):
    """Validation accuracy no training can change: all-zero inputs of class 0 and a bias-free model
    (with a bias, training could move it across 0.5 and "improve" validation, by chance of the seed)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *shape)).astype("float32")
    y = rng.integers(0, 2, n)
    return x, y, np.zeros((4, *shape), "float32"), np.zeros(4, int)


def test_paper_protocol_values():
    """Section 3.3 of the paper, as the paper profile gives it (over base.yaml, which quick extends too)."""
    p = paper_protocol()
    assert (p.epochs, p.batch_size, p.learning_rate) == (103, 8, 1e-3)
    assert (p.lr_patience, p.lr_factor, p.min_lr, p.early_stopping_patience) == (10, 0.5, 1e-10, 50)
    assert p.augment and p.rotation_deg == 30 and p.shift_px == 25 and p.flips
    assert (p.monitor, p.lr_schedule) == ("val_accuracy", "constant")
    train = load_profile("paper", CONFIGS).train
    assert (train.backend, train.precision, train.weights) == ("jax", "auto", "imagenet")


def test_train_settings_give_the_protocol_of_their_values():
    """TrainConfig's protocol fields are the Protocol's, and give a Protocol back with the profile's values."""
    changed = with_changes(QUICK.train, epochs=3, monitor="val_accuracy")
    assert isinstance(changed, TrainConfig)
    assert changed.protocol() == with_changes(QUICK.train.protocol(), epochs=3, monitor="val_accuracy")


def test_training_precision_auto_is_mixed_only_on_an_accelerator():
    assert resolve_training_precision("auto", accelerator=True) == "mixed_bfloat16"
    assert resolve_training_precision("auto", accelerator=False) == "float32"
    assert resolve_training_precision("mixed_float16", accelerator=False) == "mixed_float16"
    with pytest.raises(ValueError, match="training precision 'half'"):
        resolve_training_precision("half", accelerator=True)


def test_mixed_precision_training_returns_a_float32_model_with_the_kept_weights():
    """What the train step does: build and fit under mixed bfloat16, then hand on a float32 copy."""
    x, y, xv, yv = stuck_data(shape=(8, 8, 3))
    with dtype_policy("mixed_bfloat16"):
        inputs = keras.Input((8, 8, 3))
        hidden = keras.layers.Dense(4, activation="relu")(keras.layers.Flatten()(inputs))
        model = keras.Model(
            inputs, keras.layers.Dense(2, activation="softmax", name="softmax", dtype="float32")(hidden)
        )
        assert model.layers[2].compute_dtype == "bfloat16"
        train_classifier(model, x, y, xv, yv, with_changes(PLAIN, epochs=2, batch_size=8), verbose=0)
    assert keras.config.dtype_policy().name == "float32"  # the policy is put back for the next steps
    plain = with_precision(model, "float32")
    assert {layer.compute_dtype for layer in plain.layers[1:]} == {"float32"}
    for kept, copied in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(kept, copied)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=0.02)


def test_learning_rate_halves_after_patience_epochs_without_improvement():
    x, y, xv, yv = stuck_data()
    protocol = with_changes(
        PLAIN, epochs=9, batch_size=8, learning_rate=1e-3, lr_patience=2, early_stopping_patience=None
    )
    history = train_classifier(tiny_model(), x, y, xv, yv, protocol, verbose=0)
    # val accuracy never improves after epoch 1: after 2 more epochs the rate is halved, and again
    # after every 2 further epochs without improvement
    assert history["learning_rate"] == pytest.approx([1e-3] * 3 + [5e-4] * 2 + [2.5e-4] * 2 + [1.25e-4] * 2)


def test_learning_rate_stops_at_its_floor():
    x, y, xv, yv = stuck_data()
    protocol = with_changes(PLAIN, epochs=8, batch_size=8, learning_rate=1e-3, lr_patience=1, min_lr=4e-4)
    history = train_classifier(tiny_model(), x, y, xv, yv, protocol, verbose=0)
    assert min(history["learning_rate"]) == pytest.approx(4e-4)


def test_early_stopping_after_patience_epochs_restores_the_best_weights():
    x, y, xv, yv = stuck_data()
    model = tiny_model()
    recorded = []

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            recorded.append([w.copy() for w in self.model.get_weights()])

    protocol = with_changes(PLAIN, epochs=50, batch_size=8, early_stopping_patience=3)
    callbacks = protocol_callbacks(protocol) + [Snapshot()]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(
        x,
        keras.utils.to_categorical(y, 2),
        validation_data=(xv, keras.utils.to_categorical(yv, 2)),
        epochs=protocol.epochs,
        batch_size=8,
        callbacks=callbacks,
        verbose=0,
    )
    assert len(recorded) == 4  # epoch 1 is the best; 3 more without improvement, then stop
    for now, best in zip(model.get_weights(), recorded[0]):
        np.testing.assert_allclose(now, best)


def test_without_early_stopping_every_epoch_runs():
    x, y, xv, yv = stuck_data()
    history = train_classifier(tiny_model(), x, y, xv, yv, with_changes(PLAIN, epochs=6, batch_size=8), verbose=0)
    assert len(history["loss"]) == 6


def test_augmentation_ranges_and_identity_at_inference():
    protocol = paper_protocol()
    layers = {layer.__class__.__name__: layer for layer in augmentation((252, 210, 3), protocol).layers}
    rotation = layers["RandomRotation"].get_config()
    assert rotation["factor"] in (30 / 360, (-30 / 360, 30 / 360))
    shift = layers["RandomTranslation"].get_config()
    assert shift["height_factor"] in (25 / 252, (-25 / 252, 25 / 252))
    assert shift["width_factor"] in (25 / 210, (-25 / 210, 25 / 210))
    assert layers["RandomFlip"].get_config()["mode"] == "horizontal_and_vertical"

    image = np.zeros((1, 100, 100, 3), "float32")
    image[0, 50, 50] = 1.0
    aug = augmentation((100, 100, 3), with_changes(PLAIN, rotation_deg=0.0, shift_px=10, flips=False))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(aug(image, training=False)), image)
    moved = [np.argwhere(keras.ops.convert_to_numpy(aug(image, training=True))[0, ..., 0] > 0.25) for _ in range(20)]
    offsets = np.concatenate([m - 50 for m in moved if len(m)])
    assert np.abs(offsets).max() <= 10 + 1 and np.abs(offsets).max() > 0  # shifted, never beyond 10 px


def test_augmented_training_leaves_the_plain_model():
    x, y, xv, yv = stuck_data(shape=(16, 16, 3))
    model = tiny_model((16, 16, 3))
    before = [w.copy() for w in model.get_weights()]
    train_classifier(
        model,
        x,
        y,
        xv,
        yv,
        with_changes(PLAIN, epochs=2, batch_size=8, augment=True, shift_px=2),
        verbose=0,
    )
    assert [layer.__class__.__name__ for layer in model.layers][0] == "InputLayer"
    assert "augmentation" not in [layer.name for layer in model.layers]
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))


def test_label_smoothing_changes_the_loss():
    x, y, xv, yv = stuck_data()
    plain = train_classifier(tiny_model(), x, y, xv, yv, with_changes(PLAIN, epochs=1, batch_size=8, seed=1), verbose=0)
    smooth = train_classifier(
        tiny_model(),
        x,
        y,
        xv,
        yv,
        with_changes(PLAIN, epochs=1, batch_size=8, seed=1, label_smoothing=0.2),
        verbose=0,
    )
    assert smooth["loss"][0] != pytest.approx(plain["loss"][0])


def test_same_seed_same_weights():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(32, 16, 16, 3)).astype("float32"), rng.integers(0, 2, 32)

    def conv_model():
        inputs = keras.Input((16, 16, 3))
        h = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(h))

    runs = []
    for _ in range(2):
        keras.utils.set_random_seed(11)
        model = conv_model()
        train_classifier(
            model,
            x,
            y,
            x[:8],
            y[:8],
            with_changes(PLAIN, epochs=3, batch_size=8, seed=11, augment=True, shift_px=2),
            verbose=0,
        )
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("run_eagerly", [False, True])
def test_run_eagerly_decides_whether_the_steps_are_traced(run_eagerly):
    import tensorflow as tf

    class Witness(keras.layers.Layer):
        """Records, each time it runs, whether it runs op by op (eager) or is being traced."""

        def __init__(self):
            super().__init__()
            self.eager = []

        def call(self, x):
            self.eager.append(tf.executing_eagerly())
            return x

    x, y, xv, yv = stuck_data()
    witness = Witness()
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(witness(inputs)))
    model = keras.Model(inputs, outputs)
    witness.eager.clear()  # building the model ran it once, symbolically
    train_classifier(
        model, x, y, xv, yv, with_changes(PLAIN, epochs=2, batch_size=8, run_eagerly=run_eagerly), verbose=0
    )
    # eager: every batch of both epochs ran op by op; traced: only the tracings ran the layer, never a batch
    assert set(witness.eager) == {run_eagerly}
    assert (len(witness.eager) >= 2 * (2 + 1)) == run_eagerly  # 2 train batches + 1 validation batch a epoch


def test_full_batches_top_up_with_repeats_only():
    import numpy as np

    from liverlesion.training import top_up_to_full_batches

    x = np.arange(13)[:, None]
    y = np.arange(13) % 2
    xt, yt = top_up_to_full_batches(x, y, 8, seed=1)
    assert len(xt) == 16 and len(set(xt[13:, 0])) == 3  # three distinct lesions repeated once
    np.testing.assert_array_equal(xt[:13], x)
    np.testing.assert_array_equal(yt, xt[:, 0] % 2)  # labels follow their patches
    same, _ = top_up_to_full_batches(x[:8], y[:8], 8, seed=1)
    assert len(same) == 8


def test_the_best_epoch_breaks_ties_as_asked_and_never_picks_nan():
    accuracy = [0.6, 0.82, 0.7, 0.82, 0.75]
    assert best_epoch(accuracy, "max", "first") == 1 and best_epoch(accuracy, "max", "last") == 3
    loss = [1.5, 0.39, float("nan"), 0.39, 0.5]
    assert best_epoch(loss, "min", "first") == 1 and best_epoch(loss, "min", "last") == 3
    assert best_epoch([float("nan"), 0.2], "min", "first") == 1 and best_epoch([float("nan")] * 3, "max", "first") == 2
    with pytest.raises(ValueError, match="no epoch"):
        best_epoch([], "max", "first")


def test_a_tie_goes_to_the_later_epoch_and_its_weights_are_kept():
    """Validation accuracy that no training can change ties at every epoch: the last epoch's weights
    are kept with tie_break last, the first epoch's with first (the paper's Keras behaviour)."""
    x, y, xv, yv = stuck_data()
    for tie_break, expected in (("last", -1), ("first", 0)):
        model = tiny_model()
        recorded = []

        class Snapshot(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None, recorded=recorded):
                recorded.append([w.copy() for w in self.model.get_weights()])

        history = train_classifier(
            model,
            x,
            y,
            xv,
            yv,
            with_changes(PLAIN, epochs=4, batch_size=8, tie_break=tie_break, learning_rate=1e-2),
            verbose=0,
            extra_callbacks=[Snapshot()],
        )
        assert len(set(history["val_accuracy"])) == 1
        assert not np.allclose(recorded[0][0], recorded[-1][0])  # the weights did move
        for now, kept in zip(model.get_weights(), recorded[expected]):
            np.testing.assert_allclose(now, kept)


class Snapshots(keras.callbacks.Callback):
    """Every epoch's weights and learning rate."""

    def __init__(self):
        super().__init__()
        self.weights, self.rates = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([w.copy() for w in self.model.get_weights()])
        self.rates.append(float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))


def test_choosing_by_validation_loss_keeps_the_lowest_loss_epoch():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(32, 8, 8, 3)).astype("float32"), rng.integers(0, 2, 32)
    xv, yv = rng.normal(size=(16, 8, 8, 3)).astype("float32"), rng.integers(0, 2, 16)
    protocol = with_changes(PLAIN, epochs=6, batch_size=8, monitor="val_loss", tie_break="last", learning_rate=5e-2)
    model, snapshots = tiny_model(), Snapshots()
    history = train_classifier(model, x, y, xv, yv, protocol, verbose=0, extra_callbacks=[snapshots])
    kept = int(np.argmin(history["val_loss"]))
    assert kept < len(history["val_loss"]) - 1  # an earlier epoch: its weights had to be put back
    for now, best in zip(model.get_weights(), snapshots.weights[kept]):
        np.testing.assert_allclose(now, best)


def test_the_cosine_schedule_decays_the_rate_to_zero_over_the_run():
    x, y, xv, yv = stuck_data(n=32)
    snapshots = Snapshots()
    train_classifier(
        tiny_model(),
        x,
        y,
        xv,
        yv,
        with_changes(PLAIN, epochs=4, batch_size=8, lr_schedule="cosine", learning_rate=1e-2),
        verbose=0,
        extra_callbacks=[snapshots],
    )
    rates = snapshots.rates  # after 1, 2, 3, 4 of 4 epochs: 1e-2 * (1 + cos(pi * k / 4)) / 2
    np.testing.assert_allclose(rates, [1e-2 * (1 + np.cos(np.pi * k / 4)) / 2 for k in (1, 2, 3, 4)], atol=1e-7)


def test_a_cosine_schedule_cannot_also_be_cut_on_a_plateau():
    with pytest.raises(ValueError, match="cosine"):
        with_changes(PLAIN, lr_schedule="cosine", lr_patience=10)
    with pytest.raises(ValueError, match="lr_patience"):
        TrainConfig(lr_schedule="cosine", lr_patience=10)
    with pytest.raises(ValueError, match="monitor"):
        with_changes(PLAIN, monitor="val_auc")
