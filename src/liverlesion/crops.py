"""Per-lesion crops: what the steps after ingestion need of a CT, cut once while it is in memory.

A CT is decompressed once, by ingestion. Everything the later steps compute is local to a lesion:
its size, HU statistics and position (``segment``), its three patches (``extract_patches``,
``predict``), its texture (``texture_features``). So ingestion cuts each lesion's bounding box,
widened by the largest margin any of them needs, and hands on those crops: the HU values of the box
and the lesion's own voxels in it (a neighbouring lesion inside the box is only image). The later
steps are then pure functions of the crops and give exactly what they gave on the whole volume
(a margin is clipped at the volume's edge in both cases).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from liverlesion.contract import lesion_id


@dataclass(frozen=True)
class LesionCrop:
    """One lesion's box of a CT (plus margin), with the lesion's voxels in it.

    Attributes:
        case_id, instance: the lesion (its number as ``lesions.instance_map`` gave it).
        mask_label: the label a class-coded mask gives it, else None.
        origin: the volume index of ``image[0, 0, 0]``.
        spacing: voxel size in mm along the array axes.
        image: HU values of the box (float32).
        mask: the lesion's own voxels in the box (bool, same shape).
    """

    case_id: str
    instance: int
    mask_label: int | None
    origin: tuple[int, int, int]
    spacing: tuple[float, float, float]
    image: np.ndarray
    mask: np.ndarray

    @property
    def lesion_id(self) -> str:
        return lesion_id(self.case_id, self.instance)


def margin_voxels(margin_mm: float, spacing) -> np.ndarray:
    """A margin in mm as whole voxels per axis (rounded up), as the patch geometry counts it."""
    return np.ceil(float(margin_mm) / np.asarray(spacing, dtype=float)).astype(int)


def cut_crops(
    image: np.ndarray, instances: np.ndarray, described: list[dict], spacing, case_id: str, margin_mm: float
) -> list[LesionCrop]:
    """Each described lesion's bounding box widened by ``margin_mm`` (clipped at the volume's edge).

    Args:
        image: the CT in HU; ``instances`` its lesions numbered (``lesions.instance_map``).
        described: ``instance_map``'s lesions (``instance``, ``label``, ``box``).
    """
    margin = margin_voxels(margin_mm, spacing)
    spacing = tuple(float(s) for s in spacing)
    crops = []
    for lesion in described:
        box = tuple(
            slice(max(b.start - int(m), 0), min(b.stop + int(m), n))
            for b, m, n in zip(lesion["box"], margin, image.shape)
        )
        crops.append(
            LesionCrop(
                case_id=str(case_id),
                instance=int(lesion["instance"]),
                mask_label=lesion["label"],
                origin=tuple(b.start for b in box),
                spacing=spacing,
                image=np.ascontiguousarray(image[box], dtype=np.float32),
                mask=instances[box] == lesion["instance"],
            )
        )
    return crops


class LesionCrops(Mapping[str, LesionCrop]):
    """The crops of a cohort by lesion id, cut with ``margin_mm``; stored as two flat arrays and an index.

    ``source`` is where the lesions came from: ``reference`` masks or an automatic segmentation method.
    """

    def __init__(self, crops: Iterable[LesionCrop], margin_mm: float, source: str = "reference"):
        self.margin_mm = float(margin_mm)
        self.source = str(source)
        self._crops: dict[str, LesionCrop] = {}
        for crop in crops:
            if crop.lesion_id in self._crops:
                raise ValueError(f"lesion {crop.lesion_id} is cropped twice")
            self._crops[crop.lesion_id] = crop

    def __getitem__(self, key: str) -> LesionCrop:
        try:
            return self._crops[key]
        except KeyError:
            raise KeyError(
                f"no crop of lesion {key}: the lesion table does not match the ingested cases (re-run ingest)"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._crops)

    def __len__(self) -> int:
        return len(self._crops)

    def of_case(self, case_id: str) -> list[LesionCrop]:
        return [c for c in self._crops.values() if c.case_id == case_id]

    @property
    def nbytes(self) -> int:
        return sum(c.image.nbytes + c.mask.nbytes for c in self._crops.values())

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat ``image`` (float32) and ``mask`` (bool) arrays and a JSON ``index`` (for ``np.savez``)."""
        crops = list(self._crops.values())
        index = [
            {
                "case_id": c.case_id,
                "instance": c.instance,
                "mask_label": c.mask_label,
                "origin": list(c.origin),
                "spacing": list(c.spacing),
                "shape": list(c.image.shape),
            }
            for c in crops
        ]
        return {
            "image": np.concatenate([c.image.ravel() for c in crops]) if crops else np.zeros(0, np.float32),
            "mask": np.concatenate([c.mask.ravel() for c in crops]) if crops else np.zeros(0, bool),
            "index": np.array(json.dumps({"margin_mm": self.margin_mm, "source": self.source, "crops": index})),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> LesionCrops:
        meta = json.loads(str(arrays["index"]))
        image, mask = arrays["image"], arrays["mask"]
        crops, at = [], 0
        for entry in meta["crops"]:
            shape = tuple(entry["shape"])
            size = int(np.prod(shape))
            crops.append(
                LesionCrop(
                    case_id=entry["case_id"],
                    instance=int(entry["instance"]),
                    mask_label=entry["mask_label"],
                    origin=tuple(entry["origin"]),
                    spacing=tuple(entry["spacing"]),
                    image=image[at : at + size].reshape(shape),
                    mask=mask[at : at + size].reshape(shape),
                )
            )
            at += size
        if at != image.size or image.size != mask.size:
            raise ValueError(f"crop arrays hold {image.size} image and {mask.size} mask values, the index {at}")
        return cls(crops, meta["margin_mm"], meta.get("source", "reference"))
