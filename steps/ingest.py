from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from liverlesion.config import IngestConfig
from liverlesion.ingestion import ingest_cases
from liverlesion.progress import progress_printer
from steps.tracking import run_reports_dir, zenml_run


@step
def ingest(data_dir: str, data_version: str, config: IngestConfig, code_version: str = "") -> tuple[
    Annotated[pd.DataFrame, "cases"],
    Annotated[pd.DataFrame, "lesion_types"],
    Annotated[pd.DataFrame, "quarantined"],
]:
    """Load and check every case; ``data_version`` (the DVC hash) keys the cache, so new data is re-ingested,
    and ``code_version`` (the training code's hash), so new code re-runs the data steps.

    Bad cases stop the run, or with ``on_bad_case: quarantine`` are set aside and listed in
    ``reports/<run>/quarantine.md``: never dropped silently.
    """
    ingested = ingest_cases(data_dir, data_version, progress=progress_printer("ingest"),
                            quarantine=config.on_bad_case == "quarantine")
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
                  "quarantined": quarantined["case_id"].tolist()})
    return cases, ingested.lesion_types, quarantined
