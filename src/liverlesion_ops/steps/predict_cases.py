import logging
from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import log_metadata, step

from liverlesion.imaging import load_nifti
from liverlesion.predict import RESULT_COLUMNS, write_outputs
from liverlesion.progress import progress_printer
from liverlesion_ops.project import run_reports_dir
from liverlesion_ops.registry.registration import load_registered_predictor
from liverlesion_ops.tracking import ensure_experiment, use_tracking_store, zenml_run

log = logging.getLogger(__name__)


@step
def predict_cases(
    cases: pd.DataFrame,
    model_name: str,
    model_version: str,
    data_version: str,
    experiment: str,
) -> tuple[Annotated[pd.DataFrame, "lesion_predictions"], Annotated[dict[str, Any], "inference_record"]]:
    """Every lesion of every case scored by one registered model version, with the outputs of `predict`.

    ``model_version`` is a number, not an alias: the CLI resolves ``champion`` before the run, so a
    cached result is never reused for another model. Per case, ``reports/<run>/predictions/<case>/``
    gets the files ``liverlesion predict`` writes; the run records the model version it used
    (step metadata, and an MLflow run tagged ``job=batch_inference``).
    """
    use_tracking_store()
    uri = f"models:/{model_name}/{model_version}"
    predictor = load_registered_predictor(model_name, model_version)
    run = zenml_run()
    folder = run_reports_dir(run.name) / "predictions"
    report = progress_printer("predict_cases")
    tables = []
    for i, case in enumerate(cases.itertuples(index=False), start=1):
        image, meta = load_nifti(case.image_path)
        mask, _ = load_nifti(case.mask_path)
        prediction = predictor.predict(image, meta, mask, case.case_id, case.mask_encoding)
        write_outputs(
            prediction,
            folder / case.case_id,
            title=f"{case.case_id}: {model_name} v{model_version}",
            extra=predictor.record(model=uri, case_id=case.case_id, data_version=data_version),
        )
        tables.append(prediction.results)
        report(i, len(cases), case.case_id)
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(RESULT_COLUMNS))
    table_path = folder / "lesion_predictions.csv"
    table.to_csv(table_path, index=False)
    mlflow.set_experiment(experiment_id=ensure_experiment(experiment))
    with mlflow.start_run(run_name=f"batch-inference-{run.name}") as active:
        mlflow.set_tags(
            {
                "job": "batch_inference",
                "model_name": model_name,
                "model_version": model_version,
                "model_uri": uri,
                "data_version": data_version,
                "zenml_run_id": str(run.id),
                "zenml_run_name": run.name,
            }
        )
        mlflow.log_metrics(
            {"cases": len(cases), "lesions": len(table), "metastases_called": int((table["predicted"] == 1).sum())}
        )
        mlflow.log_artifact(str(table_path), artifact_path="predictions")
    record = {
        "model_name": model_name,
        "model_version": model_version,
        "model_uri": uri,
        "cases": len(cases),
        "lesions": len(table),
        "precision": predictor.precision,
        "threshold": predictor.threshold,
        "outputs": str(folder),
        "table": str(table_path),
        "mlflow_run_id": active.info.run_id,
    }
    log.info(f"{len(cases)} case(s), {len(table)} lesion(s) by {uri}: {folder}")
    log_metadata(record)
    return table, record
