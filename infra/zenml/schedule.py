"""Schedule the training pipeline on an orchestrator that runs ZenML schedules (Kubeflow, Kubernetes,
Vertex, SageMaker, AzureML, Airflow); on one machine use cron or systemd instead (``infra/cron``,
``infra/systemd``), since ZenML's local orchestrator raises on a schedule.

    python infra/zenml/schedule.py --cron "17 2 * * *" [--profile quick] [--dry-run]

The cron expression is given in the usual five fields; for Kubeflow, whose cron has six fields with
seconds first, a ``0`` is put in front. A schedule freezes the data version and the code it was
created with (ZenML schedules a pipeline with fixed parameters); on a cluster, prefer a scheduled
``liverlesion retrain`` job, which fingerprints what changed each time. Exit codes: 0 scheduled (or
printed with ``--dry-run``); 2 a bad expression or an orchestrator that cannot schedule.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

#: orchestrator flavours that accept a ZenML ``Schedule`` (ZenML 0.98; ``kubeflow_gpu``: infra/kubeflow)
SCHEDULING_FLAVORS = ("kubeflow", "kubeflow_gpu", "kubernetes", "vertex", "sagemaker", "azureml", "airflow")
#: those whose cron has six fields, seconds first
SIX_FIELD_CRON_FLAVORS = ("kubeflow", "kubeflow_gpu")


def cron_for(flavor: str, expression: str) -> str:
    """The cron expression in the form the orchestrator reads (Kubeflow: seconds first, six fields)."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"{expression!r}: give five cron fields (minute hour day month weekday)")
    return " ".join(["0", *fields]) if flavor in SIX_FIELD_CRON_FLAVORS else expression


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cron", default="17 2 * * *", help="five-field cron expression (default: 02:17 daily)")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--flavor", help="orchestrator flavour (default: the active ZenML stack's)")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="the cohort folder as the steps see it (on Kubeflow: on the shared volume the pods "
        "mount, e.g. /data/cohort); default: the checkout's data/ (DVC), for a local stack",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the schedule, do not create it")
    args = parser.parse_args(argv)

    from liverlesion_ops.environment import configure_environment

    configure_environment()
    flavor = args.flavor
    if flavor is None:
        from zenml.client import Client

        flavor = Client().active_stack.orchestrator.flavor
    try:
        cron = cron_for(flavor, args.cron)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"orchestrator": flavor, "cron_expression": cron, "profile": args.profile}))
    if args.dry_run:
        return 0
    if flavor not in SCHEDULING_FLAVORS:
        print(
            f"error: the {flavor} orchestrator does not run ZenML schedules; on one machine use "
            "infra/cron or infra/systemd (liverlesion retrain), or register a stack whose orchestrator is one "
            f"of {', '.join(SCHEDULING_FLAVORS)}",
            file=sys.stderr,
        )
        return 2
    from liverlesion.config import load_profile
    from liverlesion_ops.cli import _prepare_data, _training_parameters

    if args.data is None and flavor in SIX_FIELD_CRON_FLAVORS:
        print(
            "error: on Kubeflow the steps run in pods that cannot see this checkout's data/: give --data, the "
            "cohort on the shared volume the pods mount (infra/kubeflow/README.md)",
            file=sys.stderr,
        )
        return 2
    config = load_profile(args.profile)
    parameters = _training_parameters(config, _prepare_data(config, data=args.data))
    schedule_training(parameters, cron, name=f"liverlesion-{config.name}")
    return 0


def schedule_training(parameters: dict, cron: str, name: str) -> None:
    """Schedule the training pipeline with ``parameters`` on the active stack, as ``liverlesion run`` composes it
    (the checkout as ZenML's source root; the step image where steps run in containers, ``pipelines.placement``)."""
    from zenml.config.schedule import Schedule
    from zenml.utils import source_utils

    from liverlesion import paths

    code = str(paths.code_root())
    sys.path.insert(0, code)
    source_utils.set_custom_source_root(code)
    from pipelines import training_pipeline
    from pipelines.placement import run_options

    training_pipeline.with_options(schedule=Schedule(name=name, cron_expression=cron), **run_options())(**parameters)


if __name__ == "__main__":
    sys.exit(main())
