"""Automatic segmentation of the liver and its lesions, and how far a segmentation is from a reference.

Three methods give a case's lesions (``SegmentSettings.method``):

- ``reference``: the masks someone drew (the cohort's ``mask`` files), as they are.
- ``classical``: no training. The liver, on a coarse grid (``liver_grid_mm``): the thickest soft-tissue organ
  (the largest component of the ``liver_hu`` window that survives a wide opening) is its seed; the seed's own
  CT numbers (mode and spread) give the liver's window, which leaves out the brighter kidney cortex and
  vessels and the darker bowel wall and muscle; that window, opened to cut thin bridges to the neighbours, is
  grown from the seed; a neighbour at the liver's level that touches it through a blurred interface (heart
  muscle across the diaphragm on thick slices, kidney, pancreas) is cut off at the neck it forms
  (``liver_neck_ratio``); a part of it left of and behind the body's centre (the spleen's place,
  ``liver_left_back_mm``) is dropped; darker tissue in the liver's bays (tumours at its edge) is taken in by a
  wide closing where it is thick (``liver_bay_opening_mm``), then holes are filled and the boundary is refined
  at full resolution; darker tissue bulging out of it (a tumour at its edge, partly outside the liver's window)
  is taken in where a part of its surface touches the liver and it is tumour-sized and compact
  (``with_bulging_tumours``). Lesion seeds are voxels away from the liver's edge (where it blurs into darker
  neighbours), or in that edge band where a ball of ``edge_lesion_mm`` fits in them (a subcapsular lesion),
  and darker than the liver's parenchyma (the mode of its CT numbers) by more than ``hypodense_hu`` (and than
  ``noise_factor`` times its noise); each is grown to the level half-way between its core and the liver (a
  partial-volume edge), no further than ``lesion_grow_mm`` beyond the seed's box (a tumour's lighter rim
  around its darker core included; less from a seed in the edge band), and components too small, too thin or
  lying mostly in the edge band are dropped, unless half of one is deep or thick there (a tumour at the
  liver's edge, of which the thick part is kept). A second pass with fainter seeds (``faint_noise_factor``),
  grown less (``faint_lesion_level`` of the way to the liver), adds its lesions of ``faint_lesion_ml`` or more
  that touch none of the first's: a lower threshold for all would merge neighbouring tumours into one. The
  settings were chosen on cases 1-30 of the default phantom cohort (``bench/segmentation.py``), and the liver's
  steps and ``noise_factor`` then on one real CT (LiTS case 117, ``tests/real_ct.py``) with phantom cases beside
  it, the neck check on the phantom's organs (``bench/organ_phantom.py``), the lesions' growth, the edge, bay and
  bulge steps and the fainter pass on LiTS 117 with 3D-IRCADb-01 patient 1 and the organ phantom beside it
  (measured in a session, never stored here).
- ``learned``: the cascade of ``liverlesion.segnet`` (a liver U-Net, then a lesion U-Net on the
  liver's crop) gives two probability maps; they become masks here, with the same size filters.

Measures (``compare_to_reference``): Dice and the average symmetric surface distance (ASSD, mm)
of the liver and of all lesions together; a reference lesion counts as *found* when one automatic
lesion overlaps it with a Dice of at least ``detection_dice``; an automatic lesion takes the
class of the reference lesion that holds most of its voxels, and is *invented* (a false positive)
when no reference lesion holds half of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, field_validator
from scipy import ndimage

from liverlesion.morphology import (
    CONNECTIVITY_26,
    close_mm,
    cut_at_necks,
    depth_basins,
    dilate_mm,
    erode_mm,
    fill_holes,
    largest_component,
    open_mm,
    reconstruct,
)
from liverlesion.segnet import Cascade

SEGMENT_METHODS = ("reference", "classical", "learned")
#: a reference lesion's id in the segmentation tables: its id in the reference masks' numbering plus this
#: (automatic lesions are numbered on their own and would otherwise share ids with other lesions)
REFERENCE_SUFFIX = "-ref"

#: per case, how the automatic segmentation compares with the reference (``compare_to_reference``)
SEGMENTATION_CASE_COLUMNS = (
    "case_id", "patient_key", "method", "liver_dice", "liver_assd_mm", "lesion_dice", "lesion_assd_mm",
    "reference_lesions", "found_lesions", "automatic_lesions", "invented_lesions", "outside_liver_lesions",
    "seconds",
)  # fmt: skip
#: per lesion, reference and automatic: ``kind`` is ``reference`` (found or missed) or ``automatic``
#: (matched, i.e. mostly inside a reference lesion, or invented)
SEGMENTATION_LESION_COLUMNS = (
    "case_id", "patient_key", "kind", "instance", "lesion_id", "label", "volume_ml", "best_dice", "partner",
    "outcome",
)  # fmt: skip


class SegmentSettings(BaseModel):
    """``segment``: where the lesions come from, and how the automatic ones are measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["reference", "classical", "learned"] = Field(
        description="reference: the cohort's masks; classical: HU thresholds and morphology, no "
        "training; learned: the registered liver/lesion U-Net cascade",
    )
    learned_model: str = Field(
        description="learned: the registered cascade as <model name>@<alias> or @<version>",
    )
    liver_hu: tuple[float, float] = Field(
        description="classical: HU window of enhanced soft tissue in which the liver's seed is looked for"
    )
    smoothing_mm: float = Field(ge=0, description="classical: Gaussian smoothing before thresholds")
    liver_grid_mm: float = Field(
        gt=0, description="classical: the liver is found on a grid this coarse (mm), its boundary then refined"
    )
    liver_seed_opening_mm: float = Field(
        gt=0,
        description="classical: opening that leaves only the thickest organs; the largest that survives is the "
        "liver's seed",
    )
    liver_level_band_hu: float = Field(
        gt=0,
        description="classical: the liver's spread is measured on its CT numbers within this far of their mode "
        "(tumours and vessels beyond it do not widen it)",
    )
    liver_window_sd: tuple[float, float] = Field(
        description="classical: the liver's window: the seed's HU mode minus and plus these many of its robust "
        "standard deviations",
    )
    liver_window_min_hu: float = Field(
        ge=0, description="classical: ... and at least this far either side of the mode (a CT with little noise)"
    )
    liver_opening_mm: float = Field(
        ge=0, description="classical: opening of the liver's window that cuts its bridges to the neighbours"
    )
    liver_neck_ratio: float = Field(
        ge=0,
        lt=1,
        description="classical: a part of the liver's window joined to it through a neck thinner than this share of "
        "its own thickness is a neighbour and is cut off (morphology.cut_at_necks); 0: no such check",
    )
    liver_neck_depth_mm: float = Field(
        gt=0, description="classical: how much thicker than its surroundings a part must be to count as a part"
    )
    liver_left_back_mm: tuple[float, float] | None = Field(
        description="classical: a part of the liver's window (a basin of its depth) centred more than this far left "
        "of the body's centre and behind it (mm) is the spleen, left kidney or stomach, not liver (its left lobe lies "
        "in front); checked only where the body's whole cross-section is in view; null: no such check"
    )
    body_hu: float = Field(description="classical: above this (fat and denser) is the body, for its centre")
    liver_bay_mm: float = Field(
        ge=0,
        description="classical: closing that takes darker tissue in the liver's bays in (tumours at its edge); 0: none",
    )
    liver_bay_opening_mm: float | None = Field(
        gt=0,
        description="classical: of the darker tissue in the bays, only what holds a ball of this radius (mm; at least "
        "the coarse grid's longest side) is taken in: a tumour, not a thin layer lining the bay; null: all of it",
    )
    liver_bay_min_hu: float = Field(
        description="classical: ... tissue at least this dense (not fat, not gas) and darker than the liver's window"
    )
    liver_bulge_contact: float | None = Field(
        ge=0,
        le=1,
        description="classical: darker tissue bulging out of the liver (a tumour at its edge, partly outside the "
        "liver's window) is taken in where at least this fraction of its surface touches the liver; null: none",
    )
    liver_bulge_mm: float = Field(gt=0, description="classical: ... looked for this far (mm) around the liver")
    liver_bulge_opening_mm: float = Field(
        gt=0, description="classical: ... where it holds a ball of this radius (mm): cut from thin neighbours"
    )
    liver_bulge_ml: tuple[float, float] = Field(
        description="classical: ... and is between these volumes (mL): a tumour, not a fleck of partial volume "
        "nor a neighbouring organ (stomach, bowel, kidney)"
    )
    liver_bulge_elongation: float = Field(
        gt=0, description="classical: ... and no longer than this times its width (a bowel loop, a vessel is)"
    )
    liver_closing_mm: float = Field(ge=0, description="classical: closing that takes edge lesions and vessels in")
    not_tissue_hu: float = Field(description="classical: below this (fat, lung, air) is never liver nor lesion")
    hypodense_hu: float = Field(
        gt=0, description="classical: a lesion seed is at least this much below the liver parenchyma's level"
    )
    liver_edge_mm: float = Field(
        ge=0,
        description="classical: no lesion seed this close to the liver's edge "
        "(where the liver blurs into its darker neighbours)",
    )
    noise_factor: float = Field(
        ge=0,
        description="classical: ... and at least this many times the liver's "
        "robust standard deviation (noise) below it",
    )
    faint_noise_factor: float | None = Field(
        gt=0,
        description="classical: a second, fainter pass of lesion seeds (this many times the liver's noise below "
        "it, ``hypodense_hu`` still the least): its lesions are added where they touch none of the first pass's "
        "(a lower threshold for all would merge neighbouring tumours into one) and are ``faint_lesion_ml`` or "
        "more; null: no second pass",
    )
    faint_lesion_ml: float = Field(ge=0, description="classical: ... the least volume of a lesion it adds (mL)")
    faint_lesion_level: float = Field(
        gt=0,
        le=0.5,
        description="classical: ... whose edge lies this fraction of the way from its seed's core to the liver's "
        "level (the first pass: half-way, 0.5): nearer its core, a faint tumour does not run into a neighbouring "
        "tumour's lighter halo",
    )
    hyperdense_hu: float | None = Field(
        gt=0, description="classical: also seed lesions this much above the liver (None: only hypodense lesions)"
    )
    edge_lesion_mm: float | None = Field(
        gt=0,
        description="classical: a subcapsular lesion: where the darker voxels of the liver's edge band hold a ball of "
        "this radius (mm), they seed a lesion too (the blurred rim is a thin shell, which cannot), and a lesion "
        "grown mostly into the band is kept if half of it is deep or holds that ball; None: no seed in the edge "
        "band, and a lesion mostly in it dropped",
    )
    lesion_grow_mm: tuple[PositiveFloat, PositiveFloat] = Field(
        description="classical: a lesion seed grows to the half-way level at most this far (mm) beyond its box: a "
        "seed deeper than the edge band (room for a tumour's lighter rim around its darker core), and one in it "
        "(less: more would run along the liver's blurred rim)",
    )
    min_lesion_ml: float = Field(ge=0, description="smaller components are dropped (both automatic methods)")
    max_elongation: float = Field(
        gt=1, description="components longer than this times their width are dropped (vessels, the liver's rim)"
    )
    detection_dice: float = Field(
        gt=0,
        le=1,
        description="a reference lesion is found when an automatic one overlaps it with at least this Dice",
    )
    diameter_bins_mm: tuple[float, ...] = Field(
        min_length=1,
        description="detection is reported per size class of reference lesion, split at these diameters (mm, "
        "of the ball of the lesion's volume)",
    )
    outside_liver_mm: float = Field(
        ge=0,
        description="an automatic lesion wholly farther than this from the reference liver is counted as outside it",
    )

    @field_validator("diameter_bins_mm")
    @classmethod
    def _increasing(cls, bins: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in zip(bins, bins[1:])) or bins[0] <= 0:
            raise ValueError("diameters must be positive and increasing")
        return bins

    @property
    def automatic(self) -> bool:
        return self.method != "reference"


