"""The MLflow store of this project (from the environment), its experiments and the runs steps open; and
what to tell the user when a tracking server (``MLFLOW_TRACKING_URI=http://...``) cannot be used.

A team server (``liverlesion server``) is reached by the environment alone: ``MLFLOW_TRACKING_URI``,
``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``; ``environment.MLFLOW_HTTP_DEFAULTS``
bounds how long a request to it may take.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from liverlesion_ops import environment

if TYPE_CHECKING:
    from mlflow import ActiveRun

# MLflow is imported where it is used: a command that never touches the store (``predict`` where another process
# looks the registered version up, ``registry.lookup``) is spared its ~1 s

#: the exit code of a command that stops because the tracking server refused it or cannot be reached
EXIT_SERVER = 4
_CREDENTIALS = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account on it"


class TrackingServerError(RuntimeError):
    """The tracking server cannot be used: it refused the credentials or a permission, or is unreachable."""


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def check_server(uri: str | None = None) -> None:
    """One cheap authenticated request to an HTTP tracking server (nothing for a local store).

    Raises:
        TrackingServerError: one line naming the server, what went wrong and what to set.
    """
    uri = uri or environment.mlflow_tracking_uri()
    if not is_remote(uri):
        return
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(
            get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "GET", params={"max_results": 1}
        )
    except Exception as err:  # connection refused, timeout, DNS: MLflow wraps them all in MlflowException
        raise TrackingServerError(
            server_problem(err, uri) or f"the MLflow tracking server {uri} failed: {err}"
        ) from None
    if response.status_code == 401:
        raise TrackingServerError(_refused_credentials(uri))
    if response.status_code == 403:
        raise TrackingServerError(
            f"the MLflow tracking server {uri} refused user {_user()!r} the right to read "
            "experiments (HTTP 403): ask its admin for the reader or editor role"
        )
    if response.status_code >= 400:
        raise TrackingServerError(
            f"the MLflow tracking server {uri} answered HTTP {response.status_code} "
            f"({response.text.strip()[:120]}): is MLFLOW_TRACKING_URI an MLflow server?"
        )


def _user() -> str:
    return os.environ.get("MLFLOW_TRACKING_USERNAME", "")


def _refused_credentials(uri: str) -> str:
    if not _user():
        return f"the MLflow tracking server {uri} asks for credentials (HTTP 401) and none were given: {_CREDENTIALS}"
    return (
        f"the MLflow tracking server {uri} refused the credentials of user {_user()!r} (HTTP 401): check "
        f"MLFLOW_TRACKING_PASSWORD, or {_CREDENTIALS}"
    )


_UNREACHABLE = re.compile(r"API request to (?P<url>\S+) failed with (timeout )?exception")


def server_problem(err: BaseException, uri: str | None = None) -> str | None:
    """What a failed MLflow call says about the tracking server, in one line; None: not a server problem.

    Refused credentials (401), a refused permission (403), or a server that cannot be reached (after
    the bounded retries of ``environment.MLFLOW_HTTP_DEFAULTS``).
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")  # a server is always named there (no project needed)
    if not is_remote(uri):  # a local store: no server to blame
        return None
    import requests
    from mlflow.exceptions import MlflowException

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, MlflowException):
            message = err.message if isinstance(err.message, str) else str(err)
            code = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(err.error_code)
            if found := _classify(message, uri, code):
                return found
        if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            request = getattr(err, "request", None)  # another server's (ZenML's, a bucket's) is not this one's
            if request is not None and str(getattr(request, "url", "")).startswith(uri.rstrip("/")):
                return _unreachable(uri)
        err = err.__cause__ or err.__context__
    return None


def server_problem_in(text: str, uri: str | None = None) -> str | None:
    """``server_problem`` of an error known only as text (the traceback ZenML kept of a failed step)."""
    return _classify(text, uri or os.environ.get("MLFLOW_TRACKING_URI", ""))


def _classify(message: str, uri: str, code: int | None = None) -> str | None:
    if code == 401 or "error code 401" in message:
        return _refused_credentials(uri)
    if code == 403 or "error code 403" in message:
        endpoint = re.search(r"endpoint (\S+)", message)
        what = f" ({endpoint.group(1)})" if endpoint else ""
        return (
            f"the MLflow tracking server {uri} refused user {_user()!r} this change{what}: permission denied "
            "(HTTP 403); a reader cannot change runs, versions or aliases: ask its admin for the editor role"
        )
    if (found := _UNREACHABLE.search(message)) and found.group("url").startswith(uri.rstrip("/")):
        return _unreachable(uri)
    return None


def _unreachable(uri: str) -> str:
    return (
        f"cannot reach the MLflow tracking server {uri} (gave up after "
        f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '3')} retries): is it running? (MLFLOW_TRACKING_URI; "
        "liverlesion server status)"
    )


def use_tracking_store() -> str:
    """Point MLflow at the project's store (``MLFLOW_TRACKING_URI`` or the state folder's SQLite)."""
    import mlflow

    uri = environment.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it with artifacts in the state folder if new."""
    import mlflow

    use_tracking_store()
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if environment.mlflow_tracking_uri().startswith("sqlite:"):
        location = environment.mlflow_artifact_root().resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def zenml_run():
    """The ZenML pipeline run the calling step belongs to (id and name)."""
    from zenml import get_step_context

    return get_step_context().pipeline_run


def start_tracked_run(
    experiment: str, label: str, profile: str, data_version: str, split_manifest_hash: str, model: str, **tags: str
) -> ActiveRun:
    """A new MLflow run named ``<label>-<profile>-<pipeline run>``, tagged with the lineage every run
    of this project carries (ZenML run, profile, data version, split hash, model) and ``tags``."""
    import mlflow

    run = zenml_run()
    mlflow.set_experiment(experiment_id=ensure_experiment(experiment))
    active = mlflow.start_run(run_name=f"{label}-{profile}-{run.name}" if label else f"{profile}-{run.name}")
    mlflow.set_tags(
        {
            "zenml_run_id": str(run.id),
            "zenml_run_name": run.name,
            "profile": profile,
            "data_version": data_version,
            "split_manifest_hash": split_manifest_hash,
            "model": model,
            **tags,
        }
    )
    return active
