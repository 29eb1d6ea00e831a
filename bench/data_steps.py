"""The data steps' work on the versioned cohort (``data/``), step by step: seconds and lesions per second.

Each CT and mask is decompressed once, by ingestion, which cuts every lesion's crop; segment,
extract_patches and texture_features are then pure functions of the crops. Printed: ingestion one
case after another and with a thread per usable core (the result is the same), then each later step on the
crops, and cohort generation one case at a time and two at once (``--generation``).
Usage: python bench/data_steps.py [--data data] [--profile quick] [--generation]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from liverlesion.config import load_profile
from liverlesion.ingestion import ingest_cases, segment_cases
from liverlesion.parallel import usable_cpus
from liverlesion.patches import extract_cohort_patches
from liverlesion.phantom import generate_cohort
from liverlesion.texture import cohort_texture_table


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the project's profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--profile", default="quick", help="the profile whose patch settings and cohort to use")
    parser.add_argument("--generation", action="store_true", help="also time cohort generation (1 and 2 cases at once)")
    args = parser.parse_args()
    if not (args.data / "cases.csv").exists():
        raise SystemExit(f"{args.data} holds no cohort: run `liverlesion data` first")
    profile = load_profile(args.profile, CONFIGS)
    config = profile.patches
    cores = usable_cpus()

    serial, t_serial = timed(ingest_cases, args.data, "bench", crop_margin_mm=config.margin_mm, workers=1)
    ingested, t_parallel = timed(ingest_cases, args.data, "bench", crop_margin_mm=config.margin_mm, workers=cores)
    cases, crops = ingested.cases, ingested.crops
    lesions, t_segment = timed(segment_cases, cases, crops)
    (patches, _), t_extract = timed(
        extract_cohort_patches,
        lesions,
        crops,
        config.margin_mm,
        config.canvas,
        config.output_size,
        config.square_pixels,
    )
    _, t_texture = timed(cohort_texture_table, lesions, crops)
    n = len(lesions)
    voxels = (cases["shape_0"] * cases["shape_1"] * cases["shape_2"]).mean() / 1e6
    print(
        f"# data steps ({args.profile} profile): {len(cases)} cases ({voxels:.1f} M voxels on average), {n} lesions, "
        f"patches {patches.shape[1:]}, crops {crops.nbytes / 1e6:.1f} MB with a {crops.margin_mm:g} mm margin; "
        f"{cores} CPU cores"
    )
    print(f"{'step':<48} {'seconds':>8} {'lesions/s':>10}")
    for label, seconds in (
        ("ingest: read, check, label, crop (1 at a time)", t_serial),
        (f"ingest: read, check, label, crop ({cores} threads)", t_parallel),
        ("segment: lesion table from crops", t_segment),
        ("extract_patches: patches from crops", t_extract),
        ("texture_features: features from crops", t_texture),
    ):
        print(f"{label:<48} {seconds:>8.2f} {n / seconds:>10.1f}")
    print(f"ingest speed-up with {cores} threads: {t_serial / t_parallel:.2f}x")
    if args.generation:
        with tempfile.TemporaryDirectory() as tmp:
            _, g1 = timed(generate_cohort, profile.cohort, Path(tmp) / "one", workers=1)
            _, g2 = timed(generate_cohort, profile.cohort, Path(tmp) / "two", workers=2)
        print(f"cohort generation: {g1:.1f} s one case at a time, {g2:.1f} s two at once ({g1 / g2:.2f}x)")


if __name__ == "__main__":
    main()
