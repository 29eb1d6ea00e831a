from typing import Annotated, Any

import pandas as pd
from zenml import log_metadata, step

from liverlesion.config import SplitConfig
from liverlesion.splitting import manifest_hash, split_lesions, split_summary


@step
def split(
    lesions: pd.DataFrame, validation_report: dict[str, Any], config: SplitConfig
) -> tuple[Annotated[pd.DataFrame, "split_manifest"], Annotated[str, "split_manifest_hash"]]:
    """Patient-level, label-stratified, seeded split; runs only on validated data."""
    if not validation_report.get("success"):
        raise ValueError("split refuses data that failed validation: see the validate step's report")
    manifest = split_lesions(lesions, config.val_fraction, config.test_fraction, config.seed)
    digest = manifest_hash(manifest)
    summary = split_summary(manifest)
    print(f"[split] manifest {digest[:12]}\n{summary.to_string()}", flush=True)
    log_metadata({"manifest_hash": digest, "summary": summary.reset_index().to_dict(orient="records")})
    return manifest, digest
