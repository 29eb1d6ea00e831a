"""The paper's Table 2: the data steps once, then every chosen model trained and scored, then one report.

ingest -> segment -> extract_patches -> validate -> split
    -> texture_features -> train_texture_svm                       (SVM with texture features)
    -> train_<model> -> evaluate_<model>                           (each CNN of compare.models)
    -> compare_models                                              (Table 2 with intervals)
"""

from zenml import pipeline

from liverlesion.config import Profile
from liverlesion.zoo import model_entry
from liverlesion_ops.pipelines.placement import train_settings
from liverlesion_ops.pipelines.prepare import prepare_patches
from liverlesion_ops.steps.compare_models import compare_models
from liverlesion_ops.steps.evaluate import evaluate
from liverlesion_ops.steps.texture_features import texture_features
from liverlesion_ops.steps.train import train
from liverlesion_ops.steps.train_texture_svm import train_texture_svm


@pipeline(enable_cache=True)
def comparison_pipeline(
    data_dir: str, data_version: str, profile: Profile, code_version: str, segmenter_uri: str = ""
) -> None:
    data = prepare_patches(data_dir, data_version, profile, code_version, segmenter_uri)
    common = {"profile": profile.name, "experiment": profile.register.experiment, "data_version": data_version}
    # Table 2 compares every model at the one threshold of evaluate.threshold (the paper's), never at an
    # operating point each CNN would choose for itself on its validation lesions
    table2_scoring = profile.evaluate.model_copy(update={"operating_point": None})
    predictions, run_ids = [], []
    for key in profile.compare.models:
        if model_entry(key).kind == "texture_svm":
            features = texture_features(data["lesions"], data["crops"])
            _, scored, run_id = train_texture_svm(
                features,
                data["manifest"],
                data["lesions"],
                data["manifest_hash"],
                config=profile.compare,
                evaluate_config=profile.evaluate,
                seed=profile.train.seed,
                model_key=key,
                id=f"train_{key}",
                **common,
            )
        else:
            model, _, run_id = train.with_options(settings=train_settings())(  # one GPU on Kubeflow
                data["patches"],
                data["patch_index"],
                data["manifest"],
                data["manifest_hash"],
                config=profile.compare.train_config(key, profile.train),
                patch_config=profile.patches,
                model_key=key,
                id=f"train_{key}",
                **common,
            )
            _, scored = evaluate(
                model,
                data["patches"],
                data["patch_index"],
                data["manifest"],
                data["lesions"],
                run_id,
                config=table2_scoring,
                model_key=key,
                cases=data["cases"],
                id=f"evaluate_{key}",
            )
        predictions.append(scored)
        run_ids.append(run_id)
    compare_models(
        predictions,
        run_ids,
        model_keys=list(profile.compare.models),
        initial_weights=[profile.compare.initialisation(key, profile.train) for key in profile.compare.models],
        config=profile.evaluate,
        split_manifest_hash=data["manifest_hash"],
        **common,
    )
