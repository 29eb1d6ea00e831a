"""MLflow access for the steps: one tracking store (from the environment), one run per pipeline run."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import ActiveRun

from liverlesion import paths
from liverlesion_ops.tracking import ensure_experiment, use_tracking_store  # noqa: F401 (the steps' import point)


def run_reports_dir(run_name: str) -> Path:
    """``<state>/reports/<pipeline run>/`` for files a person opens (plots, validation report)."""
    folder = paths.reports_dir() / run_name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def zenml_run():
    """The current ZenML pipeline run (id and name)."""
    from zenml import get_step_context

    return get_step_context().pipeline_run


def start_tracked_run(
    experiment: str, label: str, profile: str, data_version: str, split_manifest_hash: str, model: str, **tags: str
) -> ActiveRun:
    """A new MLflow run named ``<label>-<profile>-<pipeline run>``, tagged with the lineage every run
    of this project carries (ZenML run, profile, data version, split hash, model) and ``tags``."""
    run = zenml_run()
    mlflow.set_experiment(experiment_id=ensure_experiment(experiment))
    active = mlflow.start_run(run_name=f"{label}-{profile}-{run.name}" if label else f"{profile}-{run.name}")
    mlflow.set_tags(
        {
            "zenml_run_id": str(run.id),
            "zenml_run_name": run.name,
            "profile": profile,
            "data_version": data_version,
            "split_manifest_hash": split_manifest_hash,
            "model": model,
            **tags,
        }
    )
    return active
