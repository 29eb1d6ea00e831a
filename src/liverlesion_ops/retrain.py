"""Scheduled retraining: train only when what a model depends on changed, one run at a time, recorded.

``liverlesion retrain`` (see the CLI) fingerprints a training (``lineage.training_fingerprint``:
data version, training settings, code); if a registered version was trained on that fingerprint
there is nothing to do. Otherwise the training pipeline runs, its register step gates the new
version, and the outcome is recorded as an MLflow run tagged ``job=retrain`` (so is a no-op, and a
failure). A project-wide training lock keeps two overlapping runs from both training.
"""

from __future__ import annotations

import json
from typing import Any

from liverlesion import paths
from liverlesion_ops.registry import CHAMPION, alias_version, client, exclusive, now, who
from liverlesion_ops.tracking import ensure_experiment

#: exit codes of ``liverlesion retrain`` (documented in its help and the README)
EXIT_DONE, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 3


def training_lock(what: str):
    """The project's training lock: held by ``run`` and ``retrain`` (and imports into ``data/``) for
    their whole length; a second one fails at once, naming the holder (``RegistryError``)."""
    return exclusive("training", paths.project_root().name, what, timeout=0)


def trained_on(name: str, fingerprint: str):
    """The first registered version trained on ``fingerprint`` (None: never trained on it)."""
    from mlflow.exceptions import MlflowException

    try:
        found = client().search_model_versions(f"name='{name}' and tags.fingerprint='{fingerprint}'")
    except MlflowException:
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def champion_of(name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return alias_version(client(), name, CHAMPION)
    except MlflowException:
        return None


def record(experiment: str, outcome: dict[str, Any]) -> str:
    """The retrain decision as an MLflow run (``job=retrain``): status, fingerprint, version, decision."""
    mlflow_client = client()
    failed = outcome["status"] == "failed"
    tags = {
        "job": "retrain",
        "retrain_status": outcome["status"],
        "decided_by": who(),
        "decided_at": now(),
        **{
            k: str(v)
            for k, v in outcome.items()
            if k
            in (
                "fingerprint",
                "data_version",
                "code_version",
                "profile",
                "model_name",
                "version",
                "decision",
                "reason",
                "champion",
                "zenml_run_name",
                "error",
            )
            and v is not None
        },
    }
    run = mlflow_client.create_run(ensure_experiment(experiment), run_name=f"retrain-{outcome['status']}", tags=tags)
    mlflow_client.log_metric(run.info.run_id, "seconds", float(outcome.get("seconds", 0.0)))
    mlflow_client.log_text(run.info.run_id, json.dumps(outcome, indent=2, sort_keys=True, default=str), "retrain.json")
    mlflow_client.set_terminated(run.info.run_id, "FAILED" if failed else "FINISHED")
    return run.info.run_id
