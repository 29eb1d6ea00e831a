"""Figures: `predict` wall time for one CT with 5 lesions, from files to written results, by phase.

A full-size phantom CT (the default cohort's anatomy) with exactly five lesions is written as NIfTI;
the network is the paper's (InceptionV3 + FC head) at the quick profile's 96x80 input, untrained
(speed does not depend on the weights). Phases: reading the CT and mask, lesion numbering and patch
cutting (the training preprocessing), scoring (the CPU fast path where the CPU has bfloat16 units),
and writing the outputs (tables, label volume, Figure 5). With ``--cli`` it also times the whole
console command against the project's registered champion (model loading and imports included).

    .venv/bin/python bench/predict_speed.py [--repeats 3] [--cli]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cli", action="store_true", help="also time `liverlesion predict` with the registered champion"
    )
    args = parser.parse_args()

    import keras
    import pandas as pd

    from liverlesion.config import load_profile
    from liverlesion.imaging import check_hu, load_nifti
    from liverlesion.model import build_model
    from liverlesion.phantom import generate_cohort
    from liverlesion.predict import LesionPredictor, write_outputs

    profile = load_profile("quick", Path(__file__).resolve().parents[1] / "configs")
    one_case = profile.cohort.model_copy(update={"seed": 11, "n_patients": 1, "n_lesions": 5})
    with tempfile.TemporaryDirectory() as tmp:
        cohort = generate_cohort(one_case, Path(tmp) / "one")
        case = pd.read_csv(cohort / "cases.csv").iloc[0]
        image_path, mask_path = cohort / case["image"], cohort / case["mask"]
        settings = profile.patches
        keras.utils.set_random_seed(0)
        t = profile.train
        network = build_model((*profile.patches.size, 3), t.backbone, None, t.dense_units, t.dropout, t.bn_momentum)
        predictor = LesionPredictor(
            network, settings, profile.evaluate.threshold, profile.evaluate.precision, "bench", "0"
        )
        print(
            f"# predict, one CT with 5 lesions: {int(case['n_lesions'])} lesions, input {profile.patches.size}, "
            f"scoring in {predictor.precision} ({predictor.precision_reason})"
        )
        predictor.predict(*load_nifti(image_path, dtype=np.float32), load_nifti(mask_path)[0])  # warm-up (tracing)
        rows = []
        for repeat in range(args.repeats):
            t0 = time.perf_counter()
            image, meta = load_nifti(image_path, dtype=np.float32)
            image, _ = check_hu(image, "bench")
            mask, _ = load_nifti(mask_path)
            t1 = time.perf_counter()
            prediction = predictor.predict(image, meta, mask, "bench", "class")
            t2 = time.perf_counter()
            write_outputs(
                prediction, Path(tmp) / f"out{repeat}", title="bench", extra={"threshold": predictor.threshold}
            )
            t3 = time.perf_counter()
            rows.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
        read, score, write, total = np.median(np.asarray(rows), axis=0)
        print(f"CT {meta.shape} ({np.prod(meta.shape) / 1e6:.1f} M voxels), median of {args.repeats}:")
        print(
            f"  read CT + mask: {read:.2f} s | lesions, patches, scoring: {score:.2f} s | "
            f"tables, label volume, Figure 5: {write:.2f} s | files to written results: {total:.2f} s"
        )
        if args.cli:
            command = [
                str(Path(sys.executable).with_name("liverlesion")),
                "predict",
                str(image_path),
                "--mask",
                str(mask_path),
                "--mask-encoding",
                "class",
                "--out",
                str(Path(tmp) / "cli"),
            ]
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"liverlesion predict failed: {done.stderr.strip().splitlines()[-1]}")
            else:
                print(
                    "  `liverlesion predict` (imports, registry champion, all outputs): "
                    f"{time.perf_counter() - start:.1f} s"
                )


if __name__ == "__main__":
    main()
