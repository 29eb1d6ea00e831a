"""Automatic segmentation on the versioned cohort (``data/``): seconds per CT and how close to the reference.

For each automatic method (classical; learned when a cascade is given or trained here), on the same
cases: seconds per CT (one process, the CT already in memory: the segmentation alone), and against the
reference masks the liver Dice and ASSD, the lesion Dice and ASSD, the detection recall (a reference
lesion is found at a Dice of at least ``segment.detection_dice``) and invented lesions per patient.
``--train N`` trains a cascade with the profile's ``segmenter`` settings on the N cases after the
measured ones first (its training time is printed), so the measured cases are not training cases.
Usage: python bench/segmentation.py [--data data] [--cases 10] [--train 40 | --cascade DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from liverlesion.config import load_profile
from liverlesion.ingestion import read_case_table
from liverlesion.segmentation import (
    automatic_segmentation,
    load_cascade,
    measure_case,
    read_reference_case,
    segmentation_summary,
)


def read(folder: Path, case):
    return read_reference_case(
        folder / case.image, folder / case.mask, folder / case.liver_mask, case.case_id, case.mask_encoding
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cases", type=int, default=10, help="cases measured (the first ones)")
    parser.add_argument(
        "--train", type=int, default=0, help="train a cascade on this many cases after the measured ones"
    )
    parser.add_argument("--cascade", type=Path, help="a saved cascade folder (segnet.Cascade.save) to measure")
    args = parser.parse_args()
    table = read_case_table(args.data)
    if not table["liver_mask"].ne("").all():
        raise SystemExit(f"{args.data}: every case needs a liver_mask to be measured (regenerate: `liverlesion data`)")
    profile = load_profile(args.profile, Path(__file__).resolve().parents[1] / "configs")
    measured = list(table.head(args.cases).itertuples(index=False))
    methods: dict[str, object] = {"classical": None}
    if args.cascade:
        methods["learned"] = str(args.cascade)
    elif args.train:
        import keras

        from liverlesion.segnet import train_cascade

        training = list(table.iloc[args.cases : args.cases + args.train].itertuples(index=False))
        started = time.perf_counter()
        cascade, _ = train_cascade(
            ((ref.image, ref.liver, ref.instances > 0) for ref in (read(args.data, case) for case in training)),
            profile.segmenter,
        )
        seconds = time.perf_counter() - started
        print(
            f"# trained the cascade on {len(training)} cases in {seconds:.0f} s ({seconds / len(training):.1f} s per "
            f"case, reading included; {profile.segmenter.epochs} epochs, Keras {keras.__version__} on "
            f"{keras.backend.backend()})"
        )
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-cascade"
        cascade.save(folder)
        methods["learned"] = str(folder)

    rows, sizes = [], {}
    for method, cascade_dir in methods.items():
        settings = profile.segment.model_copy(update={"method": method})
        cascade = load_cascade(cascade_dir)
        if cascade is not None:  # the first call traces the networks: not a CT's time
            ref = read(args.data, measured[0])
            automatic_segmentation(ref.image, ref.spacing, settings, cascade)
        cases, lesions = [], []
        for case in measured:
            ref = read(args.data, case)
            sizes[case.case_id] = ref.image.size
            row, outcome = measure_case(
                case.case_id,
                case.patient_key,
                ref.image,
                ref.spacing,
                ref.instances,
                ref.labels,
                ref.liver,
                settings,
                cascade,
            )
            cases.append(row)
            lesions.extend(outcome)
        summary = segmentation_summary(pd.DataFrame(cases), pd.DataFrame(lesions))
        rows.append({"method": method, **summary, "median_seconds": float(np.median([c["seconds"] for c in cases]))})
    voxels = np.mean(list(sizes.values())) / 1e6
    print(
        f"# {len(measured)} CTs ({voxels:.1f} M voxels on average), {os.cpu_count()} CPU cores; a lesion is found at "
        f"Dice >= {profile.segment.detection_dice}"
    )
    columns = [
        "method",
        "seconds_per_case",
        "median_seconds",
        "liver_dice",
        "liver_assd_mm",
        "lesion_dice",
        "lesion_assd_mm",
        "found_lesions",
        "reference_lesions",
        "detection_recall",
        "false_positives_per_patient",
    ]
    print(pd.DataFrame(rows)[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
