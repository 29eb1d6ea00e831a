"""Synthetic venous-phase liver CT phantoms: a seeded, byte-reproducible stand-in for the biobank.

The paper's data (63 patients, 230 lesions, half cysts and half colorectal metastases) is private,
so the pipeline is developed and tested on a cohort generated here. It is shaped like that biobank
(counts, class balance, lesion volume ranges and means) and like real portal-venous CT as measured
on 3D-IRCADb (see ``shared/DESIGN.md``, "What real venous-phase CT looks like"): liver 100-120 HU
with vessels and noise, among the organs that border it in patients (kidney cortex brighter than it
beside a water-dense pelvis, heart muscle, spleen and pancreas at its own level, stomach and bowel
with gas and fluid, great vessels, spine and ribs), each a fat plane away; water-like cysts,
hypoattenuating heterogeneous metastases with rims and necrotic cores, per-patient voxel spacing,
and partial volume at every boundary. The point of that realism is that the classification task is
not trivial: the best single threshold on a lesion's mean HU reaches about 0.9 accuracy
(``bench/cohort_separability.py``), not 1.0: necrotic metastases, small cysts blurred towards the
liver, and noise overlap, as in real scans.

Size and speed: the default cohort (63 patients, ~3.7 M voxels each) takes about 50 s with
``workers=2`` on 2 cores and ~280 MB, nearly all of it the int16 CT, whose 10-20 HU noise compresses
to ~1.1 byte per voxel.

Reproducibility: everything is derived from ``CohortSpec`` through NumPy ``SeedSequence`` streams
(one for the cohort plan, one per patient), files are written without timestamps, so the same spec
and ``GENERATOR_VERSION`` give the same bytes on the same platform (and the same DVC hash).

Geometry convention: arrays are indexed (x, y, z) in RAS+ (x towards the patient's right, y
anterior, z superior); world coordinates are millimetres; the affine is diagonal.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage
from scipy.special import ndtri

from liverlesion.contract import (
    CASES_FILE,
    CASES_FILE_COLUMNS,
    COHORT_FILE,
    IMAGES_DIR,
    LIVERS_DIR,
    MASK_CYST,
    MASK_METASTASIS,
    MASKS_DIR,
)
from liverlesion.imaging import affine_from_spacing, save_nifti

#: Bump whenever the bytes written for a given spec change (it is recorded in ``cohort.json``).
GENERATOR_VERSION = "1.3.0"

Progress = Callable[[int, int, str], None]


class Range(NamedTuple):
    """A closed interval [lo, hi] that a per-patient or per-lesion value is drawn from uniformly."""

    lo: float
    hi: float


class VolumeStats(NamedTuple):
    """Reported lesion volume statistics of one class, in mL."""

    min: float
    mean: float
    max: float


# ---------------------------------------------------------------------------------------------
# The paper's biobank (Perdigon Romero et al., ISBI 2019, section 2.1 "Dataset").
# ---------------------------------------------------------------------------------------------
# Its size and class balance (63 patients, 230 lesions, half metastases) are the default cohort's
# settings, written in ``configs/base.yaml``; what a lesion of each class looks like is the generator's.
# "The largest cyst lesion was 13.8mL, while the largest metastasis was 534.6mL. [...] the smallest
# volumes was 0.018mL and 0.272mL [...] The average volumes of metastases and cysts was 24.871 mL
# and 0.791 mL".
CYST_VOLUME_ML = VolumeStats(min=0.018, mean=0.791, max=13.8)
METASTASIS_VOLUME_ML = VolumeStats(min=0.272, mean=24.871, max=534.6)
# Spread (standard deviation of ln mL) of the log-normal volume models. Not reported by the paper:
# chosen so that ~115 draws span about the reported min..max (ln(max/min) ~ 5 standard deviations).
CYST_LOG_VOLUME_SD = 1.35
METASTASIS_LOG_VOLUME_SD = 1.55

# Classes with at least this many lesions get the paper's exact min / mean / max (see _class_volumes).
PIN_EXTREMES_MIN_LESIONS = 50

# Lesions per patient: every patient has one, the rest are spread by a Dirichlet-multinomial
# (concentration 1: a few patients carry many lesions, as in metastatic disease).
LESION_COUNT_CONCENTRATION = 1.0
# Each patient's propensity for metastases is Beta(a, a); a < 1 is U-shaped, so most patients
# carry mostly one class (screened CLM patients with metastases; patients with incidental cysts)
# and some carry both.
CLASS_PROPENSITY_BETA = 0.5
CLASS_PROPENSITY_FLOOR = 1e-3  # keeps every lesion selectable in the weighted draw

# ---------------------------------------------------------------------------------------------
# Acquisition. In-plane spacing is the reconstruction field of view over a 512 matrix (the usual
# abdominal display FOV 310-460 mm gives the requested 0.6-0.9 mm); slice spacing is picked from
# the values clinical scanners reconstruct, weighted towards the 2.5-5 mm of routine archives.
# ---------------------------------------------------------------------------------------------
RECON_MATRIX = 512
RECON_FOV_MM = Range(310.0, 460.0)
SLICE_SPACINGS_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
SLICE_SPACING_WEIGHTS = (0.02, 0.04, 0.04, 0.10, 0.20, 0.15, 0.45)
PSF_SIGMA_MM = 0.6  # in-plane point spread (FWHM ~1.4 mm, a standard soft-tissue kernel)
NOISE_CORRELATION_SIGMA_VOXELS = 0.7  # filtered back-projection noise is correlated in-plane
CT_MIN_HU, CT_MAX_HU = -1024, 3071  # the stored 12-bit CT range

# ---------------------------------------------------------------------------------------------
# Attenuation (HU). Liver, lesion and rim figures: DESIGN.md, measured on two 3D-IRCADb-01
# patients (parenchyma 105-115 HU, std 20-25 with noise and vessels; tumours 63-126, mostly 18-42
# below the liver; rim 15-37 above the core in 8 of 9; internal std 15-37). Other tissues:
# textbook CT numbers (air -1000, fat about -100, muscle 40-60, water 0, lung about -850).
# ---------------------------------------------------------------------------------------------
AIR_HU = -1000.0
LUNG_HU = Range(-880.0, -820.0)
FAT_HU = Range(-115.0, -85.0)
SKIN_HU = Range(20.0, 50.0)
MUSCLE_HU = Range(40.0, 60.0)
ABDOMEN_SOFT_TISSUE_HU = Range(25.0, 50.0)  # bowel wall, kidney, stomach: a blend
ABDOMEN_FAT_SHARE = Range(0.15, 0.40)  # fraction of the abdominal cavity that is fat
LIVER_HU = Range(100.0, 120.0)  # portal venous phase
LIVER_VARIATION_SD_HU = Range(2.0, 5.0)  # smooth perfusion differences across the organ
VESSEL_HU = Range(150.0, 190.0)  # contrast-filled portal and hepatic veins
CYST_HU = Range(0.0, 20.0)  # serous fluid: near water, homogeneous
METASTASIS_CONTRAST_HU = Range(20.0, 70.0)  # how far the viable tumour sits below the liver
# Mucinous colorectal metastases are low-attenuation (fluid-like mucin, often near 10-35 HU) yet
# keep a solid tumour's heterogeneity and lobulated margin: the classic cyst mimic on CT.
MUCINOUS_PROBABILITY = 0.2
MUCINOUS_HU = Range(15.0, 35.0)
METASTASIS_TEXTURE_SD_HU = Range(10.0, 25.0)  # heterogeneous enhancement inside the tumour
METASTASIS_TEXTURE_SCALE_MM = Range(1.5, 3.5)  # correlation length of that texture
METASTASIS_RIM_PROBABILITY = 0.7  # DESIGN.md: rim enhancement in 8 of 9 tumours
METASTASIS_RIM_HU = Range(15.0, 35.0)  # rim above the tumour body
METASTASIS_RIM_MM = Range(1.5, 4.0)
# Necrosis grows more likely with size (a central necrotic core is typical of larger colorectal
# metastases): probability = clip(base + slope * log10(volume / 1 mL)).
NECROSIS_PROBABILITY_AT_1ML = 0.35
NECROSIS_PROBABILITY_PER_DECADE = 0.25
NECROSIS_PROBABILITY_MAX = 0.8
NECROSIS_HU = Range(10.0, 35.0)  # liquefied necrosis: close to, but above, water
NECROSIS_CORE_FRACTION = Range(0.55, 0.9)  # core radius / lesion radius
NECROSIS_EDGE_IRREGULARITY = 0.12  # how much the texture roughens the core's edge (in radius units)
NECROSIS_EDGE_SOFTNESS = 0.1  # half-width of the core's transition (in radius units)
NECROSIS_TEXTURE_FRACTION = 0.3  # necrosis keeps this share of the tumour texture

# ---------------------------------------------------------------------------------------------
# Anatomy (mm, before ``size_scale``).
# ---------------------------------------------------------------------------------------------
LIVER_VOLUME_ML = Range(1200.0, 1700.0)  # typical adult liver on CT, about 1.5 L
# Tumour burden enlarges the liver: each mL of lesion adds this many mL of organ, which also
# leaves room to place lesions apart from each other.
LESION_BURDEN_LIVER_GROWTH = 2.0
LIVER_ASPECT_AP = Range(0.72, 0.85)  # antero-posterior / transverse semi-axis
LIVER_ASPECT_CC = Range(0.75, 0.90)  # cranio-caudal / transverse semi-axis
LIVER_LEFT_LOBE_THICKNESS = Range(0.30, 0.45)  # left lobe tip thickness / right lobe thickness
LIVER_TAPER_END = 0.2  # normalised x from which the liver has full (right lobe) thickness
LIVER_ROTATION_DEG = Range(-12.0, 12.0)  # in-plane tilt
LIVER_WOBBLE = 0.05  # amplitude of the smooth random deformation of the liver surface
LIVER_WOBBLE_MODES = 3
LIVER_WOBBLE_WAVELENGTH_MM = Range(80.0, 200.0)
LIVER_VARIATION_MODES = 3
LIVER_VARIATION_WAVELENGTH_MM = Range(40.0, 120.0)
# Abdominal cavity (inside the muscle wall) relative to the liver's semi-axes, and the wall.
CAVITY_TO_LIVER_TRANSVERSE = Range(1.45, 1.65)
CAVITY_TO_LIVER_AP = Range(1.25, 1.45)
LIVER_LATERAL_REACH = Range(0.92, 1.0)  # liver centre = cavity edge - reach * liver semi-axis
LIVER_AP_OFFSET = Range(-0.05, 0.15)  # liver centre y / cavity semi-axis (slightly anterior)
SKIN_MM = Range(1.5, 2.5)
SUBCUTANEOUS_FAT_MM = Range(8.0, 35.0)
MUSCLE_WALL_MM = Range(6.0, 14.0)
DIAPHRAGM_MM = Range(4.0, 8.0)
# Lung bases sit above a dome: at the liver's axis this height (fraction of the liver's
# cranio-caudal semi-axis above its centre), falling towards the periphery (costophrenic recesses),
# more so posteriorly.
LUNG_BASE_LEVEL = Range(0.55, 0.75)
DIAPHRAGM_DOME_DROP = 0.5  # fall of the dome at one liver semi-axis from its apex
LUNG_BASE_POSTERIOR_DROP = 0.25
ABDOMEN_TEXTURE_MODES = 4
ABDOMEN_TEXTURE_WAVELENGTH_MM = Range(15.0, 50.0)
ABDOMEN_FAT_EDGE = 0.15  # softness (field units) of the fat / soft tissue transition
# Field of view: the liver's bounding box plus a margin; on the lateral side it reaches past the
# skin (up to a limit) so that each volume shows air, fat and muscle as a real crop would.
LATERAL_AIR_MM = 5.0
LATERAL_EXTENSION_MAX_MM = 30.0

# Vessel trees: two portal branches from the hilum, three hepatic veins towards the dome.
PORTAL_ROOT = (-0.15, -0.10, -0.25)  # hilum, in normalised liver coordinates
PORTAL_DIRECTIONS = ((1.0, 0.0, 0.2), (-1.0, 0.3, 0.1))
PORTAL_RADIUS_MM = Range(4.0, 5.5)
HEPATIC_ROOT = (-0.10, -0.40, 0.55)
HEPATIC_DIRECTIONS = ((1.0, 0.2, -0.6), (0.2, 0.6, -0.6), (-0.8, 0.4, -0.4))
HEPATIC_RADIUS_MM = Range(3.5, 5.0)
VESSEL_LENGTH_PER_RADIUS = Range(6.0, 10.0)
VESSEL_LENGTH_MM = Range(8.0, 45.0)
VESSEL_BRANCH_ANGLE_DEG = Range(20.0, 45.0)
VESSEL_RADIUS_DECAY = Range(0.6, 0.8)
VESSEL_MIN_RADIUS_MM = 1.0
VESSEL_MAX_DEPTH = 5
VESSEL_CHILDREN = 2  # each branch point splits in two
VESSEL_ROOT_JITTER = 0.2  # random tilt of the main trunks' directions (unit-vector units)

# ---------------------------------------------------------------------------------------------
# The organs around the liver: what fools a segmenter on real CT (kidney cortex brighter than the
# liver with a water-dense pelvis beside it, a spleen, pancreas and heart muscle at the liver's own
# level, stomach and bowel with gas and fluid, the great vessels, spine and ribs). Portal-venous
# CT numbers from textbook ranges; sizes of an adult (mm, before ``size_scale``). Each organ is
# placed in the liver's own frame (normalised liver coordinates: x towards the patient's right,
# y anterior, z superior, in liver semi-axes) and kept a fat plane away from the liver's surface
# (``*_GAP_MM``), as the liver's neighbours are in patients; what lies inside the liver is the
# liver's. They are drawn from their own random stream, so the liver, its vessels, the lesions and
# the noise are those of the phantom without organs.
# ---------------------------------------------------------------------------------------------
KIDNEY_CORTEX_HU = Range(150.0, 200.0)  # cortex and columns enhance above the liver
KIDNEY_MEDULLA_HU = Range(100.0, 140.0)  # medulla still behind the cortex at 70 s
RENAL_PELVIS_HU = Range(0.0, 20.0)  # unopacified urine: water, a cyst mimic
KIDNEY_SEMI_MM = ((26.0, 32.0), (22.0, 27.0), (50.0, 60.0))  # transverse, antero-posterior, cranio-caudal
KIDNEY_CORTEX_MM = Range(5.0, 8.0)
RENAL_PELVIS_SEMI_MM = ((8.0, 11.0), (9.0, 13.0), (14.0, 20.0))
KIDNEY_AT = (0.40, -0.72, -0.80)  # upper pole against the right lobe's posterior undersurface
KIDNEY_GAP_MM = Range(1.0, 4.0)  # the hepatorenal fat plane
SPLEEN_HU = Range(110.0, 135.0)
SPLEEN_SEMI_MM = ((30.0, 40.0), (50.0, 60.0), (45.0, 60.0))
SPLEEN_AT = (-1.55, -0.55, 0.15)
SPLEEN_GAP_MM = Range(2.0, 8.0)
PANCREAS_HU = Range(90.0, 120.0)  # at the liver's level
PANCREAS_SEMI_MM = ((55.0, 70.0), (10.0, 13.0), (12.0, 16.0))
PANCREAS_AT = (-0.75, -0.45, -0.62)
PANCREAS_GAP_MM = Range(3.0, 8.0)
STOMACH_WALL_HU = Range(70.0, 110.0)  # enhancing mucosa
STOMACH_WALL_MM = Range(3.0, 5.0)
STOMACH_SEMI_MM = ((40.0, 50.0), (33.0, 42.0), (50.0, 65.0))
STOMACH_AT = (-1.05, 0.25, 0.15)  # under the left lobe
STOMACH_GAP_MM = Range(1.0, 4.0)
LUMEN_FLUID_HU = Range(0.0, 25.0)  # gastric and bowel fluid
LUMEN_GAS_SHARE = Range(0.2, 0.45)  # the anterior share of a lumen that is gas (supine: gas rises)
COLON_WALL_HU = Range(60.0, 100.0)
BOWEL_WALL_MM = Range(2.0, 3.5)
COLON_RADIUS_MM = Range(20.0, 27.0)
COLON_FROM, COLON_TO = (0.75, 0.15, -0.80), (0.0, 0.50, -0.95)  # the hepatic flexure, under the right lobe
COLON_GAP_MM = Range(1.0, 5.0)
DUODENUM_RADIUS_MM = Range(11.0, 14.0)
DUODENUM_FROM, DUODENUM_TO = (-0.20, -0.25, -0.85), (-0.25, 0.05, -0.45)
DUODENUM_GAP_MM = Range(1.0, 4.0)
HEART_MYOCARDIUM_HU = Range(90.0, 120.0)  # heart muscle: the liver's level, across the diaphragm
HEART_BLOOD_HU = Range(140.0, 190.0)
HEART_SEMI_MM = ((60.0, 70.0), (50.0, 60.0), (45.0, 55.0))
HEART_WALL_MM = Range(8.0, 12.0)
HEART_AT = (-0.55, 0.30)  # over the left lobe; it rests on the diaphragm above the dome
AORTA_HU = Range(150.0, 200.0)
AORTA_RADIUS_MM = Range(10.0, 13.0)
IVC_HU = Range(110.0, 160.0)  # enhanced blood mixing with unenhanced blood from the legs
IVC_RADIUS_MM = Range(10.0, 13.0)
IVC_AT = (-0.35, -0.95)  # in the groove of the liver's posterior surface
IVC_GAP_MM = 0.0
PORTAL_TRUNK_RADIUS_MM = Range(6.0, 8.0)
PORTAL_TRUNK_TO = (-0.50, -0.35, -0.80)  # from the hilum down and medially to the pancreas neck
VERTEBRA_SEMI_MM = ((20.0, 24.0), (16.0, 19.0))  # the vertebral body, in the axial plane
VERTEBRA_GAP_MM = 6.0  # from the back of the abdominal cavity to the body's posterior edge
CANCELLOUS_BONE_HU = Range(180.0, 280.0)
CORTICAL_BONE_HU = Range(700.0, 1100.0)
CORTICAL_BONE_MM = 2.0
RIB_HU = Range(350.0, 600.0)
RIB_RADIUS_MM = Range(3.5, 5.0)
RIB_DEPTH_MM = 2.0  # the diaphragm and intercostal muscle between a rib and the cavity (and the liver in it)
RIB_PITCH_MM = Range(25.0, 32.0)  # cranio-caudal distance between neighbouring ribs
RIB_SLOPE_MM_PER_RAD = Range(15.0, 30.0)  # a rib falls towards the front
RIB_ARC_DEG = (-110.0, 60.0)  # from behind to the front, measured from the patient's right
RIB_SEGMENTS = 8
ORGAN_JITTER = 0.06  # random shift of each organ's position (liver semi-axes)

# ---------------------------------------------------------------------------------------------
# Lesion shape and placement.
# ---------------------------------------------------------------------------------------------
CYST_AXIS_RATIO = Range(0.8, 1.25)  # smooth round / oval
METASTASIS_AXIS_RATIO = Range(0.7, 1.4)
METASTASIS_LOBES = (3, 7)  # number of lobulations (inclusive)
METASTASIS_LOBE_HEIGHT = Range(0.05, 0.22)  # relative radial bulge of each lobe
METASTASIS_LOBE_SHARPNESS = Range(2.0, 8.0)  # von Mises concentration: larger = narrower lobe
SHAPE_SPHERE_POINTS = 2000  # directions used to normalise a shape's volume and bound its radius
SHAPE_BOUND_SAFETY = 1.02  # the sampled directions may miss a lobe's exact peak
PV_SUBSAMPLE_MM = 0.5  # partial-volume supersampling step inside boundary voxels
PV_BAND_FACTOR = 1.5  # voxels within this many half-extents (along the normal) of the surface are supersampled
PV_CHUNK = 1 << 21  # sub-samples evaluated per batch (bounds memory)
MASK_MEMBERSHIP = 0.5  # a voxel is in the mask when at least half of it is lesion
LESION_GAP_VOXELS = 2  # background voxels left between any two lesions (26-connectivity safe)
LIVER_CORE_MEMBERSHIP = 0.999  # lesions (including their blurred edge) lie in fully-liver voxels
VESSEL_AT_CENTRE_MAX = 0.5  # do not centre a lesion inside a vessel
COARSE_GRID_MM = 2.0  # resolution of the distance map used to propose lesion centres
PLACEMENT_TRIES = 60
PLACEMENT_SHRINK = 0.85  # radius factor applied when a lesion does not fit after all tries
PLACEMENT_MAX_SHRINKS = 10

# Bounds of ``size_scale``; below 1, lesion volumes are capped at scale**3 times the paper's maxima.
MAX_SIZE_SCALE = 2.0
MIN_SIZE_SCALE = 0.2

# Cohort-level random stream: patients use SeedSequence([seed, index]) with index < n_patients, so
# this id (above any allowed index) keeps the cohort plan independent of every patient stream.
COHORT_STREAM = 2**32 - 1
MAX_PATIENTS = 99_999

#: ``cases.csv`` as the phantom writes it: the contract's columns (class-coded masks, the default
#: encoding), the reference liver mask (0/1, lesions included) and the lesion count
CASE_FIELDS = (*CASES_FILE_COLUMNS, "liver_mask", "n_lesions")
PATIENT_KEY_PREFIX = "PHX"

DESCRIPTION = (
    "Synthetic portal-venous liver CT phantoms (int16 HU, RAS) with lesion masks (0 background, "
    "1 cyst, 2 metastasis; one 26-connected component per lesion, lesions at least 2 voxels apart) and "
    "liver masks (1 liver, lesions included), "
    "shaped like the Perdigon Romero et al. (ISBI 2019) biobank: per-patient spacing, liver with "
    "vessels among its neighbouring organs (kidney, spleen, pancreas, stomach, bowel, heart, great vessels, "
    "spine, ribs), water-like cysts, heterogeneous hypoattenuating metastases with rims and necrosis, "
    "partial volume and correlated noise. Not patient data; not for diagnostic use."
)


class CohortSpec(BaseModel):
    """Everything that determines a phantom cohort; the same spec gives the same bytes.

    The values come from a profile's ``cohort`` section (``configs/base.yaml``: the paper-shaped
    cohort); ``size_scale`` below 1 shrinks anatomy and field of view (and caps lesion volumes at
    ``scale**3`` times the paper's maxima) for tiny, fast test cohorts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(ge=0, description="root of every random stream")
    n_patients: int = Field(ge=1, le=MAX_PATIENTS)
    n_lesions: int = Field(ge=1, description="total lesions; each patient gets at least one")
    metastasis_fraction: float = Field(ge=0.0, le=1.0)
    size_scale: float = Field(ge=MIN_SIZE_SCALE, le=MAX_SIZE_SCALE, description="linear anatomy scale")
    noise_sd_hu: tuple[float, float] = Field(description="per-patient image noise range (HU)")
    fov_margin_mm: float = Field(ge=0.0, le=100.0, description="field of view around the liver")

    @model_validator(mode="after")
    def _consistent(self) -> CohortSpec:
        if self.n_lesions < self.n_patients:
            raise ValueError(
                f"n_lesions ({self.n_lesions}) must be at least n_patients ({self.n_patients}): "
                "every patient carries at least one lesion"
            )
        lo, hi = self.noise_sd_hu
        if not 0.0 <= lo <= hi:
            raise ValueError(f"noise_sd_hu must be an increasing pair of non-negative values, got {self.noise_sd_hu}")
        return self

    @property
    def n_metastases(self) -> int:
        """Metastasis count: ``round(n_lesions * metastasis_fraction)`` (Python rounding)."""
        return int(round(self.n_lesions * self.metastasis_fraction))

    @property
    def n_cysts(self) -> int:
        return self.n_lesions - self.n_metastases


# =============================================================================================
# One-feature separability
# =============================================================================================
# =============================================================================================
# Cohort plan: which patient carries which lesions (cohort-level random stream)
# =============================================================================================
@dataclass(frozen=True)
class PlannedLesion:
    """One lesion as planned before placement: its class code and target volume."""

    code: int  # MASK_CYST or MASK_METASTASIS
    volume_ml: float


@dataclass(frozen=True)
class PatientPlan:
    index: int  # 0-based; the patient's random stream is SeedSequence([seed, index])
    patient_key: str
    case_id: str
    lesions: tuple[PlannedLesion, ...]


def _class_volumes(rng: np.random.Generator, n: int, stats: VolumeStats, log_sd: float, cap_ml: float) -> np.ndarray:
    """Log-normal volumes, stratified, with the reported extremes and mean reproduced.

    Stratified quantiles (one draw per 1/n of probability) keep a 115-lesion sample's mean close to
    the model's; pinning the smallest and largest to the reported min and max and rescaling the
    rest makes the default cohort match the paper's min / mean / max exactly (targets: the masks
    then differ a little by voxelisation). Small samples are only clipped to the range: pinning
    five lesions to 0.27 and 535 mL would distort them far more than it helps.
    """
    if n == 0:
        return np.empty(0)
    mu = math.log(stats.mean) - 0.5 * log_sd**2
    u = (rng.permutation(n) + rng.random(n)) / n
    volumes = np.exp(mu + log_sd * ndtri(u))
    if n >= PIN_EXTREMES_MIN_LESIONS:
        order = np.argsort(volumes, kind="stable")
        volumes[order[0]], volumes[order[-1]] = stats.min, stats.max
        inner = order[1:-1]
        target = stats.mean * n - stats.min - stats.max
        base = volumes[inner].copy()
        lo, hi = -10.0, 10.0  # bisection on the log of the rescaling factor
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            if np.clip(base * math.exp(mid), stats.min, stats.max).sum() < target:
                lo = mid
            else:
                hi = mid
        volumes[inner] = np.clip(base * math.exp(0.5 * (lo + hi)), stats.min, stats.max)
    else:
        volumes = np.clip(volumes, stats.min, stats.max)
    return np.minimum(volumes, cap_ml)


def plan_cohort(spec: CohortSpec) -> list[PatientPlan]:
    """Decide, for the whole cohort, how many lesions of which class and volume each patient has.

    Done once from the cohort stream so that the totals are exact (``n_lesions``, ``n_metastases``)
    while each patient's anatomy still comes from its own stream.
    """
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, COHORT_STREAM]))
    n_p, n_l, n_met = spec.n_patients, spec.n_lesions, spec.n_metastases
    counts = 1 + rng.multinomial(n_l - n_p, rng.dirichlet(np.full(n_p, LESION_COUNT_CONCENTRATION)))
    propensity = np.maximum(rng.beta(CLASS_PROPENSITY_BETA, CLASS_PROPENSITY_BETA, n_p), CLASS_PROPENSITY_FLOOR)
    slot_weight = np.repeat(propensity, counts)
    is_met = np.zeros(n_l, dtype=bool)
    if n_met > 0:
        is_met[rng.choice(n_l, size=n_met, replace=False, p=slot_weight / slot_weight.sum())] = True
    cap_scale = min(1.0, spec.size_scale) ** 3
    met_volumes = _class_volumes(
        rng, n_met, METASTASIS_VOLUME_ML, METASTASIS_LOG_VOLUME_SD, METASTASIS_VOLUME_ML.max * cap_scale
    )
    cyst_volumes = _class_volumes(rng, n_l - n_met, CYST_VOLUME_ML, CYST_LOG_VOLUME_SD, CYST_VOLUME_ML.max * cap_scale)
    met_iter, cyst_iter = iter(met_volumes.tolist()), iter(cyst_volumes.tolist())
    width = max(3, len(str(n_p)))
    plans, slot = [], 0
    for i in range(n_p):
        lesions = []
        for _ in range(int(counts[i])):
            if is_met[slot]:
                lesions.append(PlannedLesion(MASK_METASTASIS, float(next(met_iter))))
            else:
                lesions.append(PlannedLesion(MASK_CYST, float(next(cyst_iter))))
            slot += 1
        plans.append(
            PatientPlan(i, f"{PATIENT_KEY_PREFIX}-{i + 1:0{width}d}", f"case_{i + 1:0{width}d}", tuple(lesions))
        )
    return plans


