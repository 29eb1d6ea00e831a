"""Registering a model version in MLflow with its lineage, all or nothing.

The version is created with every lineage tag at once; the champion alias moves last, only through
the promotion gate. If anything fails after the version exists, the version is deleted again, so
a failed run leaves neither a half-registered model nor a moved alias.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import keras
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from liverlesion.promotion import PromotionDecision, decide_promotion

METRIC_TAG_PREFIX = "metric."


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    alias: str
    decision: PromotionDecision
    model_uri: str


def champion_metric(client: MlflowClient, name: str, alias: str, metric: str) -> tuple[str | None, float | None]:
    """The current champion's version and its value of ``metric`` (None, None if no champion)."""
    try:
        champion = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None
    value = champion.tags.get(METRIC_TAG_PREFIX + metric)
    return champion.version, (float(value) if value is not None else None)


def model_card(lineage: dict[str, str], metrics: dict[str, float], input_shape) -> str:
    """The registered version's description: what it is, its input contract, how it scored."""
    weights = json.loads(lineage["config"])["train"]["weights"] if "config" in lineage else None
    init = f"initialised from {weights}" if weights else "randomly initialised (no pre-trained weights)"
    lines = [
        f"InceptionV3 backbone ({init}) + FC-512/Dropout-0.4 x2 + softmax, after Perdigon Romero et al., ISBI 2019.",
        "Task: colorectal liver metastasis (1) vs benign cyst (0) from three orthogonal CT patches per lesion.",
        f"Input: float32 {tuple(input_shape)} per lesion: channel 0 = largest cross-section, 1-2 = orthogonal planes; "
        "each cropped to the lesion bounding box + margin, padded with the box mean, standardised (mean 0, std 1).",
        "Output: softmax [P(cyst), P(metastasis)].",
        "Test metrics: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()),
        "Lineage: " + ", ".join(f"{k}={v}" for k, v in lineage.items() if k != "config"),
        "NOT FOR DIAGNOSTIC USE: research software; trained on synthetic phantoms unless the lineage says otherwise.",
    ]
    return "\n".join(lines)


def register_model_version(
    model: keras.Model,
    run_id: str,
    model_name: str,
    metrics: dict[str, float],
    lineage: dict[str, str],
    primary_metric: str,
    champion_alias: str,
    challenger_alias: str,
) -> Registration:
    """Log ``model`` to MLflow run ``run_id``, register a version and apply the promotion gate."""
    client = MlflowClient()
    sample = model.inputs[0].shape
    example_input = keras.ops.convert_to_numpy(keras.ops.zeros((1, *sample[1:])))
    signature = infer_signature(example_input, model.predict(example_input, verbose=0))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.keras.log_model(
            model, name="model", signature=signature,
            pip_requirements=[f"keras=={keras.__version__}", "tensorflow-cpu==2.21.0"],
        )
    tags = {**lineage, **{METRIC_TAG_PREFIX + k: f"{v:.6f}" for k, v in metrics.items()}}
    version = mlflow.register_model(info.model_uri, model_name, tags=tags)
    try:
        champion_version, champion_value = champion_metric(client, model_name, champion_alias, primary_metric)
        decision = decide_promotion(primary_metric, metrics[primary_metric], champion_value)
        if champion_version is not None:
            client.set_model_version_tag(model_name, version.version, "compared_with", f"v{champion_version}")
        client.set_model_version_tag(model_name, version.version, "promotion", "champion" if decision.promote else "challenger")
        client.set_model_version_tag(model_name, version.version, "promotion_reason", decision.reason)
        client.update_model_version(model_name, version.version, description=model_card(lineage, metrics, sample[1:]))
        alias = champion_alias if decision.promote else challenger_alias
        client.set_registered_model_alias(model_name, alias, version.version)
    except BaseException:
        client.delete_model_version(model_name, version.version)
        raise
    return Registration(model_name, str(version.version), alias, decision, info.model_uri)
