"""Where state lives: one project-local folder by default, every part overridable by environment.

Nothing here runs at import; every path is resolved when asked for, so a test (or a scheduler)
can point a whole run elsewhere by setting variables first.

| variable | default | what |
| --- | --- | --- |
| ``LIVERLESION_PROJECT`` | nearest parent of the working directory holding ``data.dvc`` | the project root (code, ``data/``, ``data.dvc``) |
| ``LIVERLESION_CODE`` | the checkout this package is installed from | ``pipelines/`` and ``steps/`` |
| ``LIVERLESION_HOME`` | ``<project>/.liverlesion`` | all generated state below |

Where ZenML, MLflow and DVC keep their state is orchestration: ``liverlesion_ops.environment``.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_MARKER = "data.dvc"


def project_root() -> Path:
    """The project root: ``$LIVERLESION_PROJECT`` or the nearest parent holding ``data.dvc``.

    Raises:
        FileNotFoundError: neither is found, saying what to do.
    """
    if env := os.environ.get("LIVERLESION_PROJECT"):
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_MARKER).exists():
            return folder
    raise FileNotFoundError(
        f"no {PROJECT_MARKER} in {here} or its parents: run from the project's checkout, "
        "or set LIVERLESION_PROJECT to it"
    )


def code_root() -> Path:
    """The checkout holding ``pipelines/`` and ``steps/`` (ZenML's source root).

    ``$LIVERLESION_CODE`` or the checkout this package is installed from (editable install).
    """
    if env := os.environ.get("LIVERLESION_CODE"):
        return Path(env).resolve()
    root = Path(__file__).resolve().parents[2]
    if not (root / "pipelines").is_dir():
        raise FileNotFoundError(
            f"no pipelines/ in {root}: install the project from its checkout (`make install`) "
            "or set LIVERLESION_CODE to the checkout"
        )
    return root


def state_home() -> Path:
    """The folder holding all generated state (ZenML store, MLflow runs, DVC remote, reports)."""
    if env := os.environ.get("LIVERLESION_HOME"):
        return Path(env).resolve()
    return project_root() / ".liverlesion"


def data_dir() -> Path:
    """The DVC-tracked cohort folder (``data/`` beside ``data.dvc``)."""
    return project_root() / "data"


def reports_dir() -> Path:
    return state_home() / "reports"
