"""The cluster path executed on one machine: the step image built here (``liverlesion stack image --local-base``:
Debian 12 from Debian's packages by debootstrap, the locked requirements, the project) and the tiny DAG run step
by step in containers of it (the containers stack: ZenML's local Docker orchestrator on the host's network)
against the team MLflow server (embedded PostgreSQL, basic auth) and an S3 artifact store (moto's server).

Needs a Docker daemon, debootstrap and root: ``.ci/run`` installs and starts them and sets
``LIVERLESION_REQUIRE_DOCKER=1``, under which a missing daemon fails the file instead of skipping it.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from integration_support import cli, make_project
from test_dvc_remote import BUCKET, s3  # noqa: F401  (the fixture)
from test_team_server import as_user, client_as, team  # noqa: F401  (the fixture)

from liverlesion_ops.kubeflow import image as step_image
from liverlesion_ops.kubeflow import stack as stacks

LIVERLESION = str(Path(sys.executable).with_name("liverlesion"))
TAG = "liverlesion-step:cpu-test"
MODEL = "tiny-liver-lesion"
#: a line only the CA bundle given to the build holds: no layer of the image may hold it
MARKER = b"# liverlesion build secret: never in a layer"
STEPS = 9  # ingest, segment, extract_patches, validate, split, train, evaluate, evaluate_segmentation, register


def _docker_missing() -> str | None:
    try:
        step_image.check_daemon()
    except step_image.ImageError as err:
        return str(err)
    if os.geteuid() != 0:
        return "debootstrap needs root"
    return None


@pytest.fixture(scope="module")
def docker():
    missing = _docker_missing()
    if missing:
        if os.environ.get("LIVERLESION_REQUIRE_DOCKER") == "1":
            pytest.fail(f"LIVERLESION_REQUIRE_DOCKER=1 and {missing}")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def built(docker, tmp_path_factory):
    """The CPU step image on the local base; the CA bundle given as the build secret carries ``MARKER``."""
    bundle = tmp_path_factory.mktemp("ca") / "ca.crt"
    host = Path(os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    bundle.write_bytes((host.read_bytes() if host.is_file() else b"") + b"\n" + MARKER + b"\n")
    done = subprocess.run(
        [LIVERLESION, "stack", "image", "--local-base", "--ca-bundle", str(bundle), "--tag", TAG, "--json"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def runs(built, team, s3, tmp_path_factory, tiny_project, tiny_first_run):  # noqa: F811
    """The tiny profile on the containers stack, as alice, and the same profile on the local orchestrator."""
    root, env = make_project(tmp_path_factory.mktemp("containers-project"))
    env = {k: v for k, v in as_user(env, team, "alice").items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": s3.key_id, "AWS_SECRET_ACCESS_KEY": s3.secret})
    registered = cli(
        root,
        env,
        "stack",
        "register-containers",
        "--artifact-store",
        f"s3://{BUCKET}/zenml",
        "--s3-endpoint",
        s3.endpoint,
        "--mlflow-uri",
        team.url,
        "--image",
        TAG,
        "--mount",
        str(root / "data"),
    )
    since = time.time()
    contained = cli(root, env, "run", "--profile", "tiny", "--json")
    until = time.time()
    started = subprocess.run(
        [
            step_image.docker(),
            "events",
            "--since",
            str(int(since)),
            "--until",
            str(int(until) + 1),
            "--filter",
            f"image={TAG}",
            "--filter",
            "event=start",
            "--format",
            "{{.ID}}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    # the same profile on the local orchestrator: the session's first run of it (the pipeline tests', when they ran
    # in this process before), its summary read back by a run with every step cached
    local_root, local_env = tiny_project
    local = cli(local_root, local_env, "run", "--profile", "tiny", "--json")
    assert len(json.loads(local.stdout)["cached_steps"]) == STEPS, "the local run was not read back from cache"
    return {
        "env": env,
        "register": registered,
        "contained": contained,
        "summary": json.loads(contained.stdout),
        "local": json.loads(local.stdout),
        "containers_started": started,
    }


@pytest.mark.slow
@pytest.mark.integration
def test_the_tiny_dag_runs_step_by_step_in_containers_and_registers_what_the_local_orchestrator_does(team, runs):  # noqa: F811
    summary, local = runs["summary"], runs["local"]
    # every step in a container of its own (none cached: a fresh project), and the run a success
    assert summary["status"] == "completed" and summary["cached_steps"] == []
    assert len(runs["containers_started"]) == STEPS, runs["containers_started"]
    # the same model as on the local orchestrator: same seed, same data version, same metrics
    assert summary["test"]["metrics"] == pytest.approx(local["test"]["metrics"], abs=1e-9)
    assert summary["test"]["threshold"] == local["test"]["threshold"]
    registration = summary["registration"]
    assert registration["version"] == "1" and registration["aliases"]["champion"] == "1"
    # on the team server: the version, its alias and its lineage back to the run and the data
    with client_as(team) as client:
        version = client.get_model_version(MODEL, "1")
        assert client.get_registered_model(MODEL).aliases["champion"] == "1"
        run = client.get_run(version.tags["mlflow_run_id"])
    tags = version.tags
    assert tags["zenml_run_name"] == summary["zenml_run_name"]
    assert tags["profile"] == "tiny" and tags["data_version"] and run.info.status == "FINISHED"
    local_tags = local["registration"]
    assert local_tags["model_name"] == MODEL
    # where the plots are: in the MLflow run (the containers' folders went with them)
    assert version.tags["mlflow_run_id"] in summary["reports"]


@pytest.mark.slow
@pytest.mark.integration
def test_the_data_version_and_code_are_those_of_the_local_run(team, runs):  # noqa: F811
    with client_as(team) as client:
        tags = client.get_model_version(MODEL, "1").tags
    local_root = Path(runs["local"]["reports"]).parents[2]  # <project>/state/reports/<run>
    local_uri = f"sqlite:///{local_root / 'state' / 'mlflow' / 'mlflow.db'}"
    from mlflow.tracking import MlflowClient

    local_tags = MlflowClient(local_uri, local_uri).get_model_version(MODEL, "1").tags
    for key in ("data_version", "code_version", "git_commit", "fingerprint", "config"):
        assert tags[key] == local_tags[key], key


@pytest.mark.slow
@pytest.mark.integration
def test_no_secret_is_in_an_image_layer_nor_in_the_logs_nor_left_in_a_container(team, s3, runs, built):  # noqa: F811
    env = runs["env"]
    secret_values = [env["MLFLOW_TRACKING_PASSWORD"], s3.secret]
    for done in (runs["register"], runs["contained"]):
        for secret in secret_values:
            assert secret not in done.stdout and secret not in done.stderr
    # nor in the steps' logs ZenML kept in the artifact store, nor in what the steps recorded in MLflow
    logs = [key for key in s3.keys() if key.startswith("zenml/logs/")]
    assert logs
    for key in logs:
        text = s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode(errors="replace")
        assert not any(secret in text for secret in secret_values), key
    with client_as(team) as client:
        experiments = [e.experiment_id for e in client.search_experiments()]
        recorded = [
            value
            for run in client.search_runs(experiments)
            for value in (*run.data.params.values(), *run.data.tags.values())
        ]
    assert recorded and not any(secret in value for value in recorded for secret in secret_values)
    # the step containers are gone (their environment held the MLflow credentials)
    left = subprocess.run(
        [step_image.docker(), "ps", "-a", "--filter", f"ancestor={TAG}", "--format", "{{.ID}}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert left == []
    history = subprocess.run(
        [step_image.docker(), "history", "--no-trunc", TAG], capture_output=True, text=True, timeout=60
    ).stdout
    assert "run/secrets/ca" in history  # the build did mount the secret ...
    assert MARKER.decode() not in history
    # ... and no layer holds it: the whole image, streamed, searched for the bundle's own line
    saved = subprocess.Popen([step_image.docker(), "save", TAG], stdout=subprocess.PIPE)
    tail, found, total = b"", False, 0
    while chunk := saved.stdout.read(1 << 24):
        total += len(chunk)
        found = found or MARKER in tail + chunk
        tail = chunk[-len(MARKER) :]
    assert saved.wait(timeout=600) == 0 and total > 100e6
    assert not found


# --- without Docker -----------------------------------------------------------------------------------------


def test_the_containers_stack_plan_runs_the_image_on_the_host_network_with_the_cohort_read_only():
    env = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "pw-1a2b3c", "AWS_ACCESS_KEY_ID": "k"}
    env["AWS_SECRET_ACCESS_KEY"] = "s3-key-4d5e6f"
    options = stacks.ContainerStackOptions(
        artifact_store="s3://b/zenml",
        mlflow_uri="http://127.0.0.1:5000",
        image="liverlesion-step:cpu",
        s3_endpoint="http://127.0.0.1:9000",
        mounts=("/srv/cohort/",),
    )
    plan = stacks.plan_containers(options, env)
    orchestrator = next(c for c in plan.components if c.type == "orchestrator")
    assert orchestrator.flavor == "local_docker" and plan.stack == orchestrator.name == "liverlesion-containers"
    assert orchestrator.configuration["run_args"] == {
        "image": "liverlesion-step:cpu",
        "network_mode": "host",
        "remove": True,
        "volumes": {"/srv/cohort": {"bind": "/srv/cohort", "mode": "ro"}},
    }
    store = next(c for c in plan.components if c.type == "artifact_store")
    assert store.configuration["secret"] == "{{liverlesion-containers-s3.aws_secret_access_key}}"
    assert plan.secrets["liverlesion-containers-mlflow"]["MLFLOW_TRACKING_PASSWORD"] == "pw-1a2b3c"
    assert plan.stack_secrets == ["liverlesion-containers-mlflow"]
    # nothing shared with the Kubeflow stack's names: registering one never changes the other
    kubeflow = stacks.plan(
        stacks.StackOptions("s3://b/k", "registry", "https://mlflow", kubeflow_host="https://kf/pipeline"), env
    )
    assert not {c.name for c in plan.components} & {c.name for c in kubeflow.components}
    assert not set(plan.secrets) & set(kubeflow.secrets)
    lines = stacks.commands(plan)
    assert "pw-1a2b3c" not in "\n".join(lines) and "s3-key-4d5e6f" not in "\n".join(lines)
    assert not any("flavor register" in line for line in lines)  # no custom flavour: ZenML's own
    with pytest.raises(ValueError, match="absolute path"):
        stacks.plan_containers(stacks.ContainerStackOptions("s3://b/z", "http://x", "i", mounts=("data",)), env)
    with pytest.raises(ValueError, match="remote store"):
        stacks.plan_containers(stacks.ContainerStackOptions("/tmp/artifacts", "http://x", "i"), env)


def test_stack_image_says_a_usage_mistake_in_one_line():
    done = subprocess.run(
        [LIVERLESION, "stack", "image", "--variant", "tpu"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == "error: --variant 'tpu': one of cpu, gpu"
