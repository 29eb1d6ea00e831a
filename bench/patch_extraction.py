"""Patch extraction speed on the versioned cohort (``data/``): lesions per second.

Two figures: the whole ``extract_patches`` step's work (NIfTI reading + instance labelling +
patches) and the patch geometry alone on volumes already in memory.
Usage: python bench/patch_extraction.py [--data data] [--profile quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from liverlesion.ingestion import extract_cohort_patches, ingest_cases, load_case, segment_cases
from liverlesion.config import load_profile
from liverlesion.lesions import bounding_box
from liverlesion.patches import lesion_patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--profile", default="quick", help="the profile whose patch settings to use")
    args = parser.parse_args()
    if not (args.data / "cases.csv").exists():
        raise SystemExit(f"{args.data} holds no cohort: run `liverlesion data` first")
    config = load_profile(args.profile).patches

    cases = ingest_cases(args.data, "bench").cases
    lesions = segment_cases(cases)
    start = time.perf_counter()
    patches, _ = extract_cohort_patches(cases, lesions, config.margin_mm, config.canvas, config.output_size,
                                        config.square_pixels)
    whole = time.perf_counter() - start

    loaded = [(case, *load_case(case)[:3]) for case in cases.itertuples(index=False)]
    cut = []
    for case, image, instances, spacing in loaded:
        margin = np.ceil(config.margin_mm / np.asarray(spacing)).astype(int)
        for lesion in lesions[lesions["case_id"] == case.case_id].itertuples(index=False):
            box = bounding_box(lesion._asdict(), margin)
            cut.append((image[box], instances[box] == lesion.instance, spacing))
    start = time.perf_counter()
    for image, lesion, spacing in cut:
        lesion_patches(image, lesion, spacing, config.margin_mm, config.canvas, config.output_size, config.square_pixels)
    geometry = time.perf_counter() - start
    n = len(cut)
    print(f"# patch extraction ({args.profile} profile): {len(cases)} cases, {len(lesions)} lesions, output {patches.shape[1:]}, "
          f"volumes {np.mean([img.size for _, img, _, _ in loaded]) / 1e6:.1f} M voxels on average")
    print(f"extract_patches (read NIfTI + label + cut): {whole:.1f} s, {len(lesions) / whole:.1f} lesions/s")
    print(f"patch geometry only (lesion boxes in memory): {geometry:.1f} s, {n / geometry:.1f} lesions/s")


if __name__ == "__main__":
    main()
