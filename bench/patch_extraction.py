"""Patch extraction speed on the versioned cohort (``data/``): lesions per second.

Two figures: the whole ``extract_patches`` step's work (NIfTI reading + instance labelling +
patches) and the patch geometry alone on volumes already in memory.
Usage: python bench/patch_extraction.py [--data data] [--output-size 96x80]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from liverlesion.ingestion import _load_case, extract_cohort_patches, ingest_cases, segment_cases
from liverlesion.lesions import instance_map
from liverlesion.patches import PAPER_CANVAS, lesion_patches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--output-size", default="96x80", help="RxC, or 'canvas' for 252x210")
    args = parser.parse_args()
    if not (args.data / "cases.csv").exists():
        raise SystemExit(f"{args.data} holds no cohort: run `liverlesion data` first")
    size = None if args.output_size == "canvas" else tuple(int(v) for v in args.output_size.split("x"))

    cases = ingest_cases(args.data, "bench")
    lesions = segment_cases(cases)
    start = time.perf_counter()
    patches, _ = extract_cohort_patches(cases, lesions, 4.0, PAPER_CANVAS, size)
    whole = time.perf_counter() - start

    loaded = [(case, *_load_case(case)) for case in cases.itertuples(index=False)]
    start = time.perf_counter()
    n = 0
    for case, image, mask, spacing in loaded:
        instances, described = instance_map(mask, case.case_id)
        for lesion in described:
            lesion_patches(image, instances == lesion["instance"], spacing, 4.0, PAPER_CANVAS, size)
            n += 1
    geometry = time.perf_counter() - start
    print(f"# patch extraction: {len(cases)} cases, {len(lesions)} lesions, output {patches.shape[1:]}, "
          f"volumes {np.mean([img.size for _, img, _, _ in loaded]) / 1e6:.1f} M voxels on average")
    print(f"extract_patches (read NIfTI + label + cut): {whole:.1f} s, {len(lesions) / whole:.1f} lesions/s")
    print(f"patch geometry only (volumes in memory):    {geometry:.1f} s, {n / geometry:.1f} lesions/s")


if __name__ == "__main__":
    main()
