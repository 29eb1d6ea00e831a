"""A shared DVC remote on a real S3-compatible server (moto's, over HTTP, checking every request's
signature), configured the way DVC users do (``dvc remote add -d``, ``dvc remote modify``).

Runs push to the user's default remote and never write its configuration; a ``git clone`` plus
``dvc pull`` gets the same data; a model whose data lives only on that remote is audited and its
data restored (empty DVC cache, no local fallback remote); failures name the remote in one line and
leave ``data/`` and the cache as they were. Without a user remote, runs use the local fallback with
``data/`` hard-linked to the DVC cache. No mocks: real DVC, real HTTP.

The S3 tests are slow (~65 s together on 2 cores: three tiny cohorts generated, a dozen DVC and CLI runs);
the tests at the end (how the remote is chosen, DVC's errors read, linked files) take ~7 s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from integration_support import cli, make_project

from liverlesion_ops.datastore import (
    REMOTE_NAME,
    DataStoreError,
    Remote,
    _public,
    _remote_problem,
    configure_remote,
    folder_version,
    remote_name,
    user_remote,
    version_data,
)

BUCKET = "team-cohorts"
URL = f"s3://{BUCKET}/liverlesion"
MODEL = "remote-audit"


@dataclass(frozen=True)
class S3:
    endpoint: str
    key_id: str
    secret: str
    client: object  # boto3 S3 client with the user's key

    def keys(self) -> set[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on a free port with a bucket and one IAM user's key; then it checks every signature."""
    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its accounts in the process: another module's server (tests/test_containers.py imports this
    # fixture) left its user and bucket behind
    requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
    setup = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "setup",
        "aws_secret_access_key": "setup",
    }
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="dvc")
    iam.put_user_policy(
        UserName="dvc",
        PolicyName="s3",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName="dvc")["AccessKey"]
    boto3.client("s3", **setup).create_bucket(Bucket=BUCKET)
    requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    try:
        yield S3(endpoint, key["AccessKeyId"], key["SecretAccessKey"], client)
    finally:
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)
        server.stop()


def environment(root: Path, base: dict, s3: S3) -> dict:
    """The CLI's environment for the project at ``root``: its own state, the S3 key, and DVC's global and system
    configuration kept out (a developer's own default remote must not leak in)."""
    env = {k: v for k, v in base.items() if not k.startswith("AWS_")}
    outside = root.parent / "dvc-outside"
    for sub in ("global", "system", "site"):
        (outside / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "LIVERLESION_PROJECT": str(root),
            "LIVERLESION_HOME": str(root / "state"),
            "AWS_ACCESS_KEY_ID": s3.key_id,
            "AWS_SECRET_ACCESS_KEY": s3.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(outside / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(outside / "none"),
            "DVC_GLOBAL_CONFIG_DIR": str(outside / "global"),
            "DVC_SYSTEM_CONFIG_DIR": str(outside / "system"),
            "DVC_SITE_CACHE_DIR": str(outside / "site"),
            "DVC_NO_ANALYTICS": "1",
        }
    )
    return env


def run(root: Path, env: dict, *command: str) -> subprocess.CompletedProcess:
    done = subprocess.run(list(command), cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr or done.stdout}"
    return done


