"""A run SIGKILLed in the middle of training, started again, reuses the cached data steps and finishes;
nothing the killed run left half-done is taken for a finished artefact.

One throw-away project (real git, DVC, ZenML local store, MLflow SQLite store), the console command as
a user runs it. The kill comes when the MLflow store shows the training run with at least one epoch's
``val_accuracy`` and still RUNNING: the train step is then in its epoch loop, past model building and
the first epoch, with most epochs still to go. The store is read with ``sqlite3``
in read-only mode, so the test never writes (or migrates) a store that a live process owns.
"""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from integration_support import REPO, TINY_PROFILE, cli, make_project, mlflow_client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILE = "resume"
MODEL_NAME = "resume-liver-lesion"
# The tiny profile trains eagerly: on 2 shared cores each epoch takes about 7 s; after the first epoch is
# seen (polled every 0.2 s), 4 more epochs (plus the model's save) are the window the kill has to land in.
# The second run trains them all again: each epoch more is ~7 s more of the suite.
EPOCHS = 5
UPSTREAM = ("ingest", "segment", "extract_patches", "validate", "split")
TRAINING_SEEN_TIMEOUT_S = 600

ZENML_FACTS = """
import json
from zenml.utils import source_utils; source_utils.set_custom_source_root({code!r})
from zenml.client import Client
client = Client()
runs = client.list_pipeline_runs(pipeline_name="training_pipeline", sort_by="asc:created", size=50).items
facts = {{"runs": [], "models": []}}
for run in runs:
    run = client.get_pipeline_run(run.id)
    steps = {{}}
    for name, step in run.steps.items():
        steps[name] = {{"id": str(step.id), "status": step.status.value,
                       "outputs": {{key: [str(v.id) for v in versions] for key, versions in step.outputs.items()}},
                       "inputs": {{key: [str(v.id) for v in (versions if isinstance(versions, list) else [versions])]
                                  for key, versions in step.inputs.items()}}}}
    facts["runs"].append({{"id": str(run.id), "name": run.name, "status": run.status.value, "steps": steps}})
for version in client.list_artifact_versions(name="model", size=50).items:
    facts["models"].append({{"id": str(version.id), "producer_step_run_id": str(version.producer_step_run_id),
                            "uri": version.uri}})
print(json.dumps(facts))
"""


def _epochs_logged(db: Path) -> tuple[int, str | None]:
    """(the most ``val_accuracy`` steps of a RUNNING MLflow run, that run's id); (0, None) if none yet.

    Read-only: the tables may not exist yet, or a writer may hold the lock for a moment; both read as
    "not yet"."""
    if not db.exists():
        return 0, None
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)) as con:
            row = con.execute(
                "SELECT COUNT(DISTINCT m.step) AS n, m.run_uuid FROM metrics m JOIN runs r ON r.run_uuid = m.run_uuid"
                " WHERE m.key = 'val_accuracy' AND r.status = 'RUNNING' GROUP BY m.run_uuid ORDER BY n DESC LIMIT 1"
            ).fetchone()
    except sqlite3.OperationalError:
        return 0, None
    return (row[0], row[1]) if row else (0, None)


def _code_digest() -> str:
    """The checkout's training code, to tell a real cache miss from code edited while the test ran."""
    digest = hashlib.sha256()
    for path in sorted(p for pattern in ("src/**/*.py", "requirements.lock") for p in REPO.glob(pattern)):
        digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else "(no output)"


