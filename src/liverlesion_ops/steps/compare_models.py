import logging
from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import log_metadata, step

from liverlesion.config import EvaluateConfig
from liverlesion.evaluation import write_comparison
from liverlesion.zoo import model_entry
from liverlesion_ops.project import run_reports_dir
from liverlesion_ops.tracking import start_tracked_run, zenml_run

log = logging.getLogger(__name__)


@step
def compare_models(
    predictions: list[pd.DataFrame],
    mlflow_run_ids: list[str],
    model_keys: list[str],
    initial_weights: list[str],
    config: EvaluateConfig,
    split_manifest_hash: str,
    profile: str,
    experiment: str,
    data_version: str,
) -> Annotated[dict[str, Any], "table2"]:
    """The paper's Table 2 on this cohort: every model's metrics with intervals, one ROC plot,
    confusion matrices and the per-lesion predictions, in an MLflow run of its own that names the
    runs of the models it compares."""
    if not (len(predictions) == len(mlflow_run_ids) == len(model_keys) == len(initial_weights)):
        raise ValueError(f"{len(predictions)} prediction tables, {len(mlflow_run_ids)} runs, {len(model_keys)} models")
    labels = [model_entry(key).label for key in model_keys]
    run = zenml_run()
    folder = run_reports_dir(run.name) / "table2"
    notes = {
        label: f"`{key}`, {weights}; MLflow run {run_id}"
        for label, key, weights, run_id in zip(labels, model_keys, initial_weights, mlflow_run_ids)
    }
    files = write_comparison(
        dict(zip(labels, predictions)),
        folder,
        config.threshold,
        config.bootstrap,
        title=f"Table 2 on this cohort ({profile})",
        model_notes=notes,
    )
    table = pd.read_csv(files["csv"])

    with start_tracked_run(
        experiment,
        "table2",
        profile,
        data_version,
        split_manifest_hash,
        model="table2",
        compared_runs=",".join(mlflow_run_ids),
    ) as active:
        mlflow.log_params({"models": ",".join(model_keys), "threshold": config.threshold})
        for key, row in zip(model_keys, table.itertuples(index=False)):
            mlflow.log_metrics(
                {
                    f"{key}.{name}": float(getattr(row, name))
                    for name in table.columns
                    if name != "model" and pd.notna(getattr(row, name))
                }
            )
        for path in files.values():
            mlflow.log_artifact(str(path), artifact_path="table2")
    log.info(f"Table 2 of {len(model_keys)} models: {files['md']}")
    summary = {
        "models": dict(zip(model_keys, labels)),
        "mlflow_run_id": active.info.run_id,
        "model_runs": dict(zip(model_keys, mlflow_run_ids)),
        "files": {k: str(v) for k, v in files.items()},
        "rows": table.to_dict(orient="records"),
    }
    log_metadata({"models": model_keys, "mlflow_run_id": active.info.run_id, "report": str(files["md"])})
    return summary
