from typing import Annotated, Any

import mlflow
import pandas as pd
from zenml import step

from liverlesion.config import CompareConfig, EvaluateConfig
from liverlesion.evaluation import evaluate_test_set
from liverlesion.texture import TextureSVM, features_for_set
from liverlesion_ops.project import run_reports_dir
from liverlesion_ops.steps.evaluate import record_test_evaluation
from liverlesion_ops.tracking import start_tracked_run, zenml_run


@step
def train_texture_svm(
    features: pd.DataFrame,
    split_manifest: pd.DataFrame,
    lesions: pd.DataFrame,
    split_manifest_hash: str,
    config: CompareConfig,
    evaluate_config: EvaluateConfig,
    seed: int,
    profile: str,
    experiment: str,
    data_version: str,
    model_key: str = "svm_texture",
) -> tuple[
    Annotated[dict[str, Any], "test_metrics"],
    Annotated[pd.DataFrame, "test_predictions"],
    Annotated[str, "mlflow_run_id"],
]:
    """Table 2's baseline: an RBF SVM on texture features, C and gamma chosen on the validation split."""
    x_train, y_train, _ = features_for_set(features, split_manifest, "train")
    x_val, y_val, _ = features_for_set(features, split_manifest, "val")
    x_test, y_test, test_ids = features_for_set(features, split_manifest, "test")
    svm = TextureSVM(config.svm_c_grid, config.svm_gamma_grid).fit(
        x_train, y_train, x_val, y_val, seed=seed, threshold=evaluate_config.threshold
    )
    probability = svm.predict_proba(x_test)
    result = evaluate_test_set(
        test_ids, y_test, probability, split_manifest, lesions, evaluate_config.threshold, evaluate_config.bootstrap
    )

    run = zenml_run()
    folder = run_reports_dir(run.name) / model_key
    folder.mkdir(exist_ok=True)
    grid_path = folder / "svm_grid_scores.csv"
    svm.grid_scores.to_csv(grid_path, index=False)
    with start_tracked_run(
        experiment, model_key, profile, data_version, split_manifest_hash, model=model_key
    ) as active:
        mlflow.log_params(
            {
                "C_grid": str(svm.c_grid),
                "gamma_grid": str(svm.gamma_grid),
                "seed": seed,
                "features": ",".join(svm.feature_names),
                "n_train": len(y_train),
                "n_val": len(y_val),
            }
        )
        mlflow.log_metrics(
            {
                "chosen_C": svm.chosen["C"],
                "chosen_gamma": svm.chosen["gamma"],
                "val_roc_auc": svm.chosen["val_roc_auc"],
                "val_accuracy": svm.chosen["val_accuracy"],
            }
        )
        mlflow.log_artifact(str(grid_path), artifact_path="svm")
        mlflow.sklearn.log_model(svm.pipeline, name="model")
    summary = record_test_evaluation(
        result, model_key, folder, active.info.run_id, evaluate_config.threshold, tag="train_texture_svm"
    )
    summary["chosen"] = svm.chosen
    return summary, result.predictions, active.info.run_id
