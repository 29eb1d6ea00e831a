"""The training DAG: ingest -> segment -> extract_patches -> validate -> split -> train -> evaluate
(+ evaluate_segmentation) -> register."""

from typing import Any

from zenml import pipeline

from liverlesion.config import Profile
from liverlesion_ops.pipelines.placement import train_settings
from liverlesion_ops.pipelines.prepare import prepare_patches
from liverlesion_ops.steps.evaluate import evaluate
from liverlesion_ops.steps.evaluate_segmentation import evaluate_segmentation
from liverlesion_ops.steps.register import register
from liverlesion_ops.steps.train import train


@pipeline(enable_cache=True)
def training_pipeline(
    data_dir: str,
    data_version: str,
    profile: Profile,
    training_settings: dict[str, Any],
    code_version: str,
    fingerprint: str,
    segmenter_uri: str = "",
) -> None:
    data = prepare_patches(data_dir, data_version, profile, code_version, segmenter_uri)
    model, training, run_id = train.with_options(settings=train_settings())(  # one GPU on Kubeflow
        data["patches"],
        data["patch_index"],
        data["manifest"],
        data["manifest_hash"],
        config=profile.train,
        patch_config=profile.patches,
        profile=profile.name,
        experiment=profile.register.experiment,
        data_version=data_version,
        fingerprint=fingerprint,
    )
    metrics, predictions = evaluate(
        model,
        data["patches"],
        data["patch_index"],
        data["manifest"],
        data["lesions"],
        run_id,
        config=profile.evaluate,
        cases=data["cases"],
    )
    evaluate_segmentation(
        data["segmentation_cases"],
        data["segmentation_lesions"],
        data["manifest"],
        predictions,
        run_id,
        metrics,
        segment=profile.segment,
    )
    register(
        model,
        metrics,
        training,
        run_id,
        data["manifest"],
        data["manifest_hash"],
        data["cases"],
        data["lesions"],
        data_dir=data_dir,
        data_version=data_version,
        profile=profile.name,
        training_settings=training_settings,
        code_version=code_version,
        config=profile.register,
        segmentation_lesions=data["segmentation_lesions"],
    )
