"""The classical segmentation on the tests' real CT (LiTS case 117, ``tests/real_ct.py``): how close to the
reference, and how long, at the case's own size (128^3) and resampled to a whole CT's (512x512x150).

Compare two versions side by side by running it with each one's code and profiles, e.g. an older commit
checked out in a worktree: ``PYTHONPATH=/tmp/old/src python bench/classical_real_ct.py --configs
/tmp/old/configs``. Usage: python bench/classical_real_ct.py [--configs configs] [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from real_ct import lits117  # noqa: E402

from liverlesion.config import load_profile  # noqa: E402
from liverlesion.lesions import instance_map  # noqa: E402
from liverlesion.segmentation import classical_segmentation, dice, match_lesions  # noqa: E402

WHOLE_CT = (512, 512, 150)


def measure(case, settings) -> str:
    seg = classical_segmentation(case.image, case.spacing, settings)
    reference, _ = instance_map(case.tumours.astype(np.uint8), "lits117", "binary")
    automatic, described = instance_map(seg.lesions.astype(np.uint8), "lits117", "binary")
    by_reference, by_automatic = match_lesions(reference, automatic, settings.detection_dice)
    diameter = (6.0 * np.bincount(reference.ravel()) * np.prod(case.spacing) / np.pi) ** (1.0 / 3.0)
    large = [r for r in by_reference if diameter[r] >= 10.0]
    near = ndimage.distance_transform_edt(~case.liver, sampling=case.spacing) <= 10.0
    outside = sum(not near[automatic == d["instance"]].any() for d in described)
    return (
        f"liver Dice {dice(seg.liver, case.liver):.3f}; tumours >= 10 mm found "
        f"{sum(by_reference[r][2] for r in large)}/{len(large)}; invented "
        f"{sum(not m for _, _, m in by_automatic.values())}; outside the liver (10 mm) {outside}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", type=Path, default=Path(__file__).resolve().parents[1] / "configs")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "-C", str(args.configs.parent), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    settings = load_profile("quick", args.configs).segment.model_copy(update={"method": "classical"})
    case = lits117()
    print(f"commit {commit or '?'}; LiTS 117 at {case.image.shape}, {case.spacing} mm: {measure(case, settings)}")
    scale = np.array(WHOLE_CT) / np.array(case.image.shape)
    image = ndimage.zoom(case.image, scale, order=1).astype(np.float32)
    spacing = tuple(float(s) for s in np.array(case.spacing) / scale)
    seconds = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        classical_segmentation(image, spacing, settings)
        seconds.append(time.perf_counter() - started)
    print(
        f"resampled to {WHOLE_CT}: classical segmentation {np.median(seconds):.1f} s median of {args.repeat} "
        f"(min {min(seconds):.1f}, max {max(seconds):.1f})"
    )


if __name__ == "__main__":
    main()