@dataclass(frozen=True)
class Segmentation:
    """An automatic segmentation of one CT: the liver and a binary lesion mask (inside it)."""

    liver: np.ndarray
    lesions: np.ndarray


def _elongation(coords: np.ndarray, spacing) -> float:
    """Longest over shortest principal extent (mm) of a component's voxels; 1 for a ball."""
    if len(coords) < 4:
        return 1.0
    points = coords * np.asarray(spacing, dtype=float)
    eigen = np.sort(np.linalg.eigvalsh(np.cov(points.T)))
    voxel_floor = (np.min(spacing) / 2.0) ** 2  # a one-voxel-thin component is not infinitely thin
    return float(np.sqrt(eigen[-1] / max(eigen[0], voxel_floor)))


def filter_lesions(lesions: np.ndarray, spacing, settings: SegmentSettings) -> np.ndarray:
    """Drop components smaller than ``min_lesion_ml`` or more elongated than ``max_elongation``."""
    labels, n = ndimage.label(lesions, structure=CONNECTIVITY_26)
    if n == 0:
        return lesions.astype(bool)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    keep = np.zeros(n + 1, dtype=bool)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        coords = np.argwhere(labels[box] == k)
        keep[k] = (
            len(coords) * voxel_ml >= settings.min_lesion_ml and _elongation(coords, spacing) <= settings.max_elongation
        )
    return keep[labels]


