from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from liverlesion.crops import LesionCrops
from liverlesion.ingestion import labelled_lesions, segment_cases, types_by_case
from liverlesion.progress import progress_printer


@step
def segment(cases: pd.DataFrame, lesion_types: pd.DataFrame, crops: LesionCrops) -> Annotated[pd.DataFrame, "lesions"]:
    """Lesion instances from the reference masks' crops (automatic segmentation comes later), with their labels.

    Training needs a label: lesions whose type is unknown are left out here, counted and named.
    """
    lesions, untyped = labelled_lesions(segment_cases(cases, crops, types_by_case(lesion_types),
                                                      progress=progress_printer("segment")))
    if not untyped.empty:
        print(f"[segment] {len(untyped)} lesion(s) have no type and are left out of training: "
              + ", ".join(untyped["lesion_id"]), flush=True)
    log_metadata({"source": "reference masks", "lesions": len(lesions), "untyped_lesions_left_out": untyped["lesion_id"].tolist(),
                  "per_class": {str(k): int(v) for k, v in lesions["label_name"].value_counts().items()}})
    return lesions
