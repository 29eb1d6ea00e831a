"""Scheduled retraining: train only when what a model depends on changed, one run at a time, recorded.

``liverlesion retrain`` (``retrain``) fingerprints a training (``lineage.training_fingerprint``:
data version, training settings, code); if a registered version was trained on that fingerprint
there is nothing to do. Otherwise the training pipeline runs, its register step gates the new
version, and the outcome is recorded as an MLflow run tagged ``job=retrain`` (so is a no-op, and a
failure). A project-wide training lock keeps two overlapping runs from both training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from liverlesion.config import Profile
from liverlesion_ops import runs
from liverlesion_ops.datastore import DataStoreError, NotACohort
from liverlesion_ops.registry.store import CHAMPION, acting_user, alias_version, registry_client, timestamp
from liverlesion_ops.tracking import ensure_experiment


def retrain(profile: Profile, force: bool = False, data: Path | None = None) -> dict[str, Any]:
    """Train if the data (``data``, or the project's ``data/``), the training settings or the code changed since
    a registered version was trained; record the outcome (an MLflow run, ``job=retrain``), failures too.

    Returns:
        The outcome: ``status`` (``nothing-to-do`` or ``trained``), the fingerprint, the version and its
        decision, the champion, the seconds it took and its MLflow run.

    Raises:
        LockHeld: another training holds the project's training lock.
        DataStoreError, PipelineFailed: the work failed (recorded as a failed retrain first).
        WeightsMissing: the profile asks for pre-trained weights that are not here.
    """
    started = time.perf_counter()
    name = profile.register.model_name
    outcome: dict[str, Any] = {"profile": profile.name, "model_name": name}
    with runs.training_lock(f"liverlesion retrain --profile {profile.name}"):
        try:
            version = runs.cohort(profile, data)
            parameters = runs.training_parameters(profile, version)
            outcome.update(
                fingerprint=parameters["fingerprint"],
                data_version=version.hash,
                code_version=parameters["code_version"],
            )
            trained = trained_on(name, parameters["fingerprint"])
            if trained is not None and not force:
                outcome.update(
                    status="nothing-to-do",
                    version=str(trained.version),
                    decision=trained.tags.get("decision"),
                    champion=champion_of(name),
                    reason=f"v{trained.version} was trained on this fingerprint (data {version.hash[:12]}, "
                    f"{parameters['code_version']}, profile {profile.name})",
                )
            else:
                runs.require_weights(runs.training_weights(profile))
                pipeline_run = runs.run_pipeline(runs.TRAINING, force, **parameters)
                registration = runs.step_output(pipeline_run, "register", "registration")
                outcome.update(
                    status="trained",
                    version=registration["version"],
                    decision=registration["decision"],
                    reason=registration["reason"],
                    champion=registration["aliases"].get(CHAMPION),
                    zenml_run_name=pipeline_run.name,
                )
        except NotACohort:  # a mistake in the command line, not a failed retraining
            raise
        except (DataStoreError, runs.PipelineFailed) as err:  # a scheduler's failure: recorded, then raised
            outcome.update(status="failed", error=str(err), seconds=round(time.perf_counter() - started, 1))
            record(profile.register.experiment, outcome)
            raise
        outcome["seconds"] = round(time.perf_counter() - started, 1)
        outcome["mlflow_run_id"] = record(profile.register.experiment, outcome)
    return outcome


def trained_on(name: str, fingerprint: str):
    """The first registered version trained on ``fingerprint`` (None: never trained on it)."""
    from mlflow.exceptions import MlflowException

    try:
        found = registry_client().search_model_versions(f"name='{name}' and tags.fingerprint='{fingerprint}'")
    except MlflowException:
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def champion_of(name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return alias_version(registry_client(), name, CHAMPION)
    except MlflowException:
        return None


def record(experiment: str, outcome: dict[str, Any]) -> str:
    """The retrain decision as an MLflow run (``job=retrain``): status, fingerprint, version, decision."""
    mlflow_client = registry_client()
    failed = outcome["status"] == "failed"
    tags = {
        "job": "retrain",
        "retrain_status": outcome["status"],
        "decided_by": acting_user(),
        "decided_at": timestamp(),
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