#: where the liver's level is looked for: a histogram of 2 HU bins over every CT number soft tissue can have
#: (smoothed over 2 bins, so that noise does not choose the mode)
LEVEL_BINS_HU = np.arange(-50.0, 302.0, 2.0)


def liver_level(values: np.ndarray, band_hu: float) -> tuple[float, float]:
    """The liver's CT number (the mode of its histogram, ``LEVEL_BINS_HU``) and spread (the robust standard
    deviation of the values within ``band_hu`` of the mode, so that tumours and vessels beyond do not widen
    it), from voxels that are mostly liver."""
    hist, edges = np.histogram(values, bins=LEVEL_BINS_HU)
    mode = float(edges[int(np.argmax(ndimage.gaussian_filter1d(hist.astype(float), 2.0)))] + 1.0)
    near = values[np.abs(values - mode) < band_hu]
    return mode, 1.4826 * float(np.median(np.abs(near - np.median(near)))) if len(near) else 0.0


def liver_window(values: np.ndarray, settings: SegmentSettings) -> tuple[float, float]:
    """The liver's own window of CT numbers from voxels that are mostly liver: its level (``liver_level``) less
    and plus ``liver_window_sd`` of its spread, and at least ``liver_window_min_hu`` either side."""
    mode, spread = liver_level(values, settings.liver_level_band_hu)
    return (
        mode - max(settings.liver_window_sd[0] * spread, settings.liver_window_min_hu),
        mode + max(settings.liver_window_sd[1] * spread, settings.liver_window_min_hu),
    )


def left_back_parts(liver: np.ndarray, ct: np.ndarray, spacing, settings: SegmentSettings) -> np.ndarray:
    """The parts of ``liver`` (the basins of its depth, ``morphology.depth_basins``) centred left of the body's
    centre by more than ``liver_left_back_mm[0]`` and behind it by more than ``liver_left_back_mm[1]``: where
    the spleen, the left kidney and the stomach's fundus lie, not the liver, whose left lobe lies in front.
    Its thickest part always stays. Nothing where the body's cross-section touches the edge of the image (a
    crop around the liver, arms at the sides): its centre is unknown there. Axes are canonical (RAS+)."""
    off = np.zeros(liver.shape, dtype=bool)
    body = largest_component(ct > settings.body_hu)
    for axis in (0, 1):
        seen = np.nonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        if not len(seen) or seen[0] == 0 or seen[-1] == body.shape[axis] - 1:
            return off
    basins, _, peaks = depth_basins(liver, spacing, settings.liver_neck_depth_mm)
    n = len(peaks) - 1
    if n < 2:
        return off
    spacing = np.asarray(spacing, dtype=float)
    centre = np.asarray(ndimage.center_of_mass(body)) * spacing
    centres = np.asarray(ndimage.center_of_mass(liver, basins, np.arange(1, n + 1))) * spacing
    left_mm, back_mm = settings.liver_left_back_mm
    # RAS+: axis 0 grows to the patient's right, axis 1 to the front
    drop = (centres[:, 0] < centre[0] - left_mm) & (centres[:, 1] < centre[1] - back_mm)
    drop[int(np.argmax(peaks[1:]))] = False
    return np.isin(basins, np.nonzero(drop)[0] + 1)


