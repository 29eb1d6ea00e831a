"""Commands for a team and a cluster: ``server`` (the team MLflow server), ``stack`` (the Kubeflow stack),
``schedule`` (the training pipeline on an orchestrator that runs schedules)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from liverlesion_ops.cli.common import (
    DEFAULT_PROFILE,
    EXIT_FAILED,
    EXIT_OK,
    DataOption,
    JsonOption,
    ProfileOption,
    SetOption,
    fail,
    load_profile,
    print_json,
    say,
    setup,
    warn,
)

HELP_PANEL = "Team and cluster"
#: ``server status``: not running (its own code, as ``systemctl status`` has)
EXIT_NOT_RUNNING = 3

server_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="The team MLflow server: PostgreSQL (embedded, or yours) and `mlflow server` with basic authentication "
    "and proxied artifacts (docs/team.md). Every subcommand takes --data, the server's folder (default: "
    "$LIVERLESION_HOME/team-mlflow).",
)
stack_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="ZenML stacks of the project: the Kubeflow stack, the containers stack, the step image (docs/team.md).",
)

ServerDataOption = Annotated[
    Path | None,
    typer.Option("--data", help="the server's data folder (default: $LIVERLESION_HOME/team-mlflow)"),
]


def register(app: typer.Typer) -> None:
    app.add_typer(server_app, name="server", rich_help_panel=HELP_PANEL)
    app.add_typer(stack_app, name="stack", rich_help_panel=HELP_PANEL)
    app.command(name="schedule", rich_help_panel=HELP_PANEL)(schedule)


def _server_data(data: Path | None) -> Path:
    from liverlesion_ops.team_server import default_data

    if data is not None:
        return data
    try:
        return default_data()
    except FileNotFoundError as err:
        raise fail(f"{err}; or give the server's folder with --data") from None


@server_app.command("start")
def server_start(
    data: ServerDataOption = None,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="interface to listen on (0.0.0.0: every one; put TLS in front beyond a trusted network)"
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", help="HTTP port; 0 picks a free one below the kernel's ephemeral range")
    ] = 5000,
    workers: Annotated[int, typer.Option("--workers", help="server worker processes")] = 2,
    postgres_uri: Annotated[
        str | None,
        typer.Option(
            "--postgres-uri",
            help="an existing PostgreSQL, postgresql://USER@HOST[:PORT][/DB] (its password in PGPASSWORD); "
            "default: the embedded one",
        ),
    ] = None,
    database: Annotated[str, typer.Option("--database", help="database name; users go to NAME_auth")] = "mlflow",
    artifacts_destination: Annotated[
        str | None,
        typer.Option("--artifacts-destination", help="where the server stores artifacts (default: DATA/artifacts)"),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option("--allowed-hosts", help="Host headers accepted beyond localhost and private addresses"),
    ] = None,
    wait: Annotated[float, typer.Option("--wait", help="seconds to wait for the server to answer")] = 180.0,
    as_json: JsonOption = False,
) -> None:
    """Start PostgreSQL and the authenticated MLflow server. Needs MLFLOW_AUTH_ADMIN_PASSWORD (the admin's
    password, at least 12 characters; never written to a file).

    Example: `MLFLOW_AUTH_ADMIN_PASSWORD=... liverlesion server start --host 0.0.0.0 --port 5000`.
    """
    from liverlesion_ops import team_server

    record = team_server.start(
        _server_data(data), host, port, workers, postgres_uri, database, artifacts_destination, allowed_hosts, wait
    )
    if as_json:
        print_json(record)
        return
    if record["already_running"]:
        say(
            f"the team MLflow server is already running at {record['url']} (pid {record['pid']}; data {record['data']})"
        )
        return
    postgres = record["postgres"]
    where = f"PostgreSQL {'embedded in ' + postgres['pgdata'] if postgres['managed'] else postgres['uri']}"
    say(
        f"the team MLflow server is running at {record['url']} (pid {record['pid']}; {where}; artifacts "
        f"{record['artifacts']}; log {record['log']})"
    )
    if not record["admin_accepted"]:
        warn(
            f"{record['url']} refused {record['admin']!r} with {team_server.ADMIN_PASSWORD_VAR}: the admin was created "
            "at an earlier start with another password (the variable is only read to create it); change it with "
            "MLflow's update-password API"
        )


@server_app.command("stop")
def server_stop(data: ServerDataOption = None, as_json: JsonOption = False) -> None:
    """Stop the server (and the embedded PostgreSQL)."""
    from liverlesion_ops import team_server

    result = team_server.stop(_server_data(data))
    if as_json:
        print_json(result)
    elif not result["was_started"]:
        say(f"no team MLflow server was started in {result['data']}")
    else:
        say(
            f"{'stopped' if result['stopped'] else 'was not running:'} the team MLflow server of {result['data']}"
            + ("; stopped its PostgreSQL" if result["postgres_stopped"] else "")
        )


@server_app.command("status")
def server_status(data: ServerDataOption = None, as_json: JsonOption = False) -> None:
    """Is it running and answering? Exit codes: 0 running and answering; 1 running, not answering; 3 not running."""
    from liverlesion_ops import team_server

    report = team_server.status(_server_data(data))
    if as_json:
        print_json(report)
    elif report["url"] is None:
        say(f"no team MLflow server was started in {report['data']}")
    else:
        state = (
            "running"
            if report["answering"]
            else "running, not answering /health"
            if report["running"]
            else ("not running")
        )
        say(f"{report['url']}: {state} (data {report['data']}; log {report['log']})")
    if not report["running"]:
        raise typer.Exit(EXIT_NOT_RUNNING)
    raise typer.Exit(EXIT_OK if report["answering"] else EXIT_FAILED)


@server_app.command("add-user")
def server_add_user(
    name: Annotated[str, typer.Argument(help="the user's name")],
    role: Annotated[
        str, typer.Option("--role", help="reader: reads everything, changes nothing; editor: runs pipelines, decides")
    ],
    data: ServerDataOption = None,
    url: Annotated[str | None, typer.Option("--url", help="the server (default: the one started in --data)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a user (password from MLFLOW_NEW_USER_PASSWORD, or asked) or update an existing one, and give it
    one team role, as the admin (MLFLOW_AUTH_ADMIN_USERNAME, default admin; MLFLOW_AUTH_ADMIN_PASSWORD).

    Example: `MLFLOW_NEW_USER_PASSWORD=... liverlesion server add-user alice --role editor`.
    """
    from liverlesion_ops import team_server

    result = team_server.add_user(_server_data(data), name, role, url)
    if as_json:
        print_json(result)
        return
    say(
        f"{'created' if result['created'] else 'updated'} user {name} on {result['url']}: role {role} "
        f"({result['grants']})"
    )


