"""The team MLflow server (``liverlesion server``) and the pipeline through it: the embedded
PostgreSQL, ``mlflow server`` with proxied artifacts and basic authentication, real HTTP, no mocks.

One server (module fixture, free port, tmp folder) with three users: alice and carol (editors), bob
(reader). One tiny pipeline run over HTTP, then the cheaper commands: racing promotions from two
"machines" (two state folders, so only the lock in the tracking store serialises them), a reader's
refused promotion, a wrong password, and a server stopped while a run is registering its version.
"""

import importlib.util
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from integration_support import cli, make_project

from liverlesion_ops import team_server
from liverlesion_ops.registry.locks import process_id

pytestmark = [pytest.mark.slow, pytest.mark.integration]

LIVERLESION = str(Path(sys.executable).with_name("liverlesion"))
ADMIN_PASSWORD = f"admin-{secrets.token_hex(8)}"
USERS = {"alice": "editor", "carol": "editor", "bob": "reader"}
PASSWORDS = {user: f"{user}-{secrets.token_hex(8)}" for user in USERS}
MODEL = "tiny-liver-lesion"
LOCK = MODEL + ".registry-lock"
#: how long a run may take to fail once the server is gone: a few requests of at most ~7 s each
#: (environment.MLFLOW_HTTP_DEFAULTS), with room for a loaded machine
FAILURE_BOUND_S = 60


