"""ingest -> segment -> extract_patches -> validate -> split -> train -> evaluate -> register"""

from typing import Any

from zenml import pipeline

from liverlesion.config import Profile
from steps.evaluate import evaluate
from steps.extract_patches import extract_patches
from steps.ingest import ingest
from steps.register import register
from steps.segment import segment
from steps.split import split
from steps.train import train
from steps.validate import validate


@pipeline(enable_cache=True)
def training_pipeline(data_dir: str, data_version: str, profile: Profile, profile_config: dict[str, Any]) -> None:
    cases = ingest(data_dir=data_dir, data_version=data_version)
    lesions = segment(cases)
    patches, patch_index = extract_patches(cases, lesions, config=profile.patches)
    report = validate(cases, lesions, patch_index, patches, rules=profile.validation)
    manifest, manifest_hash = split(lesions, report, config=profile.split)
    model, _, run_id = train(
        patches, patch_index, manifest, manifest_hash, config=profile.train, patch_config=profile.patches,
        profile=profile.name, experiment=profile.register.experiment, data_version=data_version,
    )
    metrics, _ = evaluate(model, patches, patch_index, manifest, lesions, run_id, config=profile.evaluate)
    register(
        model, metrics, run_id, manifest_hash, data_version=data_version, profile=profile.name,
        profile_config=profile_config, config=profile.register,
    )
