"""Figures: the register step of a tiny training run (and the run), today against a baseline revision.

Each code version gets a fresh project of the tests' tiny profile, trained once (the first version, champion);
then `liverlesion run --profile tiny --no-cache` alternates between the versions, each registering a new version
that the gate scores against the champion. The register step's wall time is read from the ZenML store. With
``--baseline REV`` the code of git revision REV runs beside this checkout's (``revisions.py``).

    .venv/bin/python bench/register_step.py [--baseline REV] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from revisions import code_project, code_versions, side_by_side  # noqa: E402

LIVERLESION = str(Path(sys.executable).with_name("liverlesion"))
STEP_SECONDS = (
    "import json\nfrom zenml.client import Client\n"
    "run = Client().get_pipeline('training_pipeline').last_run\n"
    "print(json.dumps({n: (s.end_time - s.start_time).total_seconds() for n, s in run.steps.items()}))\n"
)


def run(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[1:3])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REV", help="also time the code of this git revision, side by side")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="register-step-") as tmp, code_versions(args.baseline, Path(tmp)) as codes:
        projects = {}
        for k, (name, code) in enumerate(codes.items()):
            root, env = code_project(Path(tmp) / f"project-{k}", code)
            run([LIVERLESION, "run", "--profile", "tiny"], root, env)  # version 1, the champion the gate compares with
            projects[name] = (root, env)
        register = {name: [] for name in projects}
        whole = {name: [] for name in projects}
        for _ in range(args.repeats):
            for name, (root, env) in projects.items():
                seconds, _ = run([LIVERLESION, "run", "--profile", "tiny", "--no-cache"], root, env)
                zenml = {**env, "ZENML_CONFIG_PATH": str(root / "state" / "zenml")}  # the project's store
                _, steps = run([sys.executable, "-c", STEP_SECONDS], root, zenml)
                register[name].append(json.loads(steps)["register"])
                whole[name].append(seconds)
    names = list(projects)
    print(f"median of {args.repeats}, seconds (min-max); alternating; {', '.join(names)}")
    for what, seconds in (("register step", register), ("run --no-cache", whole)):
        print(side_by_side(what, seconds, width=16))


if __name__ == "__main__":
    main()