def dvc(root: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return run(root, env, sys.executable, "-m", "dvc", *args)


def version(root: Path) -> str:
    return yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def files(folder: Path) -> dict[str, str]:
    """relative path -> md5 of every file under ``folder``."""
    return {p.relative_to(folder).as_posix(): md5(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def cache_objects(root: Path) -> dict[str, str]:
    """DVC cache object name (md5, ``.dir`` kept) -> md5 of its bytes: a sound cache maps each name to itself."""
    base = root / ".dvc" / "cache" / "files" / "md5"
    return {p.parent.name + p.name: md5(p) for p in base.glob("*/*")} if base.exists() else {}


def sound(objects: dict[str, str]) -> bool:
    return all(name.removesuffix(".dir") == digest for name, digest in objects.items())


def error_line(done: subprocess.CompletedProcess) -> str:
    """The CLI's error: one line, the last it wrote."""
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), done.stderr
    return lines[-1]


def on_disk(*folders: Path) -> int:
    """Bytes allocated under ``folders``, each hard-linked file counted once (as ``du`` does)."""
    seen, total = set(), 0
    for folder in folders:
        for path in folder.rglob("*"):
            info = path.lstat()
            if path.is_file() and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
    return total


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3):
    """A project whose first run had no remote of its own (the local fallback), then whose user set up the team
    remote the DVC way, committed it, and ran ``liverlesion data`` again."""
    root, base = make_project(tmp_path_factory.mktemp("remote") / "project")
    env = environment(root, base, s3)
    initial = (root / ".dvc" / "config").read_bytes()
    fallback = cli(root, env, "data", "--profile", "tiny")
    facts = {
        "fallback_stdout": fallback.stdout,
        "fallback_config_local": (root / ".dvc" / "config.local").read_text(),
        "config_unchanged": (root / ".dvc" / "config").read_bytes() == initial,
    }
    facts["linked_sizes"] = (on_disk(root / "data"), on_disk(root / "data", root / ".dvc" / "cache"))
    facts["nlinks"] = {p.stat().st_nlink for p in (root / "data").rglob("*") if p.is_file()}

    dvc(root, env, "remote", "add", "-d", "team", URL)
    dvc(root, env, "remote", "modify", "team", "endpointurl", s3.endpoint)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    run(root, env, "git", "add", "configs", "data.dvc", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore")
    run(root, env, *git, "commit", "-q", "-m", "the cohort on the team remote")
    configured = {name: (root / ".dvc" / name).read_bytes() for name in ("config", "config.local")}
    pushed = cli(root, env, "data", "--profile", "tiny")
    return {"root": root, "env": env, "base": base, "configured": configured, "pushed": pushed, **facts}


@pytest.mark.slow
def test_without_a_remote_of_its_own_a_run_uses_the_local_fallback_with_data_linked_to_the_cache(project):
    root = project["root"]
    assert "local fallback DVC remote" in project["fallback_stdout"]
    assert f"url = {root / 'state' / 'dvc-remote'}" in project["fallback_config_local"]
    assert 'type = "hardlink,copy"' in project["fallback_config_local"]
    assert project["config_unchanged"]  # only machine-local configuration was written
    held = root / "state" / "dvc-remote" / "files" / "md5" / version(root)[:2] / version(root)[2:]
    assert held.exists()
    # data/ and the DVC cache share the bytes: hard links (read-only), so together they take about what data/ takes
    assert project["nlinks"] == {2}
    data_only, data_and_cache = project["linked_sizes"]
    assert data_and_cache < data_only * 1.05


@pytest.mark.slow
def test_a_run_pushes_to_the_users_remote_and_leaves_its_configuration_as_it_was(project, s3, tmp_path):
    root, env = project["root"], project["env"]
    pushed = project["pushed"].stdout
    assert f"pushed to DVC remote 'team' ({URL})" in pushed and "matches data.dvc" in pushed
    for name, before in project["configured"].items():
        assert (root / ".dvc" / name).read_bytes() == before, name
    listing = json.loads(
        (root / ".dvc" / "cache" / "files" / "md5" / version(root)[:2] / version(root)[2:]).read_text()
    )
    expected = {f"liverlesion/files/md5/{h[:2]}/{h[2:]}" for h in [version(root), *(e["md5"] for e in listing)]}
    assert s3.keys() == expected

    # the overwrite case: the key moved into machine-local config, LIVERLESION_DVC_REMOTE set: the run still pushes
    # to 'team' as configured, writes no configuration, creates no fallback folder
    dvc(root, env, "remote", "modify", "--local", "team", "access_key_id", s3.key_id)
    dvc(root, env, "remote", "modify", "--local", "team", "secret_access_key", s3.secret)
    configured = {name: (root / ".dvc" / name).read_bytes() for name in ("config", "config.local")}
    elsewhere = tmp_path / "elsewhere"
    no_key = {k: v for k, v in env.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    again = cli(root, {**no_key, "LIVERLESION_DVC_REMOTE": str(elsewhere)}, "data", "--profile", "tiny")
    assert "used the cohort already in" in again.stdout and "DVC remote 'team'" in again.stdout
    for name, before in configured.items():
        assert (root / ".dvc" / name).read_bytes() == before, name
    assert not elsewhere.exists()
    (root / ".dvc" / "config.local").write_bytes(project["configured"]["config.local"])  # as the fixture left it


@pytest.mark.slow
def test_a_fresh_clone_pulls_the_same_data_from_the_remote(project, tmp_path):
    root = project["root"]
    clone = tmp_path / "clone"
    run(tmp_path, project["env"], "git", "clone", "-q", str(root), str(clone))
    env = {**project["env"], "LIVERLESION_PROJECT": str(clone), "LIVERLESION_HOME": str(clone / "state")}
    assert not (clone / "data").exists() and not (clone / ".dvc" / "cache").exists()
    dvc(clone, env, "pull")
    assert folder_version(clone / "data") == version(clone) == version(root)
    assert files(clone / "data") == files(root / "data")


def register(clone: Path, data_version: str, cases: Path) -> None:
    """A registered model version as training records it (tags, split manifest), straight into the clone's
    MLflow store: the audit needs the lineage, not a trained network."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from liverlesion.splitting import manifest_hash

    store = clone / "state" / "mlflow"
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment("train", artifact_location=(store / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    table = pd.read_csv(cases)
    manifest = pd.DataFrame(
        {
            "lesion_id": table["case_id"] + "-1",
            "patient_key": table["patient_key"],
            "label": [i % 2 for i in range(len(table))],
            "set": [("train", "train", "val", "test")[i % 4] for i in range(len(table))],
        }
    )
    (store / "split_manifest.csv").write_text(manifest.to_csv(index=False))
    client.log_artifact(run_id, str(store / "split_manifest.csv"), "lineage")
    client.set_terminated(run_id)
    client.create_registered_model(MODEL)
    tags = {
        "data_version": data_version,
        "split_manifest_hash": manifest_hash(manifest),
        "profile": "tiny",
        "git_commit": "0" * 40,
        "decision": "promoted",
    }
    registered = client.create_model_version(MODEL, f"runs:/{run_id}/model", run_id=run_id, tags=tags)
    client.set_registered_model_alias(MODEL, "champion", registered.version)


@pytest.mark.slow
def test_the_audit_of_a_model_whose_data_is_only_on_the_remote_restores_it(project, tmp_path):
    root = project["root"]
    clone = tmp_path / "auditor"
    run(tmp_path, project["env"], "git", "clone", "-q", str(root), str(clone))
    env = {**project["env"], "LIVERLESION_PROJECT": str(clone), "LIVERLESION_HOME": str(clone / "state")}
    register(clone, version(root), root / "data" / "cases.csv")
    restored = tmp_path / "restored"
    done = cli(clone, env, "audit", "--model", MODEL, "--json", "--restore", str(restored))
    report = json.loads(done.stdout)
    data = report["data"]
    assert data["version"] == version(root) and data["remote_name"] == "team"
    assert data["cache_state"] == "absent" and data["remote_state"] == "complete" and data["restorable"]
    assert data["remote_location"].startswith(URL)
    assert report["split"]["matches_recorded_hash"] and report["workspace"]["same_data"]
    assert report["restored"]["verified_version"] == version(root)
    assert files(restored) == files(root / "data")
    assert not (clone / "data").exists() and not (clone / "state" / "dvc-remote").exists()
    assert not (clone / ".dvc" / "config.local").exists()  # the audit configured nothing


@pytest.mark.slow
def test_failures_name_the_remote_in_one_line_and_leave_data_and_cache_as_they_were(project, s3, tmp_path):
    root, env = project["root"], project["env"]
    before = files(root / "data"), cache_objects(root), (root / "data.dvc").read_bytes()
    assert sound(before[1])

    wrong_key = cli(root, {**env, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "data", "--profile", "tiny", check=False)
    line = error_line(wrong_key)
    assert f"DVC remote 'team' ({URL}) refused the credentials" in line and "403" in line

    dvc(root, env, "remote", "modify", "--local", "team", "endpointurl", f"http://127.0.0.1:{free_port()}")
    try:
        unreachable = cli(root, env, "data", "--profile", "tiny", check=False)
    finally:
        (root / ".dvc" / "config.local").write_bytes(project["configured"]["config.local"])
    assert f"DVC remote 'team' ({URL}) cannot be reached: Could not connect" in error_line(unreachable)
    assert (files(root / "data"), cache_objects(root), (root / "data.dvc").read_bytes()) == before

    # a clone whose data.dvc names a version nobody pushed: not on the remote, and the seed makes another one
    clone = tmp_path / "unpushed"
    run(tmp_path, env, "git", "clone", "-q", str(root), str(clone))
    unpushed = hashlib.md5(b"a version never pushed").hexdigest() + ".dir"
    (clone / "data.dvc").write_text((clone / "data.dvc").read_text().replace(version(root), unpushed))
    env = {**env, "LIVERLESION_PROJECT": str(clone), "LIVERLESION_HOME": str(clone / "state")}
    missing = cli(clone, env, "data", "--profile", "tiny", check=False)
    line = error_line(missing)
    assert f"DVC remote 'team' ({URL}) lacks data version {unpushed}" in line and "--regenerate" in line
    assert not (clone / "data").exists() and unpushed in (clone / "data.dvc").read_text()
    assert cache_objects(clone) == {} and not (clone / ".dvc" / "config.local").exists()


# --- without a server: how the remote is chosen and how DVC's errors are read (fast) ------------------------


def dvc_project(root: Path, config: str, local: str = "") -> Path:
    """A folder DVC takes for a project (no git): ``.dvc/config`` and ``.dvc/config.local`` as given."""
    (root / ".dvc").mkdir(parents=True)
    (root / ".dvc" / "config").write_text("[core]\n    no_scm = true\n" + config)
    if local:
        (root / ".dvc" / "config.local").write_text(local)
    return root


def test_a_default_remote_of_the_user_is_used_as_configured(tmp_path):
    root = dvc_project(
        tmp_path / "p",
        "    remote = team\n['remote \"team\"']\n    url = ssh://me:secret@nas/dvc\n"
        "['remote \"local\"']\n    url = ../.liverlesion/dvc-remote\n",
    )
    before = (root / ".dvc" / "config").read_bytes()
    remote = configure_remote(root, tmp_path / "fallback")
    assert remote == Remote("team", "ssh://me@nas/dvc", fallback=False) and remote_name(root) == "team"
    assert (root / ".dvc" / "config").read_bytes() == before and not (root / ".dvc" / "config.local").exists()
    assert not (tmp_path / "fallback").exists()


def test_a_default_remote_in_machine_local_config_counts_too(tmp_path):
    root = dvc_project(
        tmp_path / "p", "", local="[core]\n    remote = team\n['remote \"team\"']\n    url = /mnt/shared/dvc\n"
    )
    assert user_remote(root) == Remote("team", "/mnt/shared/dvc", fallback=False)


def test_without_a_default_remote_of_the_user_the_fallback_is_machine_local(tmp_path):
    # the project's own committed default ('local') and a remote that is not the default do not count
    root = dvc_project(
        tmp_path / "p",
        "    remote = local\n['remote \"local\"']\n    url = ../.liverlesion/dvc-remote\n"
        "['remote \"team\"']\n    url = s3://bucket/dvc\n",
    )
    committed = (root / ".dvc" / "config").read_bytes()
    remote = configure_remote(root, tmp_path / "fallback")
    assert (remote.name, remote.url, remote.fallback) == (REMOTE_NAME, str((tmp_path / "fallback").resolve()), True)
    assert "'team' configured but none is the default" in remote.note and remote_name(root) == REMOTE_NAME
    local = (root / ".dvc" / "config.local").read_text()
    assert f"url = {tmp_path / 'fallback'}" in local and 'type = "hardlink,copy"' in local
    assert (root / ".dvc" / "config").read_bytes() == committed
    written = (root / ".dvc" / "config.local").stat().st_mtime_ns
    assert configure_remote(root, tmp_path / "fallback") == remote
    assert (root / ".dvc" / "config.local").stat().st_mtime_ns == written  # nothing rewritten when it is right


def test_a_default_remote_that_is_not_defined_is_an_error(tmp_path):
    root = dvc_project(tmp_path / "p", "    remote = team\n")
    with pytest.raises(DataStoreError, match="default remote 'team' is not defined"):
        configure_remote(root, tmp_path / "fallback")
    assert remote_name(root) is None  # readers fall back to DVC's own default


@pytest.mark.parametrize(
    "output, kind, words",
    [
        (
            "ERROR: unexpected error - Forbidden: An error occurred (403) when calling the HeadObject operation: "
            "Forbidden",
            "credentials",
            "refused the credentials",
        ),
        (
            "ERROR: failed to connect to s3 (b/files/md5) - Forbidden: An error occurred (403) when calling the "
            "HeadObject operation: Forbidden\nERROR: failed to fetch data from the cloud - 39 files failed to download",
            "credentials",
            "HeadObject",
        ),
        (
            'ERROR: unexpected error - Could not connect to the endpoint URL: "http://127.0.0.1:9/b/files/md5"',
            "unreachable",
            "cannot be reached: Could not connect",
        ),
        (
            "ERROR: unexpected error - The specified bucket does not exist: An error occurred (NoSuchBucket)",
            "bucket",
            "does not exist",
        ),
        (
            "WARNING: Some of the cache files do not exist neither locally nor on remote. Missing cache files:\n"
            "md5: 4031a8f0e7e0a5b1b6a1c1e0b8f0a403.dir\nmd5: 55828bbea8b81bcaaea9392eb14d2f05\n"
            "ERROR: failed to pull data from the cloud - Checkout failed for following targets:\ndata\n"
            "Is your cache up to date?",
            "missing",
            "2 object(s) missing",
        ),
        ("ERROR: something else\nmore", "other", "failed: something else"),
    ],
)
def test_dvc_errors_are_read_into_one_line(output, kind, words):
    found, text = _remote_problem(output)
    assert found == kind and words in text and "\n" not in text


def test_files_added_to_a_linked_data_folder_are_linked_and_the_cache_stays_sound(tmp_path):
    """The fallback hard-links data/ to the cache. Files moved in later (as ``import --append`` does) are linked
    too, also one whose bytes the cache already holds (``dvc add`` leaves that one a copy: the run relinks), and
    replacing a linked file (write a new one, rename it over) never changes the cache."""
    root = dvc_project(tmp_path / "p", "")
    remote = configure_remote(root, tmp_path / "fallback")
    data = root / "data"
    (data / "images").mkdir(parents=True)
    for name in ("a", "b"):
        (data / "images" / f"{name}.bin").write_bytes(name.encode() * 1000)
    (data / "cases.csv").write_text("case\na\nb\n")
    first = version_data(root, remote)
    assert {p.stat().st_nlink for p in data.rglob("*") if p.is_file()} == {2}
    for name, content in (("c.bin", b"c" * 1000), ("a-again.bin", b"a" * 1000)):
        staged = tmp_path / name
        staged.write_bytes(content)
        staged.replace(data / "images" / name)
    table = tmp_path / "cases.csv"
    table.write_text("case\na\nb\nc\na-again\n")
    table.replace(data / "cases.csv")  # replaces the link: the cached table is not touched
    second = version_data(root, remote)
    assert second != first
    links = {p.name: p.stat().st_nlink for p in data.rglob("*") if p.is_file()}
    assert links == {"cases.csv": 2, "a.bin": 3, "a-again.bin": 3, "b.bin": 2, "c.bin": 2}
    objects = cache_objects(root)
    assert sound(objects) and len(objects) == 7  # a, b, c, two tables, two listings


def test_urls_are_shown_without_a_password():
    assert _public("ssh://me:secret@nas:2222/dvc") == "ssh://me@nas:2222/dvc"
    assert _public("s3://bucket/path") == "s3://bucket/path" and _public("/mnt/dvc") == "/mnt/dvc"
