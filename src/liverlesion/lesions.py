"""Lesion instances from a segmentation: one row per lesion, the label from the mask or a type table.

How the voxels of one lesion are found depends on the mask's encoding (``contract``): a class-coded
mask (0 background, 1 cyst, 2 metastasis) is labelled per class with 26-connectivity, so two
touching lesions of different classes stay apart and a lesion is never split by its own diagonal
voxels; an instance mask already numbers its lesions; a binary mask's lesions are its connected
components. Geometry (where a lesion is) and diagnosis (what it is) stay apart: outside class-coded
masks the label comes from a lesion-type table, and a lesion without one has no label (inference).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage

from liverlesion.contract import (
    LABEL_NAMES,
    LESION_COLUMNS,
    LESION_TYPES,
    MASK_ENCODINGS,
    MASK_TO_LABEL,
    MAX_LESIONS_PER_CASE,
    ContractError,
    shown,
)
from liverlesion.crops import LesionCrop, cut_crops

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
#: the largest lesion number an instance mask may use (its lesions are counted against the per-case limit too)
MAX_INSTANCE_NUMBER = 65535


#: ``labels_present`` counts values in chunks of this many voxels (a bounded temporary: 8 bytes a voxel)
_COUNT_CHUNK = 1 << 22
#: ... for label volumes whose largest value is at most this (an instance mask's limit), else it sorts
_COUNT_MAX_VALUE = 1 << 16


def labels_present(labels: np.ndarray) -> np.ndarray:
    """The distinct values of a label volume, sorted: ``np.unique``'s answer, in one counting pass where the values
    are small non-negative integers (sorting a 512x512x120 mask took ~0.5 s; counting ~0.05 s). The volume is
    counted slab by slab along its first axis, so a strided view (a reoriented mask) is never copied whole: the
    temporary stays ~32 MiB."""
    array = np.atleast_1d(np.asarray(labels))
    if array.size == 0 or array.dtype.kind not in "uib":
        return np.unique(array)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > _COUNT_MAX_VALUE:
        return np.unique(array)
    counts = np.zeros(high + 1, dtype=np.int64)
    step = max(1, _COUNT_CHUNK * array.shape[0] // array.size)
    for start in range(0, array.shape[0], step):
        counts += np.bincount(array[start : start + step].ravel(), minlength=high + 1)
    return np.flatnonzero(counts).astype(array.dtype)


def _named(case_id: str) -> str:
    """How a message names the case: ``case <id>``, or an import's label (``contract.source_named_as``)."""
    return shown(f"case {case_id}")


def _too_many(case_id: str, count: int) -> ContractError:
    return ContractError(
        f"{_named(case_id)}: the mask holds {count:,} lesions, more than the limit of {MAX_LESIONS_PER_CASE} per case "
        "(contract.MAX_LESIONS_PER_CASE): a noisy or wrongly thresholded mask; nothing was cut"
    )


def _components(binary: np.ndarray, label: int | None, case_id: str = "?") -> list[tuple]:
    components, count = ndimage.label(binary, structure=_CONNECTIVITY_26)
    if count > MAX_LESIONS_PER_CASE:  # before a box or a crop is made for each
        raise _too_many(case_id, count)
    return [
        (label, tuple(b.start for b in box[::-1]), components, index, box)
        for index, box in enumerate(ndimage.find_objects(components), start=1)
    ]


def instance_map(mask: np.ndarray, case_id: str = "?", encoding: str = "class") -> tuple[np.ndarray, list[dict]]:
    """Number the lesions of a mask 1..N.

    ``class`` and ``binary`` masks are numbered in a stable order (class, then position);
    an ``instance`` mask keeps its own numbers.

    Returns:
        An int32 volume where lesion ``k`` has value ``k``, and for each lesion a dict with its
        ``instance`` number, ``label`` (None unless the mask is class-coded) and bounding box
        (array slices).

    Raises:
        ContractError: an unknown encoding, or a class-coded mask with an unknown code, naming the case.
    """
    if encoding not in MASK_ENCODINGS:
        raise ContractError(f"{_named(case_id)}: unknown mask encoding {encoding!r}; one of {list(MASK_ENCODINGS)}")
    mask = np.asarray(mask)
    instances = np.zeros(mask.shape, dtype=np.int32)
    occupied = occupied_box(mask)
    if occupied is None:
        return instances, []
    # everything is done inside the box around every lesion voxel (outside it the mask is 0), which on a CT is a
    # small part of the volume; boxes are moved back to the volume's coordinates
    if encoding == "instance":
        instances[occupied] = _instance_numbers(mask[occupied], case_id)
        described = [
            {"instance": k, "label": None, "box": _moved(box, occupied)}
            for k, box in enumerate(ndimage.find_objects(instances[occupied]), start=1)
            if box is not None
        ]
        return instances, described
    found = _found_lesions(mask[occupied], case_id, encoding)  # no component reaches past the box
    found.sort(key=lambda f: (-1 if f[0] is None else f[0], f[1]))
    inside = instances[occupied]
    described = []
    for number, (label, _, components, index, box) in enumerate(found, start=1):
        inside[box][components[box] == index] = number
        described.append({"instance": number, "label": label, "box": _moved(box, occupied)})
    return instances, described