def segment_liver(smoothed: np.ndarray, spacing, settings: SegmentSettings) -> np.ndarray:
    """The liver of a smoothed CT (see the module's description of ``classical``)."""
    spacing = np.asarray(spacing, dtype=float)
    factor = np.minimum(spacing / settings.liver_grid_mm, 1.0)
    coarse = ndimage.zoom(smoothed, factor, order=1) if (factor < 1).any() else smoothed
    grid = spacing * np.array(smoothed.shape) / np.array(coarse.shape)
    lo, hi = settings.liver_hu
    seed = largest_component(open_mm((coarse >= lo) & (coarse <= hi), settings.liver_seed_opening_mm, grid))
    if not seed.any():
        return np.zeros(smoothed.shape, dtype=bool)
    low, high = liver_window(coarse[seed], settings)
    window = (coarse >= low) & (coarse <= high)
    if settings.liver_opening_mm > 0:
        window = open_mm(window, settings.liver_opening_mm, grid)
    liver = largest_component(reconstruct(seed & window, window))
    if settings.liver_neck_ratio > 0:
        # leak check: a neighbour (kidney, heart, pancreas) joined through a blurred interface is cut off there
        liver = cut_at_necks(fill_holes(liver), grid, settings.liver_neck_ratio, settings.liver_neck_depth_mm) & liver
    if settings.liver_left_back_mm is not None:
        liver &= ~left_back_parts(liver, coarse, grid, settings)
    if settings.liver_bay_mm > 0:
        darker = (coarse >= settings.liver_bay_min_hu) & (coarse < low)
        bay = close_mm(liver, settings.liver_bay_mm, grid) & darker
        if settings.liver_bay_opening_mm is not None:
            # a tumour is thick; a sheet of partial volume or a neighbour's wall lining the bay is not
            bay = open_mm(bay, max(settings.liver_bay_opening_mm, float(max(grid))), grid)
        liver |= bay
    if settings.liver_closing_mm > 0:
        liver = close_mm(liver, settings.liver_closing_mm, grid)
    liver = fill_holes(liver)
    if coarse is not smoothed:
        # back to the CT's grid: in a band of one coarse voxel each side, the boundary follows the CT, at the
        # seed window's lower end (nearer half-way between the liver and fat than the liver's own window)
        band = settings.liver_grid_mm
        scale = np.array(smoothed.shape) / np.array(liver.shape)
        core, shell = (
            ndimage.zoom(m.astype(np.float32), scale, order=1) >= 0.5
            for m in (erode_mm(liver, band, grid), dilate_mm(liver, band, grid))
        )
        box = bounding_box(shell, 1)  # the work where the liver is
        within = (smoothed[box] >= min(lo, low)) & (smoothed[box] <= high)
        liver = np.zeros(smoothed.shape, dtype=bool)
        liver[box] = fill_holes(largest_component(core[box] | (shell[box] & within)))
    liver &= smoothed >= settings.not_tissue_hu
    return with_bulging_tumours(liver, smoothed, spacing, settings)


def with_bulging_tumours(liver: np.ndarray, smoothed: np.ndarray, spacing, settings: SegmentSettings) -> np.ndarray:
    """``liver`` with the darker tissue that bulges out of it taken in: a tumour at the liver's edge whose outer
    part is darker than the liver's window, so that the liver found stops at it (a bay's closing cannot fill a
    bulge). A candidate is a component of tissue between ``liver_bay_min_hu`` and the liver's window (of
    the liver found, ``liver_window``), within ``liver_bulge_mm`` of the liver, opened by
    ``liver_bulge_opening_mm``; it is taken in where at least ``liver_bulge_contact`` of its surface touches the
    liver, its volume is within ``liver_bulge_ml`` and its elongation at most ``liver_bulge_elongation``: a
    neighbouring organ at a tumour's CT numbers (stomach, bowel, kidney) touches the liver with a smaller part
    of its surface, or is larger, or longer. ``liver_bulge_contact`` null: ``liver`` as it is."""
    if settings.liver_bulge_contact is None or not liver.any():
        return liver
    spacing = np.asarray(spacing, dtype=float)
    low, _ = liver_window(smoothed[liver], settings)
    box = bounding_box(liver, np.ceil(settings.liver_bulge_mm / spacing).astype(int))
    inside, ct = liver[box], smoothed[box]
    darker = (ct >= settings.liver_bay_min_hu) & (ct < low) & ~inside
    near = darker & dilate_mm(inside, settings.liver_bulge_mm, spacing)
    candidates = open_mm(near, settings.liver_bulge_opening_mm, spacing)
    labels, n = ndimage.label(candidates, structure=CONNECTIVITY_26)
    if n == 0:
        return liver
    surface = candidates & ~ndimage.binary_erosion(candidates)
    # each candidate's surface voxels, and those touching the liver (bincount: ndimage.sum took 3 s a call here)
    on_surface = labels[surface]
    touching = np.bincount(on_surface[ndimage.binary_dilation(inside)[surface]], minlength=n + 1)[1:]
    contact = touching / np.maximum(np.bincount(on_surface, minlength=n + 1)[1:], 1)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    smallest, largest = settings.liver_bulge_ml
    keep = np.zeros(n + 1, dtype=bool)
    for k, found in enumerate(ndimage.find_objects(labels), start=1):
        if contact[k - 1] < settings.liver_bulge_contact:
            continue
        coords = np.argwhere(labels[found] == k)
        keep[k] = (
            smallest <= len(coords) * voxel_ml <= largest
            and _elongation(coords, spacing) <= settings.liver_bulge_elongation
        )
    if not keep.any():
        return liver
    out = liver.copy()
    out[box] = fill_holes(inside | keep[labels])
    return out


