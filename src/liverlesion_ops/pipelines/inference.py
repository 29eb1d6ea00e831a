"""ingest -> predict_cases: a folder of cases answered by one registered model version."""

from zenml import pipeline

from liverlesion.config import Profile
from liverlesion_ops.steps.ingest import ingest
from liverlesion_ops.steps.predict_cases import predict_cases


@pipeline(enable_cache=True)
def batch_inference_pipeline(
    data_dir: str, data_version: str, profile: Profile, model_name: str, model_version: str
) -> None:
    # predict_cases reads each whole CT again: its outputs (label volume, lesion map) are whole-volume
    # the cases' own masks, whatever the profile segments with: this pipeline answers for the drawn lesions
    cases, *_ = ingest(
        data_dir=data_dir,
        data_version=data_version,
        config=profile.ingest,
        crop_margin_mm=profile.patches.margin_mm,
        segment=profile.segment.model_copy(update={"method": "reference"}),
    )
    predict_cases(
        cases,
        model_name=model_name,
        model_version=model_version,
        data_version=data_version,
        experiment=profile.register.experiment,
    )