def _register_stack(plan_of, options, dry_run: bool) -> None:
    """The stack ``plan_of(options, environment)`` printed as the equivalent ``zenml`` commands, then (unless
    ``dry_run``) registered and made the active stack; a configuration ZenML refuses is one line, exit 2."""
    from liverlesion_ops.kubeflow import stack as stacks

    try:
        plan = plan_of(options, dict(os.environ))
        say("\n".join(stacks.commands(plan)))
        if dry_run:
            return
        stacks.register(plan)
    except (ValueError, KeyError) as err:  # a configuration ZenML refuses, a flavour it does not know
        raise fail(str(err).strip("'\"")) from None
    say(f"registered and activated the ZenML stack {plan.stack}; `zenml stack set default` switches back")


@stack_app.command("register-kubeflow")
def stack_register_kubeflow(
    artifact_store: Annotated[str, typer.Option("--artifact-store", help="s3://BUCKET/PATH or gs://BUCKET/PATH")],
    registry: Annotated[
        str, typer.Option("--registry", help="container registry the step image is pushed to and pulled from")
    ],
    mlflow_uri: Annotated[str, typer.Option("--mlflow-uri", help="the team MLflow server")],
    kubeflow_host: Annotated[
        str | None, typer.Option("--kubeflow-host", help="the KFP API of a multi-tenant Kubeflow (…/pipeline)")
    ] = None,
    kube_context: Annotated[
        str | None, typer.Option("--kube-context", help="or a kubectl context whose cluster runs Kubeflow Pipelines")
    ] = None,
    kubeflow_namespace: Annotated[
        str | None, typer.Option("--kubeflow-namespace", help="the namespace KFP is deployed in (ZenML's: kubeflow)")
    ] = None,
    user_namespace: Annotated[
        str | None, typer.Option("--user-namespace", help="the Kubeflow profile namespace runs go to")
    ] = None,
    s3_endpoint: Annotated[
        str | None, typer.Option("--s3-endpoint", help="the endpoint of an S3-compatible store (MinIO, Ceph)")
    ] = None,
    gpu_resource: Annotated[
        str, typer.Option("--gpu-resource", help="the extended resource the train step asks for")
    ] = "nvidia.com/gpu",
    gpu_node_selector: Annotated[
        list[str] | None,
        typer.Option("--gpu-node-selector", metavar="LABEL=VALUE", help="a node label of the GPU nodes (repeatable)"),
    ] = None,
    gpu_toleration: Annotated[
        list[str] | None,
        typer.Option(
            "--gpu-toleration", metavar="KEY[=VALUE]:EFFECT", help="a taint of the GPU nodes to tolerate (repeatable)"
        ),
    ] = None,
    pvc_mount: Annotated[
        list[str] | None,
        typer.Option(
            "--pvc-mount",
            metavar="CLAIM=PATH",
            help="a persistent volume claim every step's pod mounts (repeatable): the cohort's shared volume",
        ),
    ] = None,
    image_builder: Annotated[
        str, typer.Option("--image-builder", help="local (Docker where the run starts) or kaniko (in the cluster)")
    ] = "local",
    kaniko_context: Annotated[str | None, typer.Option("--kaniko-context", help="kubectl context of kaniko")] = None,
    kaniko_namespace: Annotated[str, typer.Option("--kaniko-namespace")] = "zenml-kaniko",
    prefix: Annotated[str, typer.Option("--prefix", help="prefix of the component names")] = "liverlesion",
    stack: Annotated[str | None, typer.Option("--stack", help="the stack's name (default: PREFIX-kubeflow)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the equivalent zenml commands, change nothing")] = (
        False
    ),
) -> None:
    """Register the Kubeflow stack (orchestrator, artifact store, registry, image builder, MLflow tracker and
    registry, the secrets) in ZenML and make it the active stack. Credentials come from the environment
    (MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and
    are stored as ZenML secrets, never in git nor on the command line.

    Example: `liverlesion stack register-kubeflow --kubeflow-host https://kf.example.org/pipeline
    --artifact-store s3://bucket/zenml --registry ghcr.io/org --mlflow-uri https://mlflow.example.org --dry-run`.
    """
    from liverlesion_ops.kubeflow import stack as kubeflow

    setup(tracking=False)
    options = kubeflow.StackOptions(
        artifact_store=artifact_store,
        registry=registry,
        mlflow_uri=mlflow_uri,
        kubeflow_host=kubeflow_host,
        kube_context=kube_context,
        kubeflow_namespace=kubeflow_namespace,
        user_namespace=user_namespace,
        s3_endpoint=s3_endpoint,
        gpu_resource=gpu_resource,
        gpu_node_selector=tuple(gpu_node_selector or ()),
        gpu_toleration=tuple(gpu_toleration or ()),
        pvc_mount=tuple(pvc_mount or ()),
        image_builder=image_builder,
        kaniko_context=kaniko_context,
        kaniko_namespace=kaniko_namespace,
        prefix=prefix,
        stack=stack,
    )
    _register_stack(kubeflow.plan, options, dry_run)