def bounding_box(mask: np.ndarray, margin) -> tuple[slice, ...]:
    """The slices around ``mask``'s voxels, widened by ``margin`` voxels per axis (within the volume); the whole
    volume for an empty mask."""
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return tuple(slice(0, n) for n in mask.shape)
    margin = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    return tuple(slice(max(b.start - m, 0), min(b.stop + m, n)) for b, m, n in zip(found[0], margin, mask.shape))


#: a lesion's edge blurred into the liver lies half-way between its core's CT number and the liver's
HALF_WAY = 0.5


def segment_lesions(smoothed: np.ndarray, liver: np.ndarray, spacing, settings: SegmentSettings) -> np.ndarray:
    """Lesions inside ``liver``: seeds below (or above) its parenchyma's level, grown to the half-way level,
    filtered; then, with ``faint_noise_factor``, the lesions of fainter seeds that touch none of those."""
    if not liver.any():
        return np.zeros(liver.shape, dtype=bool)
    # the parenchyma's level and noise, robust to a liver full of tumours (the median and spread of the whole
    # liver are not: on a real CT with 79 tumours they sit 5 HU and 6 HU off, and hide every small tumour)
    median, noise = liver_level(smoothed[liver], settings.liver_level_band_hu)
    deep = erode_mm(liver, settings.liver_edge_mm, spacing) if settings.liver_edge_mm > 0 else liver
    lesions = _grown_lesions(smoothed, liver, deep, median, noise, settings.noise_factor, HALF_WAY, spacing, settings)
    if settings.faint_noise_factor is None:
        return lesions
    faint = _grown_lesions(
        smoothed,
        liver,
        deep,
        median,
        noise,
        settings.faint_noise_factor,
        settings.faint_lesion_level,
        spacing,
        settings,
    )
    labels, n = ndimage.label(faint, structure=CONNECTIVITY_26)
    add = np.bincount(labels.ravel(), minlength=n + 1) * float(np.prod(spacing)) / 1000.0 >= settings.faint_lesion_ml
    add[np.unique(labels[ndimage.binary_dilation(lesions, structure=CONNECTIVITY_26)])] = False  # touching: kept apart
    add[0] = False
    return lesions | add[labels]


def _grown_lesions(
    smoothed: np.ndarray,
    liver: np.ndarray,
    deep: np.ndarray,
    median: float,
    noise: float,
    noise_factor: float,
    edge_level: float,
    spacing,
    settings: SegmentSettings,
) -> np.ndarray:
    """The lesions of the seeds darker (or brighter) than the liver's level ``median`` by more than
    ``hypodense_hu`` and ``noise_factor`` times ``noise``, each grown to the level ``edge_level`` of the way from
    its core to the liver's, and filtered (``segment_lesions``); ``deep``: the liver without its edge band."""
    inner = deep
    darker = smoothed < median - max(settings.hypodense_hu, noise_factor * noise)
    if settings.edge_lesion_mm is not None:
        # the part of the edge band's darker voxels that holds a ball of edge_lesion_mm (an opening removes the
        # thin shell of the blurred rim, and the rim's pieces joined to a lesion) counts as inner
        inner = inner | open_mm(liver & darker, settings.edge_lesion_mm, spacing)
    seeds = inner & darker
    if settings.hyperdense_hu is not None:
        seeds |= inner & (smoothed > median + max(settings.hyperdense_hu, noise_factor * noise))
    labels, n = ndimage.label(seeds, structure=CONNECTIVITY_26)
    lesions = np.zeros(liver.shape, dtype=bool)
    # each seed grows within its box widened by lesion_grow_mm: room for a lesion's blurred edge and a tumour's
    # lighter rim around its darker core; less in the edge band, where the liver's blurred rim would lead it on
    grow, grow_edge = (np.ceil(mm / np.asarray(spacing, dtype=float)).astype(int) for mm in settings.lesion_grow_mm)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        subcapsular = deep[box][labels[box] == k].mean() < 0.5  # a seed mostly in the edge band
        g = grow_edge if subcapsular else grow
        wide = tuple(slice(max(b.start - w, 0), min(b.stop + w, s)) for b, w, s in zip(box, g, liver.shape))
        seed = labels[wide] == k
        core = float(np.median(smoothed[wide][seed]))
        level = core + edge_level * (median - core)  # the edge of a lesion blurred into the liver
        region = liver[wide] & ((smoothed[wide] <= level) if core < median else (smoothed[wide] >= level))
        grown, _ = ndimage.label(region, structure=CONNECTIVITY_26)
        keep = np.unique(grown[seed & (grown > 0)])
        lesion = np.isin(grown, keep[keep > 0])
        kept = inner[wide][lesion].mean() >= 0.5  # else a piece of the liver's blurred rim, not a lesion ...
        if not kept and settings.edge_lesion_mm is not None:
            # ... or a lesion at the liver's edge, thick where the rim is a thin shell: its part deeper than the
            # edge band or holding a ball of edge_lesion_mm (and of a voxel's longest side: one thick slice's
            # partial volume is no lesion), if that is half of it
            thick = lesion & (deep[wide] | open_mm(lesion, max(settings.edge_lesion_mm, max(spacing)), spacing))
            kept = thick.sum() >= 0.5 * lesion.sum()
            lesion = reconstruct(seed & thick, thick)
        if kept:
            lesions[wide] |= lesion
    return filter_lesions(lesions, spacing, settings)


