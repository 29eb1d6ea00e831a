from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from liverlesion.ingestion import ingest_cases
from liverlesion.progress import progress_printer


@step
def ingest(data_dir: str, data_version: str) -> Annotated[pd.DataFrame, "cases"]:
    """Load every case; ``data_version`` (the DVC hash) keys the cache, so new data is re-ingested."""
    cases = ingest_cases(data_dir, data_version, progress=progress_printer("ingest"))
    log_metadata({"data_version": data_version, "cases": len(cases), "patients": int(cases["patient_key"].nunique())})
    return cases
