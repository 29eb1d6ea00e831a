"""ZenML steps: thin wrappers over the ``liverlesion`` domain package, one per file."""

from steps.evaluate import evaluate
from steps.extract_patches import extract_patches
from steps.ingest import ingest
from steps.register import register
from steps.segment import segment
from steps.split import split
from steps.train import train
from steps.validate import validate

__all__ = ["ingest", "segment", "extract_patches", "validate", "split", "train", "evaluate", "register"]
