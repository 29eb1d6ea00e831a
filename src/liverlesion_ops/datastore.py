"""The versioned cohort: ``data/`` tracked by DVC (``data.dvc``), pushed to a local DVC remote.

On a fresh clone ``data.dvc`` is there but ``data/`` and the DVC cache are not. ``prepare_data``
then restores the cohort from the DVC cache or remote if it can, and otherwise regenerates the
embedded default cohort from its seed (bit-identical, so its DVC hash is the one in ``data.dvc``),
and says which it did. The DVC hash is the data version every later step records.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from liverlesion.phantom import GENERATOR_VERSION, CohortSpec, generate_cohort

DATA_FOLDER = "data"
DVC_FILE = "data.dvc"
REMOTE_NAME = "local"
COHORT_METADATA = "cohort.json"


class DataStoreError(RuntimeError):
    """A DVC operation failed or the data folder does not match what was asked for."""


@dataclass(frozen=True)
class DataVersion:
    hash: str  # DVC's md5 of the data folder
    source: str  # "existing", "restored" (DVC cache/remote), "generated" (from the seed), "imported" or
    # "external" (a cohort folder outside the project, versioned by its content hash)
    committed_hash: str | None  # the hash in data.dvc before this run
    path: Path
    note: str = ""  # e.g. a cohort made by another generator version

    @property
    def matches_committed(self) -> bool:
        return self.committed_hash == self.hash

    def describe(self) -> str:
        how = {
            "existing": "used the cohort already in",
            "restored": "restored the cohort from the DVC cache/remote into",
            "generated": "regenerated the embedded default cohort from its seed into",
            "imported": "imported the cohort into",
            "external": "used the cohort folder (outside the project's DVC)",
        }[self.source]
        if self.source == "external":
            return f"data: {how} {self.path} — content version {self.hash}"
        if self.committed_hash is None:
            status = f"{DVC_FILE} was new: commit it"
        elif self.matches_committed:
            status = f"matches {DVC_FILE}"
        else:
            status = f"DIFFERS from the committed {DVC_FILE} ({self.committed_hash[:12]}): {DVC_FILE} updated, commit it"
        note = f"\n  note: {self.note}" if self.note else ""
        return f"data: {how} {self.path} — DVC version {self.hash} ({status}){note}"


def _dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True
    )
    if check and done.returncode != 0:
        raise DataStoreError(f"`dvc {' '.join(args)}` failed in {root}:\n{done.stderr.strip() or done.stdout.strip()}")
    return done


def dvc_hash(root: Path) -> str | None:
    """The data version recorded in ``data.dvc`` (None if absent or empty)."""
    path = Path(root) / DVC_FILE
    if not path.exists():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


def configure_remote(root: Path, remote: Path) -> None:
    """Point the ``local`` DVC remote at ``remote`` (machine-local config, not committed)."""
    remote.mkdir(parents=True, exist_ok=True)
    _dvc(root, "remote", "add", "--local", "--force", REMOTE_NAME, str(remote.resolve()))


def _check_spec(data: Path, spec: CohortSpec) -> str:
    """Refuse a synthetic cohort of another spec; return a note if another generator made it."""
    meta_path = data / COHORT_METADATA
    if not meta_path.exists():
        return ""  # not a synthetic cohort: nothing to compare
    meta = json.loads(meta_path.read_text())
    recorded = meta.get("spec")
    if recorded is not None and recorded != spec.model_dump(mode="json"):
        raise DataStoreError(
            f"{data} holds a cohort generated with {recorded}, but the profile asks for "
            f"{spec.model_dump(mode='json')}; move {data} away (it is versioned by DVC) or use a matching profile"
        )
    version = meta.get("generator_version")
    if version is not None and version != GENERATOR_VERSION:
        return (f"{data} was made by phantom generator {version}; this code generates {GENERATOR_VERSION} "
                "(`liverlesion data --regenerate` refreshes it)")
    return ""


def prepare_data(
    root: Path,
    spec: CohortSpec,
    remote: Path,
    progress: Callable[[int, int, str], None] | None = None,
    regenerate: bool = False,
) -> DataVersion:
    """Make ``root/data`` hold the cohort, version it with DVC and push it to the remote.

    Args:
        regenerate: replace ``data/`` by a cohort generated from ``spec`` (the previous version
            stays in the DVC cache and remote).

    Raises:
        DataStoreError: DVC fails, or ``data/`` holds a synthetic cohort of another spec.
    """
    root = Path(root)
    data = root / DATA_FOLDER
    committed = dvc_hash(root)
    configure_remote(root, remote)
    source = "existing"
    if regenerate and data.exists():
        shutil.rmtree(data)
    if regenerate or not data.exists() or not any(data.iterdir()):
        source = "generated"
        if committed is not None and not regenerate:
            for attempt in (("checkout", DVC_FILE), ("pull", "-r", REMOTE_NAME, DVC_FILE)):
                if _dvc(root, *attempt, check=False).returncode == 0 and data.exists() and any(data.iterdir()):
                    source = "restored"
                    break
        if source == "generated":
            if data.exists():
                data.rmdir()
            generate_cohort(spec, data, progress=progress, workers=min(2, os.cpu_count() or 1))
    note = _check_spec(data, spec)
    return DataVersion(hash=version_data(root), source=source, committed_hash=committed, path=data, note=note)


def version_data(root: Path) -> str:
    """``dvc add data`` and push it to the remote (configured before); the new hash.

    Raises:
        DataStoreError: DVC fails.
    """
    _dvc(root, "add", DATA_FOLDER)
    _dvc(root, "push", "-r", REMOTE_NAME, DVC_FILE)
    version = dvc_hash(root)
    if version is None:
        raise DataStoreError(f"`dvc add {DATA_FOLDER}` left no hash in {root / DVC_FILE}")
    return version


def content_version(folder: Path) -> str:
    """The version of a cohort folder that DVC does not track here: a SHA-256 over its files' paths
    and bytes (``tree-<hex>``), so a changed file is a new version and ZenML does not reuse a step."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        digest.update(b"\0")
    return "tree-" + digest.hexdigest()


def external_data(folder: Path) -> DataVersion:
    """A cohort folder chosen with ``--data`` (anywhere, also outside the checkout), by content hash.

    Raises:
        DataStoreError: no cohort there.
    """
    folder = Path(folder).resolve()
    if not (folder / "cases.csv").exists():
        raise DataStoreError(f"{folder}: no cases.csv: not a cohort folder (see the README's data contract; "
                             "`liverlesion import` makes one)")
    return DataVersion(hash=content_version(folder), source="external", committed_hash=None, path=folder)
