"""Real CT into a de-identified cohort folder (``liverlesion import``): into a folder of the user's, or into the
project's ``data/``, which is then versioned with DVC.

The conversion itself (layouts, de-identification, the data contract) is the domain's
(``liverlesion.importers``); here the target folder is chosen, replaced whole or appended to, and versioned.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from pathlib import Path
from typing import Any

from liverlesion.contract import ContractError, source_named_as
from liverlesion.parallel import usable_cpus
from liverlesion.progress import Progress


class ImportTargetError(ContractError):
    """The target folder cannot take this import as asked (it holds a cohort; options that exclude each other)."""


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or the
    file system cannot, and nothing was changed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(error, os.strerror(error), str(b))


def _aside(out: Path) -> tuple[Path, Path]:
    """Where a replace stages the new cohort, and where the two-rename swap puts the old one meanwhile."""
    return out.parent / f".{out.name}.replacing", out.parent / f".{out.name}.replaced"


def _swap(new: Path, out: Path) -> None:
    """Put the complete cohort ``new`` in place of ``out``, so that ``out`` holds one cohort or the other at every
    instant, a process killed at any point included: one atomic exchange where the system has it (the old cohort
    is then at ``new``'s path and deleted); else the old one renamed aside, the new one renamed in, then the old one
    deleted, and a swap killed between the two renames is completed by the next import (``recover_swap``)."""
    if out.exists() and _exchange(new, out):
        shutil.rmtree(new)
        return
    _, old = _aside(out)
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.replace(old)
    try:
        new.replace(out)
    except OSError:
        if old.exists():
            old.replace(out)  # the old cohort back in place
        raise
    if old.exists():
        shutil.rmtree(old)


def recover_swap(out: Path) -> str | None:
    """Complete a replace killed between its two renames (``out`` missing, the old cohort aside): the new cohort
    was complete when the swap began, so it goes in; the old one is then deleted. What was done, or None."""
    new, old = _aside(out)
    if not old.exists():
        return None
    note = None
    if not out.exists():
        (new if new.exists() else old).replace(out)
        note = f"completed the replace of {out} that was interrupted between its renames"
    if old.exists():
        shutil.rmtree(old)
    return note


def _check_source_map(path: Path, out: Path, project_root: Path | None) -> None:
    """The source map identifies patients: never inside the cohort (nor, for ``data/``, the project, whose files
    reach DVC, git, ZenML and MLflow)."""
    where = path.resolve()
    for folder, what in ((out, "the cohort folder"), (project_root, "the project")):
        if folder is not None and where.is_relative_to(folder.resolve()):
            raise ImportTargetError(
                f"--source-map {path} is inside {what} ({folder}): the map identifies patients; keep it where "
                "only the data's custodian reads it"
            )
    if not where.parent.is_dir():
        raise ImportTargetError(f"--source-map {path}: its folder does not exist")


def import_cases(source: Path, layout: str, out: Path | None, **options: Any) -> dict[str, Any]:
    """``_import_cases`` (below), under the project's training lock when it writes the project's ``data/``: an import
    there never replaces, or adds to, a cohort that a run (``run``, ``retrain``, the nightly schedule) is reading,
    and fails at once, naming that run, while one is.

    Raises:
        LockHeld: a training run of this project holds the lock.
    """
    if out is not None:
        return _import_cases(source, layout, out, **options)
    from liverlesion_ops.runs import training_lock

    with training_lock(f"liverlesion import --layout {layout}"):
        return _import_cases(source, layout, out, **options)


def _import_cases(
    source: Path,
    layout: str,
    out: Path | None,
    types: Path | None = None,
    default_type: str | None = None,
    name_map: dict[str, str] | None = None,
    root: Path | None = None,
    append: bool = False,
    replace: bool = False,
    skip_bad: bool = False,
    progress: Progress = None,
    source_map: Path | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Convert ``source`` into the cohort folder ``out`` (None: the project's ``data/``, versioned with DVC).

    ``replace`` writes the new cohort beside the old one and swaps them only when the import succeeded;
    ``append`` adds the cases to the cohort there. Needs ``LIVERLESION_PSEUDONYM_SECRET``. Messages name a case by
    its position in the source and its pseudonym; ``source_map`` (outside the cohort and, for ``data/``, the
    project) gets which source case that is (``importers.write_source_map``). ``workers`` cases are read at once
    (None: one per core this process may use).

    Returns:
        The import report (``importers.ImportReport.to_dict``), with ``data_version`` when imported into ``data/``.

    Raises:
        ContractError: a case or the source breaks the data contract, naming it (nothing is left half-written).
        DataStoreError: DVC failed to version ``data/``.
    """
    from liverlesion.deid import pseudonymiser_from_env
    from liverlesion.importers import import_cohort, read_types_table, scan_source
    from liverlesion_ops import environment, project

    into_project = out is None
    out = project.data_dir() if into_project else out
    if append and replace:
        raise ImportTargetError("--append and --replace exclude each other")
    recovered = recover_swap(out)  # before anything: an interrupted replace leaves its new cohort to put in
    if source_map is not None:
        _check_source_map(source_map, out, project.project_root() if into_project else None)
    target = out
    if replace:
        from liverlesion.contract import CASES_FILE, COHORT_FILE

        if out.exists() and any(out.iterdir()) and not ((out / CASES_FILE).is_file() and (out / COHORT_FILE).is_file()):
            raise ImportTargetError(
                f"{out} is not a cohort folder (no {CASES_FILE} and {COHORT_FILE}): --replace replaces a cohort, "
                "never another folder"
            )
        target, _ = _aside(out)
        if target.exists():  # what an interrupted replace left: never a cohort in use
            shutil.rmtree(target)
    elif out.exists() and any(out.iterdir()) and not append:
        raise ImportTargetError(
            f"{out} already holds a cohort: --append adds the new cases to it, --replace replaces it"
            + (" (the old version stays in DVC)" if into_project else "")
        )
    settings = {
        "types_table": types is not None,
        "default_type": default_type,
        "name_map": name_map,
        "skip_bad": skip_bad,
    }
    try:
        pseudonymiser = pseudonymiser_from_env()
        with source_named_as(f"a folder under {source}"):  # a folder under it can be named after the patient
            cases = scan_source(
                source, layout, types=read_types_table(types), default_type=default_type, name_map=name_map, root=root
            )
        report = import_cohort(
            cases,
            target,
            pseudonymiser,
            layout,
            settings,
            append=append,
            skip_bad=skip_bad,
            progress=progress,
            source_map=source_map,
            workers=workers or usable_cpus(),
        )
    except ContractError:
        if replace and target.exists():
            shutil.rmtree(target)
        raise
    if replace:
        _swap(target, out)
        report.out = out
    summary = report.to_dict()
    if recovered:
        summary["notes"] = [recovered, *summary["notes"]]
    if into_project:
        from liverlesion_ops.datastore import configure_remote, version_data

        remote = configure_remote(project.project_root(), environment.dvc_remote())
        summary["data_version"] = version_data(project.project_root(), remote)
    return summary
