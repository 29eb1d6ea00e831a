"""Figures: the wall time of a `liverlesion retrain` that has nothing to do, and of `liverlesion audit`.

Run in a project whose champion was trained on the current fingerprint (e.g. after `make run`): each
repeat starts the console command as cron would (a new process: imports, the DVC check of data/,
the registry lookup, the MLflow record of the no-op) and prints its wall time and the command's own
figure. It refuses to time a retrain that would train.

    .venv/bin/python bench/retrain_noop.py [--repeats 5] [--profile quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def timed(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    command = [str(Path(sys.executable).with_name("liverlesion")), *args]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    return time.perf_counter() - started, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", default="quick")
    args = parser.parse_args()
    walls, inner = [], []
    for _ in range(args.repeats):
        wall, done = timed("retrain", "--profile", args.profile, "--json")
        if done.returncode != 0:
            sys.exit(f"retrain failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
        outcome = json.loads(done.stdout)
        if outcome["status"] != "nothing-to-do":
            sys.exit(f"this retrain trained (v{outcome.get('version')}): run the bench again to time the no-op")
        walls.append(wall)
        inner.append(outcome["seconds"])
    audit_wall, done = timed("audit", "--json")
    print(
        f"retrain with nothing to do ({args.profile}), {args.repeats} runs: "
        f"wall median {statistics.median(walls):.1f} s "
        f"(min {min(walls):.1f}, max {max(walls):.1f}); inside the command {statistics.median(inner):.1f} s; "
        "the rest is interpreter start and imports"
    )
    print(
        f"audit of the champion: {audit_wall:.1f} s wall"
        + ("" if done.returncode == 0 else f" (exit {done.returncode})")
    )


if __name__ == "__main__":
    main()
