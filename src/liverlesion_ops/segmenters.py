"""The registered segmentation cascade: its versions, its ``champion`` alias, and resolving a reference to it.

``segment.learned_model`` names a version as ``<model>@<alias>`` (default ``liverlesion-segmenter@champion``)
or ``<model>@<version>``. A run resolves it to ``models:/<model>/<version>`` before it starts, so the
version that segmented a run is a parameter of the run (and of its cache key), never a moving alias.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from liverlesion.promotion import DECIMALS
from liverlesion_ops.registry.decisions import registry_lock
from liverlesion_ops.registry.store import (
    CHAMPION,
    METRIC_TAG_PREFIX,
    RegistryError,
    acting_user,
    alias_version,
    registry_client,
    timestamp,
)
from liverlesion_ops.tracking import use_tracking_store

log = logging.getLogger(__name__)

#: the measure a new cascade must match or beat (on its test patients) to become champion
PRIMARY = "lesion_dice"


def resolve_segmenter(reference: str) -> str:
    """``<model>@<alias>`` or ``<model>@<version>`` -> ``models:/<model>/<version>``.

    Raises:
        RegistryError: a malformed reference, or no such alias or version (naming what to run).
    """
    name, _, which = reference.partition("@")
    if not name or not which:
        raise RegistryError(f"segment.learned_model {reference!r}: expected <model>@<alias> or <model>@<version>")
    mlflow_client = registry_client()
    if which.isdigit():
        try:
            mlflow_client.get_model_version(name, which)
        except MlflowException:
            raise RegistryError(f"no version {which} of the segmentation model {name!r}") from None
        return f"models:/{name}/{which}"
    version = alias_version(mlflow_client, name, which)  # None also when the model does not exist
    if version is None:
        raise RegistryError(
            f"the segmentation model {name!r} has no {which!r} version: train one with "
            "`liverlesion train-segmenter` (or name a version, segment.learned_model=<model>@<n>)"
        )
    return f"models:/{name}/{version}"


def download_cascade(model_uri: str) -> str:
    """The registered cascade's folder on this machine (``models:/<name>/<version>``)."""
    if not model_uri:
        raise ValueError("segment method learned needs a registered cascade: run `liverlesion train-segmenter`")
    use_tracking_store()
    return mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tempfile.mkdtemp(prefix="cascade-"))


def _exists(name: str) -> bool:
    try:
        registry_client().get_registered_model(name)
        return True
    except MlflowException:
        return False


def register_segmenter(name: str, run_id: str, summary: dict[str, float], lineage: dict[str, str]) -> dict[str, Any]:
    """Register the cascade logged under ``cascade/`` in run ``run_id``; make it champion if it is at least as good.

    Idempotent per run. Under the registry lock: the version is created with every tag at once, then
    the alias moves (and is read back). A failure before the alias moves deletes the new version.
    """
    mlflow_client = registry_client()
    with registry_lock(name, f"register segmenter from run {run_id}"):
        existing = mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        if existing:
            version = min(existing, key=lambda v: int(v.version))
            return {
                "model_name": name,
                "version": str(version.version),
                "created": False,
                "champion": alias_version(mlflow_client, name, CHAMPION),
            }
        if not _exists(name):
            mlflow_client.create_registered_model(
                name, description="liver and lesion U-Net cascade (segment.method: learned)"
            )
        tags = {
            **lineage,
            **{
                METRIC_TAG_PREFIX + k: f"{v:.{DECIMALS}f}"
                for k, v in summary.items()
                if isinstance(v, float) and v == v
            },
        }
        source = f"{mlflow.get_run(run_id).info.artifact_uri}/cascade"
        version = mlflow_client.create_model_version(name, source, run_id=run_id, tags=tags)
        try:
            current = alias_version(mlflow_client, name, CHAMPION)
            if current is None:
                decision, reason = "promoted", "first version"
            else:
                best = float(
                    mlflow_client.get_model_version(name, current).tags.get(METRIC_TAG_PREFIX + PRIMARY, "nan")
                )
                ours = float(summary[PRIMARY])
                promoted = not best == best or ours >= best
                decision = "promoted" if promoted else "kept"
                reason = f"test {PRIMARY} {ours:.3f} vs champion v{current} {best:.3f}"
            mlflow_client.set_model_version_tag(name, version.version, "decision", f"{decision}: {reason}")
            mlflow_client.set_model_version_tag(
                name, version.version, "decided_by", f"{acting_user()} at {timestamp()}"
            )
            if decision == "promoted":
                mlflow_client.set_registered_model_alias(name, CHAMPION, version.version)
                if alias_version(mlflow_client, name, CHAMPION) != str(version.version):
                    raise RegistryError(f"{name}: the {CHAMPION} alias did not move to v{version.version}")
        except BaseException:
            if alias_version(mlflow_client, name, CHAMPION) != str(version.version):
                mlflow_client.delete_model_version(name, version.version)
            raise
    log.info(f"registered {name} v{version.version}: {decision} ({reason})")
    return {
        "model_name": name,
        "version": str(version.version),
        "created": True,
        "decision": decision,
        "reason": reason,
        "champion": alias_version(mlflow_client, name, CHAMPION),
    }
