"""Lesion instances from label masks: one 3D connected component per lesion.

A reference mask codes each voxel's class (0 background, 1 cyst, 2 metastasis). Each class is
labelled separately with 26-connectivity, so two touching lesions of different classes stay apart
and a lesion is never split by its own diagonal voxels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from liverlesion import LABEL_CYST, LABEL_METASTASIS, LABEL_NAMES, MASK_CYST, MASK_METASTASIS

#: mask value -> model label
MASK_TO_LABEL = {MASK_CYST: LABEL_CYST, MASK_METASTASIS: LABEL_METASTASIS}
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)

LESION_COLUMNS = [
    "lesion_id", "case_id", "patient_key", "instance", "label", "label_name", "n_voxels", "volume_ml",
    "bbox_lo_0", "bbox_lo_1", "bbox_lo_2", "bbox_hi_0", "bbox_hi_1", "bbox_hi_2",
    "centroid_0", "centroid_1", "centroid_2", "mean_hu", "std_hu",
]


def instance_map(mask: np.ndarray, case_id: str = "?") -> tuple[np.ndarray, list[dict]]:
    """Number the lesions of a class-coded mask: 1..N in a stable order (class, then position).

    Returns:
        An int32 volume where lesion ``k`` has value ``k``, and for each lesion a dict with its
        ``instance`` number, ``label`` and bounding box (array slices).

    Raises:
        ValueError: the mask has an unknown class code, naming the case.
    """
    codes = set(np.unique(mask).tolist()) - {0}
    unknown = codes - set(MASK_TO_LABEL)
    if unknown:
        raise ValueError(
            f"case {case_id}: mask has unknown class codes {sorted(unknown)}; "
            f"expected {sorted(MASK_TO_LABEL)} (1 cyst, 2 metastasis) and 0 for background"
        )
    found = []
    for code in sorted(codes):
        components, _ = ndimage.label(mask == code, structure=_CONNECTIVITY_26)
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            found.append((MASK_TO_LABEL[code], tuple(b.start for b in box[::-1]), components, index, box))
    found.sort(key=lambda f: (f[0], f[1]))
    instances = np.zeros(mask.shape, dtype=np.int32)
    described = []
    for number, (label, _, components, index, box) in enumerate(found, start=1):
        instances[box][components[box] == index] = number
        described.append({"instance": number, "label": label, "box": box})
    return instances, described


def lesion_instances(
    mask: np.ndarray,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    case_id: str,
    patient_key: str,
) -> pd.DataFrame:
    """One row per lesion of one case, in ``instance_map`` order.

    Args:
        mask: class-coded label volume (values in ``MASK_TO_LABEL`` or 0).
        image: the CT in HU, same shape as ``mask``.
        spacing: voxel size in mm along the array axes.
        case_id: written in the rows and used for ``lesion_id`` (``{case_id}-L{nn}``).
        patient_key: the pseudonymous patient key.

    Raises:
        ValueError: shapes differ or the mask has an unknown class code, naming the case.
    """
    if mask.shape != image.shape:
        raise ValueError(f"case {case_id}: mask shape {mask.shape} differs from image shape {image.shape}")
    instances, described = instance_map(mask, case_id)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    rows = []
    for lesion in described:
        box = lesion["box"]
        local = instances[box] == lesion["instance"]
        coords = np.argwhere(local)
        values = image[box][local].astype(np.float64)
        label = lesion["label"]
        rows.append(
            {
                "lesion_id": f"{case_id}-L{lesion['instance']:02d}",
                "case_id": case_id,
                "patient_key": patient_key,
                "instance": lesion["instance"],
                "label": label,
                "label_name": LABEL_NAMES[label],
                "n_voxels": int(local.sum()),
                "volume_ml": float(local.sum()) * voxel_ml,
                **{f"bbox_lo_{a}": int(box[a].start) for a in range(3)},
                **{f"bbox_hi_{a}": int(box[a].stop) for a in range(3)},
                **{f"centroid_{a}": float(coords[:, a].mean() + box[a].start) for a in range(3)},
                "mean_hu": float(values.mean()),
                "std_hu": float(values.std()),
            }
        )
    return pd.DataFrame(rows, columns=LESION_COLUMNS)


def bounding_box(row: pd.Series | dict, margin=(0, 0, 0)) -> tuple[slice, slice, slice]:
    """The lesion's bounding box as array slices, widened by ``margin`` voxels per axis (clipped at 0)."""
    return tuple(
        slice(max(int(row[f"bbox_lo_{a}"]) - int(margin[a]), 0), int(row[f"bbox_hi_{a}"]) + int(margin[a]))
        for a in range(3)
    )
