"""End-to-end wall time of a profile (default: quick), split by step, in an isolated state folder.

Runs ``liverlesion run --no-cache`` as a user would, against the project's ``data/`` but with a
throw-away ZenML/MLflow state (the project's registry is not touched), then reads each step's start
and end time from the ZenML store.
Usage: python bench/pipeline_steps.py [--profile quick] [--keep-state DIR]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--keep-state", type=Path, help="state folder to use (default: a temporary one)")
    args = parser.parse_args()
    state = args.keep_state or Path(tempfile.mkdtemp(prefix="liverlesion-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_"))}
    env["LIVERLESION_HOME"] = str(state)
    cli = Path(sys.executable).with_name("liverlesion")
    start = time.perf_counter()
    done = subprocess.run([str(cli), "run", "--profile", args.profile, "--no-cache"], env=env, text=True,
                          capture_output=True)
    total = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
        raise SystemExit(f"the run failed ({done.returncode})")
    query = (
        "import json\nfrom zenml.client import Client\n"
        "run = Client().get_pipeline('training_pipeline').last_run\n"
        "print(json.dumps({n: (s.end_time - s.start_time).total_seconds() for n, s in run.steps.items()}))\n"
    )
    env["ZENML_CONFIG_PATH"] = str(state / "zenml")
    times = json.loads(subprocess.run([sys.executable, "-c", query], env=env, text=True, capture_output=True,
                                      check=True).stdout.strip().splitlines()[-1])
    print(f"# {args.profile} profile, end to end with --no-cache, {os.cpu_count()} CPU cores")
    print(f"{'step':<16} {'seconds':>8} {'share':>6}")
    steps_total = sum(times.values())
    for name in STEP_ORDER:
        print(f"{name:<16} {times[name]:>8.1f} {times[name] / total:>6.0%}")
    print(f"{'steps':<16} {steps_total:>8.1f} {steps_total / total:>6.0%}")
    print(f"{'command total':<16} {total:>8.1f}   (data check, imports, ZenML overhead included)")
    for line in done.stdout.splitlines():
        if line.startswith(("data:", "  test", "  one-feature")) or (line.startswith("    ") and "[" in line):
            print(line.strip())


if __name__ == "__main__":
    main()
