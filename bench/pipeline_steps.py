"""End-to-end wall time of a profile (default: quick), split by step, in an isolated state folder.

Runs ``liverlesion run --no-cache`` as a user would, against the project's ``data/`` but with a
throw-away ZenML/MLflow state (the project's registry is not touched), then reads each step's start
and end time from the ZenML store, and prints the test metrics of the model the run registered.

With ``--baseline REV`` the same run is made first with the code of git revision ``REV`` (checked
out in a temporary worktree, same data, same interpreter), and both are printed side by side:
before and after a change, in one run on one machine.

Usage: python bench/pipeline_steps.py [--profile quick] [--baseline REV] [--keep-state DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP_ORDER = ["ingest", "segment", "extract_patches", "validate", "split", "train", "evaluate", "register"]
DATA_STEPS = STEP_ORDER[:5]
_QUERY = (
    "import json\nfrom zenml.client import Client\n"
    "run = Client().get_pipeline('training_pipeline').last_run\n"
    "print(json.dumps({n: (s.end_time - s.start_time).total_seconds() for n, s in run.steps.items()}))\n"
)


def timed_run(profile: str, state: Path, code: Path | None = None) -> tuple[float, dict[str, float], str]:
    """(command seconds, seconds by step, the command's output) of one uncached run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_"))}
    env["LIVERLESION_HOME"] = str(state)
    if code is not None:  # another checkout: its packages first on the path, its steps as ZenML's source, its profile
        env["PYTHONPATH"] = str(code / "src")
        env["LIVERLESION_CODE"] = str(code)  # where a checkout from before 2026-12 keeps its steps and pipelines
        profile = str(code / "configs" / f"{profile}.yaml")
    cli = Path(sys.executable).with_name("liverlesion")
    start = time.perf_counter()
    done = subprocess.run(
        [str(cli), "run", "--profile", profile, "--no-cache"], env=env, text=True, capture_output=True
    )
    total = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
        raise SystemExit(f"the run failed ({done.returncode})")
    env["ZENML_CONFIG_PATH"] = str(state / "zenml")
    query = subprocess.run([sys.executable, "-c", _QUERY], env=env, text=True, capture_output=True, check=True)
    return total, json.loads(query.stdout.strip().splitlines()[-1]), done.stdout


def summary_lines(output: str) -> list[str]:
    return [
        line.strip()
        for line in output.splitlines()
        if line.startswith(("data:", "  test", "  one-feature")) or (line.startswith("    ") and "[" in line)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--baseline", metavar="REV", help="also time the code of this git revision, side by side")
    parser.add_argument("--keep-state", type=Path, help="state folder to use (default: a temporary one)")
    args = parser.parse_args()
    state = args.keep_state or Path(tempfile.mkdtemp(prefix="liverlesion-bench-"))
    # the cohort first (generated or pulled once), so that no timed run includes making it
    subprocess.run(
        [str(Path(sys.executable).with_name("liverlesion")), "data"],
        check=True,
        env={**os.environ, "LIVERLESION_HOME": str(state / "data-check")},
        stdout=subprocess.DEVNULL,
    )
    runs = {}
    if args.baseline:
        root = Path(__file__).resolve().parents[1]
        worktree = Path(tempfile.mkdtemp(prefix="liverlesion-baseline-")) / "code"
        subprocess.run(
            ["git", "-C", str(root), "worktree", "add", "--detach", "--quiet", str(worktree), args.baseline], check=True
        )
        try:
            runs[f"baseline {args.baseline}"] = timed_run(args.profile, state / "baseline", worktree)
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(worktree)], check=False)
    runs["this checkout"] = timed_run(args.profile, state / "current")

    names = list(runs)
    print(f"# {args.profile} profile, end to end with --no-cache, {os.cpu_count()} CPU cores; seconds by step")
    print(f"{'step':<16} " + " ".join(f"{n[:22]:>22}" for n in names) + ("   ratio" if len(names) == 2 else ""))
    rows = [(s, [runs[n][1].get(s, float("nan")) for n in names]) for s in STEP_ORDER]
    rows.append(("data steps", [sum(runs[n][1][s] for s in DATA_STEPS) for n in names]))
    rows.append(("all steps", [sum(runs[n][1].values()) for n in names]))
    rows.append(("command total", [runs[n][0] for n in names]))
    for label, values in rows:
        ratio = f"   {values[1] / values[0]:.2f}x" if len(values) == 2 and values[0] else ""
        print(f"{label:<16} " + " ".join(f"{v:>22.1f}" for v in values) + ratio)
    print("(command total: data check, imports and ZenML overhead included)")
    for name in names:
        print(f"\n## {name}")
        print("\n".join(summary_lines(runs[name][2])))


if __name__ == "__main__":
    main()
