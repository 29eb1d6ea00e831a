"""Figures: CI's whole run, `bash .ci/run` (install, lint, every test), on a fresh clone, today against a baseline.

Each code version is cloned from this repository into a temporary folder (no venv, as CI starts) and its own
`.ci/run` timed from start to end; pytest's per-test times (a JUnit XML report) are summed per test file, so
that the run's wall time can be read against the work done. With ``--repeats N`` the versions alternate, so the
machine's noise falls on both. A `.ci/run` takes 15-50 minutes on two cores, so this is a bench for an idle
machine: anything else running beside it is in its figures.

``--cold-docker`` removes Docker's state (``/var/lib/docker``, needs root and no daemon running) before each run,
as on a machine that has never built the step image (CI's first run; every image and container of the machine
is lost); without it, the containers test reuses the layers an earlier run built. A revision older than the
containers test does not use Docker.

    .venv/bin/python bench/suite_time.py --baseline REV [--repeats 1] [--cold-docker]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from revisions import side_by_side  # noqa: E402

DOCKER_STATE = Path("/var/lib/docker")


def fresh_clone(revision: str, folder: Path) -> str:
    """A clone of this repository at ``revision`` in ``folder``; its short commit."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "checkout", "--quiet", "--detach", revision], check=True)
    return subprocess.run(
        ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


def forget_docker() -> None:
    if subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True).returncode == 0:
        sys.exit("--cold-docker: a Docker daemon is running; stop it first (its state is removed while it is down)")
    shutil.rmtree(DOCKER_STATE, ignore_errors=True)


def per_file(report: Path) -> dict[str, float]:
    """Seconds per test file (setup, call and teardown summed), from pytest's JUnit XML."""
    seconds: dict[str, float] = collections.Counter()
    for case in ET.parse(report).iter("testcase"):
        seconds[case.get("classname", "").split(".")[-1]] += float(case.get("time", 0.0))
    return seconds


def ci_run(clone: Path, report: Path) -> tuple[float, str]:
    """Seconds of the clone's `.ci/run`, and pytest's summary line; exits on a failed run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    env["PYTEST_ADDOPTS"] = f"--junitxml={report}"
    started = time.perf_counter()
    done = subprocess.run(["bash", ".ci/run"], cwd=clone, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    summary = [line for line in done.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    if done.returncode != 0:
        sys.exit(f".ci/run in {clone} failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")
    return seconds, (summary[-1].strip("= ") if summary else "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REV", required=True, help="the git revision to time beside HEAD")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--cold-docker",
        action="store_true",
        help="remove /var/lib/docker before each run: every image and container on this machine is lost",
    )
    args = parser.parse_args()
    wall: dict[str, list[float]] = {}
    summed: dict[str, list[float]] = {}
    files: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="suite-time-") as tmp:
        for repeat in range(args.repeats):
            for revision in (args.baseline, "HEAD"):
                clone = Path(tmp) / f"{revision.replace('/', '_')}-{repeat}"
                commit = fresh_clone(revision, clone)
                name = f"{'baseline' if revision != 'HEAD' else 'HEAD'} {commit}"
                if args.cold_docker:
                    forget_docker()
                seconds, summary = ci_run(clone, Path(tmp) / f"{clone.name}.xml")
                by_file = per_file(Path(tmp) / f"{clone.name}.xml")
                wall.setdefault(name, []).append(seconds)
                summed.setdefault(name, []).append(sum(by_file.values()))
                files[name] = by_file
                print(f"# {name}, run {repeat + 1}: {seconds:.0f} s ({summary})", flush=True)
                shutil.rmtree(clone, ignore_errors=True)
    print(side_by_side(".ci/run, wall s", wall, 32))
    print(side_by_side("tests' seconds, summed", summed, 32))
    names = list(files)
    longest = sorted({f for by_file in files.values() for f in by_file}, key=lambda f: -files[names[-1]].get(f, 0))
    print(f"\n{'test file (last run of each)':40s} " + "  ".join(f"{n:>18s}" for n in names))
    for f in longest[:12]:
        print(f"{f:40s} " + "  ".join(f"{files[n].get(f, 0.0):18.0f}" for n in names))


if __name__ == "__main__":
    main()