# =============================================================================================
# Small geometric helpers
# =============================================================================================
def _draw(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r.lo, r.hi))


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _random_unit(rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    v = rng.standard_normal(3 if n is None else (n, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _fibonacci_sphere(n: int) -> np.ndarray:
    """Evenly spread unit vectors: a deterministic quadrature of the sphere."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = math.pi * (1.0 + 5**0.5) * k
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _ramp(distance: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Voxel fraction inside a locally planar surface at signed ``distance`` (negative inside).

    ``width`` is the voxel's extent along the surface normal (sum of |n_k| * spacing_k); the
    fraction then falls linearly from 1 to 0 across it: the partial-volume effect, first order.
    """
    return np.clip(0.5 - distance / np.maximum(width, 1e-6), 0.0, 1.0).astype(np.float32)


def _ellipse_membership(x: np.ndarray, y: np.ndarray, semi_x: float, semi_y: float, spacing: np.ndarray) -> np.ndarray:
    """Partial-volume membership of an axis-aligned ellipse centred at the origin (2D arrays)."""
    qx, qy = x / semi_x, y / semi_y
    q = np.sqrt(qx * qx + qy * qy)
    gx, gy = qx / semi_x, qy / semi_y  # gradient of q, times q
    grad = np.sqrt(gx * gx + gy * gy)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(grad > 0, (q - 1.0) * q / grad, -min(semi_x, semi_y))
        width = np.where(grad > 0, (np.abs(gx) * spacing[0] + np.abs(gy) * spacing[1]) / grad, 1.0)
    return _ramp(distance, width)


def _smooth_field(
    rng: np.random.Generator, axes: tuple[np.ndarray, np.ndarray, np.ndarray], n_modes: int, wavelength: Range
) -> np.ndarray:
    """A smooth random field of unit variance: a sum of plane waves of random direction and phase."""
    x, y, z = axes
    field = np.zeros((x.size, y.size, z.size), dtype=np.float32)
    for _ in range(n_modes):
        k = _random_unit(rng) * (2.0 * math.pi / _draw(rng, wavelength))
        phase = float(rng.uniform(0.0, 2.0 * math.pi))
        # cos(a + b) = cos a cos b - sin a sin b: trigonometry on 2D and 1D arrays only
        plane = k[0] * x[:, None] + k[1] * y[None, :] + phase
        height = k[2] * z
        field += np.cos(plane).astype(np.float32)[:, :, None] * np.cos(height).astype(np.float32)[None, None, :]
        field -= np.sin(plane).astype(np.float32)[:, :, None] * np.sin(height).astype(np.float32)[None, None, :]
    field *= math.sqrt(2.0 / n_modes)
    return field


# =============================================================================================
# Lesion shapes
# =============================================================================================
@dataclass(frozen=True)
class _Shape:
    """A star-shaped solid: radius(u) = scale * ellipsoid(u) * (1 + sum of von Mises lobes).

    Star-shaped about its centre, so the radial distance ``|p - c| - radius(u)`` is a cheap signed
    distance and ``|p - c| / radius(u)`` a normalised depth for rims and cores.
    """

    axes: np.ndarray  # (3,) relative semi-axes, product 1
    rotation: np.ndarray  # (3, 3) orthonormal; columns are the principal directions
    lobe_dirs: np.ndarray  # (k, 3)
    lobe_heights: np.ndarray  # (k,)
    lobe_sharpness: np.ndarray  # (k,)
    scale_mm: float = 1.0

    def radius(self, u: np.ndarray) -> np.ndarray:
        """Surface distance from the centre along unit vectors ``u`` (..., 3), in mm."""
        u = np.asarray(u, dtype=np.float32)  # float32 halves the cost; sub-micron error at lesion sizes
        local = u @ self.rotation.astype(np.float32)
        local /= self.axes.astype(np.float32)
        r = 1.0 / np.sqrt(np.einsum("...k,...k->...", local, local))
        if self.lobe_heights.size:
            lobes = u @ self.lobe_dirs.T.astype(np.float32)
            lobes -= np.float32(1.0)
            lobes *= self.lobe_sharpness.astype(np.float32)
            np.exp(lobes, out=lobes)
            r *= 1.0 + lobes @ self.lobe_heights.astype(np.float32)
        return r * np.float32(self.scale_mm)

    def _unit_radii(self) -> np.ndarray:
        unit = _Shape(self.axes, self.rotation, self.lobe_dirs, self.lobe_heights, self.lobe_sharpness, 1.0)
        return unit.radius(_fibonacci_sphere(SHAPE_SPHERE_POINTS))

    def with_volume(self, volume_ml: float) -> _Shape:
        """The same shape scaled to a volume: V = (1/3) * integral of radius^3 over the sphere."""
        mean_cube = float(np.mean(self._unit_radii() ** 3))
        scale = (volume_ml * 1000.0 / (4.0 / 3.0 * math.pi * mean_cube)) ** (1.0 / 3.0)
        return self.scaled(scale / self.scale_mm)

    def scaled(self, factor: float) -> _Shape:
        return _Shape(
            self.axes, self.rotation, self.lobe_dirs, self.lobe_heights, self.lobe_sharpness, self.scale_mm * factor
        )

    @cached_property
    def extent_mm(self) -> tuple[float, float]:
        """(inner, outer): radii of a ball surely inside and one surely containing the solid."""
        radii = self._unit_radii() * self.scale_mm
        return float(radii.min()) / SHAPE_BOUND_SAFETY, float(radii.max()) * SHAPE_BOUND_SAFETY

    @property
    def bound_mm(self) -> float:
        return self.extent_mm[1]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _random_shape(rng: np.random.Generator, code: int, volume_ml: float) -> _Shape:
    """Cysts: smooth ovals. Metastases: more elongated and lobulated."""
    ratio = CYST_AXIS_RATIO if code == MASK_CYST else METASTASIS_AXIS_RATIO
    axes = np.array([_draw(rng, ratio) for _ in range(3)])
    axes /= np.prod(axes) ** (1.0 / 3.0)
    rotation = _random_rotation(rng)
    if code == MASK_METASTASIS:
        k = int(rng.integers(METASTASIS_LOBES[0], METASTASIS_LOBES[1] + 1))
        dirs = _random_unit(rng, k)
        heights = rng.uniform(METASTASIS_LOBE_HEIGHT.lo, METASTASIS_LOBE_HEIGHT.hi, k)
        sharp = rng.uniform(METASTASIS_LOBE_SHARPNESS.lo, METASTASIS_LOBE_SHARPNESS.hi, k)
    else:
        dirs, heights, sharp = np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    return _Shape(axes, rotation, dirs, heights, sharp).with_volume(volume_ml)


@dataclass(frozen=True)
class _Appearance:
    """How a lesion looks inside: HU levels and the texture / rim / necrosis parameters."""

    code: int
    base_hu: float
    texture_sd_hu: float = 0.0
    texture_scale_mm: float = 1.0
    rim_hu: float = 0.0
    rim_mm: float = 0.0
    necrosis_hu: float | None = None
    necrosis_core: float = 0.0


def _random_appearance(rng: np.random.Generator, code: int, volume_ml: float, liver_hu: float) -> _Appearance:
    if code == MASK_CYST:
        return _Appearance(code, _draw(rng, CYST_HU))
    base = liver_hu - _draw(rng, METASTASIS_CONTRAST_HU)
    if rng.random() < MUCINOUS_PROBABILITY:
        base = _draw(rng, MUCINOUS_HU)
    texture_sd = _draw(rng, METASTASIS_TEXTURE_SD_HU)
    texture_scale = _draw(rng, METASTASIS_TEXTURE_SCALE_MM)
    has_rim = rng.random() < METASTASIS_RIM_PROBABILITY
    rim_hu, rim_mm = _draw(rng, METASTASIS_RIM_HU), _draw(rng, METASTASIS_RIM_MM)
    p_necrosis = float(
        np.clip(
            NECROSIS_PROBABILITY_AT_1ML + NECROSIS_PROBABILITY_PER_DECADE * math.log10(volume_ml),
            0.0,
            NECROSIS_PROBABILITY_MAX,
        )
    )
    necrotic = rng.random() < p_necrosis
    necrosis_hu, core = _draw(rng, NECROSIS_HU), _draw(rng, NECROSIS_CORE_FRACTION)
    return _Appearance(
        code,
        base,
        texture_sd,
        texture_scale,
        rim_hu if has_rim else 0.0,
        rim_mm if has_rim else 0.0,
        necrosis_hu if necrotic else None,
        core if necrotic else 0.0,
    )


# =============================================================================================
# The patient volume
# =============================================================================================
@dataclass(frozen=True)
class LesionTruth:
    """Ground truth of one placed lesion (not written to disk; for tests and benchmarks)."""

    code: int
    planned_volume_ml: float
    rendered_volume_ml: float  # mask voxels times voxel volume
    centre_mm: tuple[float, float, float]
    base_hu: float
    rim: bool
    necrotic: bool
    shrink: float  # radius factor applied when the lesion did not fit (1.0: as planned)


@dataclass
class PhantomCase:
    """One generated patient: the CT, its lesion mask and what was put where."""

    patient_key: str
    case_id: str
    image: np.ndarray  # int16 HU, (x, y, z) RAS
    mask: np.ndarray  # uint8 class codes
    liver: np.ndarray  # bool: voxels at least half liver (lesions included)
    spacing: tuple[float, float, float]
    affine: np.ndarray
    liver_hu: float
    noise_sd_hu: float
    lesions: list[LesionTruth]
    organs: np.ndarray  # uint8 ORGAN_CODES: the liver's neighbours (not written to disk; for tests and benchmarks)


@dataclass
class _Grid:
    origin: np.ndarray  # world mm of voxel (0, 0, 0)
    spacing: np.ndarray
    shape: tuple[int, int, int]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(self.origin[a] + np.arange(self.shape[a]) * self.spacing[a] for a in range(3))

    def index_of(self, point: np.ndarray) -> np.ndarray:
        return np.rint((np.asarray(point) - self.origin) / self.spacing).astype(int)

    def contains(self, index: np.ndarray) -> bool:
        return bool(np.all(index >= 0) and np.all(index < np.asarray(self.shape)))


def _draw_spacing(rng: np.random.Generator) -> np.ndarray:
    in_plane = _draw(rng, RECON_FOV_MM) / RECON_MATRIX
    weights = np.asarray(SLICE_SPACING_WEIGHTS) / sum(SLICE_SPACING_WEIGHTS)
    slice_mm = SLICE_SPACINGS_MM[int(rng.choice(len(SLICE_SPACINGS_MM), p=weights))]
    return np.array([in_plane, in_plane, slice_mm])


def _unit_liver_volume(left_thickness: float) -> float:
    """Volume of the tapered unit liver (semi-axes 1): integral of pi * t(x)^2 * (1 - x^2)."""
    x = np.linspace(-1.0, 1.0, 4001)
    t = _taper(x, left_thickness)
    y = math.pi * t**2 * (1.0 - x**2)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def _taper(qx: np.ndarray, left_thickness: float) -> np.ndarray:
    """Liver thickness profile along the transverse axis: thin left lobe, full right lobe."""
    return left_thickness + (1.0 - left_thickness) * _smoothstep(-1.0, LIVER_TAPER_END, qx)


@dataclass
class _Anatomy:
    """Per-patient body and liver geometry (mm, world frame centred on the body axis)."""

    liver_centre: np.ndarray
    liver_semi: np.ndarray
    liver_rotation: float  # radians, about z
    left_thickness: float
    cavity: tuple[float, float]
    wall: tuple[float, float, float]  # skin, subcutaneous fat, muscle (mm)
    diaphragm_mm: float
    lung_level: float
    scale: float  # size_scale: vessel calibres follow it


def _draw_anatomy(rng: np.random.Generator, scale: float, lesion_volume_ml: float) -> _Anatomy:
    healthy = _draw(rng, LIVER_VOLUME_ML) * scale**3
    volume_mm3 = (healthy + LESION_BURDEN_LIVER_GROWTH * lesion_volume_ml) * 1000.0
    aspect = np.array([1.0, _draw(rng, LIVER_ASPECT_AP), _draw(rng, LIVER_ASPECT_CC)])
    left = _draw(rng, LIVER_LEFT_LOBE_THICKNESS)
    semi_x = (volume_mm3 / (_unit_liver_volume(left) * np.prod(aspect))) ** (1.0 / 3.0)
    semi = semi_x * aspect
    cavity = (semi[0] * _draw(rng, CAVITY_TO_LIVER_TRANSVERSE), semi[1] * _draw(rng, CAVITY_TO_LIVER_AP))
    centre = np.array(
        [
            cavity[0] - _draw(rng, LIVER_LATERAL_REACH) * semi[0],
            _draw(rng, LIVER_AP_OFFSET) * cavity[1],
            0.0,
        ]
    )
    wall = (_draw(rng, SKIN_MM) * scale, _draw(rng, SUBCUTANEOUS_FAT_MM) * scale, _draw(rng, MUSCLE_WALL_MM) * scale)
    return _Anatomy(
        liver_centre=centre,
        liver_semi=semi,
        liver_rotation=math.radians(_draw(rng, LIVER_ROTATION_DEG)),
        left_thickness=left,
        cavity=cavity,
        wall=wall,
        diaphragm_mm=_draw(rng, DIAPHRAGM_MM) * scale,
        lung_level=_draw(rng, LUNG_BASE_LEVEL),
        scale=scale,
    )


def _liver_grid(anat: _Anatomy, spacing: np.ndarray, margin_mm: float) -> _Grid:
    """A grid that surely holds the liver (its wobble included) plus the margin."""
    a, th = anat.liver_semi, anat.liver_rotation
    grow = 1.0 / (1.0 - LIVER_WOBBLE * math.sqrt(2.0 * LIVER_WOBBLE_MODES))
    half = (
        np.array(
            [
                math.hypot(a[0] * math.cos(th), a[1] * math.sin(th)),
                math.hypot(a[0] * math.sin(th), a[1] * math.cos(th)),
                a[2],
            ]
        )
        * grow
    )
    lo = np.maximum(anat.liver_centre - half, [-anat.cavity[0], -anat.cavity[1], -np.inf]) - margin_mm
    hi = np.minimum(anat.liver_centre + half, [anat.cavity[0], anat.cavity[1], np.inf]) + margin_mm
    shape = tuple(int(n) for n in np.ceil((hi - lo) / spacing).astype(int) + 1)
    return _Grid(lo, spacing, shape)


def _liver_fields(
    liver_seq: np.random.SeedSequence, anat: _Anatomy, grid: _Grid
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Liver partial-volume membership, approximate signed distance to its surface (mm) and the
    voxel extent along the surface normal (mm).

    The liver is an implicit surface G = sqrt(F) * (1 + wobble) - 1 = 0, where F is a tapered
    ellipsoid (thin left lobe, thick right lobe); distance ~ G / |grad G| (first order), which is
    all partial volume needs. The wobble is a field in world coordinates drawn from its own stream,
    so the same liver comes out on any grid. The liver is then clipped by the abdominal cavity so
    that it lies flat against the wall, as a real liver does.
    """
    x, y, z = grid.axes()
    c, a = anat.liver_centre, anat.liver_semi
    cos_t, sin_t = math.cos(anat.liver_rotation), math.sin(anat.liver_rotation)
    dx, dy = x[:, None] - c[0], y[None, :] - c[1]
    qx = (cos_t * dx + sin_t * dy) / a[0]
    qy = (-sin_t * dx + cos_t * dy) / a[1]
    qz = ((z - c[2]) / a[2]).astype(np.float32)
    t2 = (_taper(qx, anat.left_thickness) ** 2).astype(np.float32)[:, :, None]
    g = (qx * qx).astype(np.float32)[:, :, None] + (
        (qy * qy).astype(np.float32)[:, :, None] + (qz * qz)[None, None, :]
    ) / t2
    np.sqrt(g, out=g)
    wobble = _smooth_field(np.random.default_rng(liver_seq), (x, y, z), LIVER_WOBBLE_MODES, LIVER_WOBBLE_WAVELENGTH_MM)
    g *= 1.0 + LIVER_WOBBLE * wobble
    g -= 1.0
    del wobble
    sx, sy, sz = (float(v) for v in grid.spacing)
    grad = np.zeros_like(g)
    width = np.zeros_like(g)
    for axis, step in enumerate((sx, sy, sz)):
        component = _central_difference(g, axis, step)
        grad += component * component
        np.abs(component, out=component)
        width += component * np.float32(step)
        del component
    np.sqrt(grad, out=grad)
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.where(grad > 0, g / grad, g * float(max(a))).astype(np.float32, copy=False)
        width = np.where(grad > 0, width / grad, max(sx, sy, sz)).astype(np.float32, copy=False)
    del g, grad
    membership = _ramp(distance, width)
    cavity = _ellipse_membership(x[:, None], y[None, :], anat.cavity[0], anat.cavity[1], grid.spacing)
    np.minimum(membership, cavity[:, :, None], out=membership)
    return membership, distance, width


def _central_difference(f: np.ndarray, axis: int, step: float) -> np.ndarray:
    """Derivative along one axis (central inside, one-sided at the ends), in the input's dtype;
    ``np.gradient`` is several times slower on large float32 volumes."""
    out = np.empty_like(f)
    n = f.shape[axis]
    if n < 2:
        out[...] = 0
        return out

    def sl(start, stop):
        index = [slice(None)] * f.ndim
        index[axis] = slice(start, stop)
        return tuple(index)

    np.subtract(f[sl(2, None)], f[sl(None, -2)], out=out[sl(1, -1)])
    out[sl(1, -1)] *= np.float32(0.5 / step)
    np.subtract(f[sl(1, 2)], f[sl(0, 1)], out=out[sl(0, 1)])
    np.subtract(f[sl(n - 1, n)], f[sl(n - 2, n - 1)], out=out[sl(n - 1, n)])
    out[sl(0, 1)] /= np.float32(step)
    out[sl(n - 1, n)] /= np.float32(step)
    return out


def _patient_grid(liver_seq: np.random.SeedSequence, anat: _Anatomy, spacing: np.ndarray, margin_mm: float) -> _Grid:
    """The field of view: the liver's bounding box plus the margin, found on a coarse grid; on the
    patient's right it reaches on to the skin plus a little air (within a limit) so that each
    volume shows air, fat and muscle as a real crop of the right upper abdomen does."""
    wide = _liver_grid(anat, spacing, margin_mm)
    factor = np.maximum(1, np.floor(COARSE_GRID_MM / spacing).astype(int))
    coarse = _Grid(wide.origin, spacing * factor, tuple(int(n) for n in -(-np.asarray(wide.shape) // factor)))
    liver, _, _ = _liver_fields(liver_seq, anat, coarse)
    box = ndimage.find_objects((liver > 0).astype(np.uint8))
    if not box:
        raise RuntimeError("internal error: the phantom liver is empty")
    lo_mm = coarse.origin + (np.array([s.start for s in box[0]]) - 1) * coarse.spacing - margin_mm
    hi_mm = coarse.origin + (np.array([s.stop for s in box[0]])) * coarse.spacing + margin_mm
    skin_x = anat.cavity[0] + sum(anat.wall)
    hi_mm[0] = max(hi_mm[0], min(skin_x + LATERAL_AIR_MM, hi_mm[0] + LATERAL_EXTENSION_MAX_MM))
    shape = tuple(int(n) for n in np.ceil((hi_mm - lo_mm) / spacing).astype(int) + 1)
    return _Grid(lo_mm, spacing, shape)


@dataclass
class _Scene:
    """The noise-free patient before lesions: HU volume and the tissue maps lesions need."""

    volume: np.ndarray  # float32 HU
    liver: np.ndarray  # float32 liver membership
    vessels: np.ndarray  # float32 vessel membership (inside the liver)
    liver_hu: float
    organs: np.ndarray  # uint8 ORGAN_CODES


def _render_scene(
    rng: np.random.Generator,
    liver_seq: np.random.SeedSequence,
    organ_rng: np.random.Generator,
    anat: _Anatomy,
    grid: _Grid,
) -> _Scene:
    """Render air, body wall (skin, subcutaneous fat, muscle), abdomen, lung bases, the organs around the
    liver (from ``organ_rng``), spine and ribs, and the liver with its smooth perfusion variation and vessels."""
    spacing = grid.spacing
    liver, distance, width = _liver_fields(liver_seq, anat, grid)
    x, y, z = grid.axes()
    x2, y2 = x[:, None], y[None, :]
    skin, fat_mm, muscle_mm = anat.wall
    cav_x, cav_y = anat.cavity
    wall = np.full((x.size, y.size), AIR_HU, dtype=np.float32)
    for inset, hu in ((0.0, _draw(rng, SKIN_HU)), (skin, _draw(rng, FAT_HU)), (skin + fat_mm, _draw(rng, MUSCLE_HU))):
        outer = skin + fat_mm + muscle_mm - inset
        wall += _ellipse_membership(x2, y2, cav_x + outer, cav_y + outer, spacing) * (hu - wall)
    cavity = _ellipse_membership(x2, y2, cav_x, cav_y, spacing)

    # Abdomen: soft tissue with fat lobules; lung bases above the diaphragm, over the liver dome.
    soft_hu, fat_hu = _draw(rng, ABDOMEN_SOFT_TISSUE_HU), _draw(rng, FAT_HU)
    threshold = float(ndtri(1.0 - _draw(rng, ABDOMEN_FAT_SHARE)))  # the field is about standard normal
    texture = _smooth_field(rng, (x, y, z), ABDOMEN_TEXTURE_MODES, ABDOMEN_TEXTURE_WAVELENGTH_MM)
    interior = soft_hu + _smoothstep(threshold - ABDOMEN_FAT_EDGE, threshold + ABDOMEN_FAT_EDGE, texture) * (
        fat_hu - soft_hu
    )
    del texture
    c, a = anat.liver_centre, anat.liver_semi
    radial = ((x2 - c[0]) / a[0]) ** 2 + ((y2 - c[1]) / a[1]) ** 2
    level = c[2] + a[2] * (
        anat.lung_level - DIAPHRAGM_DOME_DROP * radial + LUNG_BASE_POSTERIOR_DROP * (y2 - c[1]) / a[1]
    )
    above = _ramp((level[:, :, None] - z[None, None, :]).astype(np.float32), np.float32(spacing[2]))
    lung = above * (1.0 - _ramp(distance - anat.diaphragm_mm, width))
    del above
    interior += lung * (_draw(rng, LUNG_HU) - interior)
    del lung
    organs, bones = _plan_organs(organ_rng, anat, grid)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for organ in organs:
        _paint_organ(interior, labels, grid, organ, distance, width)
    labels *= cavity[:, :, None] >= MASK_MEMBERSHIP
    volume = wall[:, :, None] + cavity[:, :, None] * (interior - wall[:, :, None])
    del interior
    for bone in bones:
        _paint_organ(volume, labels, grid, bone, distance, width)
    del distance, width

    liver_hu = _draw(rng, LIVER_HU)
    variation_sd = _draw(rng, LIVER_VARIATION_SD_HU)
    parenchyma = liver_hu + variation_sd * _smooth_field(
        rng, (x, y, z), LIVER_VARIATION_MODES, LIVER_VARIATION_WAVELENGTH_MM
    )
    vessels = _vessel_membership(rng, anat, grid, liver)
    parenchyma += vessels * (_draw(rng, VESSEL_HU) - parenchyma)
    volume += liver * (parenchyma - volume)
    labels[liver >= MASK_MEMBERSHIP] = 0
    return _Scene(volume.astype(np.float32, copy=False), liver, vessels, liver_hu, labels)


def _vessel_membership(rng: np.random.Generator, anat: _Anatomy, grid: _Grid, liver: np.ndarray) -> np.ndarray:
    """Branching tubular vessel trees, drawn as capsules, kept inside the liver."""
    vessels = np.zeros(grid.shape, dtype=np.float32)
    c, a = anat.liver_centre, anat.liver_semi

    def inside(point: np.ndarray) -> bool:
        idx = grid.index_of(point)
        return grid.contains(idx) and liver[tuple(idx)] >= MASK_MEMBERSHIP

    def grow(start: np.ndarray, direction: np.ndarray, radius: float, depth: int) -> None:
        if depth >= VESSEL_MAX_DEPTH or radius < VESSEL_MIN_RADIUS_MM:
            return
        length = float(np.clip(radius * _draw(rng, VESSEL_LENGTH_PER_RADIUS), VESSEL_LENGTH_MM.lo, VESSEL_LENGTH_MM.hi))
        end = start + direction * length
        _draw_capsule(vessels, grid, start, end, radius)
        if not inside(end):
            return
        for _ in range(VESSEL_CHILDREN):
            axis = np.cross(direction, _random_unit(rng))
            axis /= max(np.linalg.norm(axis), 1e-9)
            angle = math.radians(_draw(rng, VESSEL_BRANCH_ANGLE_DEG))
            child = direction * math.cos(angle) + np.cross(axis, direction) * math.sin(angle)
            grow(end, child / np.linalg.norm(child), radius * _draw(rng, VESSEL_RADIUS_DECAY), depth + 1)

    for root, directions, radius_range in (
        (PORTAL_ROOT, PORTAL_DIRECTIONS, PORTAL_RADIUS_MM),
        (HEPATIC_ROOT, HEPATIC_DIRECTIONS, HEPATIC_RADIUS_MM),
    ):
        start = c + np.asarray(root) * a
        radius = _draw(rng, radius_range) * anat.scale
        for d in directions:
            d = np.asarray(d, dtype=float) + VESSEL_ROOT_JITTER * _random_unit(rng)
            grow(start, d / np.linalg.norm(d), radius, 0)
    vessels *= liver
    return vessels


def _draw_capsule(target: np.ndarray, grid: _Grid, p0: np.ndarray, p1: np.ndarray, radius: float) -> None:
    """Max-blend a partial-volume capsule (segment p0-p1 of given radius) into ``target``."""
    reach = radius + grid.spacing
    lo = np.maximum(np.floor((np.minimum(p0, p1) - reach - grid.origin) / grid.spacing).astype(int), 0)
    hi = np.minimum(np.ceil((np.maximum(p0, p1) + reach - grid.origin) / grid.spacing).astype(int) + 1, grid.shape)
    if np.any(hi <= lo):
        return
    axes = [grid.origin[k] + np.arange(lo[k], hi[k]) * grid.spacing[k] for k in range(3)]
    dist, width = _segment_distance(axes, p0, p1, grid.spacing)
    m = _ramp(dist - radius, width)
    region = target[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    np.maximum(region, m, out=region)


# =============================================================================================
# The organs around the liver
# =============================================================================================
#: codes of ``PhantomCase.organs`` (0: none of them); where the liver is, the liver is
ORGAN_CODES = {
    "kidney": 1,
    "renal_pelvis": 2,
    "spleen": 3,
    "pancreas": 4,
    "stomach": 5,
    "colon": 6,
    "duodenum": 7,
    "heart": 8,
    "aorta": 9,
    "inferior_vena_cava": 10,
    "portal_vein": 11,
    "vertebra": 12,
    "rib": 13,
}


@dataclass(frozen=True)
class _Solid:
    """An ellipsoid (``semi`` axes, turned about z) or, with ``end``, a capsule (segment and ``radius``); mm."""

    centre: np.ndarray
    semi: np.ndarray | None = None
    turn: float = 0.0
    end: np.ndarray | None = None
    radius: float = 0.0

    def reach(self) -> tuple[np.ndarray, np.ndarray]:
        if self.end is not None:
            return np.minimum(self.centre, self.end) - self.radius, np.maximum(self.centre, self.end) + self.radius
        m = float(max(self.semi[0], self.semi[1]))
        half = np.array([m, m, self.semi[2]])
        return self.centre - half, self.centre + half

    def fields(self, axes: tuple[np.ndarray, np.ndarray, np.ndarray], spacing: np.ndarray):
        """Approximate signed distance to the surface (mm, negative inside) and the voxel extent along its normal."""
        if self.end is not None:
            dist, width = _segment_distance(axes, self.centre, self.end, spacing)
            return dist - np.float32(self.radius), width
        x, y, z = (np.asarray(axes[k] - self.centre[k], dtype=np.float32) for k in range(3))
        cos_t, sin_t = np.float32(math.cos(self.turn)), np.float32(math.sin(self.turn))
        su, sv, sw = (np.float32(s) for s in self.semi)
        u = cos_t * x[:, None, None] + sin_t * y[None, :, None]
        v = -sin_t * x[:, None, None] + cos_t * y[None, :, None]
        w = z[None, None, :]
        q = np.sqrt((u / su) ** 2 + (v / sv) ** 2 + (w / sw) ** 2)
        hu, hv, hw = u / (su * su), v / (sv * sv), w / (sw * sw)  # q times q's gradient, local frame
        gx, gy = cos_t * hu - sin_t * hv, sin_t * hu + cos_t * hv
        grad = np.sqrt(gx * gx + gy * gy + hw * hw)
        with np.errstate(divide="ignore", invalid="ignore"):
            distance = np.where(grad > 0, (q - 1.0) * q / grad, -min(self.semi))
            width = np.where(
                grad > 0,
                (np.abs(gx) * spacing[0] + np.abs(gy) * spacing[1] + np.abs(hw) * spacing[2]) / grad,
                float(spacing.min()),
            )
        return distance.astype(np.float32, copy=False), width.astype(np.float32, copy=False)


@dataclass(frozen=True)
class _Part:
    """A layer of an organ: ``hu`` inside its solid shrunk by ``inset_mm``, only anterior of ``above_y`` if set."""

    solid: _Solid
    hu: float
    inset_mm: float = 0.0
    above_y: float | None = None


@dataclass(frozen=True)
class _Organ:
    name: str
    parts: tuple[_Part, ...]  # the first is the organ's outline; the others are painted over it in order
    gap_mm: float  # kept this far from the liver's surface


def _segment_distance(
    axes: tuple[np.ndarray, np.ndarray, np.ndarray], p0: np.ndarray, p1: np.ndarray, spacing: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each voxel of ``axes`` to the segment p0-p1 (mm) and the voxel extent along its direction."""
    seg = p1 - p0
    seg_len2 = max(float(seg @ seg), 1e-9)
    rel = [axes[k] - p0[k] for k in range(3)]
    t = (rel[0][:, None, None] * seg[0] + rel[1][None, :, None] * seg[1] + rel[2][None, None, :] * seg[2]) / seg_len2
    np.clip(t, 0.0, 1.0, out=t)
    dx = rel[0][:, None, None] - t * seg[0]
    dy = rel[1][None, :, None] - t * seg[1]
    dz = rel[2][None, None, :] - t * seg[2]
    dist = np.sqrt(dx * dx + dy * dy + dz * dz)
    with np.errstate(divide="ignore", invalid="ignore"):
        width = np.where(
            dist > 0,
            (np.abs(dx) * spacing[0] + np.abs(dy) * spacing[1] + np.abs(dz) * spacing[2]) / dist,
            spacing.min(),
        )
    return dist, width


def _grid_box(grid: _Grid, lo_mm: np.ndarray, hi_mm: np.ndarray):
    """The grid's voxels within [lo_mm, hi_mm] (one voxel more each side): slices and world axes, or None."""
    lo = np.maximum(np.floor((lo_mm - grid.spacing - grid.origin) / grid.spacing).astype(int), 0)
    hi = np.minimum(np.ceil((hi_mm + grid.spacing - grid.origin) / grid.spacing).astype(int) + 1, grid.shape)
    if np.any(hi <= lo):
        return None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    axes = tuple(grid.origin[k] + np.arange(lo[k], hi[k]) * grid.spacing[k] for k in range(3))
    return box, axes


def _paint_organ(
    target: np.ndarray,
    labels: np.ndarray,
    grid: _Grid,
    organ: _Organ,
    liver_distance: np.ndarray,
    liver_width: np.ndarray,
) -> None:
    """Blend one organ into ``target`` (partial volume at its outline) and mark it in ``labels``."""
    found = _grid_box(grid, *organ.parts[0].solid.reach())
    if found is None:
        return
    box, axes = found
    fields: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def membership(part: _Part) -> np.ndarray:
        if id(part.solid) not in fields:
            fields[id(part.solid)] = part.solid.fields(axes, grid.spacing)
        distance, width = fields[id(part.solid)]
        m = _ramp(distance + np.float32(part.inset_mm), width)
        if part.above_y is not None:
            m *= _ramp((part.above_y - axes[1]).astype(np.float32)[None, :, None], np.float32(grid.spacing[1]))
        return m

    outline = membership(organ.parts[0])
    outline *= 1.0 - _ramp(liver_distance[box] - np.float32(organ.gap_mm), liver_width[box])
    if not outline.any():
        return
    values = np.full(outline.shape, organ.parts[0].hu, dtype=np.float32)
    for part in organ.parts[1:]:
        values += membership(part) * (np.float32(part.hu) - values)
    region = target[box]
    region += outline * (values - region)
    labels[box][outline >= MASK_MEMBERSHIP] = ORGAN_CODES[organ.name]


def _draw_semi(rng: np.random.Generator, ranges, scale: float) -> np.ndarray:
    return np.array([_draw(rng, Range(*r)) for r in ranges]) * scale


def _plan_organs(rng: np.random.Generator, anat: _Anatomy, grid: _Grid) -> tuple[list[_Organ], list[_Organ]]:
    """The organs (painted inside the abdominal cavity and the chest above it) and the bones (painted over the wall).

    Every draw comes from ``rng`` in a fixed order, whether or not an organ reaches the field of view.
    """
    c, a, s = anat.liver_centre, anat.liver_semi, anat.scale
    cos_t, sin_t = math.cos(anat.liver_rotation), math.sin(anat.liver_rotation)

    def at(q) -> np.ndarray:
        """World mm of a point in normalised liver coordinates, jittered."""
        q = np.asarray(q, dtype=float) + ORGAN_JITTER * rng.uniform(-1.0, 1.0, len(q))
        local = q * a[: len(q)]
        world = np.array([cos_t * local[0] - sin_t * local[1], sin_t * local[0] + cos_t * local[1]])
        world = c[:2] + world
        return np.append(world, c[2] + local[2]) if len(q) == 3 else world

    def lumen(name: str, outline: _Solid, wall_hu: float, gap: float) -> _Organ:
        wall = _draw(rng, BOWEL_WALL_MM if name != "stomach" else STOMACH_WALL_MM)
        fluid = _draw(rng, LUMEN_FLUID_HU)
        if outline.end is None:
            front, back = outline.centre[1] + outline.semi[1], outline.centre[1] - outline.semi[1]
        else:
            front = max(outline.centre[1], outline.end[1]) + outline.radius
            back = min(outline.centre[1], outline.end[1]) - outline.radius
        level = front - _draw(rng, LUMEN_GAS_SHARE) * (front - back)
        return _Organ(
            name,
            (
                _Part(outline, wall_hu),
                _Part(outline, fluid, inset_mm=wall),
                _Part(outline, AIR_HU, inset_mm=wall, above_y=level),
            ),
            gap,
        )

    organs: list[_Organ] = []
    # the right kidney: cortex, medulla, and at its hilum the sinus fat around a water-dense pelvis
    kidney = _Solid(at(KIDNEY_AT), _draw_semi(rng, KIDNEY_SEMI_MM, s), turn=-anat.liver_rotation)
    cortex = _draw(rng, KIDNEY_CORTEX_MM) * s
    organs.append(
        _Organ(
            "kidney",
            (
                _Part(kidney, _draw(rng, KIDNEY_CORTEX_HU)),
                _Part(kidney, _draw(rng, KIDNEY_MEDULLA_HU), inset_mm=cortex),
            ),
            _draw(rng, KIDNEY_GAP_MM),
        )
    )
    pelvis_semi = _draw_semi(rng, RENAL_PELVIS_SEMI_MM, s)
    hilum = kidney.centre + np.array([-0.55 * kidney.semi[0], 0.15 * kidney.semi[1], 0.0])
    sinus = _Solid(hilum, pelvis_semi * 1.35)
    organs.append(
        _Organ(
            "renal_pelvis",
            (_Part(sinus, _draw(rng, FAT_HU)), _Part(_Solid(hilum, pelvis_semi), _draw(rng, RENAL_PELVIS_HU))),
            organs[0].gap_mm,
        )
    )
    spleen = _Solid(at(SPLEEN_AT), _draw_semi(rng, SPLEEN_SEMI_MM, s), turn=0.4)
    organs.append(_Organ("spleen", (_Part(spleen, _draw(rng, SPLEEN_HU)),), _draw(rng, SPLEEN_GAP_MM)))
    pancreas = _Solid(at(PANCREAS_AT), _draw_semi(rng, PANCREAS_SEMI_MM, s), turn=-0.25)
    organs.append(_Organ("pancreas", (_Part(pancreas, _draw(rng, PANCREAS_HU)),), _draw(rng, PANCREAS_GAP_MM)))
    stomach = _Solid(at(STOMACH_AT), _draw_semi(rng, STOMACH_SEMI_MM, s), turn=0.3)
    organs.append(lumen("stomach", stomach, _draw(rng, STOMACH_WALL_HU), _draw(rng, STOMACH_GAP_MM)))
    colon = _Solid(at(COLON_FROM), end=at(COLON_TO), radius=_draw(rng, COLON_RADIUS_MM) * s)
    organs.append(lumen("colon", colon, _draw(rng, COLON_WALL_HU), _draw(rng, COLON_GAP_MM)))
    duodenum = _Solid(at(DUODENUM_FROM), end=at(DUODENUM_TO), radius=_draw(rng, DUODENUM_RADIUS_MM) * s)
    organs.append(lumen("duodenum", duodenum, _draw(rng, COLON_WALL_HU), _draw(rng, DUODENUM_GAP_MM)))
    # the great vessels run the whole height of the field of view
    bottom, top = grid.origin[2] - 10.0, grid.origin[2] + grid.shape[2] * grid.spacing[2] + 10.0
    spine_y = -anat.cavity[1] + VERTEBRA_GAP_MM * s
    vertebra_semi = _draw_semi(rng, VERTEBRA_SEMI_MM, s)
    aorta_r = _draw(rng, AORTA_RADIUS_MM) * s
    aorta_xy = np.array([-0.6 * vertebra_semi[0], spine_y + 2.0 * vertebra_semi[1] + aorta_r + 2.0 * s])
    aorta = _Solid(np.append(aorta_xy, bottom), end=np.append(aorta_xy, top), radius=aorta_r)
    organs.append(_Organ("aorta", (_Part(aorta, _draw(rng, AORTA_HU)),), _draw(rng, PANCREAS_GAP_MM)))
    ivc_xy = at(IVC_AT)
    ivc = _Solid(np.append(ivc_xy, bottom), end=np.append(ivc_xy, top), radius=_draw(rng, IVC_RADIUS_MM) * s)
    organs.append(_Organ("inferior_vena_cava", (_Part(ivc, _draw(rng, IVC_HU)),), IVC_GAP_MM))
    hilum_portal = c + np.asarray(PORTAL_ROOT) * a
    portal = _Solid(hilum_portal, end=at(PORTAL_TRUNK_TO), radius=_draw(rng, PORTAL_TRUNK_RADIUS_MM) * s)
    organs.append(_Organ("portal_vein", (_Part(portal, _draw(rng, VESSEL_HU)),), 0.0))

    # bones, painted over the body wall: the vertebral body (cortex around cancellous bone) and the right ribs
    body = _Solid(np.array([0.0, spine_y + vertebra_semi[1], 0.0]), np.append(vertebra_semi, 1e5))
    bones = [
        _Organ(
            "vertebra",
            (
                _Part(body, _draw(rng, CORTICAL_BONE_HU)),
                _Part(body, _draw(rng, CANCELLOUS_BONE_HU), inset_mm=CORTICAL_BONE_MM),
            ),
            VERTEBRA_GAP_MM,
        )
    ]
    rib_hu, rib_r = _draw(rng, RIB_HU), _draw(rng, RIB_RADIUS_MM) * s
    pitch, slope = _draw(rng, RIB_PITCH_MM) * s, _draw(rng, RIB_SLOPE_MM_PER_RAD) * s
    ring = (anat.cavity[0] + rib_r + RIB_DEPTH_MM, anat.cavity[1] + rib_r + RIB_DEPTH_MM)
    angles = np.radians(np.linspace(*RIB_ARC_DEG, RIB_SEGMENTS + 1))
    first = c[2] + a[2] + float(rng.uniform(0.0, pitch))
    for level in np.arange(first, c[2] - 1.5 * a[2] - slope * float(np.ptp(angles)), -pitch):
        points = [
            np.array([ring[0] * math.cos(t), ring[1] * math.sin(t), level - slope * (t - angles[0])]) for t in angles
        ]
        for p0, p1 in zip(points[:-1], points[1:]):
            bones.append(_Organ("rib", (_Part(_Solid(p0, end=p1, radius=rib_r), rib_hu),), 0.0))

    # the heart rests on the diaphragm over the left lobe: muscle at the liver's level around brighter blood
    heart_semi = _draw_semi(rng, HEART_SEMI_MM, s)
    heart_xy = at(HEART_AT)
    dome = c[2] + a[2] * anat.lung_level
    heart = _Solid(np.append(heart_xy, dome + 0.4 * heart_semi[2]), heart_semi, turn=0.5)
    organs.append(
        _Organ(
            "heart",
            (
                _Part(heart, _draw(rng, HEART_MYOCARDIUM_HU)),
                _Part(heart, _draw(rng, HEART_BLOOD_HU), inset_mm=_draw(rng, HEART_WALL_MM) * s),
            ),
            anat.diaphragm_mm,
        )
    )
    return organs, bones


# ---------------------------------------------------------------------------------------------
# Lesion rendering and placement
# ---------------------------------------------------------------------------------------------
@dataclass
class _Rendered:
    box: tuple[slice, slice, slice]
    membership: np.ndarray  # float32 voxel fraction inside the lesion
    mask: np.ndarray  # bool: one 26-connected component holding the centre voxel
    centre_local: tuple[int, int, int]
    offsets: tuple[np.ndarray, np.ndarray, np.ndarray]  # mm from the centre along each axis


def _subsample_offsets(spacing: np.ndarray) -> np.ndarray:
    n = [max(1, int(math.ceil(s / PV_SUBSAMPLE_MM))) for s in spacing]
    offs = [((np.arange(k) + 0.5) / k - 0.5) * s for k, s in zip(n, spacing)]
    return np.stack(np.meshgrid(*offs, indexing="ij"), axis=-1).reshape(-1, 3)


def _render_lesion(shape: _Shape, centre: np.ndarray, grid: _Grid) -> _Rendered | None:
    """Voxel fractions of a lesion in its local box, or None if the box leaves the grid.

    Voxels inside the inscribed ball are full, those outside the bounding ball empty; only the
    shell between is evaluated, and its voxels near the surface are supersampled (sub-voxel
    partial volume, which matters most for small lesions and thick slices).
    """
    pad = LESION_GAP_VOXELS + 1
    inner, outer = shape.extent_mm
    lo = np.floor((centre - outer - grid.origin) / grid.spacing).astype(int) - pad
    hi = np.ceil((centre + outer - grid.origin) / grid.spacing).astype(int) + pad + 1
    if np.any(lo < 0) or np.any(hi > np.asarray(grid.shape)):
        return None
    rel = tuple(grid.origin[k] + np.arange(lo[k], hi[k]) * grid.spacing[k] - centre[k] for k in range(3))
    r = np.sqrt(rel[0][:, None, None] ** 2 + rel[1][None, :, None] ** 2 + rel[2][None, None, :] ** 2)
    half_diag = 0.5 * float(np.linalg.norm(grid.spacing))
    band_mm = PV_BAND_FACTOR * half_diag
    membership = (r < inner - band_mm).astype(np.float32)
    shell = np.nonzero((r >= inner - band_mm) & (r <= outer + band_mm))
    if shell[0].size:
        d = np.stack([rel[k][shell[k]] for k in range(3)], axis=1)
        rs = r[shell]
        u = d / np.where(rs > 0, rs, 1.0)[:, None]
        signed = rs - shape.radius(u)
        values = (signed < 0).astype(np.float32)
        # A voxel can straddle the surface only within its half-extent along the (radial) normal:
        # thin for in-plane normals, thick for normals along thick slices.
        band = np.abs(signed) < PV_BAND_FACTOR * 0.5 * (np.abs(u) @ grid.spacing)
        if band.any():
            offsets = _subsample_offsets(grid.spacing)
            points = d[band]
            fractions = np.empty(points.shape[0], dtype=np.float32)
            step = max(1, PV_CHUNK // offsets.shape[0])
            for s in range(0, points.shape[0], step):
                p = points[s : s + step, None, :] + offsets[None, :, :]
                pr = np.linalg.norm(p, axis=-1)
                pu = p / np.where(pr > 0, pr, 1.0)[..., None]
                fractions[s : s + step] = np.mean(pr < shape.radius(pu), axis=1)
            values[band] = fractions
        membership[shell] = values
    centre_local = tuple(int(i) for i in (grid.index_of(centre) - lo))
    mask = membership >= MASK_MEMBERSHIP
    mask[centre_local] = True
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    mask = labels == labels[centre_local]
    box = tuple(slice(int(lo[k]), int(hi[k])) for k in range(3))
    return _Rendered(box, membership, mask, centre_local, rel)


def _normalised_depth(shape: _Shape, rendered: _Rendered) -> np.ndarray:
    """|p - c| / radius(u) over the lesion box (0 at the centre, 1 on the surface)."""
    x, y, z = rendered.offsets
    rho = np.ones(rendered.membership.shape, dtype=np.float32)  # outside the lesion: unused
    inside = np.nonzero(rendered.membership > 0)
    d = np.stack([x[inside[0]], y[inside[1]], z[inside[2]]], axis=1)
    r = np.linalg.norm(d, axis=1)
    u = d / np.where(r > 0, r, 1.0)[:, None]
    u[r == 0] = (0.0, 0.0, 1.0)
    rho[inside] = r / shape.radius(u)
    return rho


def _lesion_values(
    rng: np.random.Generator, look: _Appearance, shape: _Shape, rendered: _Rendered, spacing: np.ndarray
) -> np.ndarray:
    """HU inside the lesion box: flat for cysts; texture, rim and necrotic core for metastases.

    Rim and core are laid out on the normalised radius ``rho`` (0 centre, 1 surface), so they
    follow the lobulated outline; the texture also roughens the necrotic core's edge.
    """
    if look.code == MASK_CYST:
        return np.full(rendered.membership.shape, look.base_hu, dtype=np.float32)
    noise = rng.standard_normal(rendered.membership.shape).astype(np.float32)
    texture = ndimage.gaussian_filter(noise, sigma=look.texture_scale_mm / spacing, mode="reflect")
    sd = float(texture.std())
    if sd > 0:
        texture /= sd
    values = look.base_hu + look.texture_sd_hu * texture
    rho = _normalised_depth(shape, rendered)
    if look.rim_hu > 0:
        rim = min(0.5, look.rim_mm / max(shape.scale_mm, 1e-6))
        values += look.rim_hu * _smoothstep(1.0 - 2.0 * rim, 1.0 - rim, rho)
    if look.necrosis_hu is not None:
        edge = rho + NECROSIS_EDGE_IRREGULARITY * texture
        core = 1.0 - _smoothstep(
            look.necrosis_core - NECROSIS_EDGE_SOFTNESS, look.necrosis_core + NECROSIS_EDGE_SOFTNESS, edge
        )
        necrosis = look.necrosis_hu + NECROSIS_TEXTURE_FRACTION * look.texture_sd_hu * texture
        values += core * (necrosis - values)
    return values.astype(np.float32)


def _place_lesions(
    rng: np.random.Generator, plan: PatientPlan, grid: _Grid, scene: _Scene, mask: np.ndarray
) -> list[LesionTruth]:
    """Place lesions, largest first, inside the liver and apart from each other; blend them in.

    Centres are proposed where a coarse distance map says the lesion's bounding ball fits in the
    liver and where its typical ball (mean of inscribed and bounding radius) misses those of the
    lesions already placed; a proposal is accepted only if,
    on the real grid, the whole blurred lesion lies in fully-liver voxels, its mask keeps
    ``LESION_GAP_VOXELS`` clear of every earlier mask, and its centre is not in a vessel. A lesion
    that never fits is shrunk (recorded in ``LesionTruth.shrink``).
    """
    volume, vessels = scene.volume, scene.vessels
    core = scene.liver >= LIVER_CORE_MEMBERSHIP
    factor = np.maximum(1, np.floor(COARSE_GRID_MM / grid.spacing).astype(int))
    coarse_spacing = grid.spacing * factor
    depth = ndimage.distance_transform_edt(core[:: factor[0], :: factor[1], :: factor[2]], sampling=coarse_spacing)
    slack = 0.5 * float(np.linalg.norm(coarse_spacing)) + 0.5 * float(np.linalg.norm(grid.spacing))
    forbidden = np.zeros(grid.shape, dtype=bool)
    placed_balls: list[tuple[np.ndarray, float]] = []  # (centre, mean of inner and outer radius)
    order = sorted(range(len(plan.lesions)), key=lambda i: -plan.lesions[i].volume_ml)
    truths: list[LesionTruth | None] = [None] * len(plan.lesions)
    for i in order:
        lesion = plan.lesions[i]
        shape = _random_shape(rng, lesion.code, lesion.volume_ml)
        look = _random_appearance(rng, lesion.code, lesion.volume_ml, scene.liver_hu)
        shrink, placed, centre = 1.0, None, None
        for _ in range(PLACEMENT_MAX_SHRINKS + 1):
            current = shape.scaled(shrink)
            bound = current.bound_mm
            typical = 0.5 * sum(current.extent_mm)
            cells = np.flatnonzero(depth >= bound + slack)
            if cells.size:
                centres = grid.origin + np.stack(np.unravel_index(cells, depth.shape), axis=1) * coarse_spacing
                free = np.ones(cells.size, dtype=bool)
                for other, other_typical in placed_balls:
                    free &= np.linalg.norm(centres - other, axis=1) >= typical + other_typical
                cells = centres[free]
            for _ in range(PLACEMENT_TRIES if cells.size else 0):
                candidate = cells[int(rng.integers(cells.shape[0]))] + rng.uniform(-0.5, 0.5, 3) * coarse_spacing
                idx = grid.index_of(candidate)
                if not grid.contains(idx) or vessels[tuple(idx)] >= VESSEL_AT_CENTRE_MAX:
                    continue
                rendered = _render_lesion(current, candidate, grid)
                if rendered is None:
                    continue
                box = rendered.box
                if not np.all(core[box][rendered.membership > 0]) or forbidden[box][rendered.mask].any():
                    continue
                placed, centre = rendered, candidate
                break
            if placed is not None:
                break
            shrink *= PLACEMENT_SHRINK
        if placed is None:
            raise RuntimeError(
                f"{plan.case_id}: could not place a {lesion.volume_ml:.3g} mL lesion in the liver; "
                "use a larger size_scale or fewer lesions per patient"
            )
        shape = shape.scaled(shrink)
        box = placed.box
        values = _lesion_values(rng, look, shape, placed, grid.spacing)
        region = volume[box]
        region += placed.membership * (values - region)
        mask[box][placed.mask] = lesion.code
        forbidden[box] |= ndimage.maximum_filter(placed.mask, size=2 * LESION_GAP_VOXELS + 1)
        placed_balls.append((centre, 0.5 * sum(shape.extent_mm)))
        truths[i] = LesionTruth(
            code=lesion.code,
            planned_volume_ml=lesion.volume_ml,
            rendered_volume_ml=float(placed.mask.sum()) * float(np.prod(grid.spacing)) / 1000.0,
            centre_mm=tuple(float(v) for v in centre),
            base_hu=look.base_hu,
            rim=look.rim_hu > 0,
            necrotic=look.necrosis_hu is not None,
            shrink=shrink,
        )
    return [t for t in truths if t is not None]


def _add_noise(rng: np.random.Generator, volume: np.ndarray, spacing: np.ndarray, noise_sd: float) -> np.ndarray:
    """Scanner blur (in-plane PSF), then correlated Gaussian noise of the given SD; int16 HU."""
    blurred = ndimage.gaussian_filter(
        volume, sigma=(PSF_SIGMA_MM / spacing[0], PSF_SIGMA_MM / spacing[1], 0.0), mode="nearest"
    )
    noise = rng.standard_normal(volume.shape, dtype=np.float32)
    sigma = (NOISE_CORRELATION_SIGMA_VOXELS, NOISE_CORRELATION_SIGMA_VOXELS, 0.0)
    noise = ndimage.gaussian_filter(noise, sigma=sigma, mode="wrap")
    half = int(math.ceil(4 * NOISE_CORRELATION_SIGMA_VOXELS))  # the kernel's support
    impulse = np.zeros((2 * half + 1, 2 * half + 1, 1), dtype=np.float64)
    impulse[half, half, 0] = 1.0
    gain = float(np.sqrt(np.sum(ndimage.gaussian_filter(impulse, sigma=sigma, mode="constant") ** 2)))
    blurred += noise * np.float32(noise_sd / gain)
    np.rint(blurred, out=blurred)
    np.clip(blurred, CT_MIN_HU, CT_MAX_HU, out=blurred)
    return blurred.astype(np.int16)


def generate_patient(spec: CohortSpec, plan: PatientPlan) -> PhantomCase:
    """Render one patient of the cohort from its own random stream.

    Args:
        spec: the cohort spec (seed, size scale, noise range, field-of-view margin).
        plan: this patient's entry of ``plan_cohort(spec)`` (its lesions' classes and volumes).
    """
    seq = np.random.SeedSequence([spec.seed, plan.index])
    # the first four streams are those of generator 1.2.0 (spawn gives the same first children): the
    # organs, drawn from the fifth, change nothing else
    anatomy_seq, liver_seq, lesion_seq, noise_seq, organ_seq = seq.spawn(5)
    rng = np.random.default_rng(anatomy_seq)
    spacing = _draw_spacing(rng)
    lesion_total = sum(lesion.volume_ml for lesion in plan.lesions)
    anat = _draw_anatomy(rng, spec.size_scale, lesion_total)
    grid = _patient_grid(liver_seq, anat, spacing, spec.fov_margin_mm)
    scene = _render_scene(rng, liver_seq, np.random.default_rng(organ_seq), anat, grid)
    mask = np.zeros(grid.shape, dtype=np.uint8)
    lesions = _place_lesions(np.random.default_rng(lesion_seq), plan, grid, scene, mask)
    volume, liver, liver_hu = scene.volume, scene.liver, scene.liver_hu
    noise_rng = np.random.default_rng(noise_seq)
    noise_sd = float(noise_rng.uniform(*spec.noise_sd_hu))
    image = _add_noise(noise_rng, volume, grid.spacing, noise_sd)
    return PhantomCase(
        patient_key=plan.patient_key,
        case_id=plan.case_id,
        image=image,
        mask=mask,
        liver=liver >= MASK_MEMBERSHIP,
        spacing=tuple(float(s) for s in grid.spacing),
        affine=affine_from_spacing(tuple(grid.spacing), origin=tuple(grid.origin)),
        liver_hu=liver_hu,
        noise_sd_hu=noise_sd,
        lesions=lesions,
        organs=scene.organs,
    )


# =============================================================================================
# The cohort on disk
# =============================================================================================
def _write_case(spec: CohortSpec, plan: PatientPlan, out_dir: Path) -> dict[str, str | int]:
    case = generate_patient(spec, plan)
    image = f"{IMAGES_DIR}/{case.case_id}.nii.gz"
    mask = f"{MASKS_DIR}/{case.case_id}.nii.gz"
    liver = f"{LIVERS_DIR}/{case.case_id}.nii.gz"
    save_nifti(case.image, case.affine, out_dir / image)
    save_nifti(case.mask, case.affine, out_dir / mask)
    save_nifti(case.liver.astype(np.uint8), case.affine, out_dir / liver)
    return {
        "patient_key": case.patient_key,
        "case_id": case.case_id,
        "image": image,
        "mask": mask,
        "liver_mask": liver,
        "n_lesions": len(case.lesions),
    }


def cohort_metadata(spec: CohortSpec) -> dict:
    """What ``cohort.json`` holds: version, spec and description; no timestamps, so it is stable."""
    return {
        "generator": "liverlesion.phantom",
        "generator_version": GENERATOR_VERSION,
        "spec": spec.model_dump(mode="json"),
        "description": DESCRIPTION,
        "mask_codes": {"background": 0, "cyst": MASK_CYST, "metastasis": MASK_METASTASIS},
        "liver_mask_codes": {"background": 0, "liver": 1},
        "n_cases": spec.n_patients,
        "n_lesions": spec.n_lesions,
        "n_cysts": spec.n_cysts,
        "n_metastases": spec.n_metastases,
        "units": {"image": "HU (int16)", "spacing": "mm"},
    }


def generate_cohort(spec: CohortSpec, out_dir: Path, progress: Progress | None = None, *, workers: int = 1) -> Path:
    """Write a phantom cohort: ``images/``, ``masks/``, ``cases.csv`` and ``cohort.json``.

    Args:
        spec: what to generate; the same spec and ``GENERATOR_VERSION`` give the same bytes.
        out_dir: created if missing; must be empty if it exists (an old cohort is never mixed in).
        progress: called as ``progress(done, total, case_id)`` after each case, in case order.
        workers: cases rendered at once, in threads (output bytes do not depend on it).

    Returns:
        ``out_dir``.

    Raises:
        ValueError: ``out_dir`` exists and is not an empty folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} exists and is not an empty folder; refusing to write a cohort into it")
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = plan_cohort(spec)
    rows: list[dict] = []
    n = len(plans)
    if workers <= 1 or n == 1:
        for plan in plans:
            rows.append(_write_case(spec, plan, out_dir))
            if progress is not None:
                progress(len(rows), n, plan.case_id)
    else:  # threads: the array work leaves the interpreter free, and no process starts and imports (about 1 s)
        with ThreadPoolExecutor(max_workers=min(workers, n)) as pool:
            for row in pool.map(lambda plan: _write_case(spec, plan, out_dir), plans):
                rows.append(row)
                if progress is not None:
                    progress(len(rows), n, str(row["case_id"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CASE_FIELDS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (out_dir / CASES_FILE).write_text(buffer.getvalue(), encoding="utf-8")
    (out_dir / COHORT_FILE).write_text(
        json.dumps(cohort_metadata(spec), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return out_dir
