"""How big, how slow and how hard is the phantom cohort?

Generates a cohort (into a temporary folder, or ``--out``) or reads one (``--data``), then prints
the generation wall time, the size on disk, lesion counts and volumes per class, mean HU per class
and the one-feature separability: the best accuracy that a single threshold reaches on each
lesion's mean HU and on its log-volume. If mean HU alone separated cysts from metastases
perfectly, a deep network would have nothing to prove; the target is roughly 0.80-0.92.

Lesions are recovered as the mask's 26-connected components, class by class, exactly as the
pipeline's ``segment`` step sees them.

Examples:
    .venv/bin/python bench/cohort_separability.py                      # default cohort, temp dir
    .venv/bin/python bench/cohort_separability.py --workers 2          # same, two processes
    .venv/bin/python bench/cohort_separability.py --n-patients 8 --n-lesions 30 --size-scale 0.6
    .venv/bin/python bench/cohort_separability.py --data data/         # an existing cohort
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from liverlesion.config import load_profile
from liverlesion.contract import MASK_CYST, MASK_METASTASIS
from liverlesion.imaging import load_nifti
from liverlesion.metrics import best_threshold_accuracy
from liverlesion.phantom import GENERATOR_VERSION, generate_cohort

CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
CLASS_NAMES = {MASK_CYST: "cyst", MASK_METASTASIS: "metastasis"}


def lesion_table(data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per lesion (case, class, volume, mean and SD of HU) and one per case (spacing, shape)."""
    cases = pd.read_csv(data / "cases.csv", dtype={"patient_key": str, "case_id": str})
    rows, case_rows = [], []
    for case in cases.itertuples(index=False):
        image, meta = load_nifti(data / case.image)
        mask, _ = load_nifti(data / case.mask)
        image = image.astype(np.float64)
        case_rows.append(
            {
                "case_id": case.case_id,
                "patient_key": case.patient_key,
                "spacing_xy": meta.spacing[0],
                "spacing_z": meta.spacing[2],
                "voxels": int(np.prod(meta.shape)),
            }
        )
        for code, name in CLASS_NAMES.items():
            labels, n = ndimage.label(mask == code, structure=CONNECTIVITY_26)
            if n == 0:
                continue
            index = np.arange(1, n + 1)
            counts = ndimage.sum_labels(np.ones_like(labels), labels, index)
            means = ndimage.mean(image, labels, index)
            sds = np.sqrt(np.maximum(ndimage.mean(image * image, labels, index) - means**2, 0.0))
            for k in range(n):
                rows.append(
                    {
                        "case_id": case.case_id,
                        "patient_key": case.patient_key,
                        "label": name,
                        "is_metastasis": int(code == MASK_METASTASIS),
                        "voxels": int(counts[k]),
                        "volume_ml": float(counts[k]) * meta.voxel_volume_ml,
                        "mean_hu": float(means[k]),
                        "sd_hu": float(sds[k]),
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(case_rows)


CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # the project's profiles


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = load_profile("quick", CONFIGS).cohort
    parser.add_argument("--n-patients", type=int, default=defaults.n_patients)
    parser.add_argument("--n-lesions", type=int, default=defaults.n_lesions)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--size-scale", type=float, default=defaults.size_scale)
    parser.add_argument("--workers", type=int, default=1, help="processes for generation (bytes do not depend on it)")
    parser.add_argument(
        "--out", type=Path, help="generate into this folder and keep it (default: a temporary folder, removed)"
    )
    parser.add_argument("--data", type=Path, help="measure this existing cohort instead of generating one")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    temp = None
    report: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"}
    if args.data is not None:
        data = args.data
        print(f"cohort: {data} (existing)")
    else:
        spec = defaults.model_validate(
            {
                **defaults.model_dump(),
                "seed": args.seed,
                "n_patients": args.n_patients,
                "n_lesions": args.n_lesions,
                "size_scale": args.size_scale,
            }
        )
        if args.out is None:
            temp = tempfile.mkdtemp(prefix="phantom-bench-")
            data = Path(temp) / "cohort"
        else:
            data = args.out
        print(
            f"generating {spec.n_patients} patients, {spec.n_lesions} lesions (seed {spec.seed}, size_scale "
            f"{spec.size_scale}, generator {GENERATOR_VERSION}, workers {args.workers}) into {data}"
        )
        start = time.perf_counter()
        generate_cohort(spec, data, workers=args.workers)
        report["generation_s"] = time.perf_counter() - start
        print(f"generation wall time: {report['generation_s']:.1f} s")
    try:
        size = folder_size(data)
        report["size_mb"] = size / 1e6
        print(f"size on disk: {size / 1e6:.1f} MB")
        lesions, cases = lesion_table(data)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)

    print(
        f"cases: {len(cases)}; voxels per case: mean {cases.voxels.mean() / 1e6:.2f} M, "
        f"max {cases.voxels.max() / 1e6:.2f} M"
    )
    print(
        f"spacing: in-plane {cases.spacing_xy.min():.3f}-{cases.spacing_xy.max():.3f} mm; "
        f"slices {sorted(set(cases.spacing_z.round(3)))} mm"
    )
    per_patient = lesions.groupby("patient_key").is_metastasis.agg(["size", "sum"])
    both = int(((per_patient["sum"] > 0) & (per_patient["sum"] < per_patient["size"])).sum())
    only_met = int((per_patient["sum"] == per_patient["size"]).sum())
    only_cyst = int((per_patient["sum"] == 0).sum())
    print(
        f"lesions: {len(lesions)} ({(lesions.label == 'cyst').sum()} cysts, "
        f"{(lesions.label == 'metastasis').sum()} metastases); per patient min {per_patient['size'].min()}, "
        f"median {per_patient['size'].median():g}, max {per_patient['size'].max()}; "
        f"patients with both classes {both}, only metastases {only_met}, only cysts {only_cyst}"
    )
    report.update(
        n_cases=len(cases),
        n_lesions=len(lesions),
        patients_both=both,
        patients_only_metastasis=only_met,
        patients_only_cyst=only_cyst,
    )
    for name in ("cyst", "metastasis"):
        group = lesions[lesions.label == name]
        if group.empty:
            continue
        v, h = group.volume_ml, group.mean_hu
        print(
            f"{name:>10}: n {len(group):3d}  volume mL min {v.min():.3f} mean {v.mean():.3f} max {v.max():.2f}  "
            f"mean HU {h.mean():.1f} (SD across lesions {h.std():.1f}, range {h.min():.0f}..{h.max():.0f})  "
            f"internal SD {group.sd_hu.mean():.1f} HU"
        )
        report[name] = {
            "n": len(group),
            "volume_ml_min": v.min(),
            "volume_ml_mean": v.mean(),
            "volume_ml_max": v.max(),
            "mean_hu": h.mean(),
            "mean_hu_sd": h.std(),
        }
    if lesions.is_metastasis.nunique() == 2:
        acc_hu, thr_hu = best_threshold_accuracy(lesions.mean_hu, lesions.is_metastasis)
        acc_vol, thr_vol = best_threshold_accuracy(np.log(lesions.volume_ml), lesions.is_metastasis)
        print(f"best single-threshold accuracy on mean HU:    {acc_hu:.3f} (threshold {thr_hu:.1f} HU)")
        print(f"best single-threshold accuracy on log-volume: {acc_vol:.3f} (threshold {np.exp(thr_vol):.3f} mL)")
        report.update(
            accuracy_mean_hu=acc_hu,
            threshold_mean_hu=thr_hu,
            accuracy_log_volume=acc_vol,
            threshold_volume_ml=float(np.exp(thr_vol)),
        )
    print(f"machine: {report['machine']}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
