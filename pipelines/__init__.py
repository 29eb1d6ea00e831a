"""ZenML pipeline definitions: wiring only."""

from pipelines.prepare import patches_pipeline
from pipelines.training import training_pipeline

__all__ = ["patches_pipeline", "training_pipeline"]