def _zenml_facts(root: Path, env: dict) -> dict:
    zenml_env = {**env, "ZENML_CONFIG_PATH": str(root / "state" / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false"}
    done = subprocess.run(
        [sys.executable, "-c", ZENML_FACTS.format(code=str(REPO))],
        env=zenml_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_run_killed_during_training_resumes_from_the_cached_data_steps(tmp_path):
    started = time.monotonic()
    root, env = make_project(tmp_path / "project")  # the killed run's log stays outside the project
    # tiny's gate (floors at 0: the first version becomes champion, whatever it scores), another model name
    profile = {
        **TINY_PROFILE,
        "name": PROFILE,
        "train": {**TINY_PROFILE["train"], "epochs": EPOCHS},
        "register": {**TINY_PROFILE["register"], "model_name": MODEL_NAME},
    }
    (root / "configs" / f"{PROFILE}.yaml").write_text(yaml.safe_dump(profile))
    db = root / "state" / "mlflow" / "mlflow.db"
    log = tmp_path / "killed-run.log"
    code = _code_digest()

    # 1. the first run, in its own process group, until training is underway; then SIGKILL, all of it
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("liverlesion")), "run", "--profile", PROFILE],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + TRAINING_SEEN_TIMEOUT_S
        epochs, killed_run_id = 0, None
        while epochs < 1:
            if process.poll() is not None:
                pytest.fail(f"the run ended ({process.returncode}) before training was seen:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"no epoch of training logged to MLflow within {TRAINING_SEEN_TIMEOUT_S}s:\n{_tail(log)}")
            time.sleep(0.2)
            epochs, killed_run_id = _epochs_logged(db)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the session leader's pid is the group id
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"{process.returncode}:\n{_tail(log)}"
    print(
        f"\n[resume] {time.monotonic() - started:.0f}s: killed after {epochs} of {EPOCHS} epochs "
        f"(MLflow run {killed_run_id})"
    )

    # 2. what the kill left in MLflow: an unfinished run, part of its epochs, nothing registered
    client = mlflow_client(root)
    killed = client.get_run(killed_run_id)
    history = client.get_metric_history(killed_run_id, "val_accuracy")
    assert 1 <= len(history) < EPOCHS, f"the kill came after training ended: raise EPOCHS ({len(history)} epochs)"
    assert killed.info.status != "FINISHED"
    assert "best_epoch" not in killed.data.metrics  # logged only once the epoch loop is over
    assert client.search_model_versions(f"name='{MODEL_NAME}'") == []
    print(f"[resume] killed MLflow run: status {killed.info.status}, {len(history)} epochs logged")

    # 3. the same command again: finishes, registers a champion
    again = cli(root, env, "run", "--profile", PROFILE)
    assert f"registered {MODEL_NAME} version 1" in again.stdout, again.stdout[-4000:]

    print(f"[resume] {time.monotonic() - started:.0f}s: the second run finished")

    # 4. ZenML: the data steps came from the killed run's cache, train ran again and is the only model
    facts = _zenml_facts(root, env)
    edited = "" if _code_digest() == code else " (the checkout's code changed while the test ran: a re-run is right)"
    assert len(facts["runs"]) == 2, facts["runs"]
    first, second = facts["runs"]
    print(
        f"[resume] killed ZenML run {first['name']}: {first['status']}; steps "
        + ", ".join(f"{name} {step['status']}" for name, step in first["steps"].items())
    )
    assert second["status"] == "completed"
    for name in UPSTREAM:
        assert first["steps"][name]["status"] == "completed", (name, first["steps"][name])
        assert second["steps"][name]["status"] == "cached", f"{name}: {second['steps'][name]['status']}{edited}"
        # a cached step hands on the very artefacts the killed run produced
        assert second["steps"][name]["outputs"] == first["steps"][name]["outputs"], name
    # the restart closed the killed run (ZenML's local store has no heartbeat: it would stay "running")
    assert first["status"] == "failed" and first["steps"]["train"]["status"] == "failed"
    assert "was left running by a killed process: marked failed" in again.stderr
    assert first["steps"]["train"]["outputs"] == {}  # the killed train step published no output
    assert "evaluate" not in first["steps"] and "register" not in first["steps"]
    train = second["steps"]["train"]
    assert train["status"] == "completed"
    assert [model["producer_step_run_id"] for model in facts["models"]] == [train["id"]]  # one model, the new one
    assert second["steps"]["evaluate"]["inputs"]["model"] == train["outputs"]["model"]
    for name in ("evaluate", "register"):
        assert second["steps"][name]["status"] == "completed", name

    # 5. MLflow: exactly one version, the champion, trained by the second run's own MLflow run
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert str(champion.version) == "1"
    assert champion.run_id != killed_run_id
    assert champion.tags["zenml_run_id"] == second["id"]
    retrained = client.get_run(champion.run_id)
    assert retrained.info.status == "FINISHED"
    assert len(client.get_metric_history(champion.run_id, "val_accuracy")) == EPOCHS
    left = client.get_run(killed_run_id).info.status
    assert left == "KILLED"
    print(f"[resume] {time.monotonic() - started:.0f}s: after the restart the killed MLflow run is {left}")
