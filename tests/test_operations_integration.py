"""The three operational jobs on a real project (git, DVC with a local remote, ZenML, MLflow):
scheduled retraining (``retrain``, its lock, exit codes, the crontab and systemd lines as written),
appending cases to the versioned cohort, and data-versioning audits (``audit``, ``--restore``,
garbage-collected data). Registry decisions are tested in ``test_registry.py``.

The tests on the shared project (``project``, trained once by ``first_retrain``) leave its data and its
versions as they found them, so they pass in any order; what changes the cohort (appending cases, then
garbage-collecting a version's data) is one scenario on a project of its own.
"""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from integration_support import REPO, TINY_PROFILE, cli, make_project, mlflow_client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "tiny-liver-lesion"
INSTALL = "/opt/liverlesion"  # where infra/ assumes the checkout


def tiny_as_quick(folder):
    """A project whose ``quick`` profile is the tiny one, so that infra/'s lines run as written."""
    root, env = make_project(folder)
    from liverlesion.config import load_profile

    tiny = load_profile("tiny", root / "configs").model_dump(mode="json")
    tiny.update(name="quick", description="the tiny test profile under the default name")
    (root / "configs" / "quick.yaml").write_text(yaml.safe_dump(tiny))
    env["LIVERLESION_PSEUDONYM_SECRET"] = "test-secret-for-pseudonyms"
    (root / ".venv").symlink_to(Path(sys.executable).parents[1])  # the checkout's venv, as `make install` leaves it
    return root, env


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return tiny_as_quick(tmp_path_factory.mktemp("ops"))


@pytest.fixture(scope="module")
def first_retrain(project):
    root, env = project
    return json.loads(cli(root, env, "retrain", "--json").stdout)


def run_ids(root, status) -> set[str]:
    return {run.info.run_id for run in retrain_runs(root, status)}


def retrain_runs(root, status=None):
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("liver-lesion-classification")
    query = "tags.job = 'retrain'" + (f" and tags.retrain_status = '{status}'" if status else "")
    return client.search_runs([experiment.experiment_id], query)


def test_retrain_trains_gates_and_records_then_does_nothing_when_nothing_changed(project, first_retrain):
    root, env = project
    assert first_retrain["status"] == "trained" and first_retrain["version"] == "1"
    assert first_retrain["decision"] == "promoted" and first_retrain["champion"] == "1"
    assert first_retrain["fingerprint"].startswith("fp-")
    version = mlflow_client(root).get_model_version(MODEL, "1")
    assert version.tags["fingerprint"] == first_retrain["fingerprint"]

    before = run_ids(root, "nothing-to-do")
    again = cli(root, env, "retrain")
    assert again.returncode == 0 and "retrain: nothing to do — v1 was trained on this fingerprint" in again.stdout
    assert len(mlflow_client(root).search_model_versions(f"name='{MODEL}'")) == 1
    (noop,) = [run for run in retrain_runs(root, "nothing-to-do") if run.info.run_id not in before]
    assert noop.data.tags["fingerprint"] == first_retrain["fingerprint"] and noop.data.tags["version"] == "1"
    assert len(retrain_runs(root, "trained")) == 1


def test_a_second_retrain_is_refused_while_the_lock_is_held(project, first_retrain):
    root, env = project
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from liverlesion_ops.runs import training_lock\nimport time\n"
            "with training_lock('a long training'):\n    print('held', flush=True)\n    time.sleep(120)\n",
        ],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = cli(root, env, "retrain", check=False)
        assert busy.returncode == 3, busy.stderr
        assert f"held by pid {holder.pid}" in busy.stderr and "a long training" in busy.stderr
        assert "Traceback" not in busy.stderr
        # nor is the cohort a run reads replaced under it (refused before the source is even looked at)
        data_dvc = (root / "data.dvc").read_text()
        listing = sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in (root / "data").rglob("*"))
        for command in (
            ["import", str(root / "no-such-source"), "--layout", "lits", "--replace"],
            ["data", "--regenerate"],
        ):
            refused = cli(root, env, *command, check=False)
            assert refused.returncode == 3 and f"held by pid {holder.pid}" in refused.stderr, (command, refused.stderr)
        assert (root / "data.dvc").read_text() == data_dvc
        assert sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in (root / "data").rglob("*")) == listing
    finally:
        holder.kill()
        holder.wait()