def classical_segmentation(image: np.ndarray, spacing, settings: SegmentSettings) -> Segmentation:
    """The liver and its lesions from a CT (HU, canonical axes) by thresholds and morphology alone."""
    sigma = settings.smoothing_mm / np.asarray(spacing, dtype=float)
    smoothed = ndimage.gaussian_filter(image.astype(np.float32), sigma) if settings.smoothing_mm > 0 else image
    liver = segment_liver(smoothed, spacing, settings)
    box = bounding_box(liver, 1)  # lesions lie in the liver: the rest of the CT is not looked at
    lesions = np.zeros(liver.shape, dtype=bool)
    lesions[box] = segment_lesions(smoothed[box], liver[box], spacing, settings)
    return Segmentation(liver, lesions)


def masks_from_probabilities(
    liver_probability: np.ndarray, lesion_probability: np.ndarray, spacing, settings: SegmentSettings
) -> Segmentation:
    """The learned cascade's maps as masks: the liver's largest component, lesions inside it, filtered."""
    liver = fill_holes(largest_component(liver_probability >= 0.5))
    lesions = filter_lesions((lesion_probability >= 0.5) & liver, spacing, settings)
    return Segmentation(liver, lesions)


# ---------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------
def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks; 1 when both are empty (nothing to find, nothing found)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=CONNECTIVITY_26, border_value=0)