def _moved(box: tuple[slice, ...], by: tuple[slice, ...]) -> tuple[slice, ...]:
    """``box``, given inside the box ``by``, in the coordinates ``by`` is given in."""
    return tuple(slice(b.start + o.start, b.stop + o.start) for b, o in zip(box, by))


def _instance_numbers(mask: np.ndarray, case_id: str) -> np.ndarray:
    """An instance mask's own numbers as int32, checked: whole, not negative, at most ``MAX_INSTANCE_NUMBER``, and
    no more lesions than the per-case limit (counted before ``find_objects`` makes a slot per number)."""
    if np.issubdtype(mask.dtype, np.floating) and not np.array_equal(mask, np.round(mask)):
        raise ContractError(f"{_named(case_id)}: an instance mask holds whole numbers, found fractions")
    instances = mask.astype(np.int32)
    if instances.min() < 0:
        raise ContractError(f"{_named(case_id)}: an instance mask holds no negative values, found {instances.min()}")
    present = labels_present(instances)  # sorted: a background is its first value
    count = len(present) - int(present.size > 0 and present[0] == 0)
    if count > MAX_LESIONS_PER_CASE:
        raise _too_many(case_id, count)
    if instances.max() > MAX_INSTANCE_NUMBER:
        raise ContractError(
            f"{_named(case_id)}: an instance mask numbers its lesions up to {int(instances.max()):,}; numbers "
            f"above {MAX_INSTANCE_NUMBER} are refused (renumber the lesions 1..N)"
        )
    return instances


