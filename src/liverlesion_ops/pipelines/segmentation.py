"""The learned segmentation cascade: the data steps on the reference masks, then train_segmenter (trains,
measures on the test patients, registers in MLflow)."""

from zenml import pipeline

from liverlesion.config import Profile
from liverlesion_ops.pipelines.prepare import prepare_patches
from liverlesion_ops.steps.train_segmenter import train_segmenter


@pipeline(enable_cache=True)
def segmenter_pipeline(data_dir: str, data_version: str, profile: Profile, code_version: str) -> None:
    data = prepare_patches(data_dir, data_version, profile, code_version)
    train_segmenter(
        data["cases"],
        data["manifest"],
        data["manifest_hash"],
        settings=profile.segmenter,
        segment=profile.segment,
        model_name=profile.segment.learned_model.partition("@")[0],
        experiment=profile.segment_experiment,
        data_version=data_version,
        code_version=code_version,
        profile=profile.name,
    )
