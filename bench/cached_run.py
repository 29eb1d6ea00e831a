"""Figures: what a process pays before any step works. A `liverlesion run` whose steps are all cached, `liverlesion
export`, and importing the pipelines (what ZenML's entrypoint does first in each step's container), today against
a baseline revision.

Each code version gets a fresh project of the tests' tiny profile, trained once (not timed); then the timed
commands alternate between the versions, so the machine's noise falls on both. With ``--baseline REV`` the code of
git revision REV runs beside this checkout's (``revisions.py``).

    .venv/bin/python bench/cached_run.py [--baseline REV] [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from revisions import code_project, code_versions, side_by_side  # noqa: E402

LIVERLESION = str(Path(sys.executable).with_name("liverlesion"))
#: ZenML needs a main module with a file to find its source root, as in a step container
IMPORT_PIPELINES = "import liverlesion_ops.pipelines\n"


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[1:3])} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", metavar="REV", help="also time the code of this git revision, side by side")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cached-run-") as tmp, code_versions(args.baseline, Path(tmp)) as codes:
        projects = {}
        for k, (name, code) in enumerate(codes.items()):
            root, env = code_project(Path(tmp) / f"project-{k}", code)
            (root / "entry.py").write_text(IMPORT_PIPELINES)
            timed([LIVERLESION, "run", "--profile", "tiny"], root, env)  # trains once: the timed runs are cached
            projects[name] = (root, env)
        commands = {
            "run, every step cached": lambda root: [LIVERLESION, "run", "--profile", "tiny"],
            "export": lambda root: [LIVERLESION, "export", "--profile", "tiny", str(root / "patches.npz")],
            "import the pipelines": lambda root: [sys.executable, str(root / "entry.py")],
        }
        seconds = {(what, name): [] for what in commands for name in projects}
        for _ in range(args.repeats):
            for what, command in commands.items():
                for name, (root, env) in projects.items():
                    seconds[what, name].append(timed(command(root), root, env))
    names = list(projects)
    print(f"median of {args.repeats}, seconds (min-max); alternating; {', '.join(names)}")
    for what in commands:
        print(side_by_side(what, {name: seconds[what, name] for name in names}))


if __name__ == "__main__":
    main()
