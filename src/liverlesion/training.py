"""Training and scoring loop (Keras 3, any backend). Seeds are set in one place: ``seed_everything``.

A model is trained by a ``protocol.Protocol`` (the paper's, section 3.3, is ``configs/paper.yaml``):
Adam, a learning rate cut on plateaus or decayed along a cosine, early stopping with the best
epoch's weights restored, and on-the-fly augmentation (rotation, shifts, flips) as Keras
preprocessing layers, so that it runs wherever the model runs. Choosing the epoch by validation
accuracy on a few dozen lesions is a coin toss between epochs that tie; a protocol may choose by
validation loss instead, break ties towards the later epoch, and decay the rate along a cosine (the
``quick`` profile does all three).
Nothing here imports TensorFlow, ZenML or MLflow.
"""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Iterator

import keras
import numpy as np

from liverlesion.protocol import Protocol, best_epoch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Python, NumPy and the Keras backend's random state, all from one seed.

    With ``deterministic`` on TensorFlow, kernels are also made deterministic, so a CPU rerun
    with the same seed gives the same weights and metrics (at some cost in speed).
    """
    keras.utils.set_random_seed(seed)
    if deterministic and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def accelerator() -> str | None:
    """The accelerator the loaded Keras backend computes on (e.g. ``NVIDIA H100 80GB HBM3``), or None on a CPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else device.device_kind
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name) if gpus else None
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return None


def device_description() -> str:
    """The backend, its version and the device, in words (``jax 0.10.2 on NVIDIA H200``,
    ``tensorflow 2.21.0 on cpu``)."""
    backend = keras.backend.backend()
    version = getattr(__import__(backend), "__version__", "?") if backend in ("jax", "tensorflow", "torch") else "?"
    return f"{backend} {version} on {accelerator() or 'cpu (' + (platform.processor() or platform.machine()) + ')'}"


@contextlib.contextmanager
def dtype_policy(policy: str) -> Iterator[None]:
    """Layers built inside compute in ``policy`` (``float32``, ``mixed_bfloat16``, ...); the previous policy after.

    Keras's policy is global to the process, and a pipeline runs its other steps in the same one.
    """
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class KeepBestEpoch(keras.callbacks.Callback):
    """Keeps the weights of the best epoch by ``protocol.monitor`` and puts them back when training ends.

    Unlike Keras's ``EarlyStopping(restore_best_weights=True)`` a tie can go to the later epoch, and
    the chosen epoch is the one ``best_epoch`` names in the history.
    """

    def __init__(self, monitor: str, mode: str, tie_break: str):
        super().__init__()
        self.monitor, self.mode, self.tie_break = monitor, mode, tie_break
        self.values: list[float] = []
        self.best_weights = None

    def on_train_begin(self, logs=None):
        self.values, self.best_weights = [], None

    def on_epoch_end(self, epoch, logs=None):
        self.values.append(float((logs or {}).get(self.monitor, np.nan)))
        best = best_epoch(self.values, self.mode, self.tie_break)
        if best == len(self.values) - 1:
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def augmentation(input_shape: tuple[int, int, int], protocol: Protocol) -> keras.Sequential:
    """Random rotation, shift and flips; identity at inference (Keras preprocessing layers).

    Shifts are given in pixels, as in the paper, and converted to the fractions Keras expects.
    Uncovered pixels repeat the nearest edge: the patches' borders are the constant padding.
    """
    rows, cols = input_shape[:2]
    layers = [
        keras.layers.RandomRotation(protocol.rotation_deg / 360.0, fill_mode="nearest", seed=protocol.seed),
        keras.layers.RandomTranslation(
            protocol.shift_px / rows, protocol.shift_px / cols, fill_mode="nearest", seed=protocol.seed + 1
        ),
    ]
    if protocol.flips:
        layers.append(keras.layers.RandomFlip("horizontal_and_vertical", seed=protocol.seed + 2))
    if keras.backend.backend() == "jax":
        # RandomRotation and RandomTranslation declare supports_jit = False because TensorFlow's
        # projective-transform kernel has no XLA version; Keras then runs the whole train step op
        # by op. On JAX they are plain jnp code that compiles: eager was 7x slower per epoch on CPU,
        # and a GPU run never got past 10 epochs in 80 s.
        for layer in layers:
            layer.supports_jit = True
    return keras.Sequential(layers, name="augmentation")


