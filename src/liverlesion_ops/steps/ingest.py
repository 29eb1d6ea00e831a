import logging
from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from liverlesion.config import IngestConfig
from liverlesion.crops import LesionCrops
from liverlesion.ingestion import ingest_cases
from liverlesion.progress import progress_printer
from liverlesion.segmentation import SegmentSettings, segmentation_summary
from liverlesion_ops.project import run_reports_dir
from liverlesion_ops.steps.materializers import LesionCropsMaterializer
from liverlesion_ops.tracking import zenml_run

log = logging.getLogger(__name__)


@step(output_materializers={"crops": LesionCropsMaterializer})
def ingest(
    data_dir: str,
    data_version: str,
    config: IngestConfig,
    crop_margin_mm: float,
    segment: SegmentSettings,
    code_version: str = "",
    segmenter_uri: str = "",
) -> tuple[
    Annotated[pd.DataFrame, "cases"],
    Annotated[pd.DataFrame, "lesion_types"],
    Annotated[pd.DataFrame, "quarantined"],
    Annotated[LesionCrops, "crops"],
    Annotated[pd.DataFrame, "segmentation_cases"],
    Annotated[pd.DataFrame, "segmentation_lesions"],
]:
    """Read and check every case once, segment it if asked, and cut each lesion's box with ``crop_margin_mm``.

    The only step that opens a CT: the later ones work on the crops. ``data_version`` (the DVC
    hash) keys the cache, so new data is re-ingested, and ``code_version`` (the training code's
    hash), so new code re-runs the data steps. With ``segment.method`` classical or learned, the
    lesions are the automatic ones, measured against the reference masks in the same pass;
    ``segmenter_uri`` is the learned cascade's registered version (``models:/<name>/<version>``,
    resolved before the run, so a new champion is never served from cache).

    Bad cases stop the run, or with ``on_bad_case: quarantine`` are set aside and listed in
    ``reports/<run>/quarantine.md``: never dropped silently.
    """
    cascade_dir = None
    if segment.method == "learned":
        from liverlesion_ops.segmenters import download_cascade

        cascade_dir = download_cascade(segmenter_uri)
    ingested = ingest_cases(
        data_dir,
        data_version,
        progress=progress_printer("ingest"),
        quarantine=config.on_bad_case == "quarantine",
        crop_margin_mm=crop_margin_mm,
        segment=segment,
        cascade_dir=cascade_dir,
    )
    cases, quarantined = ingested.cases, ingested.quarantined
    if not quarantined.empty:
        path = run_reports_dir(zenml_run().name) / "quarantine.md"
        path.write_text(
            "# Quarantined cases\n\n"
            f"{len(quarantined)} case(s) broke the data contract and were set aside "
            "(`ingest.on_bad_case: quarantine`):\n\n"
            + "\n".join(f"- {row.problem}" for row in quarantined.itertuples())
            + "\n"
        )
        log.info(f"QUARANTINED {len(quarantined)} case(s), listed in {path}:")
        for row in quarantined.itertuples():
            log.info(f"  {row.problem}")
    measured = {}
    if segment.automatic:
        measured = segmentation_summary(ingested.segmentation_cases, ingested.segmentation_lesions)
        log.info(
            f"{segment.method} segmentation: liver Dice {measured['liver_dice']:.3f}, lesion Dice "
            f"{measured['lesion_dice']:.3f}, {measured['found_lesions']}/{measured['reference_lesions']} reference "
            f"lesions found, {measured['invented_lesions']} invented, {measured['seconds_per_case']:.1f} s per CT",
        )
    log_metadata(
        {
            "data_version": data_version,
            "cases": len(cases),
            "patients": int(cases["patient_key"].nunique()),
            "quarantined": quarantined["case_id"].tolist(),
            "lesion_crops": len(ingested.crops),
            "crop_margin_mm": crop_margin_mm,
            "segment_method": segment.method,
            "segmenter": segmenter_uri,
            "segmentation": measured,
        }
    )
    return (
        cases,
        ingested.lesion_types,
        quarantined,
        ingested.crops,
        ingested.segmentation_cases,
        ingested.segmentation_lesions,
    )
