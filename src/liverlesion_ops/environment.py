"""Environment set-up for a run: where ZenML, MLflow and DVC keep their state, and nothing phones home.

| variable | default | what |
| --- | --- | --- |
| ``ZENML_CONFIG_PATH`` | ``<home>/zenml`` | ZenML's local store and stack |
| ``MLFLOW_TRACKING_URI`` | ``sqlite:///<home>/mlflow/mlflow.db`` | MLflow tracking and registry store |
| ``LIVERLESION_DVC_REMOTE`` | ``<home>/dvc-remote`` | the fallback DVC remote, where the user configured no default one |
| ``MLFLOW_HTTP_REQUEST_*`` | ``MLFLOW_HTTP_DEFAULTS`` | how long an MLflow request to a tracking server may take |

``<home>`` is ``liverlesion_ops.project.state_home()``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

from liverlesion_ops.project import state_home


def zenml_config_path() -> Path:
    return Path(os.environ.get("ZENML_CONFIG_PATH") or state_home() / "zenml")


def mlflow_tracking_uri() -> str:
    if env := os.environ.get("MLFLOW_TRACKING_URI"):
        return env
    return f"sqlite:///{state_home() / 'mlflow' / 'mlflow.db'}"


def mlflow_artifact_root() -> Path:
    return state_home() / "mlflow" / "artifacts"


def dvc_remote() -> Path:
    return Path(os.environ.get("LIVERLESION_DVC_REMOTE") or state_home() / "dvc-remote")


#: MLflow's HTTP client, bounded (each kept where the user set it). MLflow's own defaults (7 retries,
#: backoff factor 2, 120 s timeout) let one request to a server that went away retry for ~4 minutes, and
#: a run makes many. With these, a request fails after 4 attempts: ~7 s when the server is gone
#: (connection refused: waits of 0, 2 and 4 s, plus up to 0.5 s of jitter twice), at most ~2 min 7 s
#: when it accepts connections and never answers (4 x 30 s + the waits).
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def configure_environment() -> dict[str, str]:
    """Export the ZenML and MLflow locations (before either is imported) and return them.

    Also turns off ZenML's analytics and MLflow's telemetry, which would try to reach the internet
    (DVC's is turned off where DVC is called).
    """
    home = state_home()
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    values = {
        "ZENML_CONFIG_PATH": str(zenml_config_path()),
        "MLFLOW_TRACKING_URI": mlflow_tracking_uri(),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),
        "ZENML_ENABLE_REPO_INIT_WARNINGS": "false",
        "ZENML_LOGGING_VERBOSITY": os.environ.get("ZENML_LOGGING_VERBOSITY", "WARN"),
        # MLflow's own INFO lines (creating a store's tables, "Created version 3") would come between a command's
        # output and its one-line error; the project's log lines say what was registered
        "MLFLOW_LOGGING_LEVEL": os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING"),
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
        **{key: os.environ.get(key, value) for key, value in MLFLOW_HTTP_DEFAULTS.items()},
    }
    os.environ.update(values)
    logging.getLogger("mlflow").setLevel(values["MLFLOW_LOGGING_LEVEL"].upper())  # if MLflow was imported already
    remember_installed_distributions()
    return values


def remember_installed_distributions() -> None:
    """Read which distribution installs each top-level module once per process, not once per question.

    ZenML names the package of every artefact type and materializer it records (``source_utils.resolve``) by
    ``importlib.metadata.packages_distributions()``, which reads the file list of every installed distribution
    each time: 0.27 s here with TensorFlow, ZenML and MLflow loaded, eleven times in a tiny ``run`` (3.0 s), more
    in a larger DAG (a tiny ``run``, whole process, 2 cores: 66.4 -> 65.1 s median of 3). What is installed does not
    change while a command runs, so the first answer is kept (each caller gets its own copy of the mapping).
    Idempotent.
    """
    import functools
    import importlib.metadata as metadata

    if getattr(metadata.packages_distributions, "remembered", False):
        return
    scan = functools.cache(metadata.packages_distributions)

    @functools.wraps(metadata.packages_distributions)
    def packages_distributions() -> dict[str, list[str]]:
        return {module: list(names) for module, names in scan().items()}

    packages_distributions.remembered = True
    metadata.packages_distributions = packages_distributions


#: the extra of the project that installs each Keras backend
BACKEND_EXTRAS = {
    "tensorflow": "the project's extra tensorflow",
    "jax": "the project's extra jax (jax-cuda on a GPU)",
    "torch": "no extra of the project: install torch",
}


def use_keras_backend(backend: str | None) -> str:
    """Make Keras load ``backend`` (a profile's ``train.backend``): sets ``KERAS_BACKEND`` before Keras is imported.

    None keeps ``KERAS_BACKEND`` or Keras's default. Returns the backend Keras will use.

    Raises:
        RuntimeError: the backend is not installed, or Keras is already loaded with another one.
    """
    if backend is None:
        return os.environ.get("KERAS_BACKEND", "tensorflow")
    if "keras" in sys.modules:
        loaded = sys.modules["keras"].backend.backend()
        if loaded != backend:
            raise RuntimeError(
                f"train.backend is {backend}, but Keras is already loaded with {loaded} in this process: "
                f"set KERAS_BACKEND={backend}"
            )
        return backend
    if importlib.util.find_spec(backend) is None:
        raise RuntimeError(f"train.backend is {backend}, which is not installed here ({BACKEND_EXTRAS[backend]})")
    os.environ["KERAS_BACKEND"] = backend
    return backend
