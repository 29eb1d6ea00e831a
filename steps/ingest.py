from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from liverlesion.config import IngestConfig
from liverlesion.crops import LesionCrops
from liverlesion.ingestion import ingest_cases
from liverlesion.progress import progress_printer
from steps.materializers import LesionCropsMaterializer
from steps.tracking import run_reports_dir, zenml_run


@step(output_materializers={"crops": LesionCropsMaterializer})
def ingest(data_dir: str, data_version: str, config: IngestConfig, crop_margin_mm: float, code_version: str = "") -> tuple[
    Annotated[pd.DataFrame, "cases"],
    Annotated[pd.DataFrame, "lesion_types"],
    Annotated[pd.DataFrame, "quarantined"],
    Annotated[LesionCrops, "crops"],
]:
    """Read and check every case once, and cut each lesion's box with ``crop_margin_mm`` around it.

    The only step that opens a CT: the later ones work on the crops. ``data_version`` (the DVC
    hash) keys the cache, so new data is re-ingested, and ``code_version`` (the training code's
    hash), so new code re-runs the data steps.

    Bad cases stop the run, or with ``on_bad_case: quarantine`` are set aside and listed in
    ``reports/<run>/quarantine.md``: never dropped silently.
    """
    ingested = ingest_cases(data_dir, data_version, progress=progress_printer("ingest"),
                            quarantine=config.on_bad_case == "quarantine", crop_margin_mm=crop_margin_mm)
    cases, quarantined = ingested.cases, ingested.quarantined
    if not quarantined.empty:
        path = run_reports_dir(zenml_run().name) / "quarantine.md"
        path.write_text("# Quarantined cases\n\n" f"{len(quarantined)} case(s) broke the data contract and were set aside "
                        "(`ingest.on_bad_case: quarantine`):\n\n"
                        + "\n".join(f"- {row.problem}" for row in quarantined.itertuples()) + "\n")
        print(f"[ingest] QUARANTINED {len(quarantined)} case(s), listed in {path}:", flush=True)
        for row in quarantined.itertuples():
            print(f"[ingest]   {row.problem}", flush=True)
    log_metadata({"data_version": data_version, "cases": len(cases), "patients": int(cases["patient_key"].nunique()),
                  "quarantined": quarantined["case_id"].tolist(), "lesion_crops": len(ingested.crops),
                  "crop_margin_mm": crop_margin_mm})
    return cases, ingested.lesion_types, quarantined, ingested.crops
