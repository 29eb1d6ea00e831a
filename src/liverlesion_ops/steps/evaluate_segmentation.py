import logging
from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import log_metadata, step

from liverlesion.report import segmentation_markdown
from liverlesion.segmentation import SegmentSettings, end_to_end, segmentation_summary
from liverlesion_ops.project import run_reports_dir
from liverlesion_ops.tracking import use_tracking_store, zenml_run

log = logging.getLogger(__name__)


@step
def evaluate_segmentation(
    segmentation_cases: pd.DataFrame,
    segmentation_lesions: pd.DataFrame,
    split_manifest: pd.DataFrame,
    test_predictions: pd.DataFrame,
    mlflow_run_id: str,
    test_metrics: dict[str, Any],
    segment: SegmentSettings,
) -> Annotated[dict[str, Any], "segmentation_metrics"]:
    """The automatic segmentation against the reference, on the test patients, and end to end with the classifier.

    Reported in ``reports/<run>/segmentation.md`` (with per-case and per-lesion CSVs) and in the
    training run in MLflow (``seg_*`` and ``end_to_end_*`` metrics; every run, ``reference`` too, gets
    the ``segment_method`` parameter and ``test_lesions_scored``). Nothing to measure for ``reference``.
    """
    use_tracking_store()
    with mlflow.start_run(run_id=mlflow_run_id):  # every run says where its lesions came from
        mlflow.log_param("segment_method", segment.method)
        mlflow.log_metric("test_lesions_scored", len(test_predictions))
    if not segment.automatic:
        log_metadata({"method": "reference"})
        return {"method": "reference"}
    test_patients = set(split_manifest.loc[split_manifest["set"] == "test", "patient_key"])
    cases = segmentation_cases[segmentation_cases["patient_key"].isin(test_patients)]
    lesions = segmentation_lesions[segmentation_lesions["patient_key"].isin(test_patients)]
    summary = segmentation_summary(cases, lesions)
    overall = segmentation_summary(segmentation_cases, segmentation_lesions)
    counts = end_to_end(lesions, test_predictions, test_metrics["threshold"])  # the evaluate step's (operating point)
    folder = run_reports_dir(zenml_run().name)
    report = folder / "segmentation.md"
    report.write_text(segmentation_markdown(segment.method, summary, counts, segment.detection_dice))
    cases_path, lesions_path = folder / "segmentation_cases.csv", folder / "segmentation_lesions.csv"
    segmentation_cases.to_csv(cases_path, index=False)
    segmentation_lesions.to_csv(lesions_path, index=False)
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v == v}
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_metrics({f"seg_test_{k}": float(v) for k, v in numbers.items()})
        mlflow.log_metrics({f"seg_all_{k}": float(v) for k, v in overall.items() if v == v})
        mlflow.log_metrics({f"end_to_end_{k}": float(v) for k, v in counts.items() if v == v})
        for path in (report, cases_path, lesions_path):
            mlflow.log_artifact(str(path), artifact_path="segmentation")
    log.info(
        f"{segment.method}: test liver Dice {summary['liver_dice']:.3f}, lesion Dice "
        f"{summary['lesion_dice']:.3f}, detection recall {summary['detection_recall']:.3f}, "
        f"{summary['false_positives_per_patient']:.2f} invented per patient; end-to-end sensitivity "
        f"{counts['recall']:.3f}: {report}",
    )
    result = {"method": segment.method, "test": summary, "all": overall, "end_to_end": counts, "report": str(report)}
    log_metadata(result)
    return result
