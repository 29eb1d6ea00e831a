"""The MLflow store of this project (from the environment) and its experiments."""

from __future__ import annotations

import mlflow

from liverlesion_ops import environment


def use_tracking_store() -> str:
    """Point MLflow at the project's store (``MLFLOW_TRACKING_URI`` or the state folder's SQLite)."""
    uri = environment.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it with artifacts in the state folder if new."""
    use_tracking_store()
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if environment.mlflow_tracking_uri().startswith("sqlite:"):
        location = environment.mlflow_artifact_root().resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)
