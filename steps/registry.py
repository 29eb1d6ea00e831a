"""Registering a model version in MLflow with its lineage, all or nothing.

The version is created with every lineage tag at once; the champion alias moves last, only through
the promotion gate. If anything fails after the version exists, the version is deleted again, so
a failed run leaves neither a half-registered model nor a moved alias.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import keras
import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema

import liverlesion
from liverlesion import paths
from liverlesion.predict import RESULT_COLUMNS
from liverlesion.promotion import PromotionDecision, decide_promotion

METRIC_TAG_PREFIX = "metric."
#: decimals of the metric tags; the gate compares at this precision, the precision its record keeps
METRIC_TAG_DECIMALS = 6
#: the name of the pyfunc model in the run (and what ``models:/<name>@champion`` loads)
PYFUNC_NAME = "lesion_classifier"
#: the serving environment: the GPU-capable TensorFlow build (``tensorflow``, not ``tensorflow-cpu``,
#: which a GPU server must not be pinned to), and what the domain package's inference path imports
SERVING_PACKAGES = ("keras", "numpy", "pandas", "scipy", "scikit-image", "nibabel")
SERVING_TENSORFLOW = "tensorflow==2.21.0"
_RESULT_TYPES = {"instance": "long", "volume_ml": "double", "x_mm": "double", "y_mm": "double", "z_mm": "double",
                 "p_metastasis": "double", "predicted": "long"}
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image"), ColSpec("string", "mask"),
                   ColSpec("string", "case_id", required=False), ColSpec("string", "mask_encoding", required=False)]),
    outputs=Schema([ColSpec(_RESULT_TYPES.get(c, "string"), c) for c in RESULT_COLUMNS]),
)


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


def serving_requirements() -> list[str]:
    """Pinned requirements of the served model: the installed versions, TensorFlow's GPU-capable build."""
    return [SERVING_TENSORFLOW, *(f"{name}=={installed_version(name)}" for name in SERVING_PACKAGES)]


def log_serving_model(model: keras.Model, settings: dict[str, Any]) -> str:
    """Log the pyfunc that takes a CT and its lesion mask (``serving/lesion_classifier.py``) in the
    active run: the Keras network, the patch settings and threshold, the domain package as code.

    Returns:
        The logged model's URI.
    """
    with tempfile.TemporaryDirectory(prefix="liverlesion-pyfunc-") as tmp:
        network, config = Path(tmp) / "model.keras", Path(tmp) / "settings.json"
        model.save(network)
        config.write_text(json.dumps(settings, indent=2, sort_keys=True))
        with warnings.catch_warnings():  # an input example would be a whole CT in base64: the signature says it
            warnings.filterwarnings("ignore", message=".*An input example was not provided")  # (colour codes first)
            info = mlflow.pyfunc.log_model(
                name=PYFUNC_NAME,
                python_model=str(paths.code_root() / "serving" / "lesion_classifier.py"),
                artifacts={"keras_model": str(network), "settings": str(config)},
                code_paths=[str(Path(liverlesion.__file__).parent)],
                signature=SIGNATURE,
                pip_requirements=serving_requirements(),
            )
    return info.model_uri


def serving_settings(model_name: str, lineage: dict[str, str]) -> dict[str, Any]:
    """What the served model needs besides the network: the profile's patch settings and scoring."""
    profile = json.loads(lineage["config"]) if "config" in lineage else {}
    evaluate = profile.get("evaluate", {})
    patches = profile.get("patches", {"margin_mm": 4.0, "canvas": [96, 80], "output_size": None, "square_pixels": True})
    return {"model_name": model_name, "patches": patches, "threshold": evaluate.get("threshold", 0.5),
            "precision": evaluate.get("precision", "auto"), "profile": profile.get("name", "")}


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
    """Log ``model`` to MLflow run ``run_id`` as the pyfunc clients call, register a version and
    apply the promotion gate."""
    client = MlflowClient()
    sample = model.inputs[0].shape
    with mlflow.start_run(run_id=run_id):
        model_uri = log_serving_model(model, serving_settings(model_name, lineage))
    tags = {**lineage, **{METRIC_TAG_PREFIX + k: f"{v:.{METRIC_TAG_DECIMALS}f}" for k, v in metrics.items()}}
    version = mlflow.register_model(model_uri, model_name, tags=tags)
    try:
        champion_version, champion_value = champion_metric(client, model_name, champion_alias, primary_metric)
        # the champion's value is its tag, rounded: round the candidate alike, or a tie (the same model
        # retrained) would be promoted whenever rounding went down
        decision = decide_promotion(primary_metric, round(metrics[primary_metric], METRIC_TAG_DECIMALS), champion_value)
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
    return Registration(model_name, str(version.version), alias, decision, model_uri)
