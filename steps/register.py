import json
from typing import Annotated, Any

import keras
from zenml import log_metadata, step

from liverlesion import paths
from liverlesion.config import RegisterConfig
from liverlesion.lineage import config_hash, git_commit
from steps.registry import register_model_version
from steps.tracking import use_tracking_store, zenml_run


@step
def register(
    model: keras.Model,
    test_metrics: dict[str, Any],
    mlflow_run_id: str,
    split_manifest_hash: str,
    data_version: str,
    profile: str,
    profile_config: dict[str, Any],
    config: RegisterConfig,
) -> Annotated[dict[str, Any], "registration"]:
    """A registered MLflow model version with its lineage; ``champion`` only through the gate."""
    use_tracking_store()
    run = zenml_run()
    lineage = {
        "data_version": data_version,
        "split_manifest_hash": split_manifest_hash,
        "git_commit": git_commit(paths.code_root()),
        "profile": profile,
        "config_hash": config_hash(profile_config),
        "config": json.dumps(profile_config, sort_keys=True, separators=(",", ":")),
        "zenml_run_id": str(run.id),
        "zenml_run_name": run.name,
        "mlflow_run_id": mlflow_run_id,
    }
    result = register_model_version(
        model, mlflow_run_id, config.model_name, test_metrics["metrics"], lineage,
        config.primary_metric, config.champion_alias, config.challenger_alias,
    )
    print(f"[register] {result.model_name} v{result.version} -> alias '{result.alias}': {result.decision.reason}", flush=True)
    summary = {"model_name": result.model_name, "version": result.version, "alias": result.alias,
               "promoted": result.decision.promote, "reason": result.decision.reason,
               "model_uri": result.model_uri, "lineage": lineage}
    log_metadata(summary)
    return summary
