"""ZenML pipeline definitions: wiring only."""

from pipelines.comparison import comparison_pipeline
from pipelines.inference import batch_inference_pipeline
from pipelines.prepare import patches_pipeline
from pipelines.segmentation import segmenter_pipeline
from pipelines.training import training_pipeline

__all__ = [
    "batch_inference_pipeline",
    "comparison_pipeline",
    "patches_pipeline",
    "segmenter_pipeline",
    "training_pipeline",
]
