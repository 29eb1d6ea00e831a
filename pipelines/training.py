"""ingest -> segment -> extract_patches -> validate -> split -> train -> evaluate -> register"""

from typing import Any

from zenml import pipeline

from liverlesion.config import Profile
from pipelines.prepare import prepare_patches
from steps.evaluate import evaluate
from steps.register import register
from steps.train import train


@pipeline(enable_cache=True)
def training_pipeline(data_dir: str, data_version: str, profile: Profile, profile_config: dict[str, Any]) -> None:
    data = prepare_patches(data_dir, data_version, profile)
    model, _, run_id = train(
        data["patches"], data["patch_index"], data["manifest"], data["manifest_hash"], config=profile.train,
        patch_config=profile.patches, profile=profile.name, experiment=profile.register.experiment,
        data_version=data_version,
    )
    metrics, _ = evaluate(model, data["patches"], data["patch_index"], data["manifest"], data["lesions"], run_id,
                          config=profile.evaluate)
    register(
        model, metrics, run_id, data["manifest_hash"], data_version=data_version, profile=profile.name,
        profile_config=profile_config, config=profile.register,
    )
