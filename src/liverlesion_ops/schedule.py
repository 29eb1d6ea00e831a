"""Schedule the training pipeline on an orchestrator that runs ZenML schedules (Kubeflow, Kubernetes, Vertex,
SageMaker, AzureML, Airflow): ``liverlesion schedule``. On one machine use cron or systemd instead
(``infra/cron``, ``infra/systemd``: ``liverlesion retrain``), since ZenML's local orchestrator raises on a
schedule.

The cron expression is given in the usual five fields; for Kubeflow, whose cron has six fields with
seconds first, a ``0`` is put in front. A schedule freezes the data version and the code it was
created with (ZenML schedules a pipeline with fixed parameters); on a cluster, prefer a scheduled
``liverlesion retrain`` job, which fingerprints what changed each time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: orchestrator flavours that accept a ZenML ``Schedule`` (ZenML 0.98; ``kubeflow_gpu``: ``liverlesion_ops.kubeflow``)
SCHEDULING_FLAVORS = ("kubeflow", "kubeflow_gpu", "kubernetes", "vertex", "sagemaker", "azureml", "airflow")
#: those whose cron has six fields, seconds first
SIX_FIELD_CRON_FLAVORS = ("kubeflow", "kubeflow_gpu")


class ScheduleError(ValueError):
    """A schedule that cannot be made as asked (a bad expression, an orchestrator that cannot schedule)."""


def cron_for(flavor: str, expression: str) -> str:
    """The cron expression in the form the orchestrator reads (Kubeflow: seconds first, six fields).

    Raises:
        ScheduleError: not five fields.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise ScheduleError(f"{expression!r}: give five cron fields (minute hour day month weekday)")
    return " ".join(["0", *fields]) if flavor in SIX_FIELD_CRON_FLAVORS else expression


def active_flavor() -> str:
    """The orchestrator flavour of the active ZenML stack."""
    from zenml.client import Client

    return Client().active_stack.orchestrator.flavor


def check_schedulable(flavor: str, data: Path | None) -> None:
    """Refuse, in words, what cannot be scheduled: a local orchestrator, or Kubeflow without a shared cohort.

    Raises:
        ScheduleError: naming what to do instead.
    """
    if flavor not in SCHEDULING_FLAVORS:
        raise ScheduleError(
            f"the {flavor} orchestrator does not run ZenML schedules; on one machine use infra/cron or "
            "infra/systemd (liverlesion retrain), or register a stack whose orchestrator is one of "
            f"{', '.join(SCHEDULING_FLAVORS)}"
        )
    if data is None and flavor in SIX_FIELD_CRON_FLAVORS:
        raise ScheduleError(
            "on Kubeflow the steps run in pods that cannot see this project's data/: give --data, the cohort on "
            "the shared volume the pods mount (infra/kubeflow/README.md)"
        )


def schedule_training(parameters: dict[str, Any], cron: str, name: str) -> None:
    """Schedule the training pipeline with ``parameters`` (``runs.training_parameters``) on the active stack, as
    ``liverlesion run`` sends it (the step image where steps run in containers)."""
    from zenml.config.schedule import Schedule

    from liverlesion_ops.pipelines import training_pipeline
    from liverlesion_ops.pipelines.placement import run_options

    training_pipeline.with_options(schedule=Schedule(name=name, cron_expression=cron), **run_options())(**parameters)
