"""A registered version's files looked up by a second process while this one loads Keras: ``predict``'s head start.

A cold ``liverlesion predict`` spends ~1.4 s importing MLflow and opening its store to learn which version the
reference names and where its files are, and ~3 s importing Keras and TensorFlow to load them; neither needs the
other. Where the machine has a second core and the store is a local one (its files on this machine), ``Lookup``
starts ``python -m liverlesion_ops.registry.lookup REFERENCE``, which answers the first in one line of JSON while
this process does the second; this process then never imports MLflow.

The child's answer is only a head start: where it has none (a reference that is not a registered version, a
tracking server, an incomplete registration, an error, one core), the caller looks the version up in its own
process, as without the child, and any error is raised and reported there. The child reads what the caller would
read (the same environment, project and store), moments earlier.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Found:
    """A registered version whose settings and network files are on this machine."""

    name: str
    version: str
    settings: Path
    network: Path

    @property
    def reference(self) -> str:
        return f"models:/{self.name}/{self.version}"


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``models:/<name>/<version>`` -> (name, version, None); ``models:/<name>@<alias>`` -> (name, None, alias).

    Raises:
        ValueError: not a registered model's reference (a run's model, ``runs:/...``).
    """
    if not reference.startswith("models:/"):
        raise ValueError(f"{reference!r} is not a registered model (models:/NAME/VERSION or models:/NAME@ALIAS)")
    body = reference[len("models:/") :]
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, None, alias
    name, version = body.split("/", 1)
    return name, version, None


class Lookup:
    """The child process looking ``reference`` up, started at once where it can help (``result`` collects it)."""

    def __init__(self, reference: str):
        from liverlesion.parallel import usable_cpus
        from liverlesion_ops.environment import mlflow_tracking_uri
        from liverlesion_ops.tracking import is_remote

        self._child: subprocess.Popen | None = None
        if not reference.startswith("models:/") or is_remote(mlflow_tracking_uri()) or usable_cpus() < 2:
            return  # nothing to gain: no registry files here, or no second core to look with
        try:
            self._child = subprocess.Popen(
                [sys.executable, "-m", __name__, reference],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # its errors are the caller's to find and report
                text=True,
            )
        except OSError:
            self._child = None

    def result(self) -> Found | None:
        """What the child found (waiting for it), or None: then the caller looks the version up itself."""
        if self._child is None:
            return None
        output, _ = self._child.communicate()
        if self._child.returncode != 0:
            return None
        try:
            answer = json.loads(output)
            found = Found(answer["name"], answer["version"], Path(answer["settings"]), Path(answer["network"]))
        except (ValueError, KeyError, TypeError):
            return None
        return found if found.settings.is_file() and found.network.is_file() else None


def resolve(reference: str) -> tuple[str, str]:
    """The model name and version number a registered model's reference names (its alias resolved).

    Raises:
        RegistryError: no such model, version or alias, or an incomplete registration.
    """
    from liverlesion_ops.registry.registration import servable_version
    from liverlesion_ops.registry.store import CHAMPION

    name, version, alias = parse_reference(reference)
    return name, servable_version(name, version, alias or CHAMPION)


def find(reference: str) -> Found | None:
    """The registered version ``reference`` names and its files, where they are on this machine (else None).

    Raises:
        RegistryError: as ``resolve``.
    """
    from liverlesion_ops.registry.registration import local_model_files

    name, version = resolve(reference)
    files = local_model_files(name, version)
    return None if files is None else Found(name, version, *files)


def predictor_from_files(found: Found):
    """The served model of a version made from its files on this machine (``liverlesion.predict.load_predictor``,
    which the pyfunc's ``load_context`` calls too), named by its model name and version; the network made ready
    for scoring is kept in ``project.scoring_cache_dir()`` for the next process."""
    from liverlesion.predict import load_predictor
    from liverlesion_ops import project

    predictor = load_predictor(json.loads(found.settings.read_text()), found.network, project.scoring_cache_dir())
    predictor.model_name, predictor.model_version = found.name, found.version
    return predictor


def main(argv: list[str] | None = None) -> None:
    """The child: one line of JSON (name, version, settings, network) and exit 0; exit 1 where there is no answer."""
    (reference,) = sys.argv[1:] if argv is None else argv
    try:
        found = find(reference)
    except Exception:  # noqa: BLE001 -- any failure is the caller's to meet again and report, in its own process
        found = None
    if found is not None:
        line = {"name": found.name, "version": found.version}
        sys.stdout.write(json.dumps({**line, "settings": str(found.settings), "network": str(found.network)}))
        sys.stdout.flush()
    os._exit(0 if found is not None else 1)  # without tearing MLflow down (``cli.common.leave``)


if __name__ == "__main__":
    main()
