import logging
from typing import Annotated, Any

import pandas as pd
from zenml import log_metadata, step

from liverlesion.config import SplitConfig
from liverlesion.splitting import manifest_hash, split_lesions, split_like_reference, split_summary

log = logging.getLogger(__name__)


@step
def split(
    lesions: pd.DataFrame, validation_report: dict[str, Any], segmentation_lesions: pd.DataFrame, config: SplitConfig
) -> tuple[Annotated[pd.DataFrame, "split_manifest"], Annotated[str, "split_manifest_hash"]]:
    """Patient-level, label-stratified, seeded split; runs only on validated data.

    Lesions of an automatic segmentation are split by their patients, and the patients as their
    reference lesions split (``segmentation_lesions``): every method sees the same test patients.
    """
    if not validation_report.get("success"):
        raise ValueError("split refuses data that failed validation: see the validate step's report")
    reference = segmentation_lesions[segmentation_lesions["kind"] == "reference"]
    if reference.empty:
        manifest = split_lesions(lesions, config.val_fraction, config.test_fraction, config.seed)
    else:
        manifest = split_like_reference(lesions, reference, config.val_fraction, config.test_fraction, config.seed)
    digest = manifest_hash(manifest)
    summary = split_summary(manifest)
    log.info(f"manifest {digest[:12]}\n{summary.to_string()}")
    log_metadata({"manifest_hash": digest, "summary": summary.reset_index().to_dict(orient="records")})
    return manifest, digest
