import logging
from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from liverlesion.crops import LesionCrops
from liverlesion.ingestion import labelled_lesions, segment_cases, types_by_case
from liverlesion.progress import progress_printer

log = logging.getLogger(__name__)


@step
def segment(cases: pd.DataFrame, lesion_types: pd.DataFrame, crops: LesionCrops) -> Annotated[pd.DataFrame, "lesions"]:
    """Lesion instances from the ingested crops (reference masks or an automatic segmentation), with their labels.

    Training needs a label: lesions whose type is unknown (and automatic lesions that match no
    reference lesion: invented) are left out here, counted and named; the segmentation measures
    count them too.
    """
    lesions, untyped = labelled_lesions(
        segment_cases(cases, crops, types_by_case(lesion_types), progress=progress_printer("segment"))
    )
    if not untyped.empty:
        why = "have no type" if crops.source == "reference" else "match no reference lesion (invented) or have no type"
        log.info(
            f"{len(untyped)} lesion(s) {why} and are left out of training: " + ", ".join(untyped["lesion_id"]),
        )
    log_metadata(
        {
            "source": f"{crops.source} masks",
            "lesions": len(lesions),
            "untyped_lesions_left_out": untyped["lesion_id"].tolist(),
            "per_class": {str(k): int(v) for k, v in lesions["label_name"].value_counts().items()},
        }
    )
    return lesions