def script(data: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``liverlesion server ARGS --data DATA`` (outside any project: the data folder is named)."""
    return subprocess.run(
        [LIVERLESION, "server", *args, "--data", str(data)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=data.parent,
    )


def clean_env(**more: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "LIVERLESION_"))}
    return {**env, **more}


@dataclass(frozen=True)
class Team:
    url: str
    data: Path
    env: dict  # the admin's, for the script

    def start(self) -> None:
        port = self.url.rsplit(":", 1)[1]
        done = script(self.data, "start", "--port", port, "--workers", "1", env=self.env)
        assert done.returncode == 0, done.stderr

    def stop(self) -> None:
        done = script(self.data, "stop", env=self.env)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.skip("MLflow's basic auth needs Flask-WTF (mlflow[auth]), which is not installed")
    data = tmp_path_factory.mktemp("team-mlflow")
    env = clean_env(MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD)
    # not an ephemeral port (bind to 0): a client's outgoing connection could take it while the server is stopped
    # in test_a_server_gone..., and the restart would find it in use
    port = team_server.free_port("127.0.0.1")
    server = Team(f"http://127.0.0.1:{port}", data, env)
    server.start()
    try:
        for user, role in USERS.items():
            done = script(
                data, "add-user", user, "--role", role, env={**env, "MLFLOW_NEW_USER_PASSWORD": PASSWORDS[user]}
            )
            assert done.returncode == 0 and f"role {role}" in done.stdout, done.stderr
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def project(team, tmp_path_factory):
    root, env = make_project(tmp_path_factory.mktemp("team-project"))
    return root, as_user(env, team, "alice")


def as_user(env: dict, team: Team, user: str, password: str | None = None, home: Path | None = None) -> dict:
    """The environment of a run as ``user``: nothing but the three MLflow variables point it at the server."""
    changed = {
        **env,
        "MLFLOW_TRACKING_URI": team.url,
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password or PASSWORDS[user],
    }
    if home is not None:
        changed["LIVERLESION_HOME"] = str(home)
    return changed


@contextmanager
def client_as(team: Team, user: str = "admin", password: str = ADMIN_PASSWORD):
    """An MlflowClient of the server as ``user`` (the credentials are read from the environment)."""
    from mlflow.tracking import MlflowClient

    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    saved = {key: os.environ.get(key) for key in keys}
    os.environ.update({keys[0]: user, keys[1]: password, keys[2]: "1"})
    try:
        yield MlflowClient(team.url, team.url)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def aliases(team: Team, name: str = MODEL) -> dict[str, str]:
    with client_as(team) as client:
        return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def versions(team: Team, name: str) -> dict[str, dict[str, str]]:
    with client_as(team) as client:
        return {str(v.version): v.tags for v in client.search_model_versions(f"name='{name}'")}


def lock_exists(team: Team, name: str = MODEL) -> bool:
    response = requests.get(
        f"{team.url}/api/2.0/mlflow/registered-models/get",
        params={"name": name + ".registry-lock"},
        auth=("admin", ADMIN_PASSWORD),
        timeout=10,
    )
    return response.status_code == 200


#: a decider that takes the registry lock and is then killed (it prints "held" once it holds it)
HOLDER = """
import sys, time
from liverlesion_ops.environment import configure_environment
configure_environment()
from liverlesion_ops.registry.decisions import registry_lock
with registry_lock(sys.argv[1], "a decider that will be killed"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def first_run(project):
    root, env = project
    return cli(root, env, "run", "--profile", "tiny")


# --- the script alone ------------------------------------------------------------------------------


def test_the_script_refuses_to_start_without_an_admin_password_and_says_so_in_one_line(tmp_path):
    for env, expected in (
        (clean_env(), "set MLFLOW_AUTH_ADMIN_PASSWORD"),
        (clean_env(MLFLOW_AUTH_ADMIN_PASSWORD="short"), "too short"),
    ):
        done = script(tmp_path / "server", "start", env=env)
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "server").exists()  # nothing started, nothing written
    assert script(tmp_path / "server", "status", env=clean_env()).returncode == 3


def test_mlflow_http_requests_are_bounded_unless_the_user_set_them(tmp_path, monkeypatch):
    from liverlesion_ops.environment import MLFLOW_HTTP_DEFAULTS, configure_environment

    monkeypatch.setenv("LIVERLESION_HOME", str(tmp_path))
    for key in MLFLOW_HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    saved = dict(os.environ)
    try:
        values = configure_environment()
    finally:  # it exports the state locations too: leave the environment of the other tests as it was
        os.environ.clear()
        os.environ.update(saved)
    assert values["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3" and values["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert values["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"  # the user's own setting is kept
    assert values["MLFLOW_DISABLE_TELEMETRY"] == "true"


# --- the pipeline through the server -------------------------------------------------------------


def test_the_pipeline_runs_through_the_server_with_credentials(team, project, first_run):
    root, env = project
    assert "registered tiny-liver-lesion version 1: promoted -> alias champion" in first_run.stdout
    tags = versions(team, MODEL)["1"]  # (the aliases may have moved since: the racing promotions below)
    assert tags["registration_state"] == "complete" and tags["decision"] == "promoted"
    assert tags["fingerprint"].startswith("fp-") and tags["fingerprint"] == tags["fingerprint_pending"]
    with client_as(team) as client:
        experiment = client.get_experiment_by_name("liver-lesion-classification")
        assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied: the server stores them
        version = client.get_model_version(MODEL, "1")
        assert "InceptionV3" in version.description and len(version.description) <= 5000  # PostgreSQL's limit
    config = team.data / "basic_auth.ini"  # generated in the data folder, owner-only, no password in it
    assert config.stat().st_mode & 0o777 == 0o600 and ADMIN_PASSWORD not in config.read_text()
    cards = list((team.data / "artifacts").rglob("model_card.md"))
    assert cards, "the model's artifacts are in the server's artifact store"
    # no local user reads a model, a report or the log without logging in: nothing for group or others
    # (the data folder itself: others may pass through it to the embedded PostgreSQL's own folder when that runs as
    # a user of its own, as it does under root; never list it)
    assert team.data.stat().st_mode & 0o066 == 0
    inside = [p for p in team.data.rglob("*") if "pgdata" not in p.relative_to(team.data).parts]
    readable = [p for p in inside if p.stat().st_mode & 0o077]
    assert not readable, f"readable by other local users: {readable[:5]}"
    assert not (root / "state" / "mlflow" / "artifacts").exists()

    listed = json.loads(cli(root, as_user(env, team, "bob"), "models", "--model", MODEL, "--json").stdout)
    assert {v["version"]: v["tags"] for v in listed["versions"]} == versions(team, MODEL)  # a reader reads it all


def test_two_promotions_racing_through_the_server_leave_one_consistent_champion(team, project, first_run, tmp_path):
    root, env = project
    with client_as(team, "alice", PASSWORDS["alice"]) as client:
        v1 = client.get_model_version(MODEL, "1")
        created = [  # two more versions of the same artefact, to promote
            str(
                client.create_model_version(
                    MODEL,
                    v1.source,
                    v1.run_id,
                    tags={"data_version": v1.tags["data_version"]},
                    model_id=v1.model_id or v1.source.removeprefix("models:/"),
                    await_creation_for=0,
                ).version
            )
            for _ in range(2)
        ]
    before = aliases(team)["champion"]
    # three machines: each has its own state folder, so its own file lock; only the store's lock is shared.
    # The first takes the registry lock and is killed while it holds it; the other two race for it.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, MODEL],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env=as_user(env, team, "alice", home=tmp_path / "machine-c"),
    )
    assert holder.stdout.readline().strip() == "held"
    racers = {
        created[0]: as_user(env, team, "alice", home=tmp_path / "machine-a"),
        created[1]: as_user(env, team, "carol", home=tmp_path / "machine-b"),
    }
    processes = {
        version: subprocess.Popen(
            [LIVERLESION, "promote", version, "--reason", f"race {version}", "--model", MODEL, "--json"],
            cwd=root,
            env=racer,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version, racer in racers.items()
    }
    # proven by the lock, not by a clock: each racer says when it found the lock held and began to wait
    waited = {version: waiting_for_the_lock(process) for version, process in processes.items()}
    assert all(process.poll() is None for process in processes.values())  # held: neither has decided
    holder.kill()
    holder.wait()
    outputs = {version: process.communicate(timeout=300) for version, process in processes.items()}
    outputs = {version: (out, waited[version] + err) for version, (out, err) in outputs.items()}
    for version, process in processes.items():
        assert process.returncode == 0, outputs[version]
    results = {version: json.loads(out) for version, (out, _) in outputs.items()}  # JSON alone on standard output

    now = aliases(team)
    winner = now["champion"]
    first = {created[0]: created[1], created[1]: created[0]}[winner]
    assert now == {"champion": winner, "previous_champion": first}
    # serialised: the first saw the old champion, the second saw the first
    assert results[first]["previous_champion"] == before and results[winner]["previous_champion"] == first
    tags = versions(team, MODEL)
    assert tags[winner]["decision"] == "promoted" and tags[first]["decision"] == "superseded"
    assert tags[before]["decision"] == "superseded"
    assert not lock_exists(team)
    broke = [err for _, err in outputs.values() if "broke the registry lock of tiny-liver-lesion" in err]
    assert len(broke) == 1 and "its process has ended" in broke[0]


def waiting_for_the_lock(process: subprocess.Popen, timeout: float = 120) -> str:
    """Read a racer's standard error until it says it waits for the registry lock; what it said until then."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:  # it ended before waiting: its output says why
            pytest.fail("a racer ended before it waited for the lock:\n" + "".join(seen))
        seen.append(line)
        if "waiting for the registry lock of" in line:
            return "".join(seen)
    pytest.fail("a racer never waited for the lock:\n" + "".join(seen))


class LosingProxy(ThreadingHTTPServer):
    """An HTTP proxy in front of the team server that loses the answer to the first request removing the lock.

    The server does that request; before the client hears anything, another decider (carol) takes the lock;
    then the connection is closed without an answer, as a timeout or a dropped connection would leave it. MLflow's
    client sends the request again."""

    def __init__(self, team: Team):
        self.target, self.lost = team.url, []
        super().__init__(("127.0.0.1", 0), _LosingHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def loses(self, path: str, body: bytes) -> bool:
        removing = path.split("?")[0].endswith(("/registered-models/delete", "/registered-models/rename"))
        return removing and not self.lost and json.loads(body or b"{}").get("name") == LOCK

    def another_decider_takes_the_lock(self) -> None:
        taken = requests.post(
            f"{self.target}/api/2.0/mlflow/registered-models/create",
            json={"name": LOCK, "tags": [{"key": "token", "value": "carols"}, {"key": "owner", "value": process_id()}]},
            auth=("carol", PASSWORDS["carol"]),
            timeout=30,
        )
        assert taken.status_code == 200, taken.text


class _LosingHandler(BaseHTTPRequestHandler):
    server: LosingProxy

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
        answer = requests.request(self.command, self.server.target + self.path, data=body, headers=headers, timeout=30)
        if self.server.loses(self.path, body):
            self.server.lost.append((self.path, answer.status_code))
            self.server.another_decider_takes_the_lock()
            self.close_connection = True  # no answer at all
            return
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = do_PATCH = do_DELETE = _forward

    def log_message(self, *args) -> None:
        pass


def test_a_release_whose_answer_is_lost_leaves_the_lock_another_decider_took_meanwhile(team):
    """How a racer of CI once lost its lock under it: a release repeated by the HTTP client deleted it by name."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from liverlesion_ops.registry.decisions import roll_forward
    from liverlesion_ops.registry.locks import RETIRED_INFIX, store_lock, store_lock_tags

    proxy = LosingProxy(team)
    try:
        with client_as(team, "alice", PASSWORDS["alice"]):
            client = MlflowClient(proxy.url, proxy.url)
            with store_lock(client, MODEL, "a decision whose release is answered by no one", 60, roll_forward) as token:
                assert store_lock_tags(client, LOCK)["token"] == token
        assert len(proxy.lost) == 1 and proxy.lost[0][1] == 200  # done by the server, the answer lost
        with client_as(team) as admin:
            # the lock the other decider took is still its own
            assert (store_lock_tags(admin, LOCK) or {}).get("token") == "carols"
            assert not admin.search_registered_models(f"name LIKE '%{RETIRED_INFIX}%'")  # nothing left behind
    finally:
        proxy.shutdown()
        proxy.server_close()
        with client_as(team) as admin, suppress(MlflowException):
            admin.delete_registered_model(LOCK)


def test_a_reader_cannot_move_an_alias(team, project, first_run):
    root, env = project
    before = aliases(team)
    bob = as_user(env, team, "bob", home=root / "state-bob")
    refused = cli(root, bob, "promote", "1", "--model", MODEL, "--reason", "a reader tries", check=False)
    assert refused.returncode == 4, refused.stderr
    assert "refused user 'bob'" in refused.stderr and "editor role" in refused.stderr and team.url in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert aliases(team) == before and not lock_exists(team)
    assert not list((root / "state-bob").rglob("*.pending.json"))  # nothing journalled: nothing to complete later

    from mlflow.exceptions import MlflowException

    with client_as(team, "bob", PASSWORDS["bob"]) as client, pytest.raises(MlflowException) as direct:
        client.set_registered_model_alias(MODEL, "champion", "1")
    assert direct.value.error_code == "PERMISSION_DENIED" and aliases(team) == before


def test_a_reader_cannot_create_the_registry_lock_nor_a_model_an_editor_can(team, project, first_run):
    """MLflow lets any user create a registered model and makes them its manager: on the team server a reader
    could create the lock (and hold every decision until its lease ran out) or a model before its first run."""
    from mlflow.exceptions import MlflowException

    before = aliases(team)
    with client_as(team, "bob", PASSWORDS["bob"]) as client:
        for name in (LOCK, "a-model-bob-would-manage"):
            with pytest.raises(MlflowException) as refused:
                client.create_registered_model(name, tags={"since_epoch": "99999999999"})
            assert refused.value.error_code == "PERMISSION_DENIED", name
    assert not lock_exists(team) and aliases(team) == before
    with client_as(team) as admin, pytest.raises(MlflowException):
        admin.get_registered_model("a-model-bob-would-manage")

    # renaming is creating a name: an editor's own scratch model cannot be renamed into the lock by a reader
    with client_as(team, "alice", PASSWORDS["alice"]) as alice:
        alice.create_registered_model("alices-scratch")
        try:
            with client_as(team, "bob", PASSWORDS["bob"]) as client, pytest.raises(MlflowException) as refused:
                client.rename_registered_model("alices-scratch", LOCK)
            assert refused.value.error_code == "PERMISSION_DENIED" and not lock_exists(team)
        finally:
            alice.delete_registered_model("alices-scratch")


def test_add_user_changes_a_role_and_is_idempotent(team):
    """Giving a user the role they hold changes nothing; giving another replaces it (the user keeps one team role)."""

    def held(user: str) -> list[str]:
        api = team_server.AuthAPI(team.url, "admin", ADMIN_PASSWORD)
        roles = api.call("GET", "/api/3.0/mlflow/users/roles/list", params={"username": user})["roles"]
        return sorted(role["name"] for role in roles if role["name"] in team_server.ROLES)  # not per-user grants

    for role in ("editor", "reader", "editor"):  # carol: an editor, for a moment a reader, then an editor again
        done = script(team.data, "add-user", "carol", "--role", role, env=team.env)
        assert done.returncode == 0 and f"updated user carol on {team.url}: role {role}" in done.stdout, done.stderr
        assert held("carol") == [role]
        with client_as(team, "carol", PASSWORDS["carol"]) as client:  # what the role means, on the server
            if role == "reader":
                from mlflow.exceptions import MlflowException

                with pytest.raises(MlflowException):
                    client.create_registered_model("carols-scratch")
            else:
                client.create_registered_model("carols-scratch")
                client.delete_registered_model("carols-scratch")


def test_a_wrong_password_is_one_line_naming_the_server_and_what_to_set(team, project):
    root, env = project
    wrong = as_user(env, team, "alice", password="not-alices-password")
    for args in (("models", "--model", MODEL), ("run", "--profile", "tiny")):
        started = time.perf_counter()
        done = cli(root, wrong, *args, check=False)
        assert done.returncode == 4, (args, done.stderr)
        assert team.url in done.stderr and "refused the credentials of user 'alice'" in done.stderr
        assert "MLFLOW_TRACKING_PASSWORD" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert time.perf_counter() - started < 60  # refused before any work
    anonymous = {k: v for k, v in wrong.items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    done = cli(root, anonymous, "models", "--model", MODEL, check=False)
    assert done.returncode == 4 and "none were given" in done.stderr


# --- the server goes away (last: it stops and restarts the server) --------------------------------


def test_a_server_gone_while_registering_fails_in_bounded_time_and_leaves_nothing_half_registered(
    team, project, first_run
):
    root, env = project
    champion = aliases(team)["champion"]
    name = "tiny-gone"  # only `register` runs again (its settings changed): the rest is cached
    run = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("liverlesion")),
            "run",
            "--profile",
            "tiny",
            "--set",
            f"register.model_name={name}",
        ],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not versions_seen(team, name):  # the version exists: registration is under way
            assert run.poll() is None, run.stdout.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.2)
        team.stop()
        gone = time.perf_counter()
        output, _ = run.communicate(timeout=300)
        failed_after = time.perf_counter() - gone
    finally:
        if run.poll() is None:
            run.kill()
    try:
        assert run.returncode == 1, output[-3000:]
        assert failed_after < FAILURE_BOUND_S, failed_after
        assert "failed in step(s) register" in output and "cannot reach the MLflow tracking server" in output
        print(f"\nthe run failed {failed_after:.1f}s after the server was stopped")
    finally:
        team.start()

    left = versions(team, name)
    with client_as(team) as client:
        assert client.get_registered_model(name).aliases == {}  # no alias moved
    assert left and all(tags["registration_state"] == "incomplete" for tags in left.values())
    assert all("fingerprint" not in tags for tags in left.values())  # `retrain` does not count it as trained
    (version,) = left
    carol = as_user(env, team, "carol", home=root / "state-carol")  # the next registry operation, another editor
    refused = cli(
        root, carol, "promote", version, "--model", name, "--reason", "not a half-registered one", check=False
    )
    assert refused.returncode == 2 and f"no version {version}" in refused.stderr
    assert f"removed the abandoned incomplete registration(s) v{version} of {name}" in refused.stdout
    assert versions(team, name) == {} and not lock_exists(team, name)
    assert aliases(team)["champion"] == champion  # the other model untouched


def versions_seen(team: Team, name: str) -> bool:
    try:
        response = requests.get(
            f"{team.url}/api/2.0/mlflow/model-versions/search",
            params={"filter": f"name='{name}'"},
            auth=("admin", ADMIN_PASSWORD),
            timeout=5,
        )
    except requests.RequestException:
        return False
    return response.ok and bool(response.json().get("model_versions"))
