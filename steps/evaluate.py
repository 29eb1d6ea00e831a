from typing import Annotated, Any

import keras
import mlflow
import numpy as np
import pandas as pd
from zenml import log_metadata, step

from liverlesion.config import EvaluateConfig
from liverlesion.evaluation import evaluate_test_set
from liverlesion.metrics import plot_confusion_matrix
from liverlesion.report import plot_roc_curves, write_report
from liverlesion.splitting import arrays_for_set
from liverlesion.training import predict_metastasis_probability
from steps.tracking import run_reports_dir, use_tracking_store, zenml_run


@step
def evaluate(
    model: keras.Model,
    patches: np.ndarray,
    patch_index: pd.DataFrame,
    split_manifest: pd.DataFrame,
    lesions: pd.DataFrame,
    mlflow_run_id: str,
    config: EvaluateConfig,
) -> tuple[Annotated[dict[str, Any], "test_metrics"], Annotated[pd.DataFrame, "test_predictions"]]:
    """The seven metrics, confusion matrix and ROC on the held-out test patients."""
    x_test, y_test, lesion_ids = arrays_for_set(patches, patch_index, split_manifest, "test")
    probability = predict_metastasis_probability(model, x_test)
    result = evaluate_test_set(lesion_ids, y_test, probability, split_manifest, lesions, config.threshold)
    predictions, intervals, metrics = result.predictions, result.intervals, result.metrics
    baseline, oracle = result.mean_hu_threshold_accuracy, result.mean_hu_best_threshold_accuracy

    folder = run_reports_dir(zenml_run().name)
    report = write_report({model.name: intervals}, folder, "Test metrics",
                          f"{len(y_test)} test lesions of {predictions['patient_key'].nunique()} patients")
    cm_path = plot_confusion_matrix(y_test, probability, config.threshold, folder / "confusion_matrix.png")
    roc_path = plot_roc_curves({model.name: (y_test, probability)}, folder / "roc_curve.png")
    predictions_path = folder / "test_predictions.csv"
    predictions.to_csv(predictions_path, index=False)

    use_tracking_store()
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        mlflow.log_metrics({"test_mean_hu_threshold_accuracy": baseline, "test_mean_hu_best_threshold_accuracy": oracle})
        mlflow.log_metrics({f"test_{row.metric}_{bound}": getattr(row, bound)
                            for row in intervals.itertuples() for bound in ("lower", "upper")})
        for path in (cm_path, roc_path, predictions_path, report["csv"], report["md"]):
            mlflow.log_artifact(str(path), artifact_path="evaluation")
    print("[evaluate] test " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
          + f" | mean-HU threshold: {baseline:.3f} (fitted on train), {oracle:.3f} (best on test)", flush=True)
    log_metadata({"metrics": metrics, "mean_hu_threshold_accuracy": baseline, "mean_hu_best_threshold_accuracy": oracle})
    ci = {row.metric: [float(row.lower), float(row.upper)] for row in intervals.itertuples()}
    return ({"metrics": metrics, "intervals": ci, "threshold": config.threshold, "n_test": int(len(y_test)),
             "mean_hu_threshold_accuracy": baseline, "mean_hu_best_threshold_accuracy": oracle,
             "plots": {"confusion_matrix": str(cm_path), "roc_curve": str(roc_path)},
             "predictions": str(predictions_path)}, predictions)
