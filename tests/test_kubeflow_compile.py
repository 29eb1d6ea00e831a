"""The Kubeflow stack, compiled offline: no cluster, no ZenML server, no Docker.

In a child process with its own ZenML store, ``liverlesion stack register-kubeflow`` registers the Kubeflow stack
(``kubeflow_gpu`` orchestrator, S3 artifact store, container registry, image builder, MLflow tracker and registry,
credentials as ZenML secrets) and activates it. Then the training pipeline goes through ZenML the way
``liverlesion run`` sends it (``runs.run_pipeline``) and the way ``liverlesion schedule`` schedules it
(``schedule_training``): compiled by ZenML, recorded as a snapshot with a build whose image is a named, pre-built
step image (``LIVERLESION_STEP_IMAGE``: ZenML's own skip-build path, nothing is built), and compiled by ZenML's
Kubeflow orchestrator with the KFP compiler into the pipeline spec it submits. The tests read that spec. Last,
the same pipeline on ZenML's own ``kubeflow`` flavour, to keep measured why ``kubeflow_gpu`` exists. The
credentials are dummies; nothing leaves the machine.

Stubbed, and only these: the KFP API client (``KubeflowOrchestrator._get_kfp_client``: a recorder of what would be
uploaded to the cluster, with which cron expression) and ZenML's refusal to submit to a remote orchestrator while
connected to a local store (``Stack.requires_remote_server``: the pods would read the run from a ZenML server;
here nothing runs). Client-side log upload to the (unreachable) S3 store is switched off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
IMAGE = "registry.example.org/liverlesion/liverlesion-step:test"
GPU_LABEL = ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3")
PASSWORD = "not-a-real-password-7f3e"
BUILTIN = "--- ZenML's own kubeflow flavour ---"
STEPS = {
    "ingest",
    "segment",
    "extract_patches",
    "validate",
    "split",
    "train",
    "evaluate",
    "evaluate_segmentation",
    "register",
}
REGISTER = [
    "--kubeflow-host",
    "https://kubeflow.example.org/pipeline",
    "--user-namespace",
    "imaging",
    "--artifact-store",
    "s3://liverlesion-test/zenml",
    "--s3-endpoint",
    "http://127.0.0.1:9",
    "--registry",
    "registry.example.org/liverlesion",
    "--mlflow-uri",
    "https://mlflow.example.org",
    "--gpu-node-selector",
    "=".join(GPU_LABEL),
    "--gpu-toleration",
    "nvidia.com/gpu:NoSchedule",
    "--pvc-mount",
    "liverlesion-data=/data",
]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kubeflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_", "LIVERLESION_", "AWS_"))}
    env.update(
        {
            "ZENML_CONFIG_PATH": str(out / "zenml"),
            "ZENML_ANALYTICS_OPT_IN": "false",
            "ZENML_DISABLE_PIPELINE_LOGS_STORAGE": "true",  # the client's log would go to the S3 store
            "LIVERLESION_PROJECT": str(REPO),
            "LIVERLESION_HOME": str(out / "state"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}",
            "LIVERLESION_STEP_IMAGE": IMAGE,
            "KERAS_BACKEND": "jax",
            "CUDA_VISIBLE_DEVICES": "",
            "MLFLOW_TRACKING_USERNAME": "trainer",
            "MLFLOW_TRACKING_PASSWORD": PASSWORD,
            "AWS_ACCESS_KEY_ID": "AKIATEST",
            "AWS_SECRET_ACCESS_KEY": PASSWORD + "-aws",
        }
    )
    done = subprocess.run(
        [sys.executable, __file__, str(out)],
        cwd=out,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-8000:]
    summary = json.loads((out / "summary.json").read_text())
    summary["log"] = done.stdout
    return summary


def _spec(path: str) -> tuple[dict, dict]:
    """The KFP pipeline spec (IR) and its Kubernetes platform spec (node selectors, tolerations), as compiled."""
    documents = list(yaml.safe_load_all(Path(path).read_text()))
    pipeline = documents[0]
    platform = next((d for d in documents[1:] if d and "platforms" in d), {})
    return pipeline, platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})


def _executors(pipeline: dict) -> dict[str, dict]:
    """Step name -> its container spec (``exec-<step>`` with ``-`` for ``_``)."""
    return {
        name.removeprefix("exec-").replace("-", "_"): spec["container"]
        for name, spec in pipeline["deploymentSpec"]["executors"].items()
    }


@pytest.mark.parametrize("run", ["run", "schedule"])
def test_only_the_train_step_asks_for_a_gpu_and_gpu_nodes(compiled, run):
    pipeline, platform = _spec(compiled[run]["package"])
    containers = _executors(pipeline)
    assert set(containers) == STEPS
    assert {c["image"] for c in containers.values()} == {IMAGE}  # the named image, nothing built
    accelerator = containers["train"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu" and accelerator["resourceCount"] == "1"
    for step, container in containers.items():
        if step != "train":
            assert "accelerator" not in container.get("resources", {}), step
    assert {name.removeprefix("exec-").replace("-", "_") for name in platform} == STEPS
    for name, pod in platform.items():  # the shared volume on every step; GPU nodes for the train step only
        assert [(m["constant"], m["mountPath"]) for m in pod["pvcMount"]] == [("liverlesion-data", "/data")], name
        if name != "exec-train":
            assert "nodeSelector" not in pod and "tolerations" not in pod, name
    assert platform["exec-train"]["nodeSelector"]["labels"] == dict([GPU_LABEL])
    assert platform["exec-train"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_zenml_own_kubeflow_flavour_drops_the_gpu_request(compiled):
    """Why ``kubeflow_gpu`` exists: ZenML 0.98's ``kubeflow`` flavour, given ``ResourceSettings(gpu_count=1)`` and
    ``KubeflowOrchestratorSettings(node_selectors={"accelerator": ...})`` on the train step, compiles no GPU request.
    If this fails, a newer ZenML passes it on: ``liverlesion_ops.kubeflow.gpu_orchestrator`` may no longer be needed."""
    pipeline, platform = _spec(compiled["builtin"]["package"])
    containers = _executors(pipeline)
    assert set(containers) == STEPS and containers["train"]["image"] == IMAGE
    assert not [step for step, c in containers.items() if "accelerator" in c.get("resources", {})] and not platform
    assert "Ignoring invalid setting attributes" in compiled["log"].split(BUILTIN)[1]  # the compiler drops them


def test_a_schedule_is_submitted_with_a_six_field_cron(compiled):
    calls = compiled["schedule"]["calls"]
    recurring = [kwargs for name, kwargs in calls if name == "create_recurring_run"]
    assert len(recurring) == 1 and recurring[0]["cron_expression"] == "0 17 2 * * *"
    assert not [name for name, _ in calls if name == "create_run_from_pipeline_package"]
    one_off = [name for name, _ in compiled["run"]["calls"]]
    assert "create_run_from_pipeline_package" in one_off and "create_recurring_run" not in one_off


def test_credentials_are_zenml_secrets_not_in_the_submitted_pipeline(compiled):
    stack = compiled["stack"]
    assert stack["orchestrator_flavor"] == "kubeflow_gpu" and stack["secrets"] == ["liverlesion-mlflow"]
    assert stack["tracker"]["tracking_password"] == "{{liverlesion-mlflow.MLFLOW_TRACKING_PASSWORD}}"
    assert stack["artifact_store"]["secret"] == "{{liverlesion-s3.aws_secret_access_key}}"
    assert stack["mlflow_secret_keys"] == [
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
    ]
    for run in ("run", "schedule"):
        assert PASSWORD not in Path(compiled[run]["package"]).read_text()


def test_the_local_stack_is_left_as_it_was(compiled):
    assert compiled["local"] == {"train_settings": {}, "run_options": {}}


def test_kubeflow_gpu_submissions_are_quiet(compiled):
    own = compiled["log"].split(BUILTIN)[0]  # before the comparison with ZenML's own flavour
    assert "will be ignored: ['affinity']" not in own and "Ignoring invalid setting attributes" not in own


def test_the_equivalent_zenml_commands_name_the_same_options(tmp_path):
    """``--dry-run`` prints the zenml commands and changes nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_", "LIVERLESION_"))}
    env.update({"MLFLOW_TRACKING_USERNAME": "trainer", "MLFLOW_TRACKING_PASSWORD": PASSWORD})
    env.update({"ZENML_CONFIG_PATH": str(tmp_path / "zenml"), "LIVERLESION_HOME": str(tmp_path / "state")})
    command = [str(Path(sys.executable).with_name("liverlesion")), "--project", str(REPO)]
    done = subprocess.run(
        [*command, "stack", "register-kubeflow", *REGISTER, "--dry-run"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "zenml stack set liverlesion-kubeflow" and not any(PASSWORD in line for line in lines)
    assert any(
        line.startswith("zenml orchestrator register liverlesion-kubeflow --flavor=kubeflow_gpu ")
        and "--gpu_node_selector=" in line
        for line in lines
    )


# --- the child process: register, compile, record (run as a script by the fixture) ---------------------------------


def _child(out: Path) -> None:
    calls: dict = {}
    _stub_the_cluster(calls, out)

    def submitted(name: str) -> dict:  # the package and the KFP calls of the next submission
        calls.update(name=name, current=[])
        return {"package": str(out / f"{name}.yaml"), "calls": calls["current"]}

    from liverlesion_ops.cli import app

    assert app(["stack", "register-kubeflow", *REGISTER], standalone_mode=False) in (None, 0)

    from zenml.client import Client
    from zenml.enums import StackComponentType as T

    from liverlesion.config import load_profile
    from liverlesion.lineage import training_fingerprint
    from liverlesion_ops import runs
    from liverlesion_ops.schedule import cron_for, schedule_training

    config = load_profile("paper", REPO / "configs")
    code = runs.current_code_version()
    settings = config.training_settings()
    parameters = {
        "data_dir": "/data/cohort",
        "data_version": "md5-test",
        "profile": config,
        "training_settings": settings,
        "code_version": code,
        "fingerprint": training_fingerprint("md5-test", settings, code),
        "segmenter_uri": "",
    }
    summary: dict = {"run": submitted("run")}
    runs.run_pipeline(runs.TRAINING, False, **parameters)  # as `liverlesion run` sends it
    summary["schedule"] = submitted("schedule")
    flavor = Client().active_stack.orchestrator.flavor
    schedule_training(parameters, cron_for(flavor, "17 2 * * *"), name="liverlesion-paper")  # as `liverlesion schedule`

    stack = Client().active_stack_model
    component = {t: stack.components[t][0] for t in (T.ORCHESTRATOR, T.ARTIFACT_STORE, T.EXPERIMENT_TRACKER)}
    summary["stack"] = {
        "orchestrator_flavor": component[T.ORCHESTRATOR].flavor_name,
        "secrets": [Client().get_secret(s).name for s in stack.secrets],
        "tracker": component[T.EXPERIMENT_TRACKER].configuration,
        "artifact_store": component[T.ARTIFACT_STORE].configuration,
        "mlflow_secret_keys": sorted(Client().get_secret("liverlesion-mlflow").secret_values),
    }

    # ZenML's own kubeflow flavour, the GPU asked for as ZenML documents it (why kubeflow_gpu exists)
    from zenml.integrations.kubeflow.flavors.kubeflow_orchestrator_flavor import KubeflowOrchestratorSettings

    from liverlesion_ops.pipelines import training_pipeline
    from liverlesion_ops.pipelines.placement import run_options, train_settings

    print(BUILTIN, flush=True)
    Client().create_stack_component(
        "zenml-kubeflow", "kubeflow", T.ORCHESTRATOR, {"kubeflow_hostname": "https://kubeflow.example.org/pipeline"}
    )
    others = {t: c[0].name for t, c in stack.components.items() if t != T.ORCHESTRATOR}
    Client().create_stack("zenml-kubeflow", components={**others, T.ORCHESTRATOR: "zenml-kubeflow"})
    Client().activate_stack("zenml-kubeflow")
    summary["builtin"] = submitted("builtin")
    asked = KubeflowOrchestratorSettings(node_selectors={"accelerator": "nvidia.com/gpu"})
    training_pipeline.with_options(steps={"train": {"settings": {"orchestrator.kubeflow": asked}}}, **run_options())(
        **parameters
    )

    Client().activate_stack("default")  # the local stack: the pipeline asks for nothing more
    summary["local"] = {"train_settings": train_settings(), "run_options": run_options()}
    (out / "summary.json").write_text(json.dumps(summary, default=str))


def _stub_the_cluster(calls: dict, out: Path) -> None:
    """The KFP API client, recording what would be sent (with a copy of the compiled package); and ZenML's
    refusal to submit to a remote orchestrator from a local store. Nothing else."""
    from zenml.integrations.kubeflow.orchestrators.kubeflow_orchestrator import KubeflowOrchestrator
    from zenml.stack import Stack

    class Recorded:
        experiment_id, recurring_run_id, run_id = "experiment", "recurring-run", "run"

    class KfpClient:
        def create_run_from_pipeline_package(self, pipeline_file, **kwargs):
            shutil.copy(pipeline_file, out / f"{calls['name']}.yaml")
            calls["current"].append(("create_run_from_pipeline_package", kwargs))
            return Recorded()

        def create_recurring_run(self, **kwargs):
            shutil.copy(kwargs["pipeline_package_path"], out / f"{calls['name']}.yaml")
            calls["current"].append(("create_recurring_run", kwargs))
            return Recorded()

        def __getattr__(self, name):  # get/create_experiment, wait_for_run_completion
            return lambda *args, **kwargs: calls["current"].append((name, kwargs)) or Recorded()

    KubeflowOrchestrator._get_kfp_client = lambda self, settings: KfpClient()
    Stack.requires_remote_server = property(lambda self: False)


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
