"""The data contract: the one place that lists the cohort files, the table columns and the codes.

A case is a CT and a lesion segmentation on the same grid; what each lesion *is* (cyst or
colorectal metastasis) is diagnosis, and comes either from a class-coded mask (the embedded
phantom) or from a lesion-type table (pathology or reports), never needed at inference.

The cohort folder (``data/``, versioned by DVC; written by the phantom generator and by
``liverlesion import``):

| file | what |
| --- | --- |
| ``cases.csv`` | one row per CT: ``patient_key, case_id, image, mask`` (paths relative to the folder) and optionally ``mask_encoding`` and ``liver_mask`` (a reference liver segmentation, 0 outside, lesions inside it included: what automatic segmentation is measured and trained against) |
| ``lesion_types.csv`` | optional: ``case_id, lesion, type``: the type of lesion ``lesion`` (its value in an instance mask) |
| ``cohort.json`` | how the folder was made (generator or importer, settings, de-identification record) |

Mask encodings (``mask_encoding``; ``class`` when the column is absent):

- ``class``: 0 background, 1 cyst, 2 colorectal metastasis; each lesion is one 3D connected
  component of its class (26-connectivity).
- ``instance``: 0 background, ``k`` > 0 the voxels of lesion ``k``; types from ``lesion_types.csv``.
- ``binary``: 0 background, non-zero lesion; each lesion is one connected component, numbered in
  the order of :func:`liverlesion.lesions.instance_map`; types from ``lesion_types.csv``.

Ingestion, segmentation, validation, the phantom writer, the importers and the steps import these
names; none keeps a list of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# --- codes -----------------------------------------------------------------------------------
#: class-coded masks: voxel values
MASK_BACKGROUND = 0
MASK_CYST = 1
MASK_METASTASIS = 2
#: model labels; the positive class is metastasis (sensitivity = recall of metastases)
LABEL_CYST = 0
LABEL_METASTASIS = 1
LABEL_NAMES = {LABEL_CYST: "cyst", LABEL_METASTASIS: "metastasis"}
#: class-coded mask value -> model label
MASK_TO_LABEL = {MASK_CYST: LABEL_CYST, MASK_METASTASIS: LABEL_METASTASIS}
#: lesion type (``lesion_types.csv``) -> model label
LESION_TYPES = {name: label for label, name in LABEL_NAMES.items()}

MASK_ENCODINGS = ("class", "instance", "binary")
DEFAULT_MASK_ENCODING = "class"

# --- Hounsfield units --------------------------------------------------------------------------
#: air; what padding outside the scanner's field of view becomes
HU_AIR = -1024.0
#: CT numbers a 12-bit scanner stores (air -1024 HU); extended-scale scanners go higher (metal)
HU_RANGE = (-1024.0, 3071.0)
#: what no CT voxel inside the field of view can hold: below air by more than noise and
#: reconstruction undershoot, or above the densest metal on an extended scale
HU_IMPOSSIBLE_BELOW = -1200.0
HU_IMPOSSIBLE_ABOVE = 30000.0

# --- limits on untrusted input: checked from headers before anything is allocated ---------------
#: the most voxels a CT, mask or label volume may hold (512 x 512 x 1024; a float32 copy is 1 GiB):
#: a header claiming more is refused before its voxels are read or decompressed
MAX_VOXELS = 512 * 512 * 1024
#: the most lesions one mask may hold: beyond it, a case is a mask error (noise, a bad threshold), and
#: its patches (each lesion three planes) would take memory without bound
MAX_LESIONS_PER_CASE = 256
#: the served model: the most cases one request may carry (they are scored one after the other, so a request
#: holds one case's volumes at a time besides its body), and the most bytes one of its files may decode to
#: (a 512 x 512 x 512 int16 CT uncompressed; send .nii.gz: a 512 x 512 x 1024 CT compresses well below it)
MAX_CASES_PER_REQUEST = 8
MAX_REQUEST_FILE_BYTES = 256 * 2**20
#: cases one served-model process decodes and scores at once, whatever the number of clients (the others wait,
#: their bodies in memory): measured with bench/serve_load.py on 2 cores, 8 clients of a 512x512x120 CT, the
#: server peaked at 5.3 GiB unbounded, 3.7 GiB at 2 (throughput unchanged), 3.2 GiB at 1 (a third slower)
MAX_CASES_IN_FLIGHT = 2

# --- the cohort folder -------------------------------------------------------------------------
CASES_FILE = "cases.csv"
LESION_TYPES_FILE = "lesion_types.csv"
COHORT_FILE = "cohort.json"
IMAGES_DIR = "images"
MASKS_DIR = "masks"
LIVERS_DIR = "livers"
#: columns ``cases.csv`` must have; ``mask_encoding`` and ``liver_mask`` (and others) are optional
CASES_FILE_COLUMNS = ("patient_key", "case_id", "image", "mask")
LESION_TYPES_COLUMNS = ("case_id", "lesion", "type")

# --- the pipeline's tables ---------------------------------------------------------------------
AXES = (0, 1, 2)
#: ``ingest``: one row per CT
CASE_COLUMNS = (
    "patient_key", "case_id", "image_path", "mask_path", "mask_encoding", "liver_mask_path",
    "spacing_0", "spacing_1", "spacing_2", "shape_0", "shape_1", "shape_2",
    "orientation", "hu_min", "hu_max", "data_version",
)  # fmt: skip
#: ``segment``: one row per lesion (``label`` is null where the type is unknown: inference)
LESION_COLUMNS = (
    "lesion_id", "case_id", "patient_key", "instance", "label", "label_name", "n_voxels", "volume_ml",
    "bbox_lo_0", "bbox_lo_1", "bbox_lo_2", "bbox_hi_0", "bbox_hi_1", "bbox_hi_2",
    "centroid_0", "centroid_1", "centroid_2", "mean_hu", "std_hu",
)  # fmt: skip
#: ``extract_patches``: where each lesion's patch stack is and how it was cut
PATCH_INDEX_COLUMNS = (
    "lesion_id", "row", "main_axis", "main_slice", "center_0", "center_1", "center_2",
    "main_area_mm2", "pad_value", "fit_scale",
)  # fmt: skip
#: ``validate``: one row per (patch, channel)
PATCH_STATS_COLUMNS = (
    "lesion_id", "row", "channel", "mean", "std", "min", "max", "n_nonfinite", "height", "width",
)  # fmt: skip
PATCH_CHANNELS = 3  # the paper's three orthogonal planes


def lesion_id(case_id: str, instance: int) -> str:
    """The lesion's id in every table: ``<case_id>-L<nn>``."""
    return f"{case_id}-L{int(instance):02d}"


class ContractError(ValueError):
    """Input that breaks the data contract; the message names the case (or file) and the problem."""


_SOURCE_LABEL: ContextVar[str | None] = ContextVar("source_label", default=None)


@contextmanager
def source_named_as(label: str) -> Iterator[None]:
    """Inside, a reader's messages name what it reads as ``label`` alone: no folder or file name, series
    description or label text (an import's: a hospital's folders and descriptions can carry a patient's name, and
    terminals, CI logs and cron mail keep the lines)."""
    token = _SOURCE_LABEL.set(label)
    try:
        yield
    finally:
        _SOURCE_LABEL.reset(token)


def source_label() -> str | None:
    """The label ``source_named_as`` set, if any."""
    return _SOURCE_LABEL.get()


def shown(text: str) -> str:
    """How a message names a file, folder or case: ``text``, or the label ``source_named_as`` set."""
    return _SOURCE_LABEL.get() or text
