"""The pipeline's patches as one portable file, for training where the pipeline does not run.

A GPU machine may have Keras and JAX but neither TensorFlow, ZenML nor MLflow. ``liverlesion
export`` writes the validated, split patches of a profile to one compressed ``.npz``; the
standalone trainer (``bench/train_gpu.py``) reads it with ``load_patch_set`` and needs NumPy only.
The file carries its lineage (data version, split manifest hash, patch settings) so that a number
measured from it can be traced back to the cohort and split it came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverlesion.splitting import SETS, arrays_for_set

FORMAT_VERSION = 1


@dataclass(frozen=True)
class PatchSet:
    """Patch stacks (n, rows, cols, 3), labels (0 cyst, 1 metastasis) and ids of one split set."""

    x: np.ndarray
    y: np.ndarray
    lesion_id: np.ndarray
    patient_key: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class ExportedPatches:
    train: PatchSet
    val: PatchSet
    test: PatchSet
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> PatchSet:
        if name not in SETS:
            raise KeyError(f"unknown set {name!r}; one of {SETS}")
        return getattr(self, name)


def export_patches(
    path: Path,
    patches: np.ndarray,
    patch_index: pd.DataFrame,
    manifest: pd.DataFrame,
    meta: dict[str, Any],
    dtype: str = "float16",
) -> Path:
    """Write the train/val/test patch stacks of ``manifest`` to ``path`` (compressed ``.npz``).

    ``float16`` halves the file: the patches are standardised (zero mean, unit variance), so its
    three significant digits are far finer than the CT noise. ``meta`` (JSON-serialisable) is
    stored as is, with the format version and dtype added.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = dict(zip(manifest["lesion_id"], manifest["patient_key"]))
    arrays: dict[str, np.ndarray] = {}
    counts = {}
    for name in SETS:
        x, y, ids = arrays_for_set(patches, patch_index, manifest, name)
        arrays[f"{name}_x"] = x.astype(dtype)
        arrays[f"{name}_y"] = y.astype(np.int8)
        arrays[f"{name}_lesion_id"] = np.asarray(ids, dtype=str)
        arrays[f"{name}_patient_key"] = np.asarray([keys[i] for i in ids], dtype=str)
        counts[name] = len(ids)
    full_meta = {
        **meta,
        "format_version": FORMAT_VERSION,
        "dtype": dtype,
        "counts": counts,
        "patch_shape": list(patches.shape[1:]),
    }
    arrays["meta"] = np.asarray(json.dumps(full_meta, sort_keys=True))
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_patch_set(path: Path, dtype: str = "float32") -> ExportedPatches:
    """Read a file written by ``export_patches``; patches come back as ``dtype``.

    Raises:
        ValueError: the file is not such an export, or of another format version, naming the file.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        if "meta" not in data.files:
            raise ValueError(f"{path}: not a patch export (no 'meta'); write one with `liverlesion export`")
        meta = json.loads(str(data["meta"]))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: patch export format {meta.get('format_version')}, expected {FORMAT_VERSION}")
        sets = {
            name: PatchSet(
                data[f"{name}_x"].astype(dtype),
                data[f"{name}_y"].astype(np.int32),
                data[f"{name}_lesion_id"],
                data[f"{name}_patient_key"],
            )
            for name in SETS
        }
    return ExportedPatches(**sets, meta=meta)
