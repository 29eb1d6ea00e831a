import tempfile
from pathlib import Path
from typing import Annotated, Any

import mlflow
import numpy as np
import pandas as pd
from zenml import ArtifactConfig, log_metadata, step
from zenml.enums import ArtifactType

from liverlesion.config import PatchConfig, TrainConfig
from liverlesion.protocol import resolve_training_precision
from liverlesion.splitting import arrays_for_set
from liverlesion_ops import project
from liverlesion_ops.steps.materializers import KerasModelMaterializer
from liverlesion_ops.tracking import start_tracked_run


@step(output_materializers={"model": KerasModelMaterializer})
def train(
    patches: np.ndarray,
    patch_index: pd.DataFrame,
    split_manifest: pd.DataFrame,
    split_manifest_hash: str,
    config: TrainConfig,
    patch_config: PatchConfig,
    profile: str,
    experiment: str,
    data_version: str,
    model_key: str = "",
    fingerprint: str = "",
) -> tuple[
    # a keras.Model, typed Any so that importing the pipelines loads no Keras (KerasModelMaterializer)
    Annotated[Any, ArtifactConfig(name="model", artifact_type=ArtifactType.MODEL)],
    Annotated[dict[str, Any], "training_history"],
    Annotated[str, "mlflow_run_id"],
]:
    """A backbone + the paper's FC head on the train set, best validation epoch kept; tracked in MLflow.

    ``model_key`` (a Table 2 model, ``liverlesion compare``) names the MLflow run and tags it.
    ``fingerprint`` (``lineage.training_fingerprint``: data version, training settings, code) keys
    the cache, so new code retrains. The code's git commit is recorded here, when the model is
    trained (a cached model keeps the commit that trained it), with the split manifest itself.

    It trains on the device the Keras backend finds (``config.backend``; JAX's CUDA build on a GPU),
    in ``config.precision`` there (``auto``: mixed bfloat16 on an accelerator); the model it returns
    is float32 either way, so evaluation and serving do not depend on where it was trained.
    """
    import keras

    from liverlesion.model import build_model
    from liverlesion.precision import with_precision
    from liverlesion.training import (
        accelerator,
        best_epoch,
        device_description,
        dtype_policy,
        seed_everything,
        train_classifier,
    )

    backend = keras.backend.backend()
    if config.backend is not None and backend != config.backend:
        raise RuntimeError(
            f"train.backend is {config.backend}, but this process loaded Keras with {backend}: "
            f"set KERAS_BACKEND={config.backend} where the step runs (its image, or the shell)"
        )
    device = accelerator()
    policy = resolve_training_precision(config.precision, device is not None)
    x_train, y_train, _ = arrays_for_set(patches, patch_index, split_manifest, "train")
    x_val, y_val, _ = arrays_for_set(patches, patch_index, split_manifest, "val")
    with start_tracked_run(
        experiment, model_key, profile, data_version, split_manifest_hash, model=model_key or config.backbone
    ) as active:
        commit = project.code_commit()
        mlflow.set_tags(
            {"git_commit": commit, "git_dirty": str(commit.endswith("-dirty")).lower(), "fingerprint": fingerprint}
        )
        with tempfile.TemporaryDirectory() as tmp:  # the patients and lesions of each set, for audits
            manifest_path = Path(tmp) / "split_manifest.csv"
            split_manifest.to_csv(manifest_path, index=False, lineterminator="\n")
            mlflow.log_artifact(str(manifest_path), artifact_path="lineage")
        mlflow.log_params(
            {
                **config.model_dump(),
                **{f"patch_{k}": v for k, v in patch_config.model_dump().items()},
                "input_shape": str(x_train.shape[1:]),
                "n_train": len(y_train),
                "n_val": len(y_val),
                "keras_backend": backend,
                "device": device_description(),
                "trained_in": policy,
            }
        )
        mlflow.set_tags({"keras_backend": backend, "accelerator": device or "none"})
        seed_everything(config.seed)  # before the weights are initialised, not only before fitting
        protocol = config.protocol()
        with dtype_policy(policy):  # the network and its training wrapper (Keras adds loss scaling for float16)
            model = build_model(
                x_train.shape[1:],
                backbone=config.backbone,
                weights=config.weights,
                dense_units=config.dense_units,
                dropout=config.dropout,
                bn_momentum=config.bn_momentum,
            )
            history = train_classifier(
                model,
                x_train,
                y_train,
                x_val,
                y_val,
                protocol,
                on_epoch=lambda epoch, logs: mlflow.log_metrics(logs, step=epoch),
            )
        model = with_precision(model, "float32")  # the kept epoch's weights (float32 under mixed precision too)
        kept = best_epoch(history[protocol.monitor], protocol.mode, protocol.tie_break)
        chosen = {
            "best_epoch": kept,
            "best_val_accuracy": history["val_accuracy"][kept],
            "best_val_loss": history["val_loss"][kept],
        }
        mlflow.log_metrics(chosen)
    log_metadata(
        {
            "mlflow_run_id": active.info.run_id,
            **chosen,
            "chosen_by": f"{protocol.monitor}, ties to the {protocol.tie_break}",
            "parameters": int(model.count_params()),
            "device": device_description(),
            "trained_in": policy,
        }
    )
    return (
        model,
        {
            "history": history,
            "best_epoch": kept,
            "git_commit": commit,
            "fingerprint": fingerprint,
            "parameters": int(model.count_params()),
            "input_shape": [int(d) for d in model.inputs[0].shape[1:]],  # for the model card, without the network
        },
        active.info.run_id,
    )
