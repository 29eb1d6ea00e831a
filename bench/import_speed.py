"""Import speed: NIfTI in the LiTS layout, and one full-size DICOM CT series with its DICOM-SEG.

(a) ``--n`` phantom patients written as LiTS ``volume-N.nii`` + ``segmentation-N.nii`` (stored LPS)
    and imported with layout ``lits``;
(b) one synthetic 512x512x``--slices`` int16 CT series written with ``tests/dicom_fixtures.py``
    (unshuffled, axial) and a DICOM-SEG holding a ``Liver`` and one ``Tumor_1`` segment, imported
    with layout ``crlm``; and ``read_ct_series`` alone on the same files.

The sources are written to a temporary folder first (not timed). Each import is the console command a user
runs (``liverlesion import``, a new process: imports included), ``--repeats`` times; with ``--baseline REV``
the code of git revision REV (a temporary worktree, the same interpreter) runs too, the two alternating, and
the voxels of the two cohorts are compared (the same voxels whatever the compression).
Usage: python bench/import_speed.py [--n 4] [--slices 120] [--repeats 3] [--baseline REV] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the DICOM fixture writers

from dicom_fixtures import write_ct_series, write_seg_file  # noqa: E402
from revisions import code_env, code_versions  # noqa: E402

from liverlesion.config import load_profile  # noqa: E402
from liverlesion.deid import SECRET_ENV  # noqa: E402
from liverlesion.dicomio import read_ct_series  # noqa: E402
from liverlesion.lesions import instance_map  # noqa: E402
from liverlesion.phantom import generate_patient, plan_cohort  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"  # the project's profiles


def write_lits(root: Path, n: int, seed: int) -> tuple[Path, Path, list[tuple[int, ...]]]:
    """``n`` phantom patients as a LiTS folder (LPS on disk) and a types table."""
    cohort = load_profile("quick", CONFIGS).cohort
    spec = cohort.model_validate({**cohort.model_dump(), "seed": seed, "n_patients": n, "n_lesions": 2 * n})
    lps = nib.orientations.axcodes2ornt(("L", "P", "S"))
    rows, shapes = [], []
    for k, plan in enumerate(plan_cohort(spec)):
        case = generate_patient(spec, plan)
        label = np.where(case.liver, 1, 0).astype(np.uint8)
        label[case.mask > 0] = 2
        for array, name in ((case.image.astype(np.int16), f"volume-{k}.nii"), (label, f"segmentation-{k}.nii")):
            image = nib.Nifti1Image(array, case.affine)
            image = image.as_reoriented(nib.orientations.ornt_transform(nib.io_orientation(case.affine), lps))
            nib.save(image, str(root / name))
        instances, found = instance_map((label == 2).astype(np.uint8), name, "binary")
        for d in found:
            code = int(np.unique(case.mask[instances == d["instance"]])[0])
            rows.append({"case": f"volume-{k}", "lesion": d["instance"], "type": ("cyst", "metastasis")[code - 1]})
        shapes.append(case.image.shape)
    types = root.parent / "lits-types.csv"
    pd.DataFrame(rows).to_csv(types, index=False)
    return root, types, shapes


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An abdomen-like int16 volume (air, a 40 HU body, a 100 HU liver, a 50 HU tumour, noise), its
    liver and tumour masks."""
    rng = np.random.default_rng(seed)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cx, cy, cz = shape[0] / 2, shape[1] / 2, shape[2] / 2
    body = ((x - cx) / (0.42 * shape[0])) ** 2 + ((y - cy) / (0.32 * shape[1])) ** 2 <= 1.0
    body = np.broadcast_to(body, shape)
    liver = (
        ((x - 0.4 * shape[0]) / (0.16 * shape[0])) ** 2
        + ((y - 0.45 * shape[1]) / (0.14 * shape[1])) ** 2
        + ((z - cz) / (0.35 * shape[2])) ** 2
    ) <= 1.0
    tumour = (((x - 0.4 * shape[0]) * 0.7) ** 2 + ((y - 0.45 * shape[1]) * 0.7) ** 2 + ((z - cz) * 2.5) ** 2) <= 15.0**2
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[body] = 40
    hu[liver] = 100
    hu[tumour] = 50
    hu += rng.integers(-12, 13, size=shape, dtype=np.int16)
    return hu, liver, tumour & liver