def test_audit_gives_the_lineage_of_the_champion_and_restores_its_exact_data(project, first_retrain, tmp_path):
    root, env = project
    report = json.loads(cli(root, env, "audit", "--model", MODEL, "--json").stdout)
    data_hash = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    assert report["version"] == "1" and report["aliases"] == ["champion"]
    assert report["data"]["version"] == data_hash
    assert report["data"]["cache_state"] == "complete" and report["data"]["remote_state"] == "complete"
    assert report["workspace"]["same_data"] is True and report["workspace"]["unversioned_changes"] is False
    assert report["split"]["matches_recorded_hash"] is True
    sets = report["split"]["sets"]
    assert sum(s["lesions"] for s in sets.values()) == 36
    assert not set(sets["train"]["patients"]) & set(sets["test"]["patients"])
    assert report["code"]["git_commit"] and report["fingerprint"] == first_retrain["fingerprint"]
    assert report["configuration"]["train"]["epochs"] == TINY_PROFILE["train"]["epochs"]
    assert report["decision"]["outcome"] == "promoted"

    restored = tmp_path / "v1-data"
    text = cli(root, env, "audit", "@champion", "--model", MODEL, "--restore", str(restored)).stdout
    assert "same data as this version" in text and f"holds exactly data version {data_hash}" in text
    for path in (root / "data").rglob("*"):
        if path.is_file():
            assert (restored / path.relative_to(root / "data")).read_bytes() == path.read_bytes(), path

    missing = cli(root, env, "audit", "v99", "--model", MODEL, check=False)
    assert missing.returncode == 2 and "no v99 of registered model" in missing.stderr


