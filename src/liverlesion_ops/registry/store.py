"""The project's registry store: one client per store, the aliases of a model, and who decides when."""

from __future__ import annotations

import functools
import getpass
import os
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from liverlesion_ops.tracking import use_tracking_store

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# MLflow is imported where it is used (``tracking``'s note): this module's names (aliases, ``RegistryError``) are
# read by commands that may never open the store

CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"


METRIC_TAG_PREFIX = "metric."
#: a version's post-hoc calibration (``liverlesion.calibration.Calibration.to_dict`` as JSON)
CALIBRATION_TAG = "calibration"
#: the P(metastasis) at or above which the version calls a lesion metastasis (the operating point)
THRESHOLD_TAG = "decision_threshold"


class RegistryError(RuntimeError):
    """A registry operation that cannot be done (no such version, no previous champion, lock held)."""


def registry_client() -> MlflowClient:
    """A client of the project's tracking and registry store (one per store: opening one costs ~2 s)."""
    return _cached_client(use_tracking_store())


@functools.lru_cache(maxsize=4)
def _cached_client(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri, uri)


def timestamp() -> str:
    """Now, in UTC, to the second (ISO 8601): when a decision or a lock was taken."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def acting_user() -> str:
    """The person or job deciding: ``$LIVERLESION_USER`` or the login name, with the host."""
    return f"{os.environ.get('LIVERLESION_USER') or getpass.getuser()}@{socket.gethostname()}"


def alias_version(mlflow_client: MlflowClient, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow_client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def aliases(mlflow_client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in mlflow_client.get_registered_model(name).aliases.items()}


def check_version(mlflow_client: MlflowClient, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(
            f"no version {version} of registered model {name!r} (`liverlesion models` lists them)"
        ) from None


def version_exists(mlflow_client: MlflowClient, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        mlflow_client.get_model_version(name, version)
        return True
    except MlflowException:
        return False


def list_versions(mlflow_client: MlflowClient, name: str) -> list[dict]:
    """Every version of model ``name``, oldest first: its number, the aliases naming it, its tags (lineage,
    metrics, decisions).

    Raises:
        RegistryError: no such registered model.
    """
    from mlflow.exceptions import MlflowException

    try:
        held = aliases(mlflow_client, name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise RegistryError(f"no registered model {name!r} in {mlflow_client.tracking_uri}") from None
        raise
    by_version: dict[str, list[str]] = {}
    for alias, version in held.items():
        by_version.setdefault(version, []).append(alias)
    found = sorted(mlflow_client.search_model_versions(f"name='{name}'"), key=lambda m: int(m.version))
    return [
        {"version": str(mv.version), "aliases": sorted(by_version.get(str(mv.version), [])), "tags": dict(mv.tags)}
        for mv in found
    ]
