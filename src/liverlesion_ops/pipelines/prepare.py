"""The shared front of every pipeline: ingest -> segment -> extract_patches -> validate -> split."""

from typing import Any

from zenml import pipeline

from liverlesion.config import Profile
from liverlesion_ops.steps.extract_patches import extract_patches
from liverlesion_ops.steps.ingest import ingest
from liverlesion_ops.steps.segment import segment
from liverlesion_ops.steps.split import split
from liverlesion_ops.steps.validate import validate


def prepare_patches(
    data_dir: str, data_version: str, profile: Profile, code_version: str, segmenter_uri: str = ""
) -> dict[str, Any]:
    """Invoke the five data steps inside a pipeline; returns their outputs by name.

    ``code_version`` (``lineage.code_version``) keys ingest's cache: ZenML keys a step by its own
    source, not by the domain code it calls, so new code must re-run the data steps explicitly.
    """
    # the crops keep the largest margin a later step needs: the patches' (texture needs none)
    cases, lesion_types, _, crops, segmentation_cases, segmentation_lesions = ingest(
        data_dir=data_dir,
        data_version=data_version,
        config=profile.ingest,
        crop_margin_mm=profile.patches.margin_mm,
        code_version=code_version,
        segment=profile.segment,
        segmenter_uri=segmenter_uri,
    )
    lesions = segment(cases, lesion_types, crops)
    patches, patch_index = extract_patches(lesions, crops, config=profile.patches)
    report = validate(
        cases, lesions, patch_index, patches, rules=profile.validation_rules(), patch_shape=profile.patches.size
    )
    manifest, manifest_hash = split(lesions, report, segmentation_lesions, config=profile.split)
    return {
        "cases": cases,
        "crops": crops,
        "lesions": lesions,
        "patches": patches,
        "patch_index": patch_index,
        "manifest": manifest,
        "manifest_hash": manifest_hash,
        "segmentation_cases": segmentation_cases,
        "segmentation_lesions": segmentation_lesions,
    }


@pipeline(enable_cache=True)
def patches_pipeline(
    data_dir: str, data_version: str, profile: Profile, code_version: str, segmenter_uri: str = ""
) -> None:
    """The validated, split patches of a profile and nothing more (``liverlesion export``)."""
    prepare_patches(data_dir, data_version, profile, code_version, segmenter_uri)
