"""MLflow access for the steps: one tracking store (from the environment), one run per pipeline run."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import ActiveRun

from liverlesion import paths


def use_tracking_store() -> str:
    """Point MLflow at the project's store (``MLFLOW_TRACKING_URI`` or the state folder's SQLite)."""
    uri = paths.mlflow_tracking_uri()
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
    if paths.mlflow_tracking_uri().startswith("sqlite:"):
        location = paths.mlflow_artifact_root().resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def run_reports_dir(run_name: str) -> Path:
    """``<state>/reports/<pipeline run>/`` for files a person opens (plots, validation report)."""
    folder = paths.reports_dir() / run_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def zenml_run():
    """The current ZenML pipeline run (id and name)."""
    from zenml import get_step_context

    return get_step_context().pipeline_run



def start_tracked_run(experiment: str, label: str, profile: str, data_version: str, split_manifest_hash: str,
                      model: str, **tags: str) -> ActiveRun:
    """A new MLflow run named ``<label>-<profile>-<pipeline run>``, tagged with the lineage every run
    of this project carries (ZenML run, profile, data version, split hash, model) and ``tags``."""
    run = zenml_run()
    mlflow.set_experiment(experiment_id=ensure_experiment(experiment))
    active = mlflow.start_run(run_name=f"{label}-{profile}-{run.name}" if label else f"{profile}-{run.name}")
    mlflow.set_tags({"zenml_run_id": str(run.id), "zenml_run_name": run.name, "profile": profile,
                     "data_version": data_version, "split_manifest_hash": split_manifest_hash, "model": model, **tags})
    return active
