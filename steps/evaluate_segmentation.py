from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import log_metadata, step

from liverlesion.segmentation import SegmentSettings, end_to_end, segmentation_summary
from steps.tracking import run_reports_dir, use_tracking_store, zenml_run


def _table(summary: dict[str, Any], counts: dict[str, Any]) -> str:
    rows = [("liver Dice", summary["liver_dice"]), ("liver ASSD (mm)", summary["liver_assd_mm"]),
            ("lesion Dice (all lesions of a case)", summary["lesion_dice"]),
            ("lesion ASSD (mm)", summary["lesion_assd_mm"]),
            ("lesions found / reference lesions", f"{summary['found_lesions']} / {summary['reference_lesions']}"),
            ("detection recall, metastases", summary["detection_recall_metastasis"]),
            ("detection recall, cysts", summary["detection_recall_cyst"]),
            ("invented lesions per patient", summary["false_positives_per_patient"]),
            ("seconds per CT", summary["seconds_per_case"])]
    lines = ["| measure | value |", "| --- | --- |"]
    lines += [f"| {name} | {value:.3f} |" if isinstance(value, float) else f"| {name} | {value} |" for name, value in rows]
    lines += ["", "End to end (test patients): each reference lesion found by segmentation and classified, or missed.", "",
              "| | metastases | cysts |", "| --- | --- | --- |"]
    for what in ("reference", "found_called_right", "found_called_wrong", "missed"):
        lines.append(f"| {what.replace('_', ' ')} | {counts[f'{what}_metastasis']} | {counts[f'{what}_cyst']} |")
    lines += ["", f"Invented lesions (matching no reference lesion): {counts['invented']}. End-to-end sensitivity "
              f"(metastases found and called metastasis / all): {counts['recall']:.3f}; end-to-end "
              f"specificity (cysts found and called cyst / all): {counts['specificity']:.3f}."]
    return "\n".join(lines) + "\n"


@step
def evaluate_segmentation(
    segmentation_cases: pd.DataFrame,
    segmentation_lesions: pd.DataFrame,
    split_manifest: pd.DataFrame,
    test_predictions: pd.DataFrame,
    mlflow_run_id: str,
    segment: SegmentSettings,
    threshold: float,
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
    counts = end_to_end(lesions, test_predictions, threshold)
    folder = run_reports_dir(zenml_run().name)
    report = folder / "segmentation.md"
    report.write_text(f"# Segmentation: {segment.method}\n\nOn the {summary['cases']} CTs of the "
                      f"{summary['patients']} test patients (a reference lesion is found at a Dice of at least "
                      f"{segment.detection_dice}).\n\n" + _table(summary, counts))
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
    print(f"[evaluate_segmentation] {segment.method}: test liver Dice {summary['liver_dice']:.3f}, lesion Dice "
          f"{summary['lesion_dice']:.3f}, detection recall {summary['detection_recall']:.3f}, "
          f"{summary['false_positives_per_patient']:.2f} invented per patient; end-to-end sensitivity "
          f"{counts['recall']:.3f}: {report}", flush=True)
    result = {"method": segment.method, "test": summary, "all": overall, "end_to_end": counts, "report": str(report)}
    log_metadata(result)
    return result
