"""The code a bench times: this checkout and, with ``--baseline REV``, git revision REV beside it.

A baseline is checked out in a temporary worktree and run with the same interpreter, its ``src`` first on
``PYTHONPATH`` (the editable install points at this checkout's), so before and after run in one bench, on one
machine, alternating.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


@contextmanager
def code_versions(baseline: str | None, scratch: Path) -> Iterator[dict[str, Path | None]]:
    """``{name: checkout}``: the baseline's worktree (under ``scratch``; removed after) first, where one is asked
    for, then this checkout (None), named by its commit (``+ uncommitted`` where ``src`` has changes)."""
    codes: dict[str, Path | None] = {}
    worktree = scratch / "baseline-code"
    if baseline:
        _git("worktree", "add", "--detach", "--quiet", str(worktree), baseline)
        codes[f"baseline {baseline}"] = worktree
    codes[_git("rev-parse", "--short", "HEAD") + (" + uncommitted" if _git("status", "--porcelain", "src") else "")] = (
        None
    )
    try:
        yield codes
    finally:
        if baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], check=False)


def code_env(code: Path | None) -> dict[str, str]:
    """The environment of a process running ``code`` (None: this checkout, as installed)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if code is not None:
        env["PYTHONPATH"] = str(code / "src")
    return env


def code_project(folder: Path, code: Path | None) -> tuple[Path, dict[str, str]]:
    """A tests' tiny-profile project (``tests/integration_support.make_project``: its state alone, no ZENML_/MLFLOW_
    of the shell's) whose commands run ``code`` (None: this checkout); only ``PYTHONPATH`` names the code."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from integration_support import make_project

    root, env = make_project(folder)
    env.pop("PYTHONPATH", None)
    env.update({key: value for key, value in code_env(code).items() if key == "PYTHONPATH"})
    return root, env


def side_by_side(what: str, seconds: dict[str, list[float]], width: int = 24) -> str:
    """One line of figures: each code version's median seconds (min-max), and the first's over the last's."""
    import statistics

    medians = [statistics.median(values) for values in seconds.values()]
    figures = "  ".join(
        f"{name}: {m:.2f} ({min(values):.2f}-{max(values):.2f})"
        for (name, values), m in zip(seconds.items(), medians, strict=True)
    )
    ratio = f"  -> {medians[0] / medians[-1]:.2f}x" if len(medians) > 1 else ""
    return f"{what:{width}s} {figures}{ratio}"
