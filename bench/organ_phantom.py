"""The classical segmentation on phantom cases, with the organs around the liver that fool it (generator >= 1.3).

Per case: liver Dice, voxels of each neighbouring organ taken into the liver (the leaks), reference lesions
found, automatic lesions invented and those outside the reference liver (``segment.outside_liver_mm``),
seconds. The cases are generated in memory from the profile's cohort spec, so this runs on any checkout:
run it with ``PYTHONPATH=<an older checkout>/src`` beside this one to compare generators and methods.
Usage: python bench/organ_phantom.py [--profile quick] [--cases 0 1 2 ...]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

import liverlesion
from liverlesion.config import load_profile
from liverlesion.lesions import instance_map
from liverlesion.phantom import GENERATOR_VERSION, generate_patient, plan_cohort
from liverlesion.segmentation import classical_segmentation, compare_to_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--cases", type=int, nargs="+", default=list(range(10)), help="case positions in the cohort")
    args = parser.parse_args()
    source = Path(liverlesion.__file__).resolve().parents[2]
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    profile = load_profile(args.profile, Path(__file__).resolve().parents[1] / "configs")
    settings = profile.segment.model_copy(update={"method": "classical"})
    plans = plan_cohort(profile.cohort)
    print(f"# generator {GENERATOR_VERSION}, code {source} at {commit.stdout.strip() or '?'}")
    rows = []
    for i in args.cases:
        case = generate_patient(profile.cohort, plans[i])
        started = time.perf_counter()
        seg = classical_segmentation(case.image.astype(np.float32), case.spacing, settings)
        seconds = time.perf_counter() - started
        reference, _ = instance_map(case.mask, case.case_id, "class")
        automatic, _ = instance_map(seg.lesions.astype(np.uint8), case.case_id, "binary")
        row, _, _ = compare_to_reference(
            case.case_id,
            case.patient_key,
            "classical",
            case.spacing,
            seg,
            automatic,
            reference,
            {},
            case.liver,
            settings.detection_dice,
            seconds,
            outside_liver_mm=settings.outside_liver_mm,
        )
        organs = getattr(case, "organs", None)
        leaked = int((seg.liver & (organs > 0)).sum()) if organs is not None else 0
        rows.append(
            {
                "case": case.case_id,
                "liver_dice": round(row["liver_dice"], 3),
                "organ_voxels_in_liver": leaked,
                "found": f"{row['found_lesions']}/{row['reference_lesions']}",
                "invented": row["invented_lesions"],
                "outside": row["outside_liver_lesions"],
                "seconds": round(seconds, 1),
            }
        )
        print("  ".join(f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    table = pd.DataFrame(rows)
    print(
        f"# median liver Dice {table['liver_dice'].median():.3f} (min {table['liver_dice'].min():.3f}); "
        f"invented {table['invented'].sum()}, outside the liver {table['outside'].sum()}, "
        f"{table['seconds'].median():.1f} s per case (median)"
    )


if __name__ == "__main__":
    main()
