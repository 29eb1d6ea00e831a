from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from liverlesion.ingestion import segment_cases
from liverlesion.progress import progress_printer


@step
def segment(cases: pd.DataFrame) -> Annotated[pd.DataFrame, "lesions"]:
    """Lesion instances from the reference masks (automatic segmentation comes later)."""
    lesions = segment_cases(cases, progress=progress_printer("segment"))
    log_metadata({"source": "reference masks", "lesions": len(lesions),
                  "per_class": {str(k): int(v) for k, v in lesions["label_name"].value_counts().items()}})
    return lesions