def cold_import(code: Path | None, source: Path, layout: str, out: Path, *extra: str) -> float:
    """Seconds of one ``liverlesion import`` process with the code of ``code`` (None: this checkout)."""
    env = code_env(code)
    command = [str(Path(sys.executable).with_name("liverlesion")), "import", str(source), "--layout", layout]
    start = time.perf_counter()
    done = subprocess.run([*command, "--out", str(out), *extra], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"import failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def same_voxels(one: Path, other: Path) -> bool:
    """The two cohorts hold the same images and masks, voxel for voxel (their files may be compressed apart)."""
    files = sorted(p.relative_to(one) for p in one.rglob("*.nii.gz"))
    if files != sorted(p.relative_to(other) for p in other.rglob("*.nii.gz")):
        return False
    return all(
        np.array_equal(np.asanyarray(nib.load(one / f).dataobj), np.asanyarray(nib.load(other / f).dataobj))
        and np.array_equal(nib.load(one / f).affine, nib.load(other / f).affine)
        for f in files
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4, help="phantom cases for the NIfTI (LiTS) import")
    parser.add_argument("--slices", type=int, default=120, help="slices of the 512x512 DICOM series")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="also time the code of this git revision, side by side")
    parser.add_argument(
        "--keep", type=Path, default=None, help="write sources and cohorts here (default: a temp folder, removed)"
    )
    args = parser.parse_args()
    os.environ.setdefault(SECRET_ENV, "bench-only-secret-not-for-real-data")

    with tempfile.TemporaryDirectory(prefix="import-speed-") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        with code_versions(args.baseline, work) as codes:
            # (a) NIfTI, LiTS layout
            (work / "lits").mkdir()
            start = time.perf_counter()
            lits, types, shapes = write_lits(work / "lits", args.n, args.seed)
            written = time.perf_counter() - start
            voxels = sum(int(np.prod(s)) for s in shapes)
            print(
                f"(a) NIfTI / LiTS: {args.n} phantom cases, {voxels / args.n / 1e6:.1f} Mvoxels per case on average "
                f"(shapes {shapes}); sources written in {written:.1f} s"
            )
            report(codes, args.repeats, work / "out-lits", args.n, lits, "lits", "--types", str(types))

            # (b) one DICOM CT series + DICOM-SEG, layout crlm
            shape = (512, 512, args.slices)
            hu, liver, tumour = synthetic_ct(shape, args.seed)
            start = time.perf_counter()
            ct_files = write_ct_series(
                work / "dicom" / "CRLM-CT-0001" / "ct",
                hu,
                (0.75, 0.75, 2.5),
                orientation="axial",
                shuffle=False,
                intercept=-1024.0,
                seed=args.seed,
            )
            write_seg_file(
                work / "dicom" / "CRLM-CT-0001" / "seg" / "1-1.dcm", {"Liver": liver, "Tumor_1": tumour}, ct_files
            )
            written = time.perf_counter() - start
            del hu, liver
            start = time.perf_counter()
            series = read_ct_series(work / "dicom" / "CRLM-CT-0001" / "ct")
            read_alone = time.perf_counter() - start
            assert series.hu.shape == shape
            del series
            print(
                f"\n(b) DICOM / CRLM: 1 series of {shape[0]}x{shape[1]}x{shape[2]} int16 ({len(ct_files)} files, "
                f"{sum(p.stat().st_size for p in ct_files) / 2**20:.0f} MiB) + DICOM-SEG (Liver, Tumor_1, "
                f"{int(tumour.sum())} tumour voxels); sources written in {written:.1f} s; "
                f"read_ct_series alone (this code, warm): {read_alone:.2f} s"
            )
            report(codes, args.repeats, work / "out-crlm", 1, work / "dicom", "crlm")


def report(codes: dict, repeats: int, out: Path, n: int, source: Path, layout: str, *extra: str) -> None:
    """Time each code's cold imports of ``source``, alternating, and print them side by side."""
    seconds: dict[str, list[float]] = {name: [] for name in codes}
    for k in range(repeats):
        for index, (name, code) in enumerate(codes.items()):
            seconds[name].append(cold_import(code, source, layout, out / f"{index}-{k}", *extra))
    print(f"    {'code':28s} {'median s':>9s} {'min':>6s} {'max':>6s} {'s per case':>11s} {'cohort MiB':>11s}")
    for index, (name, times) in enumerate(seconds.items()):
        size = sum(p.stat().st_size for p in (out / f"{index}-0").rglob("*.nii.gz")) / 2**20
        print(
            f"    {name:28s} {statistics.median(times):9.2f} {min(times):6.2f} {max(times):6.2f} "
            f"{statistics.median(times) / n:11.2f} {size:11.1f}"
        )
    if len(codes) == 2:
        before, after = (statistics.median(t) for t in seconds.values())
        print(f"    speed-up {before / after:.2f}x; the same voxels: {same_voxels(out / '0-0', out / '1-0')}")


if __name__ == "__main__":
    main()
