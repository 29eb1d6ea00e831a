"""The paper's network: InceptionV3 backbone, global average pooling, FC-512/Dropout-0.4 twice, softmax.

Backend-agnostic Keras 3: nothing here imports TensorFlow, ZenML or MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

#: InceptionV3's smallest accepted input side (Keras applications).
MIN_INPUT_SIDE = 75
#: File Keras looks for in ``$KERAS_HOME/models/`` for ImageNet weights without the top.
IMAGENET_NOTOP_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"


class WeightsNotFoundError(FileNotFoundError):
    """Pre-trained weights were asked for but are not on this machine."""


def keras_models_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def resolve_weights(weights: str | None) -> str | None:
    """Turn the configured ``weights`` into what Keras accepts, offline.

    ``None`` is random initialisation. ``"imagenet"`` needs the file Keras would otherwise
    download, already in ``$KERAS_HOME/models/``. Any other string is a weights file path.

    Raises:
        WeightsNotFoundError: the file is missing, saying which file to place where.
    """
    if weights is None or str(weights).lower() in {"none", "null", ""}:
        return None
    if weights == "imagenet":
        cached = keras_models_dir() / IMAGENET_NOTOP_FILE
        if not cached.exists():
            raise WeightsNotFoundError(
                f"ImageNet weights for InceptionV3 are not on this machine and cannot be downloaded here: "
                f"place {IMAGENET_NOTOP_FILE} in {cached.parent}/ (or set KERAS_HOME), give train.weights "
                "as a path to that file, or set train.weights: null to train without pre-trained weights (NPW)"
            )
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(f"train.weights: no weights file at {path}")
    return str(path)


def build_model(
    input_shape: tuple[int, int, int],
    weights: str | None = None,
    dense_units: int = 512,
    dropout: float = 0.4,
    n_classes: int = 2,
    name: str = "inceptionv3_fc512",
    bn_momentum: float | None = None,
) -> keras.Model:
    """InceptionV3 (no top) -> GAP -> [Dense(relu) -> Dropout] x2 -> Dense softmax.

    Args:
        input_shape: (rows, cols, 3); each side at least 75 pixels.
        weights: see ``resolve_weights``.
        bn_momentum: momentum of the backbone's batch-normalisation moving statistics (Keras:
            0.99). A short run from scratch (a few hundred steps) needs less, e.g. 0.9, or its
            moving statistics stay far from the data and inference collapses to one class.
    """
    rows, cols, channels = input_shape
    if min(rows, cols) < MIN_INPUT_SIDE or channels != 3:
        raise ValueError(f"input shape {input_shape}: InceptionV3 needs (rows, cols, 3) with sides >= {MIN_INPUT_SIDE}")
    backbone = keras.applications.InceptionV3(
        include_top=False, weights=resolve_weights(weights), input_shape=tuple(input_shape)
    )
    if bn_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    x = keras.layers.GlobalAveragePooling2D(name="gap")(backbone.output)
    for i in (1, 2):
        x = keras.layers.Dense(dense_units, activation="relu", name=f"fc{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="softmax", dtype="float32")(x)
    return keras.Model(backbone.input, outputs, name=name)
