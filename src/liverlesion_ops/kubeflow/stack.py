"""Register the Kubeflow stack (or the containers stack, below) in ZenML and make it the active stack: the one
switch from the local stack.

    export MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=...   # or MLFLOW_TRACKING_TOKEN
    liverlesion stack register-kubeflow \\
        --kubeflow-host https://kubeflow.example.org/pipeline --user-namespace imaging \\
        --artifact-store s3://BUCKET/zenml --registry REGISTRY/liverlesion \\
        --mlflow-uri https://mlflow.example.org \\
        --gpu-node-selector nvidia.com/gpu.present=true --gpu-toleration nvidia.com/gpu:NoSchedule
    liverlesion stack register-kubeflow ... --dry-run   # print the equivalent `zenml` commands, change nothing

What it registers (running it again updates them; a component's flavour cannot change, delete it first):

- orchestrator ``liverlesion-kubeflow``, flavour ``kubeflow_gpu`` (``kubeflow.gpu_orchestrator``): Kubeflow Pipelines,
  with GPU requests that reach the pod, the GPU nodes' labels and taints, shared volumes;
- artifact store ``liverlesion-artifacts``, flavour ``s3`` (``gcp`` for ``gs://``): where ZenML keeps artifacts;
- container registry ``liverlesion-registry`` (``default``): where the step image is pushed and pulled from;
- image builder ``liverlesion-builder``, ``local`` (Docker where runs start) or ``kaniko`` (in the cluster): what
  builds the step image when no pre-built one is named (``liverlesion_ops.pipelines.placement``);
- experiment tracker ``liverlesion-mlflow`` and model registry ``liverlesion-mlflow-registry`` (``mlflow``): the
  team MLflow server;
- the stack ``liverlesion-kubeflow`` of these, with the secret ``liverlesion-mlflow`` attached; then it is made
  the active stack (``zenml stack set``).

Credentials never go in git nor on the command line: they are read from the environment and stored as ZenML
secrets. ``liverlesion-mlflow`` holds ``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` (or ``MLFLOW_TRACKING_TOKEN``); it is attached to the stack, so ZenML sets those
variables in every step when it starts, inside the pod, from the ZenML server (they never appear in the
compiled Kubeflow pipeline). That is how the project's steps, which talk to MLflow directly through these
variables, reach the team server; the MLflow components read the same secret by reference. With
``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` set, ``liverlesion-s3`` holds them for the artifact store;
without them it uses what the pods and this machine already have (an IAM role, workload identity).

The Kubeflow orchestrator needs a ZenML server (the pods read the run from it): ``zenml login URL`` first.

``liverlesion stack register-containers`` (``plan_containers``) registers the containers stack: ZenML's
``local_docker`` orchestrator runs each step in the step image on this machine (``liverlesion stack image``), on
the host's network, with a remote artifact store and the MLflow tracker and registry; the same secrets path, under
names of its own (``liverlesion-containers-mlflow``, ``-s3``), so that neither stack's registration changes the
other's components or credentials. It needs no ZenML server: the orchestrator mounts the local store into each
container.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

#: the custom orchestrator flavour, as a ZenML source (an installed module of the project)
FLAVOR_SOURCE = "liverlesion_ops.kubeflow.gpu_orchestrator.KubeflowGpuOrchestratorFlavor"
FLAVOR = "kubeflow_gpu"
#: ZenML's own orchestrator that runs each step in a container of its own on this machine
CONTAINERS_FLAVOR = "local_docker"
MLFLOW_SECRET = "liverlesion-mlflow"
S3_SECRET = "liverlesion-s3"
#: the zenml CLI group and ``zenml stack register`` option of each component type
CLI = {
    "orchestrator": ("orchestrator", "-o"),
    "artifact_store": ("artifact-store", "-a"),
    "container_registry": ("container-registry", "-c"),
    "image_builder": ("image-builder", "-i"),
    "experiment_tracker": ("experiment-tracker", "-e"),
    "model_registry": ("model-registry", "-r"),
}


@dataclass
class Component:
    type: str  # a zenml StackComponentType value
    name: str
    flavor: str
    configuration: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StackOptions:
    """Where the cluster and its services are (``liverlesion stack register-kubeflow``'s options)."""

    artifact_store: str  # s3://BUCKET/PATH or gs://BUCKET/PATH
    registry: str  # the container registry the step image is pushed to and pulled from
    mlflow_uri: str  # the team MLflow server
    kubeflow_host: str | None = None  # one of kubeflow_host (multi-tenant KFP API) ...
    kube_context: str | None = None  # ... and kube_context (a kubectl context whose cluster runs KFP)
    kubeflow_namespace: str | None = None
    user_namespace: str | None = None
    s3_endpoint: str | None = None
    gpu_resource: str = "nvidia.com/gpu"
    gpu_node_selector: tuple[str, ...] = ()  # LABEL=VALUE
    gpu_toleration: tuple[str, ...] = ()  # KEY[=VALUE]:EFFECT
    pvc_mount: tuple[str, ...] = ()  # CLAIM=PATH
    image_builder: str = "local"  # local or kaniko
    kaniko_context: str | None = None
    kaniko_namespace: str = "zenml-kaniko"
    prefix: str = "liverlesion"
    stack: str | None = None  # default: <prefix>-kubeflow


@dataclass
class Plan:
    """What to register: secrets (name -> values), components, the stack and the secrets attached to it."""

    stack: str
    secrets: dict[str, dict[str, str]]
    components: list[Component]
    stack_secrets: list[str]


def _ref(secret: str, key: str) -> str:
    """A ZenML secret reference (``{{secret.key}}``), resolved by ZenML where the component is used."""
    return "{{" + f"{secret}.{key}" + "}}"


def _pairs(items: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        pairs[key] = value
    return pairs


def _toleration(text: str) -> dict[str, str]:
    """``KEY[=VALUE]:EFFECT`` -> a kfp.kubernetes.add_toleration argument dict (no value: operator Exists)."""
    key_value, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute") or not key_value:
        raise ValueError(
            f"--gpu-toleration {text!r}: expected KEY[=VALUE]:EFFECT, EFFECT one of NoSchedule, "
            "PreferNoSchedule, NoExecute"
        )
    key, has_value, value = key_value.partition("=")
    if has_value:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


def _store_flavor(path: str) -> str:
    return "s3" if path.startswith("s3://") else "gcp"


def _artifact_store(
    path: str, endpoint: str | None, env: dict[str, str], secrets: dict, secret: str = S3_SECRET
) -> dict[str, Any]:
    """The remote artifact store's configuration; its S3 keys from ``env`` into ``secrets[secret]`` (referenced
    by the configuration, never written in it)."""
    scheme = path.split("://", 1)[0]
    if scheme not in ("s3", "gs"):
        raise ValueError(
            f"--artifact-store {path!r}: a remote store, s3://BUCKET/PATH or gs://BUCKET/PATH "
            "(the steps' containers cannot reach this machine's files)"
        )
    store: dict[str, Any] = {"path": path}
    if scheme == "s3":
        if endpoint:  # MinIO, Ceph and other S3-compatible stores
            store["client_kwargs"] = {"endpoint_url": endpoint}
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            secrets[secret] = {
                "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
                "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
            }
            store["key"] = _ref(secret, "aws_access_key_id")
            store["secret"] = _ref(secret, "aws_secret_access_key")
    elif endpoint:
        raise ValueError("--s3-endpoint is for an s3:// artifact store")
    return store


def _mlflow(uri: str, env: dict[str, str], secrets: dict, secret: str = MLFLOW_SECRET) -> dict[str, Any]:
    """The MLflow tracker's configuration; the credentials from ``env`` into ``secrets[secret]``, which the stack
    carries (its keys become every step's environment)."""
    mlflow = {"MLFLOW_TRACKING_URI": uri}
    tracker: dict[str, Any] = {"tracking_uri": uri}
    if env.get("MLFLOW_TRACKING_TOKEN"):
        mlflow["MLFLOW_TRACKING_TOKEN"] = env["MLFLOW_TRACKING_TOKEN"]
        tracker["tracking_token"] = _ref(secret, "MLFLOW_TRACKING_TOKEN")
    elif env.get("MLFLOW_TRACKING_USERNAME") and env.get("MLFLOW_TRACKING_PASSWORD"):
        mlflow["MLFLOW_TRACKING_USERNAME"] = env["MLFLOW_TRACKING_USERNAME"]
        mlflow["MLFLOW_TRACKING_PASSWORD"] = env["MLFLOW_TRACKING_PASSWORD"]
        tracker["tracking_username"] = _ref(secret, "MLFLOW_TRACKING_USERNAME")
        tracker["tracking_password"] = _ref(secret, "MLFLOW_TRACKING_PASSWORD")
    else:
        raise ValueError(
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to the "
            "team MLflow server's credentials: they are stored as the ZenML secret "
            f"{secret}, never in git"
        )
    secrets[secret] = mlflow
    return tracker


def plan(args: StackOptions, env: dict[str, str]) -> Plan:
    """The secrets, components and stack for ``args``, credentials from ``env``; ValueError says what is missing."""
    if bool(args.kubeflow_host) == bool(args.kube_context):
        raise ValueError(
            "give one of --kubeflow-host (multi-tenant Kubeflow, e.g. https://HOST/pipeline) "
            "or --kube-context (a kubectl context whose cluster runs Kubeflow Pipelines)"
        )
    orchestrator: dict[str, Any] = {"gpu_resource": args.gpu_resource}
    if args.kubeflow_host:
        orchestrator["kubeflow_hostname"] = args.kubeflow_host
    else:
        orchestrator["kubernetes_context"] = args.kube_context
    if args.kubeflow_namespace:
        orchestrator["kubeflow_namespace"] = args.kubeflow_namespace
    if args.user_namespace:
        orchestrator["user_namespace"] = args.user_namespace
    if args.gpu_node_selector:
        orchestrator["gpu_node_selector"] = _pairs(args.gpu_node_selector, "--gpu-node-selector")
    if args.gpu_toleration:
        orchestrator["gpu_tolerations"] = [_toleration(t) for t in args.gpu_toleration]
    if args.pvc_mount:
        orchestrator["pvc_mounts"] = _pairs(args.pvc_mount, "--pvc-mount")

    secrets: dict[str, dict[str, str]] = {}
    store = _artifact_store(args.artifact_store, args.s3_endpoint, env, secrets)
    tracker = _mlflow(args.mlflow_uri, env, secrets)

    builder: dict[str, Any] = {}
    if args.image_builder == "kaniko":
        if not args.kaniko_context:
            raise ValueError("--image-builder kaniko needs --kaniko-context (the kubectl context it builds in)")
        builder = {"kubernetes_context": args.kaniko_context, "kubernetes_namespace": args.kaniko_namespace}

    prefix = args.prefix
    components = [
        Component("orchestrator", f"{prefix}-kubeflow", FLAVOR, orchestrator),
        Component("artifact_store", f"{prefix}-artifacts", _store_flavor(args.artifact_store), store),
        Component("container_registry", f"{prefix}-registry", "default", {"uri": args.registry}),
        Component("image_builder", f"{prefix}-builder", args.image_builder, builder),
        Component("experiment_tracker", f"{prefix}-mlflow", "mlflow", tracker),
        Component("model_registry", f"{prefix}-mlflow-registry", "mlflow", {}),
    ]
    return Plan(
        stack=args.stack or f"{prefix}-kubeflow", secrets=secrets, components=components, stack_secrets=[MLFLOW_SECRET]
    )


@dataclass(frozen=True)
class ContainerStackOptions:
    """``liverlesion stack register-containers``'s options: every step in the step image, on this machine."""

    artifact_store: str  # s3://BUCKET/PATH (the containers reach no file of this machine's but the mounts)
    mlflow_uri: str  # the team MLflow server, as the containers reach it (the host's network: loopback works)
    image: str  # the step image every step runs in (``liverlesion stack image``)
    s3_endpoint: str | None = None
    mounts: tuple[str, ...] = ()  # folders of this machine mounted at the same path, read-only (the cohort)
    prefix: str = "liverlesion"
    stack: str | None = None  # default: <prefix>-containers


def plan_containers(args: ContainerStackOptions, env: dict[str, str]) -> Plan:
    """The containers stack: ZenML's ``local_docker`` orchestrator running each step in ``args.image`` on the
    host's network, the remote artifact store, the MLflow tracker and registry, the same secrets as Kubeflow."""
    volumes = {}
    for mount in args.mounts:
        if not mount.startswith("/"):
            raise ValueError(f"--mount {mount!r}: an absolute path (it is mounted at the same path in each step)")
        volumes[mount.rstrip("/") or "/"] = {"bind": mount.rstrip("/") or "/", "mode": "ro"}
    # components and secrets of their own (``<prefix>-containers-*``): registering one stack never changes the
    # other's artifact store, tracker or credentials (the containers reach the server on loopback, pods do not)
    name = f"{args.prefix}-containers"
    secrets: dict[str, dict[str, str]] = {}
    store = _artifact_store(args.artifact_store, args.s3_endpoint, env, secrets, f"{name}-s3")
    tracker = _mlflow(args.mlflow_uri, env, secrets, f"{name}-mlflow")
    # the run arguments of every step's `docker run`: the image (the orchestrator's own override, which
    # placement.step_image reads too, so that nothing is built), the host's network (the tracking server and
    # the S3 endpoint on loopback), the step's container removed once it ended (its environment holds the secrets)
    run_args: dict[str, Any] = {"image": args.image, "network_mode": "host", "remove": True}
    if volumes:
        run_args["volumes"] = volumes
    components = [
        Component("orchestrator", name, CONTAINERS_FLAVOR, {"run_args": run_args}),
        Component("artifact_store", f"{name}-artifacts", _store_flavor(args.artifact_store), store),
        Component("image_builder", f"{name}-builder", "local", {}),
        Component("experiment_tracker", f"{name}-mlflow", "mlflow", tracker),
        Component("model_registry", f"{name}-mlflow-registry", "mlflow", {}),
    ]
    return Plan(stack=args.stack or name, secrets=secrets, components=components, stack_secrets=[f"{name}-mlflow"])


def check_configuration(components: list[Component]) -> None:
    """Every key is a field of its flavour's configuration (ZenML 0.98 refuses others at registration)."""
    from zenml.client import Client
    from zenml.enums import StackComponentType
    from zenml.stack.flavor import Flavor

    for component in components:
        flavor = Client().get_flavor_by_name_and_type(component.flavor, StackComponentType(component.type))
        fields = Flavor.from_model(flavor).config_class.model_fields
        unknown = set(component.configuration) - set(fields)
        if unknown:
            raise ValueError(f"{component.flavor} {component.type}: no option(s) {sorted(unknown)}")


def _custom_flavor(p: Plan) -> bool:
    return any(c.flavor == FLAVOR for c in p.components)


def commands(p: Plan) -> list[str]:
    """The same registration as ``zenml`` commands (secret values masked)."""

    def option(key: str, value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        return f"--{key}={shlex.quote(text)}"

    lines = [f"zenml orchestrator flavor register {FLAVOR_SOURCE}"] if _custom_flavor(p) else []
    for name, values in p.secrets.items():
        masked = " ".join(f"--{k}={v if k == 'MLFLOW_TRACKING_URI' else '***'}" for k, v in values.items())
        lines.append(f"zenml secret create {name} {masked}")
    for c in p.components:
        options = " ".join(option(k, v) for k, v in c.configuration.items())
        lines.append(f"zenml {CLI[c.type][0]} register {c.name} --flavor={c.flavor} {options}".rstrip())
    parts = " ".join(f"{CLI[c.type][1]} {c.name}" for c in p.components)
    secrets = " ".join(f"--secret {s}" for s in p.stack_secrets)
    lines.append(f"zenml stack register {p.stack} {parts} {secrets}")
    lines.append(f"zenml stack set {p.stack}")
    return lines


def register(p: Plan) -> None:
    """Create (or update) the flavour, secrets, components and stack of ``p``, then make the stack active."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    client = Client()
    if _custom_flavor(p):
        try:
            client.get_flavor_by_name_and_type(FLAVOR, StackComponentType.ORCHESTRATOR)
        except KeyError:
            client.create_flavor(source=FLAVOR_SOURCE, component_type=StackComponentType.ORCHESTRATOR)
    check_configuration(p.components)

    for name, values in p.secrets.items():
        try:
            client.get_secret(name)
            client.update_secret(name, add_or_update_values=values)
        except KeyError:
            client.create_secret(name, values)
    for c in p.components:
        kind = StackComponentType(c.type)
        try:
            client.get_stack_component(kind, c.name)
            client.update_stack_component(c.name, kind, configuration=c.configuration)
        except KeyError:
            client.create_stack_component(c.name, c.flavor, kind, c.configuration)
    components = {StackComponentType(c.type): c.name for c in p.components}
    try:
        client.get_stack(p.stack)
        client.update_stack(
            p.stack, component_updates={k: [v] for k, v in components.items()}, add_secrets=p.stack_secrets
        )
    except KeyError:
        client.create_stack(p.stack, components=components, secrets=p.stack_secrets)
    client.activate_stack(p.stack)