def occupied_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every non-zero voxel of ``mask``; None if it has none. The first axis is reduced
    over the whole volume, the others only over the slices that hold a voxel."""
    first = np.flatnonzero(mask.any(axis=tuple(range(1, mask.ndim))))
    if first.size == 0:
        return None
    slab = mask[first[0] : first[-1] + 1]
    box = [slice(int(first[0]), int(first[-1]) + 1)]
    for axis in range(1, mask.ndim):
        held = np.flatnonzero(slab.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(held[0]), int(held[-1]) + 1))
    return tuple(box)


def _found_lesions(mask: np.ndarray, case_id: str, encoding: str) -> list[tuple]:
    """The connected lesions of a class-coded or binary mask, each as ``_components`` gives it."""
    if encoding == "binary":
        found = _components(mask != 0, None, case_id)
    else:
        codes = set(labels_present(mask).tolist()) - {0}
        unknown = codes - set(MASK_TO_LABEL)
        if unknown:
            raise ContractError(
                f"{_named(case_id)}: mask has unknown class codes {sorted(unknown)}; "
                f"expected {sorted(MASK_TO_LABEL)} (1 cyst, 2 metastasis) and 0 for background"
            )
        found = [c for code in sorted(codes) for c in _components(mask == code, MASK_TO_LABEL[code], case_id)]
        if len(found) > MAX_LESIONS_PER_CASE:
            raise _too_many(case_id, len(found))
    return found


def lesion_labels(described: list[dict], types: Mapping[int, str] | None, case_id: str) -> dict[int, int | None]:
    """Each lesion's model label: from the class-coded mask, else from its type (``lesion_types.csv``).

    Raises:
        ContractError: a type not in the contract's map, or a type given for a lesion the mask
            does not hold, naming the case and the lesion.
    """
    types = dict(types or {})
    present = {d["instance"] for d in described}
    stray = sorted(set(types) - present)
    if stray:
        raise ContractError(
            f"{_named(case_id)}: lesion type(s) given for lesion(s) {stray}, which its mask does not hold "
            f"(it holds {sorted(present)})"
        )
    labels = {}
    for d in described:
        label = d["label"]
        if d["instance"] in types:
            name = str(types[d["instance"]]).strip().lower()
            if name not in LESION_TYPES:
                raise ContractError(
                    f"{_named(case_id)}, lesion {d['instance']}: lesion type {types[d['instance']]!r} is not "
                    f"in the map; known types: {sorted(LESION_TYPES)}"
                )
            if label is not None and LESION_TYPES[name] != label:
                raise ContractError(
                    f"{_named(case_id)}, lesion {d['instance']}: the type table says {name}, "
                    f"the class-coded mask says {LABEL_NAMES[label]}"
                )
            label = LESION_TYPES[name]
        labels[d["instance"]] = label
    return labels


def crop_rows(
    crops: Iterable[LesionCrop], patient_key: str, labels: Mapping[int, int | None] | None = None
) -> pd.DataFrame:
    """One row per lesion crop (``contract.LESION_COLUMNS``): size, box, centroid, HU statistics, label.

    Args:
        labels: lesion number -> label, where the crop's class-coded mask does not give one.
    """
    labels = labels or {}
    rows = []
    for crop in crops:
        coords = np.argwhere(crop.mask)
        origin = np.asarray(crop.origin)
        lo, hi = coords.min(axis=0) + origin, coords.max(axis=0) + 1 + origin
        values = crop.image[crop.mask].astype(np.float64)
        label = labels.get(crop.instance, crop.mask_label)
        n_voxels = int(len(coords))
        rows.append(
            {
                "lesion_id": crop.lesion_id,
                "case_id": crop.case_id,
                "patient_key": patient_key,
                "instance": crop.instance,
                "label": label,
                "label_name": LABEL_NAMES.get(label) if label is not None else None,
                "n_voxels": n_voxels,
                "volume_ml": float(n_voxels) * (float(np.prod(crop.spacing)) / 1000.0),
                **{f"bbox_lo_{a}": int(lo[a]) for a in range(3)},
                **{f"bbox_hi_{a}": int(hi[a]) for a in range(3)},
                **{f"centroid_{a}": float(coords[:, a].mean() + origin[a]) for a in range(3)},
                "mean_hu": float(values.mean()),
                "std_hu": float(values.std()),
            }
        )
    table = pd.DataFrame(rows, columns=list(LESION_COLUMNS))
    table["label"] = table["label"].astype("Int64")
    return table


def lesion_rows(
    instances: np.ndarray,
    described: list[dict],
    image: np.ndarray,
    spacing: tuple[float, float, float],
    case_id: str,
    patient_key: str,
    labels: Mapping[int, int | None] | None = None,
) -> pd.DataFrame:
    """One row per lesion of a whole volume (``contract.LESION_COLUMNS``), through ``crop_rows``."""
    return crop_rows(cut_crops(image, instances, described, spacing, case_id, 0.0), patient_key, labels)


def lesion_instances(
    mask: np.ndarray,
    image: np.ndarray,
    spacing: tuple[float, float, float],
    case_id: str,
    patient_key: str,
    encoding: str = "class",
    types: Mapping[int, str] | None = None,
) -> pd.DataFrame:
    """One row per lesion of one case, in ``instance_map`` order.

    Args:
        mask: the lesion segmentation, encoded as ``encoding`` says.
        image: the CT in HU, same shape as ``mask``.
        spacing: voxel size in mm along the array axes.
        case_id: written in the rows and used for ``lesion_id`` (``{case_id}-L{nn}``).
        patient_key: the pseudonymous patient key.
        types: lesion number -> type (``lesion_types.csv``), where the mask does not say.

    Raises:
        ContractError: shapes differ, an unknown class code or lesion type, naming the case.
    """
    if mask.shape != image.shape:
        raise ContractError(f"{_named(case_id)}: mask shape {mask.shape} differs from image shape {image.shape}")
    instances, described = instance_map(mask, case_id, encoding)
    labels = lesion_labels(described, types, case_id)
    return lesion_rows(instances, described, image, spacing, case_id, patient_key, labels)


def bounding_box(row: pd.Series | dict, margin=(0, 0, 0)) -> tuple[slice, slice, slice]:
    """The lesion's bounding box as array slices, widened by ``margin`` voxels per axis (clipped at 0)."""
    return tuple(
        slice(max(int(row[f"bbox_lo_{a}"]) - int(margin[a]), 0), int(row[f"bbox_hi_{a}"]) + int(margin[a]))
        for a in range(3)
    )
