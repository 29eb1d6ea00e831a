"""ZenML pipeline definitions: wiring only."""

from liverlesion_ops.pipelines.comparison import comparison_pipeline
from liverlesion_ops.pipelines.inference import batch_inference_pipeline
from liverlesion_ops.pipelines.prepare import patches_pipeline
from liverlesion_ops.pipelines.segmentation import segmenter_pipeline
from liverlesion_ops.pipelines.training import training_pipeline

__all__ = [
    "batch_inference_pipeline",
    "comparison_pipeline",
    "patches_pipeline",
    "segmenter_pipeline",
    "training_pipeline",
]
