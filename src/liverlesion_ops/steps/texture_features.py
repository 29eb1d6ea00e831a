from typing import Annotated

import pandas as pd
from zenml import log_metadata, step

from liverlesion.crops import LesionCrops
from liverlesion.progress import progress_printer
from liverlesion.texture import cohort_texture_table


@step
def texture_features(lesions: pd.DataFrame, crops: LesionCrops) -> Annotated[pd.DataFrame, "texture_features"]:
    """First-order HU statistics and GLCM (Haralick-style) features of every lesion, from the ingested crops."""
    table = cohort_texture_table(lesions, crops, progress=progress_printer("texture_features"))
    log_metadata({"lesions": len(table), "features": len(table.columns) - 1})
    return table
