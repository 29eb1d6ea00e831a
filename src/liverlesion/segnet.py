"""Learned automatic segmentation: a 2D cascade of two small U-Nets, the liver first, then lesions inside it.

In the spirit of "End-to-End Discriminative Deep Network for Liver Lesion Classification" (ISBI 2019): a
liver network segments whole axial slices; a lesion network then segments each slice's liver crop, so it
sees the liver at a finer scale and is given the liver mask as a further channel (lesions lie inside the
liver, and soft tissue outside it has metastasis-like HU). Each net can see a slice with its neighbours
on each side as channels (2.5D: ``liver_context_slices``, ``lesion_context_slices``): a vessel running
through the slices and a lesion ending in them differ there. This module gives the two
probability maps only; turning them into masks (thresholds, components, size filters) is post-processing's job.

Volumes are (x, y, z) with axial slices ``volume[:, :, k]``, in HU. Backend-agnostic Keras 3, imported inside
functions so that importing this module stays light; nothing here imports TensorFlow, ZenML, MLflow or DVC.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from liverlesion.morphology import largest_component

#: slices per ``predict`` batch at inference
PREDICT_BATCH = 64
LIVER_FILE, LESION_FILE, SETTINGS_FILE = "liver_net.keras", "lesion_net.keras", "cascade_settings.json"

Box = tuple[int, int, int, int]  # x0, x1, y0, y1 (half-open) of one slice's crop


@dataclass(frozen=True)
class CascadeSettings:
    """Everything that determines a cascade and its training; JSON round trip via ``as_dict``/``from_dict``.

    The values come from a profile's ``segmenter`` section; ``configs/base.yaml``'s train on ~60 full-size
    cases in a few minutes on 2 CPU cores: each case gives only a few dozen small slices, which is what
    makes that possible without keeping any volume.
    """

    liver_size: int  # whole axial slice resized to liver_size x liver_size for the liver net
    lesion_size: int  # each slice's liver box (plus crop_margin) resized to this for the lesion net
    base_filters: int
    depth: int  # 2x downsamplings of the U-Net (depth + 1 resolutions)
    epochs: int
    batch_size: int
    learning_rate: float
    hu_window: tuple[float, float]  # HU clipped to this and scaled to [0, 1]
    seed: int
    liver_slices_per_case: int  # spread over all of a case's slices, with or without liver
    lesion_slices_per_case: int  # liver slices, those with lesions first (up to lesion_slice_fraction)
    lesion_slice_fraction: float  # lesions are rare: most lesion-net slices show one
    crop_margin: int  # voxels added on each side of a slice's liver box
    crop_jitter: int  # training only: each side of the box moves by up to this many voxels
    min_crop: int  # a crop side is at least this many voxels, so the liver's tips are not blown up
    liver_context_slices: int  # neighbouring slices on each side given to the liver net as channels; 0: none
    lesion_context_slices: int  # likewise for the lesion net (2.5D)

    def __post_init__(self) -> None:
        for name in ("liver_size", "lesion_size"):
            size = getattr(self, name)
            if size < 2**self.depth or size % 2**self.depth:
                raise ValueError(f"{name} ({size}) must be a positive multiple of 2**depth ({2**self.depth})")
        lo, hi = self.hu_window
        if not lo < hi:
            raise ValueError(f"hu_window must be increasing, got {self.hu_window}")
        if not 0 <= self.crop_jitter <= self.crop_margin:
            raise ValueError("crop_jitter must lie in [0, crop_margin] so that a training crop keeps the liver")
        if not 0.0 <= self.lesion_slice_fraction <= 1.0:
            raise ValueError("lesion_slice_fraction must lie in [0, 1]")
        if min(self.liver_context_slices, self.lesion_context_slices) < 0:
            raise ValueError("liver_context_slices and lesion_context_slices must be at least 0")
        if (
            min(
                self.base_filters,
                self.depth,
                self.epochs,
                self.batch_size,
                self.liver_slices_per_case,
                self.lesion_slices_per_case,
                self.min_crop,
            )
            < 1
        ):
            raise ValueError("sizes, counts and epochs must be at least 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def liver_channels(self) -> int:
        """The liver net's input channels: the slice and its neighbours."""
        return 2 * self.liver_context_slices + 1

    @property
    def lesion_channels(self) -> int:
        """The lesion net's input channels: the slice, its neighbours and the liver mask."""
        return 2 * self.lesion_context_slices + 2

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CascadeSettings:
        # a cascade saved before 2.5D inputs saw one slice
        return cls(
            **{"liver_context_slices": 0, "lesion_context_slices": 0, **data, "hu_window": tuple(data["hu_window"])}
        )


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------
def build_unet(
    size: int, base_filters: int, depth: int, in_channels: int = 1, name: str = "unet", output_prior: float = 0.5
):
    """A plain 2D U-Net: ``depth`` poolings, two 3x3 conv + ReLU per level, one sigmoid output channel.

    No normalisation layers: after a few hundred steps batch statistics' running means are not yet
    settled, and the short trainings here would then predict differently from how they trained.
    ``output_prior`` is the output before training (through the sigmoid's bias): starting a rare
    target such as lesions near its true frequency, rather than at 0.5, spares the first epochs the
    detour through predicting nothing at all.
    """
    import keras
    from keras import layers

    if size % 2**depth:
        raise ValueError(f"size {size} is not divisible by 2**depth = {2**depth}")

    def block(x, filters: int):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", kernel_initializer="he_normal")(x)
        return x

    inputs = keras.Input((size, size, in_channels))
    x, skips = inputs, []
    for level in range(depth):
        x = block(x, base_filters * 2**level)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, base_filters * 2**depth)
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**level, 2, strides=2, padding="same")(x)
        x = block(layers.Concatenate()([x, skips[level]]), base_filters * 2**level)
    prior = float(np.clip(output_prior, 1e-4, 1 - 1e-4))
    bias = keras.initializers.Constant(float(np.log(prior / (1 - prior))))
    outputs = layers.Conv2D(1, 1, activation="sigmoid", bias_initializer=bias)(x)
    return keras.Model(inputs, outputs, name=name)


