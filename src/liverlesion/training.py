"""Training and scoring loop (Keras 3, any backend). Seeds are set in one place: ``seed_everything``."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np


def seed_everything(seed: int) -> None:
    """Python, NumPy and the Keras backend's random state, all from one seed."""
    keras.utils.set_random_seed(seed)


class EpochReporter(keras.callbacks.Callback):
    """Hands each epoch's logs (loss, accuracy, val_loss, val_accuracy) to a callable."""

    def __init__(self, report: Callable[[int, dict[str, float]], None]):
        super().__init__()
        self._report = report

    def on_epoch_end(self, epoch, logs=None):
        self._report(epoch, {k: float(v) for k, v in (logs or {}).items()})


def train_classifier(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    verbose: int = 2,
) -> dict[str, list[float]]:
    """Adam + sparse categorical cross-entropy; the weights of the best validation accuracy are kept.

    Returns:
        The per-epoch history (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``).
    """
    seed_everything(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callbacks: list[keras.callbacks.Callback] = [
        # patience = epochs: never stops early here; it only restores the best epoch's weights
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=epochs, restore_best_weights=True
        )
    ]
    if on_epoch is not None:
        callbacks.append(EpochReporter(on_epoch))
    history = model.fit(
        x_train,
        np.asarray(y_train, dtype="int32"),
        validation_data=(x_val, np.asarray(y_val, dtype="int32")),
        epochs=epochs,
        batch_size=batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=verbose,
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def predict_metastasis_probability(model: keras.Model, patches: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """P(metastasis) for each lesion's patch stack."""
    probabilities = model.predict(patches, batch_size=batch_size, verbose=0)
    return np.asarray(probabilities[:, 1], dtype=np.float64)
