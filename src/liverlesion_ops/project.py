"""The project a command works on: its folder (``configs/``, ``data/``, ``data.dvc``) and its state folder.

Nothing here runs at import; every path is resolved when asked for, so a test (or a scheduler) can
point a whole run elsewhere by setting variables first.

| variable | default | what |
| --- | --- | --- |
| ``LIVERLESION_PROJECT`` (``liverlesion --project``) | nearest parent of the working directory holding ``data.dvc`` | the project: ``configs/``, ``data/``, ``data.dvc`` |
| ``LIVERLESION_HOME`` | ``<project>/.liverlesion`` | all generated state below |
| ``LIVERLESION_GIT_COMMIT`` | none | the commit the code was built from, where it runs outside git (the step image sets it) |

The code itself is installed (``liverlesion``, ``liverlesion_ops`` with its ``steps`` and ``pipelines``):
a command needs a project folder, not a checkout. Where ZenML, MLflow and DVC keep their state is
``liverlesion_ops.environment``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

#: the file that marks a project's root (the DVC pointer of its cohort)
PROJECT_MARKER = "data.dvc"
PROJECT_ENV = "LIVERLESION_PROJECT"
HOME_ENV = "LIVERLESION_HOME"
COMMIT_ENV = "LIVERLESION_GIT_COMMIT"
#: what a trained model depends on, besides its data and settings: the domain package, the steps and
#: pipelines, the served model (modules, by their import names) and the project's locked dependencies
TRAINING_CODE = (
    "liverlesion",
    "liverlesion_ops.steps",
    "liverlesion_ops.pipelines",
    "liverlesion_ops.lesion_classifier",
)
LOCK_FILE = "requirements.lock"


def project_root() -> Path:
    """The project root: ``$LIVERLESION_PROJECT`` or the nearest parent of the working directory holding ``data.dvc``.

    Raises:
        FileNotFoundError: neither is found, saying what to do.
    """
    if env := os.environ.get(PROJECT_ENV):
        root = Path(env).resolve()
        if not (root / PROJECT_MARKER).exists():
            raise FileNotFoundError(f"{PROJECT_ENV}={env}: no {PROJECT_MARKER} there; is it the project's folder?")
        return root
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_MARKER).exists():
            return folder
    raise FileNotFoundError(
        f"no {PROJECT_MARKER} in {here} or its parents: run inside the project's folder, "
        f"or name it with --project (or {PROJECT_ENV})"
    )


def state_home() -> Path:
    """The folder holding all generated state (ZenML store, MLflow runs, DVC remote, reports)."""
    if env := os.environ.get(HOME_ENV):
        return Path(env).resolve()
    return project_root() / ".liverlesion"


def data_dir() -> Path:
    """The DVC-tracked cohort folder (``data/`` beside ``data.dvc``)."""
    return project_root() / "data"


def configs_dir() -> Path:
    """The project's run profiles (``configs/*.yaml``)."""
    return project_root() / "configs"


def reports_dir() -> Path:
    return state_home() / "reports"


def run_reports_dir(run_name: str) -> Path:
    """``<state>/reports/<pipeline run>/`` for files a person opens (plots, validation report); created."""
    folder = reports_dir() / run_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def scoring_cache_dir() -> Path:
    """``<state>/cache/scoring/``: registered networks made ready for scoring (``precision.scoring_network``), kept
    between ``predict`` processes; safe to delete."""
    return state_home() / "cache" / "scoring"


def locks_dir() -> Path:
    folder = state_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def module_path(name: str) -> Path:
    """Where an installed module or package of the project is (its file, or its folder), without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{name} is not installed")
    origin = Path(spec.origin)
    return origin.parent if origin.name == "__init__.py" else origin


def source_dir() -> Path:
    """The folder the code is installed from (``src/`` of a checkout for an editable install)."""
    return module_path("liverlesion").parent


def code_commit() -> str:
    """The git commit of the code that runs (``-dirty`` where it differed from it): of the checkout it is installed
    from, else the one the step image was built from (``$LIVERLESION_GIT_COMMIT``), else ``unknown``."""
    from liverlesion.lineage import git_commit

    commit = git_commit(source_dir())
    if commit == "unknown":
        return os.environ.get(COMMIT_ENV) or commit
    return commit


def training_code() -> list[tuple[str, Path]]:
    """The files of ``TRAINING_CODE``, each with a name that does not depend on where it is installed,
    and the project's ``requirements.lock`` where there is one."""
    top = source_dir()
    files: list[tuple[str, Path]] = []
    for name in TRAINING_CODE:
        where = module_path(name)
        found = sorted(where.rglob("*.py")) if where.is_dir() else [where]
        files += [(path.relative_to(top).as_posix(), path) for path in found if "__pycache__" not in path.parts]
    try:
        lock = project_root() / LOCK_FILE
    except FileNotFoundError:
        lock = None
    if lock is not None and lock.is_file():
        files.append((LOCK_FILE, lock))
    return files