def training_model(model: keras.Model, protocol: Protocol) -> keras.Model:
    """What is fitted: ``model`` itself, or with augmentation a wrapper that shares its weights."""
    if not protocol.augment:
        return model
    inputs = keras.Input(model.input_shape[1:])
    return keras.Model(inputs, model(augmentation(model.input_shape[1:], protocol)(inputs)), name="training")


def compile_for_training(trainable: keras.Model, protocol: Protocol, steps_per_epoch: int | None = None) -> keras.Model:
    """Adam at the protocol's rate (or its cosine schedule), categorical cross-entropy (optionally smoothed), accuracy.

    ``steps_per_epoch`` is needed by the cosine schedule (its length is ``epochs`` x that).
    """
    rate = protocol.learning_rate
    if protocol.lr_schedule == "cosine":
        if not steps_per_epoch:
            raise ValueError("the cosine schedule needs steps_per_epoch")
        rate = keras.optimizers.schedules.CosineDecay(
            protocol.learning_rate, decay_steps=protocol.epochs * steps_per_epoch
        )
    trainable.compile(
        optimizer=keras.optimizers.Adam(learning_rate=rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=protocol.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        run_eagerly=protocol.run_eagerly,
    )
    return trainable


def top_up_to_full_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Append randomly chosen repeats (seeded) so that ``len(x)`` is a multiple of ``batch_size``."""
    missing = (-len(x)) % batch_size
    if missing == 0:
        return x, y
    extra = np.random.default_rng(seed).choice(len(x), size=missing, replace=missing > len(x))
    return np.concatenate([x, x[extra]]), np.concatenate([y, y[extra]])


def protocol_callbacks(protocol: Protocol) -> list[keras.callbacks.Callback]:
    """The best epoch's weights kept, learning-rate halving, early stopping."""
    callbacks: list[keras.callbacks.Callback] = [KeepBestEpoch(protocol.monitor, protocol.mode, protocol.tie_break)]
    if protocol.early_stopping_patience is not None:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=protocol.monitor, mode=protocol.mode, patience=protocol.early_stopping_patience
            )
        )
    if protocol.lr_patience is not None:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=protocol.monitor,
                mode=protocol.mode,
                factor=protocol.lr_factor,
                patience=protocol.lr_patience,
                min_lr=protocol.min_lr,
                min_delta=0.0,
            )
        )
    return callbacks


class EpochReporter(keras.callbacks.Callback):
    """Hands each epoch's logs (loss, accuracy, val_loss, val_accuracy, learning_rate) to a callable."""

    def __init__(self, report: Callable[[int, dict[str, float]], None]):
        super().__init__()
        self._report = report

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        logs.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        self._report(epoch, logs)


def train_classifier(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    protocol: Protocol,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    verbose: int = 2,
    extra_callbacks: list[keras.callbacks.Callback] = (),
) -> dict[str, list[float]]:
    """Train ``model`` in place under ``protocol``; the best validation epoch's weights are kept.

    With augmentation the model is trained inside a wrapper that shares its weights, so ``model``
    itself stays the plain network (what is saved and served).

    Returns:
        The per-epoch history (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``learning_rate``).
    """
    seed_everything(protocol.seed)
    validation_batch_size = None
    if protocol.full_batches:
        x_train, y_train = top_up_to_full_batches(x_train, y_train, protocol.batch_size, protocol.seed)
        validation_batch_size = len(x_val)
    trainable = compile_for_training(
        training_model(model, protocol), protocol, steps_per_epoch=-(-len(x_train) // protocol.batch_size)
    )
    callbacks = protocol_callbacks(protocol)
    if on_epoch is not None:
        callbacks.append(EpochReporter(on_epoch))
    callbacks.extend(extra_callbacks)
    n_classes = model.output_shape[-1]
    history = trainable.fit(
        x_train,
        keras.utils.to_categorical(np.asarray(y_train, dtype="int32"), n_classes),
        validation_data=(x_val, keras.utils.to_categorical(np.asarray(y_val, dtype="int32"), n_classes)),
        epochs=protocol.epochs,
        batch_size=protocol.batch_size,
        validation_batch_size=validation_batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=verbose,
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def predict_metastasis_probability(model: keras.Model, patches: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """P(metastasis) for each lesion's patch stack."""
    probabilities = model.predict(patches, batch_size=batch_size, verbose=0)
    return np.asarray(probabilities[:, 1], dtype=np.float64)
