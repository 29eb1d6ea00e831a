"""The paper's networks: an Inception backbone, global average pooling, FC-512/Dropout-0.4 twice, softmax.

The proposed model is InceptionV3 with ImageNet weights; Table 2 also has InceptionV3 without them
and InceptionResNetV2 with and without them, all with the same head (section 2.2).

Backend-agnostic Keras 3: nothing here imports TensorFlow, ZenML or MLflow. Keras itself is imported when a
network is built, not with this module: checking a profile's weights (``resolve_weights``, before a run whose
steps may all be cached) loads no Keras or TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

#: The Keras applications' smallest accepted input side (InceptionV3 and InceptionResNetV2).
MIN_INPUT_SIDE = 75


@dataclass(frozen=True)
class Backbone:
    """A Keras application used as the feature extractor, and its ImageNet weights file."""

    label: str
    application_name: str  # the function of ``keras.applications`` that builds it
    imagenet_notop_file: str  # the name Keras gives it in $KERAS_HOME/models/
    imagenet_notop_md5: str  # Keras's own check of that file

    @property
    def application(self) -> Callable[..., keras.Model]:
        import keras

        return getattr(keras.applications, self.application_name)


BACKBONES: dict[str, Backbone] = {
    "inception_v3": Backbone(
        "InceptionV3",
        "InceptionV3",
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "bcbd6486424b2319ff4ef7d526e38f63",
    ),
    "inception_resnet_v2": Backbone(
        "InceptionResNetV2",
        "InceptionResNetV2",
        "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "d19885ff4a710c122648d3b5c3b684e4",
    ),
}
#: File Keras looks for in ``$KERAS_HOME/models/`` for InceptionV3's ImageNet weights without the top.
IMAGENET_NOTOP_FILE = BACKBONES["inception_v3"].imagenet_notop_file


class WeightsNotFoundError(FileNotFoundError):
    """Pre-trained weights were asked for but are not on this machine (or are not the right file)."""


def keras_models_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"backbone {name!r}: expected one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(weights: str | None, backbone: str) -> str | None:
    """Turn the configured ``weights`` into a weights file path (or ``None``), offline.

    ``None`` is random initialisation (NPW). ``"imagenet"`` (IPW) is the file Keras would otherwise
    download, already in ``$KERAS_HOME/models/`` and checked against Keras's MD5 for it. Any other
    string is a weights file path, used as it is (a file of the same backbone without its top).

    Raises:
        WeightsNotFoundError: the file is missing or is not Keras's release file, saying which file
            to place where, or to train without pre-trained weights.
    """
    if weights is None or str(weights).lower() in {"none", "null", ""}:
        return None
    spec = _backbone(backbone)
    if weights == "imagenet":
        cached = keras_models_dir() / spec.imagenet_notop_file
        if not cached.exists():
            raise WeightsNotFoundError(
                f"ImageNet weights for {spec.label} are not on this machine and cannot be downloaded here: "
                f"place {spec.imagenet_notop_file} in {cached.parent}/ (or set KERAS_HOME), give the weights "
                "as a path to that file, or set the weights to null to train without pre-trained weights (NPW)"
            )
        if _md5(cached) != spec.imagenet_notop_md5:
            raise WeightsNotFoundError(
                f"{cached} is not Keras's ImageNet weights file for {spec.label} (MD5 {_md5(cached)}, "
                f"expected {spec.imagenet_notop_md5}); replace it, or give the file as an explicit weights path"
            )
        return str(cached)
    path = Path(weights).expanduser()
    if not path.exists():
        raise WeightsNotFoundError(f"no weights file at {path} (weights for {spec.label})")
    return str(path)


def build_model(
    input_shape: tuple[int, int, int],
    backbone: str,
    weights: str | None,
    dense_units: int,
    dropout: float,
    bn_momentum: float | None,
    n_classes: int = 2,
    name: str | None = None,
) -> keras.Model:
    """Backbone (no top) -> GAP -> [Dense(relu) -> Dropout] x2 -> Dense softmax (float32).

    Args:
        input_shape: (rows, cols, 3); each side at least 75 pixels.
        backbone: a key of ``BACKBONES``.
        weights: see ``resolve_weights``.
        dense_units, dropout: the head's two FC layers and the dropout after each (the paper: 512, 0.4).
        name: the model's name; default ``inceptionv3_fc512`` / ``inceptionresnetv2_fc512``.
        bn_momentum: momentum of the backbone's batch-normalisation moving statistics (Keras:
            0.99). A short run from scratch (a few hundred steps) needs less, e.g. 0.9, or its
            moving statistics stay far from the data and inference collapses to one class.
        n_classes: the softmax's width (cyst, metastasis).
    """
    import keras

    spec = _backbone(backbone)
    rows, cols, channels = input_shape
    if min(rows, cols) < MIN_INPUT_SIDE or channels != 3:
        raise ValueError(
            f"input shape {input_shape}: {spec.label} needs (rows, cols, 3) with sides >= {MIN_INPUT_SIDE}"
        )
    features = spec.application(
        include_top=False, weights=resolve_weights(weights, backbone), input_shape=tuple(input_shape)
    )
    if bn_momentum is not None:
        for layer in features.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    x = keras.layers.GlobalAveragePooling2D(name="gap")(features.output)
    for i in (1, 2):
        x = keras.layers.Dense(dense_units, activation="relu", name=f"fc{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="softmax", dtype="float32")(x)
    return keras.Model(features.input, outputs, name=name or f"{spec.label.lower()}_fc512")