def batch_dice(y_true, y_pred):
    """Batch Dice of the prediction thresholded at 0.5 (1 when both are empty): the training metric."""
    from keras import ops

    hard = ops.cast(y_pred > 0.5, y_pred.dtype)
    overlap = ops.sum(y_true * hard)
    return (2.0 * overlap + 1e-6) / (ops.sum(y_true) + ops.sum(hard) + 1e-6)


def bce_dice_loss(y_true, y_pred):
    """Binary cross-entropy plus soft Dice over the whole batch.

    The Dice term counts a small lesion's voxels as much as the rest of the batch's, which plain
    cross-entropy (dominated by background) does not; it is pooled over the batch so that slices
    without any target do not each contribute a meaningless 0/0.
    """
    from keras import losses, ops

    bce = ops.mean(losses.binary_crossentropy(y_true, y_pred))
    soft = 1.0 - (2.0 * ops.sum(y_true * y_pred) + 1.0) / (ops.sum(y_true) + ops.sum(y_pred) + 1.0)
    return bce + soft


# ---------------------------------------------------------------------------------------------
# Slices, crops and resizing
# ---------------------------------------------------------------------------------------------
def _window(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    lo, hi = window
    return ((np.clip(hu.astype(np.float32), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _resize(array: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Resize the first two (in-plane) axes to ``shape``, leaving any further axes alone."""
    factors = (shape[0] / array.shape[0], shape[1] / array.shape[1]) + (1.0,) * (array.ndim - 2)
    out = ndimage.zoom(array, factors, order=order)
    assert out.shape[:2] == tuple(shape), (out.shape, shape)
    return out


def _with_neighbours(volume: np.ndarray, ks, context: int) -> np.ndarray:
    """(x, y, len(ks), 2 * context + 1): each slice k of ``ks`` with slices k - context .. k + context (the end
    slices repeated past the volume's ends)."""
    index = np.clip(
        np.asarray(ks, dtype=int)[:, None] + np.arange(-context, context + 1)[None, :], 0, volume.shape[2] - 1
    )
    return volume[:, :, index]


def _spread(indices: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` of ``indices``: one at random from each of ``n`` consecutive, near-equal runs."""
    if len(indices) <= n:
        return indices
    return np.array([rng.choice(run) for run in np.array_split(indices, n)] if n > 0 else [], dtype=indices.dtype)


def _crop_box(liver: np.ndarray, settings: CascadeSettings, rng: np.random.Generator | None = None) -> Box | None:
    """A slice's in-plane liver box plus the margin (jittered when ``rng`` is given), at least ``min_crop``
    a side where the slice allows, inside the slice; None without liver."""
    rows, cols = np.flatnonzero(liver.any(axis=1)), np.flatnonzero(liver.any(axis=0))
    if rows.size == 0:
        return None
    box: list[int] = []
    for found, extent in ((rows, liver.shape[0]), (cols, liver.shape[1])):
        lo, hi = int(found[0]) - settings.crop_margin, int(found[-1]) + 1 + settings.crop_margin
        if rng is not None:
            lo, hi = (int(v) + int(rng.integers(-settings.crop_jitter, settings.crop_jitter + 1)) for v in (lo, hi))
        grow = max(0, min(settings.min_crop, extent) - (hi - lo))
        lo, hi = lo - grow // 2, hi + grow - grow // 2
        shift = max(0, -lo) - max(0, hi - extent)
        lo, hi = max(0, lo + shift), min(extent, hi + shift)
        box += [lo, hi]
    return box[0], box[1], box[2], box[3]


def _lesion_input(image: np.ndarray, liver: np.ndarray, box: Box, size: int) -> np.ndarray:
    """The lesion net's (size, size, lesion_channels) input: the crop of the windowed slice with its neighbours
    (``image``: (x, y, channels)) and the liver mask's crop."""
    x0, x1, y0, y1 = box
    channels = np.concatenate([image[x0:x1, y0:y1], liver[x0:x1, y0:y1, None].astype(np.float32)], axis=-1)
    return _resize(channels, (size, size), order=1).astype(np.float32)


def _case_samples(
    hu: np.ndarray, liver: np.ndarray, lesion: np.ndarray, settings: CascadeSettings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A case's training slices: liver-net inputs and targets, then lesion-net inputs and targets."""
    s = settings
    nz = hu.shape[2]
    ks = _spread(np.arange(nz), s.liver_slices_per_case, rng)
    stacked = _window(_with_neighbours(hu, ks, s.liver_context_slices), s.hu_window)
    liver_x = np.moveaxis(_resize(stacked, (s.liver_size,) * 2, order=1), 2, 0)
    liver_y = np.moveaxis(_resize(liver[:, :, ks].astype(np.float32), (s.liver_size,) * 2, order=1) > 0.5, 2, 0)

    has_liver, has_lesion = liver.any(axis=(0, 1)), lesion.any(axis=(0, 1))
    positive, negative = np.flatnonzero(has_liver & has_lesion), np.flatnonzero(has_liver & ~has_lesion)
    chosen = _spread(positive, round(s.lesion_slices_per_case * s.lesion_slice_fraction), rng)
    chosen = np.concatenate([chosen, _spread(negative, s.lesion_slices_per_case - len(chosen), rng)]).astype(int)
    lesion_x = np.zeros((len(chosen), s.lesion_size, s.lesion_size, s.lesion_channels), np.float32)
    lesion_y = np.zeros((len(chosen), s.lesion_size, s.lesion_size, 1), np.float32)
    for i, k in enumerate(chosen):
        x0, x1, y0, y1 = box = _crop_box(liver[:, :, k], s, rng)
        stacked = _window(_with_neighbours(hu, [k], s.lesion_context_slices)[:, :, 0], s.hu_window)
        lesion_x[i] = _lesion_input(stacked, liver[:, :, k], box, s.lesion_size)
        lesion_y[i, ..., 0] = _resize(lesion[x0:x1, y0:y1, k].astype(np.float32), (s.lesion_size,) * 2, order=1) > 0.5
    return liver_x, liver_y[..., None].astype(np.float32), lesion_x, lesion_y


# ---------------------------------------------------------------------------------------------
# The cascade
# ---------------------------------------------------------------------------------------------
class Cascade:
    """The trained pair: ``liver_net`` on whole slices, ``lesion_net`` on each slice's liver crop."""

    def __init__(self, settings: CascadeSettings, liver_net, lesion_net) -> None:
        self.settings = settings
        self.liver_net = liver_net
        self.lesion_net = lesion_net

    def probabilities(self, hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(liver_probability, lesion_probability), float32 in [0, 1] on ``hu``'s own (x, y, z) grid.

        The lesion net looks only at the crops around the liver found here (liver probability > 0.5, its
        largest 3D component), so lesion probability is 0 outside those crops and on slices without liver.
        Each net predicts all its slices in batches.
        """
        s = self.settings
        hu = np.asarray(hu)
        if hu.ndim != 3:
            raise ValueError(f"expected an (x, y, z) volume, got shape {hu.shape}")
        image = _window(hu, s.hu_window)
        small = _resize(image, (s.liver_size,) * 2, order=1)
        small = np.moveaxis(_with_neighbours(small, range(hu.shape[2]), s.liver_context_slices), 2, 0)
        predicted = self.liver_net.predict(small, batch_size=PREDICT_BATCH, verbose=0)[..., 0]
        liver_probability = np.clip(_resize(np.moveaxis(predicted, 0, 2), hu.shape[:2], order=1), 0.0, 1.0)
        liver = largest_component(liver_probability > 0.5)

        lesion_probability = np.zeros(hu.shape, np.float32)
        boxes = [(k, box) for k in range(hu.shape[2]) if (box := _crop_box(liver[:, :, k], s)) is not None]
        if boxes:
            crops = np.stack(
                [
                    _lesion_input(
                        _with_neighbours(image, [k], s.lesion_context_slices)[:, :, 0],
                        liver[:, :, k],
                        box,
                        s.lesion_size,
                    )
                    for k, box in boxes
                ]
            )
            predicted = self.lesion_net.predict(crops, batch_size=PREDICT_BATCH, verbose=0)[..., 0]
            for (k, (x0, x1, y0, y1)), slice_probability in zip(boxes, predicted):
                lesion_probability[x0:x1, y0:y1, k] = _resize(slice_probability, (x1 - x0, y1 - y0), order=1)
        return liver_probability.astype(np.float32), np.clip(lesion_probability, 0.0, 1.0)

    def save(self, folder: str | Path) -> None:
        """Both nets as ``.keras`` files and the settings as JSON, in ``folder`` (created)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.liver_net.save(folder / LIVER_FILE)
        self.lesion_net.save(folder / LESION_FILE)
        (folder / SETTINGS_FILE).write_text(json.dumps(self.settings.as_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Cascade:
        """The cascade ``save`` wrote, for inference (uncompiled: the training loss is not needed)."""
        import keras

        folder = Path(folder)
        settings = CascadeSettings.from_dict(json.loads((folder / SETTINGS_FILE).read_text()))
        return cls(
            settings,
            keras.saving.load_model(folder / LIVER_FILE, compile=False),
            keras.saving.load_model(folder / LESION_FILE, compile=False),
        )


def _fit(
    net, x: np.ndarray, y: np.ndarray, settings: CascadeSettings, label: str, progress: Callable[[str], None]
) -> dict[str, list[float]]:
    import keras

    net.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss=bce_dice_loss,
        metrics=[keras.metrics.MeanMetricWrapper(batch_dice, name="dice")],
    )
    report = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: progress(
            f"{label} net epoch {epoch + 1}/{settings.epochs}: loss {logs['loss']:.4f}, dice {logs['dice']:.3f}"
        )
    )
    history = net.fit(
        x, y, batch_size=settings.batch_size, epochs=settings.epochs, shuffle=True, verbose=0, callbacks=[report]
    )
    return {f"{label}_{key}": [float(v) for v in values] for key, values in history.history.items()}


def train_cascade(
    cases: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    settings: CascadeSettings,
    progress: Callable[[str], None] | None = None,
) -> tuple[Cascade, dict[str, list[float]]]:
    """Train the liver net, then the lesion net, from ``(hu, liver_bool, lesion_bool)`` cases.

    Each case is cut into its few training slices as it arrives and then dropped, so a cohort of large
    volumes never sits in memory. Lesion-net crops come from the true liver mask (jittered). Seeded by
    ``settings.seed`` (Keras's and the slice sampling's random state), so a CPU rerun repeats itself.

    Returns:
        the cascade and the per-epoch history: ``liver_loss``, ``liver_dice``, ``lesion_loss``, ``lesion_dice``.
    """
    import keras

    say = progress or (lambda message: None)
    keras.utils.set_random_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    parts: list[tuple[np.ndarray, ...]] = []
    for hu, liver, lesion in cases:
        if not hu.shape == liver.shape == lesion.shape or hu.ndim != 3:
            raise ValueError(f"case {len(parts) + 1}: hu, liver and lesion must be (x, y, z) volumes of one shape")
        parts.append(_case_samples(np.asarray(hu), np.asarray(liver, bool), np.asarray(lesion, bool), settings, rng))
        say(f"case {len(parts)}: {len(parts[-1][0])} liver-net slices, {len(parts[-1][2])} lesion-net crops")
    if not parts:
        raise ValueError("train_cascade needs at least one case")
    liver_x, liver_y, lesion_x, lesion_y = (np.concatenate(arrays) for arrays in zip(*parts))
    if not len(lesion_x):
        raise ValueError("no case has any liver: the lesion net has nothing to train on")
    del parts

    s = settings
    liver_net = build_unet(
        s.liver_size, s.base_filters, s.depth, s.liver_channels, "liver_unet", output_prior=liver_y.mean()
    )
    history = _fit(liver_net, liver_x, liver_y, s, "liver", say)
    lesion_net = build_unet(
        s.lesion_size, s.base_filters, s.depth, s.lesion_channels, "lesion_unet", output_prior=lesion_y.mean()
    )
    history |= _fit(lesion_net, lesion_x, lesion_y, s, "lesion", say)
    return Cascade(s, liver_net, lesion_net), history