def assd(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Average symmetric surface distance (mm) of two masks; NaN when either is empty."""
    if not a.any() or not b.any():
        return float("nan")
    box = ndimage.find_objects((a | b).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    a, b = a[box], b[box]
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    return float((to_b.sum() + to_a.sum()) / (len(to_b) + len(to_a)))


def _overlaps(reference: np.ndarray, automatic: np.ndarray) -> np.ndarray:
    """Voxel counts of every (reference lesion, automatic lesion) pair, row and column 0 = background."""
    n_ref, n_auto = int(reference.max()) + 1, int(automatic.max()) + 1
    pairs = reference.astype(np.int64).ravel() * n_auto + automatic.astype(np.int64).ravel()
    return np.bincount(pairs, minlength=n_ref * n_auto).reshape(n_ref, n_auto)


def match_lesions(reference: np.ndarray, automatic: np.ndarray, detection_dice: float) -> tuple[dict, dict]:
    """How the numbered lesions of two masks (``lesions.instance_map``) correspond.

    Returns:
        ``(by_reference, by_automatic)``: reference lesion -> (best Dice, that automatic lesion or 0,
        found); automatic lesion -> (the reference lesion holding most of it or 0, best Dice, matched).
    """
    counts = _overlaps(reference, automatic)
    sizes_ref, sizes_auto = counts.sum(axis=1), counts.sum(axis=0)
    pair_dice = 2.0 * counts / np.maximum(sizes_ref[:, None] + sizes_auto[None, :], 1)
    by_reference, by_automatic = {}, {}
    for r in range(1, counts.shape[0]):
        if sizes_ref[r] == 0:
            continue
        a = int(np.argmax(pair_dice[r, 1:])) + 1 if counts.shape[1] > 1 else 0
        best = float(pair_dice[r, a]) if a else 0.0
        by_reference[r] = (best, a if best > 0 else 0, best >= detection_dice)
    for a in range(1, counts.shape[1]):
        if sizes_auto[a] == 0:
            continue
        r = int(np.argmax(counts[1:, a])) + 1 if counts.shape[0] > 1 else 0
        share = counts[r, a] / sizes_auto[a] if r else 0.0
        best = float(pair_dice[1:, a].max()) if counts.shape[0] > 1 else 0.0
        by_automatic[a] = (r if share >= 0.5 else 0, best, share >= 0.5)
    return by_reference, by_automatic


def compare_to_reference(
    case_id: str,
    patient_key: str,
    method: str,
    spacing,
    automatic: Segmentation,
    auto_instances: np.ndarray,
    reference_instances: np.ndarray,
    reference_labels: dict[int, int | None],
    reference_liver: np.ndarray | None,
    detection_dice: float,
    seconds: float,
    *,
    outside_liver_mm: float,
) -> tuple[dict, list[dict], dict[int, int | None]]:
    """One case's segmentation measures, its per-lesion outcomes and the labels the automatic lesions take.

    Args:
        auto_instances, reference_instances: the two lesion masks numbered (``lesions.instance_map``).
        reference_labels: reference lesion -> model label (None where its type is unknown).
        reference_liver: the reference liver mask, where the cohort has one.
        outside_liver_mm: automatic lesions wholly farther than this from the reference liver are counted
            (``outside_liver_lesions``; NaN without a reference liver).

    Returns:
        ``(case row (SEGMENTATION_CASE_COLUMNS), lesion rows (SEGMENTATION_LESION_COLUMNS),
        automatic lesion -> label (None: invented, or its reference lesion's type is unknown))``.
    """
    from liverlesion.contract import lesion_id

    voxel_ml = float(np.prod(spacing)) / 1000.0
    by_reference, by_automatic = match_lesions(reference_instances, auto_instances, detection_dice)
    ref_sizes = np.bincount(reference_instances.ravel(), minlength=int(reference_instances.max()) + 1)
    auto_sizes = np.bincount(auto_instances.ravel(), minlength=int(auto_instances.max()) + 1)
    rows = []
    for r, (best, partner, found) in sorted(by_reference.items()):
        rows.append(
            {
                "case_id": case_id,
                "patient_key": patient_key,
                "kind": "reference",
                "instance": r,
                "lesion_id": lesion_id(case_id, r) + REFERENCE_SUFFIX,
                "label": reference_labels.get(r),
                "volume_ml": float(ref_sizes[r]) * voxel_ml,
                "best_dice": best,
                "partner": lesion_id(case_id, partner) if partner else "",
                "outcome": "found" if found else "missed",
            }
        )
    labels = {}
    for a, (r, best, matched) in sorted(by_automatic.items()):
        labels[a] = reference_labels.get(r) if matched else None
        rows.append(
            {
                "case_id": case_id,
                "patient_key": patient_key,
                "kind": "automatic",
                "instance": a,
                "lesion_id": lesion_id(case_id, a),
                "label": labels[a],
                "volume_ml": float(auto_sizes[a]) * voxel_ml,
                "best_dice": best,
                "partner": lesion_id(case_id, r) + REFERENCE_SUFFIX if matched else "",
                "outcome": "matched" if matched else "invented",
            }
        )
    reference_lesions = reference_instances > 0
    case = {
        "case_id": case_id,
        "patient_key": patient_key,
        "method": method,
        "liver_dice": dice(automatic.liver, reference_liver) if reference_liver is not None else float("nan"),
        "liver_assd_mm": assd(automatic.liver, reference_liver, spacing)
        if reference_liver is not None
        else float("nan"),
        "lesion_dice": dice(automatic.lesions, reference_lesions),
        "lesion_assd_mm": assd(automatic.lesions, reference_lesions, spacing),
        "reference_lesions": len(by_reference),
        "found_lesions": sum(f for _, _, f in by_reference.values()),
        "automatic_lesions": len(by_automatic),
        "invented_lesions": sum(not m for _, _, m in by_automatic.values()),
        "outside_liver_lesions": len(outside_liver(auto_instances, reference_liver, spacing, outside_liver_mm))
        if reference_liver is not None
        else float("nan"),
        "seconds": float(seconds),
    }
    return case, rows, labels


def measure_case(
    case_id: str,
    patient_key: str,
    image: np.ndarray,
    spacing,
    reference_instances: np.ndarray,
    reference_labels: dict[int, int | None],
    reference_liver: np.ndarray | None,
    settings: SegmentSettings,
    cascade=None,
) -> tuple[dict, list[dict]]:
    """Segment one CT by ``settings.method`` (timed) and compare it with its reference (``compare_to_reference``).

    Returns:
        The case row and the lesion rows of the segmentation tables.
    """
    started = time.perf_counter()
    found = automatic_segmentation(image, spacing, settings, cascade)
    seconds = time.perf_counter() - started
    automatic = _number(found.lesions, case_id)
    row, rows, _ = compare_to_reference(
        case_id,
        patient_key,
        settings.method,
        spacing,
        found,
        automatic,
        reference_instances,
        reference_labels,
        reference_liver,
        settings.detection_dice,
        seconds,
        outside_liver_mm=settings.outside_liver_mm,
    )
    return row, rows


@dataclass(frozen=True)
class ReferenceCase:
    """A CT with its reference masks, as the cascade trains on them and the measures compare with them."""

    image: np.ndarray  # HU, float32, canonical axes
    spacing: tuple[float, float, float]
    liver: np.ndarray | None  # bool; None where the cohort has no liver mask for the case
    instances: np.ndarray  # the reference lesions numbered (``lesions.instance_map``)
    labels: dict[int, int | None]  # lesion number -> class where the mask codes it


def read_reference_case(
    image_path, mask_path, liver_path, case_id: str, mask_encoding: str, types: dict[int, str] | None = None
) -> ReferenceCase:
    """One read of a case's CT, lesion mask and liver mask (``liver_path`` None: no liver mask).

    Args:
        types: lesion number -> type (``lesion_types.csv``), for masks that do not code the class.
    """
    from liverlesion.contract import LESION_TYPES
    from liverlesion.imaging import load_nifti
    from liverlesion.lesions import instance_map

    image, meta = load_nifti(image_path, dtype=np.float32)
    mask, _ = load_nifti(mask_path)
    liver = load_nifti(liver_path)[0] != 0 if liver_path else None
    instances, described = instance_map(mask, case_id, mask_encoding)
    labels = {d["instance"]: d["label"] for d in described}
    for number, kind in (types or {}).items():
        if labels.get(number) is None and number in labels:
            labels[number] = LESION_TYPES[kind]
    return ReferenceCase(image, meta.spacing, liver, instances, labels)


def _number(lesions: np.ndarray, case_id: str) -> np.ndarray:
    from liverlesion.lesions import instance_map

    return instance_map(lesions.astype(np.uint8), case_id, "binary")[0]


def lesion_diameter_mm(volume_ml) -> np.ndarray:
    """The diameter (mm) of a ball of the lesion's volume: how lesions are put in size classes."""
    return (6.0 * np.asarray(volume_ml, dtype=float) * 1000.0 / np.pi) ** (1.0 / 3.0)


def size_class(diameter_mm: float, bins: tuple[float, ...]) -> str:
    """``<10 mm``, ``10-20 mm``, ``>=20 mm`` for bins (10, 20)."""
    if diameter_mm < bins[0]:
        return f"<{bins[0]:g} mm"
    for lo, hi in zip(bins, bins[1:]):
        if diameter_mm < hi:
            return f"{lo:g}-{hi:g} mm"
    return f">={bins[-1]:g} mm"


def detection_by_size(lesions: pd.DataFrame, bins: tuple[float, ...]) -> pd.DataFrame:
    """Per size class of reference lesion: how many, how many found, the recall (``SEGMENTATION_LESION_COLUMNS``
    rows in)."""
    reference = lesions[lesions["kind"] == "reference"]
    classes = [size_class(d, bins) for d in lesion_diameter_mm(reference["volume_ml"])]
    names = [size_class(b - 1e-9, bins) for b in bins] + [size_class(bins[-1], bins)]
    rows = []
    for name in names:
        of_class = reference[[c == name for c in classes]]
        found = int((of_class["outcome"] == "found").sum())
        rows.append(
            {
                "size": name,
                "reference": int(len(of_class)),
                "found": found,
                "recall": found / len(of_class) if len(of_class) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def outside_liver(instances: np.ndarray, reference_liver: np.ndarray, spacing, distance_mm: float) -> list[int]:
    """The automatic lesions (numbers in ``instances``) with no voxel within ``distance_mm`` of the reference liver.

    Measured in the box around the lesions widened by ``distance_mm``: a liver voxel that near a lesion lies in it.
    """
    lesions = instances > 0
    if not lesions.any():
        return []
    box = bounding_box(lesions, np.ceil(distance_mm / np.asarray(spacing, dtype=float)).astype(int) + 1)
    near = dilate_mm(reference_liver[box], distance_mm, spacing)
    numbers = [int(k) for k in np.unique(instances[box]) if k]
    inside = set(np.unique(instances[box][near & lesions[box]]).tolist())
    return [k for k in numbers if k not in inside]


def segmentation_summary(cases: pd.DataFrame, lesions: pd.DataFrame) -> dict[str, float]:
    """The cohort's segmentation figures: mean per-case Dice and ASSD, detection recall, false positives per patient.

    Args:
        cases: ``SEGMENTATION_CASE_COLUMNS`` rows; ``lesions``: ``SEGMENTATION_LESION_COLUMNS`` rows.
    """
    reference = lesions[lesions["kind"] == "reference"]
    automatic = lesions[lesions["kind"] == "automatic"]
    patients = max(cases["patient_key"].nunique(), 1)
    summary = {
        "cases": int(len(cases)),
        "patients": int(cases["patient_key"].nunique()),
        "liver_dice": float(cases["liver_dice"].mean()),
        "liver_assd_mm": float(cases["liver_assd_mm"].mean()),
        "lesion_dice": float(cases["lesion_dice"].mean()),
        "lesion_assd_mm": float(cases["lesion_assd_mm"].mean()),
        "reference_lesions": int(len(reference)),
        "found_lesions": int((reference["outcome"] == "found").sum()),
        "detection_recall": float((reference["outcome"] == "found").mean()) if len(reference) else float("nan"),
        "automatic_lesions": int(len(automatic)),
        "invented_lesions": int((automatic["outcome"] == "invented").sum()),
        "false_positives_per_patient": float((automatic["outcome"] == "invented").sum() / patients),
        "seconds_per_case": float(cases["seconds"].mean()),
    }
    for name, label in (("cyst", 0), ("metastasis", 1)):
        of_class = reference[reference["label"] == label]
        summary[f"detection_recall_{name}"] = (
            float((of_class["outcome"] == "found").mean()) if len(of_class) else float("nan")
        )
    return summary


def automatic_segmentation(image: np.ndarray, spacing, settings: SegmentSettings, cascade=None) -> Segmentation:
    """The liver and lesions of a CT by ``settings.method`` (``classical``, or ``learned`` with ``cascade``).

    Args:
        cascade: a ``liverlesion.segnet.Cascade`` (the registered learned model); only for ``learned``.
    """
    if settings.method == "classical":
        return classical_segmentation(image, spacing, settings)
    if settings.method == "learned":
        if cascade is None:
            raise ValueError("segment method learned needs the registered cascade (segment.learned_model)")
        liver_probability, lesion_probability = cascade.probabilities(image)
        return masks_from_probabilities(liver_probability, lesion_probability, spacing, settings)
    raise ValueError(f"segment method {settings.method!r} is not automatic")


_CASCADES: dict[str, object] = {}


def load_cascade(folder: str | None):
    """The learned cascade saved in ``folder`` (``segnet.Cascade.save``), loaded once per process; None for None."""
    if folder is None:
        return None
    if folder not in _CASCADES:
        _CASCADES[folder] = Cascade.load(folder)
    return _CASCADES[folder]


def end_to_end(lesions: pd.DataFrame, predictions: pd.DataFrame, threshold: float) -> dict[str, float]:
    """What reached the radiologist, counted per reference lesion: found and called right, found and called
    wrong (by its best-matching automatic lesion), or missed by segmentation; and the automatic lesions
    that match none (invented).

    Args:
        lesions: ``SEGMENTATION_LESION_COLUMNS`` rows of the patients scored (e.g. the test patients).
        predictions: the classifier's ``lesion_id, p_metastasis`` of the automatic lesions.
    """
    reference = lesions[(lesions["kind"] == "reference") & lesions["label"].notna()]
    automatic = lesions[lesions["kind"] == "automatic"]
    p = dict(zip(predictions["lesion_id"], predictions["p_metastasis"]))
    counts: dict[str, float] = {}
    for name, label in (("metastasis", 1), ("cyst", 0)):
        of_class = reference[reference["label"].astype(int) == label]
        found = of_class[of_class["outcome"] == "found"]
        called = [p.get(partner) for partner in found["partner"]]
        right = sum(q is not None and (q >= threshold) == bool(label) for q in called)
        counts[f"reference_{name}"] = int(len(of_class))
        counts[f"missed_{name}"] = int(len(of_class) - len(found))
        counts[f"found_called_right_{name}"] = int(right)
        counts[f"found_called_wrong_{name}"] = int(len(found) - right)
    invented = automatic[automatic["outcome"] == "invented"]
    counts["invented"] = int(len(invented))  # no reference type: not scored in training, but `predict` calls them
    m, c = counts["reference_metastasis"], counts["reference_cyst"]
    # a missed metastasis is a false negative the radiologist never sees: end-to-end sensitivity counts it
    counts["recall"] = counts["found_called_right_metastasis"] / m if m else float("nan")
    counts["specificity"] = counts["found_called_right_cyst"] / c if c else float("nan")
    return counts
