"""Environment set-up for a run: where ZenML, MLflow and DVC keep their state, and nothing phones home.

| variable | default | what |
| --- | --- | --- |
| ``ZENML_CONFIG_PATH`` | ``<home>/zenml`` | ZenML's local store and stack |
| ``MLFLOW_TRACKING_URI`` | ``sqlite:///<home>/mlflow/mlflow.db`` | MLflow tracking and registry store |
| ``LIVERLESION_DVC_REMOTE`` | ``<home>/dvc-remote`` | the local DVC remote the cohort is pushed to |

``<home>`` is ``liverlesion.paths.state_home()``.
"""

from __future__ import annotations

import os
from pathlib import Path

from liverlesion.paths import state_home


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
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
    }
    os.environ.update(values)
    return values
