"""Figures: a cold `liverlesion predict CT --mask MASK`, the whole console command, today against a baseline revision.

One new process per call, as a radiologist-researcher runs it: imports, the registry's answer, the network's
loading, scoring and the written files. Two cases: a default-cohort case (``--case``, default case_002) and a
phantom case at a real CT's size (512 x 512 x 120, 2 lesions; ``serve_load.py``'s case). The champion of the
project's registry answers both (run ``make run`` first). With ``--baseline REV`` the code of git revision REV
(a temporary worktree, the same interpreter and registry) runs too, the two alternating call by call so the
machine's noise falls on both; each call's probabilities are compared between the two.

    .venv/bin/python bench/predict_cold.py [--repeats 3] [--baseline REV] [--case case_002]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from revisions import code_env, code_versions  # noqa: E402


def one_call(code: Path | None, image: Path, mask: Path, out: Path) -> tuple[float, float, list[float]]:
    """(seconds, peak RSS in GiB, P(metastasis) per lesion) of one cold ``predict`` with the code of ``code``."""
    env = code_env(code)
    command = ["/usr/bin/time", "-f", "%M", str(Path(sys.executable).with_name("liverlesion"))]
    command += ["predict", str(image), "--mask", str(mask), "--out", str(out), "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"predict failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak_gib = int(done.stderr.strip().splitlines()[-1]) / 2**20
    answer = json.loads(done.stdout)
    lesions = answer["lesions"] if isinstance(answer, dict) else answer
    return seconds, peak_gib, [float(row["p_metastasis"]) for row in lesions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="also time the code of this git revision, side by side")
    parser.add_argument("--case", default="case_002", help="the default-cohort case (data/images/CASE.nii.gz)")
    args = parser.parse_args()

    from serve_load import real_sized_case

    with tempfile.TemporaryDirectory(prefix="liverlesion-predict-cold-") as tmp:
        tmp = Path(tmp)
        real_sized_case(tmp)  # writes tmp/ct.nii.gz and tmp/mask.nii.gz
        cases = {
            f"{args.case} (default cohort)": (
                ROOT / "data/images" / f"{args.case}.nii.gz",
                ROOT / "data/masks" / f"{args.case}.nii.gz",
            ),
            "512x512x120, 2 lesions": (tmp / "ct.nii.gz", tmp / "mask.nii.gz"),
        }
        with code_versions(args.baseline, tmp) as codes:
            print(f"cold `liverlesion predict --mask`, {args.repeats} call(s) each, alternating; {os.cpu_count()} CPUs")
            for case, (image, mask) in cases.items():
                runs = {name: [] for name in codes}
                for k in range(args.repeats):
                    for name, code in codes.items():
                        runs[name].append(one_call(code, image, mask, tmp / f"out-{k}"))
                print(f"\n{case}")
                print(f"  {'code':28s} {'median s':>9s} {'min':>6s} {'max':>6s} {'peak RSS GiB':>13s}")
                for name, results in runs.items():
                    seconds = [r[0] for r in results]
                    print(
                        f"  {name:28s} {statistics.median(seconds):9.2f} {min(seconds):6.2f} {max(seconds):6.2f} "
                        f"{max(r[1] for r in results):13.2f}"
                    )
                names = list(runs)
                if len(names) == 2:
                    before, after = (statistics.median(r[0] for r in runs[n]) for n in names)
                    diff = max(
                        abs(a - b) for ra, rb in zip(runs[names[0]], runs[names[1]]) for a, b in zip(ra[2], rb[2])
                    )
                    same = all(len(ra[2]) == len(rb[2]) for ra, rb in zip(runs[names[0]], runs[names[1]]))
                    print(
                        f"  speed-up {before / after:.2f}x; lesions {len(runs[names[1]][0][2])}, same count: "
                        f"{same}; largest P(metastasis) difference {diff:.2e}"
                    )


if __name__ == "__main__":
    main()
