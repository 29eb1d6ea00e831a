"""Running the project's pipelines: the data a run uses, its parameters, the ZenML run itself, and its outputs.

What ``liverlesion run``, ``compare``, ``train-segmenter``, ``export``, ``retrain``, ``predict-batch`` and
``schedule`` share, as library calls: each command parses its options, calls these, and reports.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from liverlesion.config import Profile
from liverlesion.lineage import code_version, training_fingerprint
from liverlesion.progress import progress_printer
from liverlesion_ops import environment, project
from liverlesion_ops.datastore import DataVersion, external_data, prepare_data
from liverlesion_ops.registry.locks import machine_lock

log = logging.getLogger(__name__)

#: the pipelines of ``liverlesion_ops.pipelines``, by the name ZenML knows them by
TRAINING, COMPARISON, SEGMENTER, PATCHES, BATCH_INFERENCE = (
    "training_pipeline",
    "comparison_pipeline",
    "segmenter_pipeline",
    "patches_pipeline",
    "batch_inference_pipeline",
)


class PipelineFailed(RuntimeError):
    """A pipeline run failed; the message names the run and the failed steps, ``details`` says more."""

    def __init__(self, message: str, details: list[str]):
        super().__init__(message)
        self.details = details


def cohort(profile: Profile, data: Path | None = None, regenerate: bool = False) -> DataVersion:
    """The cohort a run uses: ``data`` (any cohort folder, by its content hash), or the project's DVC-tracked
    ``data/``, restored or regenerated from the profile's ``cohort`` section and pushed to the DVC remote.

    Raises:
        DataStoreError: the folder holds no cohort, or DVC failed (naming the remote).
    """
    if data is not None and data.resolve() != project.data_dir().resolve():
        return external_data(data)
    return prepare_data(
        project.project_root(), profile.cohort, environment.dvc_remote(), progress_printer("generate"), regenerate
    )


def current_code_version() -> str:
    """The hash of the installed training code (``project.training_code``)."""
    return code_version(project.training_code())


def segmenter_uri(profile: Profile) -> str:
    """The registered cascade a ``learned`` run segments with (``models:/<name>/<version>``), else "".

    Raises:
        RegistryError: no such cascade (naming what to run).
    """
    if profile.segment.method != "learned":
        return ""
    from liverlesion_ops.segmenters import resolve_segmenter

    return resolve_segmenter(profile.segment.learned_model)


def pipeline_parameters(profile: Profile, version: DataVersion) -> dict[str, Any]:
    """What every data-to-patches pipeline takes: the data, its version, the profile, the code's version, and
    the cascade a learned segmentation uses."""
    return {
        "data_dir": str(version.path),
        "data_version": version.hash,
        "profile": profile,
        "code_version": current_code_version(),
        "segmenter_uri": segmenter_uri(profile),
    }


def training_parameters(profile: Profile, version: DataVersion) -> dict[str, Any]:
    """The training pipeline's parameters: ``pipeline_parameters`` and the keys of what a model depends on
    (its training settings and fingerprint)."""
    parameters = pipeline_parameters(profile, version)
    settings = profile.training_settings()
    if parameters["segmenter_uri"]:  # the model depends on the cascade that found its lesions
        settings["segment"]["resolved_model"] = parameters["segmenter_uri"]
    fingerprint = training_fingerprint(version.hash, settings, parameters["code_version"])
    return {**parameters, "training_settings": settings, "fingerprint": fingerprint}


class WeightsMissing(ValueError):
    """Pre-trained weights a profile asks for are not on this machine (they cannot be downloaded here)."""


def require_weights(entries: list[tuple[str, str | None, str]], hint: str = "") -> None:
    """Stop before any work if weights are asked for but absent: ``entries`` are ``(what, weights, backbone)``.

    Raises:
        WeightsMissing: naming each setting, the file it needs and where to place it (and ``hint``).
    """
    from liverlesion.model import WeightsNotFoundError, resolve_weights

    problems = []
    for what, weights, backbone in entries:
        try:
            resolve_weights(weights, backbone)
        except WeightsNotFoundError as err:
            problems.append(f"{what}: {err}")
    if problems:
        raise WeightsMissing("; ".join(problems + ([hint] if hint else [])))


def training_weights(profile: Profile) -> list[tuple[str, str | None, str]]:
    """What ``require_weights`` checks for a training run of ``profile``."""
    return [("train.weights", profile.train.weights, profile.train.backbone)]


@contextmanager
def training_lock(what: str) -> Iterator[None]:
    """The project's training lock: held by ``run``, ``retrain`` and ``train-segmenter`` for their whole
    length; a second one fails at once, naming the holder (``locks.LockHeld``)."""
    with machine_lock("training", project.project_root().name, what, timeout=0):
        yield


def run_pipeline(name: str, no_cache: bool = False, **parameters: Any):
    """Run pipeline ``name`` of ``liverlesion_ops.pipelines`` on the active ZenML stack; return the finished run.

    Raises:
        PipelineFailed: naming the run, the failed step(s), a tracking server's refusal, and the validation
            report when validation stopped it.
    """
    from zenml.client import Client
    from zenml.enums import ExecutionStatus

    from liverlesion_ops import pipelines
    from liverlesion_ops.pipelines.placement import run_options, runs_in_containers
    from liverlesion_ops.tracking import server_problem_in

    # called under the training lock: any local run still "running" was killed (a cluster's may still be running)
    if name == TRAINING and not runs_in_containers():
        close_killed_runs(name)
    try:
        pipeline_run = getattr(pipelines, name).with_options(enable_cache=not no_cache, **run_options())(**parameters)
    except Exception as err:  # the step's own error and log were printed above by ZenML
        last = Client().get_pipeline(name).last_run
        failed = [step for step, s in last.steps.items() if s.status == ExecutionStatus.FAILED]
        details = []
        for step in failed:  # a step that failed on the tracking server: say so in one line
            info = last.steps[step].exception_info
            if info is not None and (problem := server_problem_in((info.traceback.strip().splitlines() or [""])[-1])):
                details.append(f"{step}: {problem}")
        report = project.reports_dir() / last.name / "validation.md"
        if "validate" in failed and report.exists():
            details.append(f"nothing was trained or registered; the validation report: {report}")
        raise PipelineFailed(
            f"pipeline run {last.name} failed in step(s) {', '.join(failed) or '?'}: {err}", details
        ) from None
    return Client().get_pipeline_run(pipeline_run.id)


def step_output(pipeline_run, step: str, name: str) -> Any:
    """The artifact ``name`` that step ``step`` of a finished run wrote, loaded."""
    return pipeline_run.steps[step].outputs[name][0].load()


def cached_steps(pipeline_run) -> list[str]:
    from zenml.enums import ExecutionStatus

    return [name for name, s in pipeline_run.steps.items() if s.status == ExecutionStatus.CACHED]


def close_killed_runs(pipeline: str) -> list[str]:
    """Mark the runs of a killed process as failed (ZenML) and killed (their MLflow runs); return their names.

    Only under the training lock: no other training of this project can be alive, so a training run
    still "in progress" is what a SIGKILL or a crash left. ZenML's local store has no heartbeat and
    would show it running forever. Its completed steps stay cached; its unfinished ones published
    nothing, so nothing partial is ever reused.
    """
    from mlflow.tracking import MlflowClient
    from zenml.client import Client
    from zenml.enums import ExecutionStatus
    from zenml.models import PipelineRunUpdate, StepRunUpdate

    client = Client()
    stale = client.list_pipeline_runs(pipeline_name=pipeline, in_progress=True, size=100).items
    if not stale:
        return []
    now = datetime.now(UTC)
    tracking = MlflowClient()
    for run in stale:
        for step in run.steps.values():
            if not step.status.is_finished:
                client.zen_store.update_run_step(step.id, StepRunUpdate(status=ExecutionStatus.FAILED, end_time=now))
        client.zen_store.update_run(
            run.id, PipelineRunUpdate(status=ExecutionStatus.FAILED, status_reason="its process was killed")
        )
        for experiment in tracking.search_experiments():
            for left in tracking.search_runs(
                [experiment.experiment_id], f"attributes.status = 'RUNNING' and tags.zenml_run_id = '{run.id}'"
            ):
                tracking.set_terminated(left.info.run_id, "KILLED")
        log.warning(
            "pipeline run %s was left running by a killed process: marked failed (its MLflow runs killed); "
            "its completed steps are reused from cache",
            run.name,
        )
    return [run.name for run in stale]


def training_summary(pipeline_run, seconds: float) -> dict[str, Any]:
    """What a finished training run produced, as JSON: the registration, the test metrics with their intervals,
    the one-feature baselines, an automatic segmentation's measures, and where the reports are."""
    from zenml.enums import ExecutionStatus

    registration = step_output(pipeline_run, "register", "registration")
    evaluation = step_output(pipeline_run, "evaluate", "test_metrics")
    segmentation = step_output(pipeline_run, "evaluate_segmentation", "segmentation_metrics")
    retrained = pipeline_run.steps["register"].status != ExecutionStatus.CACHED and registration["created"]
    return {
        "zenml_run_name": pipeline_run.name,
        "status": pipeline_run.status.value,
        "seconds": round(seconds, 1),
        "retrained": retrained,
        "cached_steps": cached_steps(pipeline_run),
        "registration": {k: registration.get(k) for k in ("model_name", "version", "decision", "reason", "aliases")},
        "test": {
            "lesions": evaluation["n_test"],
            "metrics": evaluation["metrics"],
            "intervals": evaluation.get("intervals", {}),
            "mean_hu_threshold_accuracy": evaluation["mean_hu_threshold_accuracy"],
            "mean_hu_best_threshold_accuracy": evaluation["mean_hu_best_threshold_accuracy"],
            "threshold": evaluation["threshold"],
            "threshold_chosen": (evaluation.get("operating_point") or {}).get("chosen", ""),
            "calibration": (evaluation.get("calibration") or {}).get("method", "none"),
            "calibration_metrics": evaluation.get("calibration_metrics", {}),
            "calibration_intervals": evaluation.get("calibration_intervals", {}),
        },
        "segmentation": segmentation,
        "reports": _reports(
            Path(evaluation["plots"]["roc_curve"]).parent, (registration.get("lineage") or {}).get("mlflow_run_id")
        ),
    }


def _reports(folder: Path, mlflow_run_id: str | None) -> str:
    """Where a person finds the run's plots: the reports folder, or, where the steps ran in containers (their
    folders went with them), the same files in the MLflow run's artifacts."""
    if folder.is_dir():
        return str(folder)
    return f"the artifacts of MLflow run {mlflow_run_id}, evaluation/ (the steps ran in containers)"
