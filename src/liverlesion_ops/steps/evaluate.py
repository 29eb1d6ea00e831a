import logging
from pathlib import Path
from typing import Annotated, Any

import keras
import mlflow
import numpy as np
import pandas as pd
from zenml import log_metadata, step

from liverlesion.config import EvaluateConfig
from liverlesion.evaluation import TestEvaluation, evaluate_test_set
from liverlesion.metrics import plot_confusion_matrix
from liverlesion.precision import inference_model, resolve_precision
from liverlesion.report import plot_roc_curves, write_report
from liverlesion.splitting import arrays_for_set
from liverlesion.training import predict_metastasis_probability
from liverlesion_ops.project import run_reports_dir
from liverlesion_ops.tracking import use_tracking_store, zenml_run

log = logging.getLogger(__name__)


def record_test_evaluation(
    result: TestEvaluation,
    name: str,
    folder: Path,
    mlflow_run_id: str,
    threshold: float,
    tag: str = "evaluate",
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Report files (Table 2 row, confusion matrix, ROC, per-lesion predictions) + MLflow metrics.

    Shared by every model's evaluation, so that each model of a comparison is scored, logged and
    filed the same way. Returns the step's summary (metrics, intervals, baselines, file paths).
    """
    predictions, intervals, metrics = result.predictions, result.intervals, result.metrics
    y_test, probability = predictions["label"].to_numpy(), predictions["p_metastasis"].to_numpy()
    baseline, oracle = result.mean_hu_threshold_accuracy, result.mean_hu_best_threshold_accuracy
    report = write_report(
        {name: intervals},
        folder,
        "Test metrics",
        f"{len(y_test)} test lesions of {predictions['patient_key'].nunique()} patients",
    )
    cm_path = plot_confusion_matrix(y_test, probability, threshold, folder / "confusion_matrix.png", title=name)
    roc_path = plot_roc_curves({name: (y_test, probability)}, folder / "roc_curve.png")
    predictions_path = folder / "test_predictions.csv"
    predictions.to_csv(predictions_path, index=False)

    use_tracking_store()
    with mlflow.start_run(run_id=mlflow_run_id):
        if params:
            mlflow.log_params(params)
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        mlflow.log_metrics(
            {"test_mean_hu_threshold_accuracy": baseline, "test_mean_hu_best_threshold_accuracy": oracle}
        )
        mlflow.log_metrics(
            {
                f"test_{row.metric}_{bound}": getattr(row, bound)
                for row in intervals.itertuples()
                for bound in ("lower", "upper")
            }
        )
        for path in (cm_path, roc_path, predictions_path, report["csv"], report["md"]):
            mlflow.log_artifact(str(path), artifact_path="evaluation")
    log.info(
        f"{name} test "
        + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        + f" | mean-HU threshold: {baseline:.3f} (fitted on train), {oracle:.3f} (best on test)",
    )
    log_metadata(
        {"metrics": metrics, "mean_hu_threshold_accuracy": baseline, "mean_hu_best_threshold_accuracy": oracle}
    )
    ci = {row.metric: [float(row.lower), float(row.upper)] for row in intervals.itertuples()}
    return {
        "metrics": metrics,
        "intervals": ci,
        "threshold": threshold,
        "n_test": int(len(y_test)),
        "mean_hu_threshold_accuracy": baseline,
        "mean_hu_best_threshold_accuracy": oracle,
        "plots": {"confusion_matrix": str(cm_path), "roc_curve": str(roc_path)},
        "predictions": str(predictions_path),
        **(params or {}),
    }


@step
def evaluate(
    model: keras.Model,
    patches: np.ndarray,
    patch_index: pd.DataFrame,
    split_manifest: pd.DataFrame,
    lesions: pd.DataFrame,
    mlflow_run_id: str,
    config: EvaluateConfig,
    model_key: str = "",
) -> tuple[Annotated[dict[str, Any], "test_metrics"], Annotated[pd.DataFrame, "test_predictions"]]:
    """The seven metrics, confusion matrix and ROC on the held-out test patients.

    Lesions are scored as they will be served: ``config.precision`` (``liverlesion.precision``;
    ``auto`` resolves to bfloat16 or float32 by the CPU, and the MLflow run records which).
    ``model_key`` (a Table 2 model, ``liverlesion compare``) files the reports in a folder of its own.
    """
    x_test, y_test, lesion_ids = arrays_for_set(patches, patch_index, split_manifest, "test")
    precision, why = resolve_precision(config.precision)
    log.info(f"scoring in {precision} ({why})")
    probability = predict_metastasis_probability(inference_model(model, precision), x_test)
    result = evaluate_test_set(
        lesion_ids, y_test, probability, split_manifest, lesions, config.threshold, config.bootstrap
    )
    folder = run_reports_dir(zenml_run().name)
    if model_key:
        folder = folder / model_key
        folder.mkdir(exist_ok=True)
    summary = record_test_evaluation(
        result,
        model_key or model.name,
        folder,
        mlflow_run_id,
        config.threshold,
        params={"inference_precision": precision, "inference_precision_setting": config.precision},
    )
    return summary, result.predictions
