"""The learned segmentation cascade: trained on the cases that have reference masks, registered in MLflow."""

from __future__ import annotations

import logging
import tempfile
from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import log_metadata, step

from liverlesion.progress import progress_printer
from liverlesion.segmentation import SegmentSettings, measure_case, read_reference_case, segmentation_summary
from liverlesion.segnet import CascadeSettings, train_cascade
from liverlesion.splitting import cases_in_sets
from liverlesion_ops.project import run_reports_dir
from liverlesion_ops.segmenters import register_segmenter
from liverlesion_ops.tracking import start_tracked_run, use_tracking_store

log = logging.getLogger(__name__)


def _read(case):
    return read_reference_case(case.image_path, case.mask_path, case.liver_mask_path, case.case_id, case.mask_encoding)


@step
def train_segmenter(
    cases: pd.DataFrame,
    split_manifest: pd.DataFrame,
    split_manifest_hash: str,
    settings: CascadeSettings,
    segment: SegmentSettings,
    model_name: str,
    experiment: str,
    data_version: str,
    code_version: str,
    profile: str,
) -> Annotated[dict[str, Any], "segmenter_registration"]:
    """Train the liver/lesion U-Net cascade on the training and validation patients, measure it on the test patients.

    The test patients are the classifier's (``split_manifest``), so the segmentation table of every
    method is measured on patients the cascade never saw. The cascade is logged in an MLflow run
    (``job=train_segmenter``) and registered as ``model_name``; it becomes ``champion`` when there is
    none, or when its test lesion Dice is at least the champion's.
    """
    missing = cases.loc[cases["liver_mask_path"].fillna("") == "", "case_id"].tolist()
    if missing:
        raise ValueError(
            f"the learned cascade trains on reference liver masks; case(s) {missing[:5]} have none "
            "(add a liver_mask column to cases.csv)"
        )
    train_cases = cases_in_sets(cases, split_manifest, ("train", "val"))
    test_cases = cases_in_sets(cases, split_manifest, ("test",))
    say = progress_printer("train_segmenter")

    def training_volumes():
        for i, case in enumerate(train_cases.itertuples(index=False), start=1):
            ref = _read(case)
            say(i, len(train_cases), case.case_id)
            yield ref.image, ref.liver, ref.instances > 0

    cascade, history = train_cascade(training_volumes(), settings, progress=log.info)
    measured, outcomes = [], []
    learned = segment.model_copy(update={"method": "learned"})
    for case in test_cases.itertuples(index=False):
        ref = _read(case)
        row, rows = measure_case(
            case.case_id,
            case.patient_key,
            ref.image,
            ref.spacing,
            ref.instances,
            ref.labels,
            ref.liver,
            learned,
            cascade,
        )
        measured.append(row)
        outcomes.extend(rows)
    summary = segmentation_summary(pd.DataFrame(measured), pd.DataFrame(outcomes))
    log.info(
        f"test patients: liver Dice {summary['liver_dice']:.3f}, lesion Dice "
        f"{summary['lesion_dice']:.3f}, detection recall {summary['detection_recall']:.3f}",
    )

    use_tracking_store()
    with start_tracked_run(
        experiment,
        "segmenter",
        profile,
        data_version,
        split_manifest_hash,
        "unet_cascade",
        job="train_segmenter",
        code_version=code_version,
    ) as run:
        mlflow.log_params({f"cascade_{k}": v for k, v in settings.as_dict().items()})
        for key, values in history.items():
            for epoch, value in enumerate(values):
                mlflow.log_metric(key, value, step=epoch)
        mlflow.log_metrics({f"test_{k}": float(v) for k, v in summary.items() if v == v})
        folder = run_reports_dir(run.info.run_name)
        pd.DataFrame(measured).to_csv(folder / "segmenter_test_cases.csv", index=False)
        mlflow.log_artifact(str(folder / "segmenter_test_cases.csv"), artifact_path="evaluation")
        with tempfile.TemporaryDirectory(prefix="cascade-") as tmp:
            cascade.save(tmp)
            mlflow.log_artifacts(tmp, artifact_path="cascade")
    registration = register_segmenter(
        model_name,
        run.info.run_id,
        summary,
        {
            "data_version": data_version,
            "code_version": code_version,
            "split_manifest_hash": split_manifest_hash,
            "profile": profile,
        },
    )
    result = {
        **registration,
        "test": summary,
        "train_cases": len(train_cases),
        "test_cases": len(test_cases),
        "mlflow_run_id": run.info.run_id,
    }
    log_metadata(result)
    return result
