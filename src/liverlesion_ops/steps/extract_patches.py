from typing import Annotated

import numpy as np
import pandas as pd
from zenml import log_metadata, step

from liverlesion.config import PatchConfig
from liverlesion.crops import LesionCrops
from liverlesion.patches import extract_cohort_patches
from liverlesion.progress import progress_printer
from liverlesion_ops.steps.materializers import PatchArrayMaterializer


@step(output_materializers={"patches": PatchArrayMaterializer})
def extract_patches(
    lesions: pd.DataFrame, crops: LesionCrops, config: PatchConfig
) -> tuple[Annotated[np.ndarray, "patches"], Annotated[pd.DataFrame, "patch_index"]]:
    """The paper's three orthogonal, padded, standardised patches per lesion, cut from the ingested crops."""
    patches, index = extract_cohort_patches(
        lesions,
        crops,
        config.margin_mm,
        config.canvas,
        config.output_size,
        config.square_pixels,
        progress=progress_printer("extract_patches"),
    )
    log_metadata({"patch_shape": list(patches.shape), "shrunk_to_fit": int((index["fit_scale"] < 1).sum())})
    return patches, index
