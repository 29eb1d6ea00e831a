"""Environment set-up for a run: where ZenML and MLflow keep their state, and nothing phones home."""

from __future__ import annotations

import os

from liverlesion.paths import mlflow_tracking_uri, state_home, zenml_config_path


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
