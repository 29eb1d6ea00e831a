"""How a model is trained, as data: the ``Protocol`` every trainer reads (the pipeline's ``train`` step
through ``config.TrainConfig``, ``bench/train_gpu.py`` from an export's settings).

Its values come from a profile (``configs/paper.yaml`` is the paper's protocol, section 3.3: the one
place its values are written). Nothing here imports Keras, so a profile can be read, and the Keras
backend chosen from it, before Keras is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

#: what an epoch can be chosen by: the paper's validation accuracy, or the validation loss (lower is
#: better), which moves with every lesion's probability rather than with the few that cross the threshold
MONITORS = ("val_accuracy", "val_loss")


@dataclass(frozen=True)
class Protocol:
    """How a model is trained: every field is a setting of the profile's ``train`` section (no defaults here)."""

    epochs: int
    batch_size: int
    learning_rate: float
    lr_patience: int | None  # epochs without improvement before the rate is cut; None: never
    lr_factor: float
    min_lr: float
    early_stopping_patience: int | None  # None: run every epoch (best weights still restored)
    augment: bool
    rotation_deg: float
    shift_px: int
    flips: bool
    label_smoothing: float
    seed: int
    # Which epoch's weights are kept: the best by ``monitor``; among equal values the first (the
    # paper's Keras callbacks) or the last (more training behind it, and a tie on 45 validation
    # lesions is common). The same monitor drives the rate cuts and early stopping.
    monitor: Literal["val_accuracy", "val_loss"]
    tie_break: Literal["first", "last"]
    # "constant": the rate stays (cut only by lr_patience); "cosine": it decays along a half cosine
    # from learning_rate to 0 over the epochs, so a short run ends with small, steady steps
    lr_schedule: Literal["constant", "cosine"]
    # Every training batch full and validation in one batch, so a compiling backend (JAX) traces
    # one train step and one eval step instead of one more per odd batch size: the training set is
    # topped up to a multiple of the batch with randomly repeated lesions (seeded; < 1 batch).
    full_batches: bool
    # Each step run op by op instead of traced into a graph first. Tracing InceptionV3's train step
    # costs tens of seconds on a CPU, once per process; it pays back over a real run's hundreds of
    # steps, not over a smoke run of one epoch on a handful of patients (5x faster there). On JAX, op by op
    # dispatch is slower than compiling even then.
    run_eagerly: bool

    def __post_init__(self):
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor {self.monitor!r}: expected one of {MONITORS}")
        if self.lr_schedule == "cosine" and self.lr_patience is not None:
            raise ValueError(
                "lr_schedule 'cosine' sets the rate of every step; it cannot also be cut on a plateau "
                "(set lr_patience to null)"
            )

    @property
    def mode(self) -> str:
        """``min`` for a loss, ``max`` for an accuracy."""
        return "min" if self.monitor.endswith("loss") else "max"


def best_epoch(values: Sequence[float], mode: str, tie_break: str) -> int:
    """The index of the best value (``mode`` max or min); among equal ones the first or the last.

    NaN is never best (a diverged epoch); all NaN gives the last epoch.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no epoch to choose from")
    finite = np.where(np.isnan(values), -np.inf if mode == "max" else np.inf, values)
    target = finite.max() if mode == "max" else finite.min()
    if not np.isfinite(target):
        return int(values.size - 1)
    hits = np.flatnonzero(finite == target)
    return int(hits[0] if tie_break == "first" else hits[-1])


#: what a model is trained in: ``float32``, or Keras's mixed precision (float16 or bfloat16 compute,
#: float32 weights); ``auto`` is mixed bfloat16 on an accelerator and float32 on a CPU
TRAINING_PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def resolve_training_precision(setting: str, accelerator: bool) -> str:
    """The Keras dtype policy to train in for ``setting`` on this device.

    ``auto``: ``mixed_bfloat16`` where there is an accelerator (bfloat16 keeps float32's range, so
    no loss scaling), ``float32`` on a CPU (mixed precision there is emulated and slower).

    Raises:
        ValueError: an unknown setting, naming the choices.
    """
    if setting not in TRAINING_PRECISIONS:
        raise ValueError(f"training precision {setting!r}: expected one of {TRAINING_PRECISIONS}")
    if setting == "auto":
        return "mixed_bfloat16" if accelerator else "float32"
    return setting