@stack_app.command("image")
def stack_image(
    variant: Annotated[
        str, typer.Option("--variant", help="cpu (requirements.lock, TensorFlow) or gpu (the GPU lock, JAX on CUDA)")
    ] = "cpu",
    tag: Annotated[
        str | None, typer.Option("--tag", help="the image's name (default: liverlesion-step:VARIANT)")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="the base image (default: python:3.11-slim-bookworm for cpu, NVIDIA's CUDA 12.9 runtime for gpu)",
        ),
    ] = None,
    local_base: Annotated[
        bool,
        typer.Option(
            "--local-base",
            help="make the base here with debootstrap (Debian 12, from Debian's packages): no image registry needed",
        ),
    ] = False,
    rebuild_base: Annotated[bool, typer.Option("--rebuild-base", help="make the local base again")] = False,
    ca_bundle: Annotated[
        Path | None,
        typer.Option("--ca-bundle", help="CA certificates for the downloads, a build secret (default: $SSL_CERT_FILE)"),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Build the step image from infra/kubeflow/Dockerfile with Docker (BuildKit): the locked requirements and
    the project installed; no credential nor CA bundle in any layer (docs/team.md).

    Example: `liverlesion stack image --local-base` (the CPU image the containers stack runs, built where no image
    registry is reachable).
    """
    from liverlesion_ops.kubeflow import image

    try:
        built = image.build(image.checkout(), variant, tag, base, local_base, rebuild_base, ca_bundle)
    except ValueError as err:
        raise fail(str(err)) from None
    except image.ImageError as err:
        raise fail(str(err), EXIT_FAILED) from None
    result = {
        "tag": built.tag,
        "variant": built.variant,
        "base": built.base,
        "id": built.image_id,
        "size_mb": round(built.size_bytes / 1e6, 1),
        "build_s": round(built.seconds, 1),
        "base_s": round(built.base_seconds, 1),
    }
    if as_json:
        print_json(result)
        return
    say(
        f"built {built.tag} ({built.variant}, on {built.base}): {result['size_mb']} MB in {result['build_s']} s"
        + (f" (+ {result['base_s']} s making the base)" if built.base_seconds else "")
    )


@stack_app.command("register-containers")
def stack_register_containers(
    artifact_store: Annotated[str, typer.Option("--artifact-store", help="s3://BUCKET/PATH or gs://BUCKET/PATH")],
    mlflow_uri: Annotated[str, typer.Option("--mlflow-uri", help="the team MLflow server, as the steps reach it")],
    image: Annotated[
        str, typer.Option("--image", help="the step image every step runs in (`liverlesion stack image`)")
    ] = "liverlesion-step:cpu",
    s3_endpoint: Annotated[
        str | None, typer.Option("--s3-endpoint", help="the endpoint of an S3-compatible store (MinIO, Ceph)")
    ] = None,
    mount: Annotated[
        list[str] | None,
        typer.Option(
            "--mount",
            metavar="PATH",
            help="a folder of this machine every step sees at the same path, read-only (repeatable): the cohort's",
        ),
    ] = None,
    prefix: Annotated[str, typer.Option("--prefix", help="prefix of the component names")] = "liverlesion",
    stack: Annotated[str | None, typer.Option("--stack", help="the stack's name (default: PREFIX-containers)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the equivalent zenml commands, change nothing")] = (
        False
    ),
) -> None:
    """Register the containers stack (ZenML's local Docker orchestrator: each step in the step image on this
    machine, on the host's network; the remote artifact store; the MLflow tracker and registry; the secrets) and
    make it the active stack. Credentials come from the environment, as for register-kubeflow.

    Example: `liverlesion stack register-containers --artifact-store s3://bucket/zenml --s3-endpoint
    http://127.0.0.1:9000 --mlflow-uri http://127.0.0.1:5000 --mount "$PWD/data"`.
    """
    from liverlesion_ops.kubeflow import stack as kubeflow

    setup(tracking=False)
    options = kubeflow.ContainerStackOptions(
        artifact_store=artifact_store,
        mlflow_uri=mlflow_uri,
        image=image,
        s3_endpoint=s3_endpoint,
        mounts=tuple(mount or ()),
        prefix=prefix,
        stack=stack,
    )
    _register_stack(kubeflow.plan_containers, options, dry_run)


def schedule(
    cron: Annotated[str, typer.Option("--cron", help="five-field cron expression (02:17 daily: '17 2 * * *')")],
    profile: ProfileOption = DEFAULT_PROFILE,
    overrides: SetOption = None,
    data: DataOption = None,
    flavor: Annotated[
        str | None, typer.Option("--flavor", help="orchestrator flavour (default: the active ZenML stack's)")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the schedule, do not create it")] = False,
    as_json: JsonOption = False,
) -> None:
    """Schedule the training pipeline on the active stack's orchestrator (Kubeflow, Kubernetes, Vertex, SageMaker,
    AzureML, Airflow). On one machine use cron or systemd with `liverlesion retrain` instead (infra/cron,
    infra/systemd): the local orchestrator runs no schedules. A schedule freezes the data version and code it
    was made with; a scheduled `liverlesion retrain` job sees what changed each time.

    Example: `liverlesion schedule --cron "17 2 * * *" --data /data/cohort --dry-run`.
    """
    from liverlesion_ops import runs
    from liverlesion_ops import schedule as scheduling

    setup(tracking=not dry_run)
    flavor = flavor or scheduling.active_flavor()
    cron_expression = scheduling.cron_for(flavor, cron)
    config = load_profile(profile, overrides)
    plan = {"orchestrator": flavor, "cron_expression": cron_expression, "profile": config.name, "dry_run": dry_run}
    if not dry_run:
        scheduling.check_schedulable(flavor, data)
        plan["schedule"] = f"liverlesion-{config.name}"
        parameters = runs.training_parameters(config, runs.cohort(config, data))
        scheduling.schedule_training(parameters, cron_expression, plan["schedule"])
    if as_json:
        print_json(plan)
        return
    say(
        f"{'would schedule' if dry_run else 'scheduled'} the training pipeline of profile {config.name} on the "
        f"{flavor} orchestrator: cron {cron_expression!r}" + (f" (schedule {plan['schedule']})" if not dry_run else "")
    )