def test_the_crontab_and_systemd_lines_run_as_written(project, first_retrain):
    root, env = project
    cron = [
        line
        for line in (REPO / "infra" / "cron" / "liverlesion-retrain.cron").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(cron) == 1
    fields = cron[0].split(None, 5)
    assert len(fields) == 6 and fields[:5] == ["17", "2", "*", "*", "*"]
    command = fields[5].replace(INSTALL, str(root))
    done = subprocess.run(["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "retrain: nothing to do" in (root / ".liverlesion" / "retrain.log").read_text()

    unit = (REPO / "infra" / "systemd" / "liverlesion-retrain.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", unit, re.MULTILINE))
    assert settings["Type"] == "oneshot" and settings["SuccessExitStatus"] == "3"
    timer = (REPO / "infra" / "systemd" / "liverlesion-retrain.timer").read_text()
    assert "OnCalendar=*-*-* 02:17:00" in timer
    unit_env = dict(pair.split("=", 1) for pair in shlex.split(settings["Environment"]))
    done = subprocess.run(
        shlex.split(settings["ExecStart"].replace(INSTALL, str(root))),
        cwd=settings["WorkingDirectory"].replace(INSTALL, str(root)),
        env={**env, **unit_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and "retrain: nothing to do" in done.stdout, done.stderr


def test_retrain_exit_codes_for_a_failure_and_a_usage_error(project, first_retrain):
    root, env = project
    bad = cli(root, env, "retrain", "--profile", "nonesuch", check=False)
    assert bad.returncode == 2 and "no profile 'nonesuch'" in bad.stderr and "Traceback" not in bad.stderr
    before = run_ids(root, "failed")
    failed = cli(
        root,
        env,
        "retrain",
        "--set",
        "validation.min_metastasis_fraction=0.95",
        "--set",
        "validation.max_metastasis_fraction=1.0",
        check=False,
    )
    assert failed.returncode == 1 and "failed in step(s) validate" in failed.stderr
    assert len(run_ids(root, "failed") - before) == 1


def test_the_zenml_schedule_form_uses_kubeflow_six_field_cron_and_refuses_the_local_orchestrator(project):
    root, env = project
    dry = cli(root, env, "schedule", "--cron", "17 2 * * *", "--flavor", "kubeflow", "--dry-run", "--json")
    assert json.loads(dry.stdout)["cron_expression"] == "0 17 2 * * *"
    local = cli(root, env, "schedule", "--cron", "17 2 * * *", check=False)
    assert local.returncode == 2 and "the local orchestrator does not run ZenML schedules" in local.stderr
    assert len(local.stderr.strip().splitlines()) == 1


def test_appended_cases_are_versioned_audited_trained_on_and_a_collected_version_is_said_gone(tmp_path):
    """One scenario on a project of its own: cases appended to the cohort are a new data version, the
    audit of v1 sees them, the next retrain trains v2 on them and gates it against v1; then v1's data is
    garbage-collected, and its audit says so plainly."""
    root, env = tiny_as_quick(tmp_path / "project")
    first = json.loads(cli(root, env, "retrain", "--json").stdout)
    assert first["version"] == "1"
    before = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    new = tmp_path / "new-cases"
    cli(root, env, "generate", str(new), "--n-patients", "2", "--n-lesions", "6", "--seed", "11")
    added = json.loads(cli(root, env, "import", str(new), "--layout", "cohort", "--append", "--json").stdout)
    assert added["cases"] == 2 and added["data_version"] != before

    audit = json.loads(cli(root, env, "audit", "--model", MODEL, "--json").stdout)
    changes = audit["workspace"]["changes"]
    assert audit["workspace"]["same_data"] is False
    assert len(changes["added"]) == 2 and changes["removed"] == [] and changes["changed"] == []
    text = cli(root, env, "audit", "--model", MODEL).stdout
    assert "2 case(s) added, 0 removed, 0 changed" in text

    second = json.loads(cli(root, env, "retrain", "--json").stdout)
    assert second["status"] == "trained" and second["version"] == "2"
    assert second["data_version"] == added["data_version"] and second["fingerprint"] != first["fingerprint"]
    version = mlflow_client(root).get_model_version(MODEL, "2")
    assert version.tags["decision"] == second["decision"] and version.tags["compared_with"] == "v1"
    # the gate's own figures decide (no floors, no margin in the tiny profile): promoted only when v2 beats v1
    beats = float(version.tags["gate.candidate.roc_auc"]) > float(version.tags["gate.champion.roc_auc"])
    assert second["decision"] == ("promoted" if beats else "challenger")
    assert len(retrain_runs(root, "trained")) == 2

    dvc_env = {**env, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(
        [sys.executable, "-m", "dvc", "gc", "--workspace", "--cloud", "-r", "local", "--force"],
        cwd=root,
        env=dvc_env,
        check=True,
        capture_output=True,
    )
    report = json.loads(cli(root, env, "audit", "1", "--model", MODEL, "--json").stdout)
    assert report["data"]["restorable"] is False
    assert "in neither the DVC cache nor the remote" in report["data"]["problem"]
    assert "garbage-collected" in cli(root, env, "audit", "1", "--model", MODEL).stdout
    gone = cli(root, env, "audit", "1", "--model", MODEL, "--restore", str(tmp_path / "gone"), check=False)
    assert gone.returncode == 1 and "cannot restore the data of v1" in gone.stderr
    assert not (tmp_path / "gone").exists()


def test_the_readme_tour_runs_as_written(project, first_retrain, tmp_path):
    """The README's five-minute tour, line by line, in a project whose champion is trained (its `quick` is the
    tiny profile, so the lines need no change)."""
    root, env = project
    readme = (REPO / "README.md").read_text()
    tour = readme.split("## A five-minute tour", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in tour.strip().splitlines()]
    assert len(lines) == 4 and all(line.startswith(".venv/bin/liverlesion ") for line in lines)
    for line in lines:
        done = subprocess.run(["/bin/sh", "-c", line], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (line, done.stderr[-2000:])
    answer = root / "answer"
    assert (answer / "lesion_map.png").exists() and (answer / "lesion_classes.nii.gz").exists()
    answered = json.loads((answer / "lesions.json").read_text())["lesions"]
    drawn = pd.read_csv(root / "data" / "cases.csv").set_index("case_id").loc["case_002", "n_lesions"]
    assert len(answered) == drawn and set(answered[0]) >= {"p_metastasis", "model_version"}  # every drawn lesion
