"""The shared front of every pipeline: ingest -> segment -> extract_patches -> validate -> split."""

from typing import Any

from zenml import pipeline

from liverlesion.config import Profile
from steps.extract_patches import extract_patches
from steps.ingest import ingest
from steps.segment import segment
from steps.split import split
from steps.validate import validate


def prepare_patches(data_dir: str, data_version: str, profile: Profile) -> dict[str, Any]:
    """Invoke the five data steps inside a pipeline; returns their outputs by name."""
    cases, lesion_types, _ = ingest(data_dir=data_dir, data_version=data_version, config=profile.ingest)
    lesions = segment(cases, lesion_types)
    patches, patch_index = extract_patches(cases, lesions, config=profile.patches)
    report = validate(cases, lesions, patch_index, patches, rules=profile.validation)
    manifest, manifest_hash = split(lesions, report, config=profile.split)
    return {"cases": cases, "lesions": lesions, "patches": patches, "patch_index": patch_index,
            "manifest": manifest, "manifest_hash": manifest_hash}


@pipeline(enable_cache=True)
def patches_pipeline(data_dir: str, data_version: str, profile: Profile) -> None:
    """The validated, split patches of a profile and nothing more (``liverlesion export``)."""
    prepare_patches(data_dir, data_version, profile)
