import logging
from pathlib import Path
from typing import Annotated, Any

import mlflow
import numpy as np
import pandas as pd
from zenml import log_metadata, step

from liverlesion.calibration import Calibration, fit_calibration
from liverlesion.config import EvaluateConfig
from liverlesion.evaluation import (
    TestEvaluation,
    choose_threshold,
    evaluate_calibration,
    evaluate_failures,
    evaluate_test_set,
    lesion_map_example,
)
from liverlesion.htmlreport import write_html_report
from liverlesion.metrics import plot_confusion_matrix
from liverlesion.report import plot_roc_curves, write_report
from liverlesion.splitting import arrays_for_set
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
    calibration: dict[str, Any] | None = None,
    failures: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Report files (Table 2 row, confusion matrix, ROC, per-lesion predictions) + MLflow metrics.

    Shared by every model's evaluation, so that each model of a comparison is scored, logged and
    filed the same way. ``calibration`` (``evaluation.evaluate_calibration``) adds its Brier score and
    ECE (calibrated and the network's own, with intervals), its parameters and its reliability diagram;
    ``failures`` (``evaluation.evaluate_failures``) the breakdown and the failure gallery. Returns the step's
    summary (metrics, intervals, baselines, calibration, breakdown, file paths).
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
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()} | {"decision_threshold": threshold})
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
        html = write_html_report(
            folder,
            f"{name}: test evaluation of training run {mlflow_run_id}",
            _facts(name, mlflow_run_id, predictions, threshold, params or {}, calibration),
        )
        paths = [cm_path, roc_path, predictions_path, report["csv"], report["md"], html]
        if calibration:
            mlflow.log_metrics(
                {f"test_{k}": calibration[k] for k in calibration["intervals"]}
                | {
                    f"test_{k}_{bound}": v
                    for k, pair in calibration["intervals"].items()
                    for bound, v in zip(("lower", "upper"), pair)
                }
            )
            mlflow.log_params({f"calibration_{k}": v for k, v in calibration["calibration"].items()})
            paths += list(calibration["files"].values())
        if failures:
            paths += list(failures["files"].values())
        for path in paths:
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
    summary = {
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
    if calibration:
        log.info(
            f"{name} calibration {calibration['calibration']['method']}: test Brier "
            f"{calibration['brier_network']:.3f} -> {calibration['brier']:.3f}, "
            f"ECE {calibration['ece_network']:.3f} -> {calibration['ece']:.3f}"
        )
        summary["plots"]["reliability_diagram"] = str(calibration["files"]["reliability_diagram"])
        summary["calibration"] = calibration["calibration"]
        summary["calibration_metrics"] = {k: calibration[k] for k in calibration["intervals"]}
        summary["calibration_intervals"] = calibration["intervals"]
    if failures:
        summary["breakdown"] = failures["breakdown"]
        summary["plots"]["failure_gallery"] = str(failures["files"]["failure_gallery"])
    summary["report"] = str(html)
    return summary


def _facts(
    name: str,
    run_id: str,
    predictions: pd.DataFrame,
    threshold: float,
    params: dict[str, Any],
    calibration: dict[str, Any] | None,
) -> list[tuple[str, str]]:
    """The head of a training run's HTML report: what was scored, on what, and how a lesion is called."""
    chosen = (params.get("operating_point") or {}).get("chosen", "fixed")
    facts = [
        ("model", name),
        ("MLflow training run", run_id),
        (
            "test set",
            f"{len(predictions)} lesions of {predictions['patient_key'].nunique()} patients, never trained on",
        ),
        ("metastasis when", f"P(metastasis) >= {threshold:.4g} ({chosen})"),
    ]
    if calibration:
        facts.append(("P(metastasis)", Calibration.from_dict(calibration["calibration"]).describe()))
    if params.get("inference_precision"):
        facts.append(("scored in", str(params["inference_precision"])))
    return facts


@step
def evaluate(
    model: Any,  # a keras.Model (typed Any: importing the pipelines loads no Keras; KerasModelMaterializer)
    patches: np.ndarray,
    patch_index: pd.DataFrame,
    split_manifest: pd.DataFrame,
    lesions: pd.DataFrame,
    mlflow_run_id: str,
    config: EvaluateConfig,
    model_key: str = "",
    cases: pd.DataFrame | None = None,
) -> tuple[Annotated[dict[str, Any], "test_metrics"], Annotated[pd.DataFrame, "test_predictions"]]:
    """The seven metrics, confusion matrix and ROC on the held-out test patients, and what the probabilities
    mean (calibration).

    Lesions are scored as they will be served: ``config.precision`` (``liverlesion.precision``;
    ``auto`` resolves to bfloat16 or float32 by the CPU, and the MLflow run records which), through the
    post-hoc calibration ``config.calibration`` fitted here on the validation lesions (the registered
    model carries it). The test lesions' Brier score and ECE are reported before and after it, and where
    the model fails: by lesion diameter, by slice spacing (from ``cases``) and per patient, with a gallery of
    the worst-scored lesions.
    ``model_key`` (a Table 2 model, ``liverlesion compare``) files the reports in a folder of its own.
    """
    from liverlesion.precision import inference_model, resolve_precision
    from liverlesion.training import predict_metastasis_probability

    x_test, y_test, lesion_ids = arrays_for_set(patches, patch_index, split_manifest, "test")
    x_val, y_val, val_ids = arrays_for_set(patches, patch_index, split_manifest, "val")
    precision, why = resolve_precision(config.precision)
    log.info(f"scoring in {precision} ({why})")
    scorer = inference_model(model, precision)
    validation = pd.DataFrame(
        {"lesion_id": val_ids, "label": y_val, "p_network": predict_metastasis_probability(scorer, x_val)}
    )
    calibration = fit_calibration(validation["label"], validation["p_network"], config.calibration)
    validation["p_metastasis"] = calibration(validation["p_network"].to_numpy())
    threshold, operating_point = choose_threshold(validation, config)
    log.info(f"a lesion is called metastasis at P >= {threshold:.4f} ({operating_point['chosen']})")
    network = predict_metastasis_probability(scorer, x_test)
    result = evaluate_test_set(
        lesion_ids, y_test, calibration(network), split_manifest, lesions, threshold, config.bootstrap
    )
    # the network's own probability, before calibration
    result.predictions["p_network"] = result.predictions["lesion_id"].map(dict(zip(lesion_ids, network)))
    folder = run_reports_dir(zenml_run().name)
    if model_key:
        folder = folder / model_key
        folder.mkdir(exist_ok=True)
    calibrated = evaluate_calibration(
        calibration,
        result.predictions["label"].to_numpy(),
        result.predictions["p_network"].to_numpy(),
        result.predictions["patient_key"].to_numpy(),
        config.calibration_bins,
        config.bootstrap,
        folder,
    )
    # what the calibration was fitted on, so that another can be tried offline
    calibrated["files"]["validation_predictions"] = folder / "validation_predictions.csv"
    validation.to_csv(calibrated["files"]["validation_predictions"], index=False)
    slice_mm = lesions.set_index("lesion_id")["case_id"].map(
        cases.set_index("case_id")["spacing_2"] if cases is not None else {}
    )
    row_of = {lesion: k for k, lesion in enumerate(lesion_ids)}
    failures = evaluate_failures(
        result.predictions.assign(slice_mm=result.predictions["lesion_id"].map(slice_mm)),
        x_test[[row_of[lesion] for lesion in result.predictions["lesion_id"]]],
        threshold,
        config,
        folder,
    )
    if cases is not None:
        example = lesion_map_example(
            result.predictions,
            lesions,
            cases,
            threshold,
            folder / "lesion_map.png",
            f"An example test CT, {model_key or model.name}",
        )
        if example is None:
            log.info("no lesion map example: the scored test lesions are not the reference mask's own")
        else:
            failures["files"]["lesion_map"] = example
    summary = record_test_evaluation(
        result,
        model_key or model.name,
        folder,
        mlflow_run_id,
        threshold,
        params={
            "inference_precision": precision,
            "inference_precision_setting": config.precision,
            "operating_point": operating_point,
        },
        calibration=calibrated,
        failures=failures,
    )
    return summary, result.predictions
