import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
from zenml import log_metadata, step
from zenml.artifacts.unmaterialized_artifact import UnmaterializedArtifact
from zenml.io import fileio

from liverlesion.config import RegisterConfig
from liverlesion.contract import COHORT_FILE
from liverlesion.modelcard import build_model_card, cohort_summary, render_markdown, split_sizes
from liverlesion.promotion import GateRules
from liverlesion_ops.registry.gate import cohort_gate_set, register_and_gate, split_gate_set
from liverlesion_ops.registry.store import CHAMPION
from liverlesion_ops.steps.materializers import MODEL_FILE
from liverlesion_ops.tracking import use_tracking_store, zenml_run

log = logging.getLogger(__name__)


@step
def register(
    model: UnmaterializedArtifact,  # the train step's network, its .keras file (KerasModelMaterializer) not loaded
    test_metrics: dict[str, Any],
    training: dict[str, Any],
    mlflow_run_id: str,
    split_manifest: pd.DataFrame,
    split_manifest_hash: str,
    cases: pd.DataFrame,
    lesions: pd.DataFrame,
    data_dir: str,
    data_version: str,
    profile: str,
    training_settings: dict[str, Any],
    code_version: str,
    config: RegisterConfig,
    segmentation_lesions: pd.DataFrame | None = None,
) -> Annotated[dict[str, Any], "registration"]:
    """A registered MLflow model version with its lineage and model card; aliases only through the gate.

    Takes only what the model depends on and how it is filed (``training_settings``, not the whole
    profile), so a change of an unrelated setting reuses this step; and registration is idempotent
    per training run, so a re-run never registers a cached model twice. The gate scores the new
    version and the champion by their registered artefacts on the same lesions (the reference lesions
    of the test patients, when the run's lesions came from automatic segmentation). If it fails, the new
    version is deleted again: no half-registered model, no moved alias.
    """
    use_tracking_store()
    run = zenml_run()
    commit = training["git_commit"]
    lineage = {
        "data_version": data_version,
        "split_manifest_hash": split_manifest_hash,
        "git_commit": commit,
        "git_dirty": str(commit.endswith("-dirty")).lower(),
        "fingerprint": training["fingerprint"],
        "code_version": code_version,
        "profile": profile,
        "config": json.dumps(training_settings, sort_keys=True, separators=(",", ":")),
        "zenml_run_id": str(run.id),
        "zenml_run_name": run.name,
        "mlflow_run_id": mlflow_run_id,
    }
    meta_path = Path(data_dir) / COHORT_FILE
    card = build_model_card(
        profile={**training_settings, "name": profile},
        metrics=test_metrics["metrics"],
        intervals=test_metrics.get("intervals", {}),
        input_shape=tuple(training["input_shape"]),
        n_parameters=int(training["parameters"]),
        precision=test_metrics.get("inference_precision", ""),
        data_version=data_version,
        cohort=cohort_summary(cases, lesions, json.loads(meta_path.read_text()) if meta_path.exists() else None),
        split=split_sizes(split_manifest),
        lineage=lineage,
        model_name=config.model_name,
        evaluated=test_metrics,
    )
    rules = GateRules(config.gate.primary_metric, config.gate.min_margin, dict(config.gate.floors))
    pinned = config.gate.evaluation_cohort

    def gate_set():
        return (
            split_gate_set(split_manifest, split_manifest_hash, cases, lesions, segmentation_lesions)
            if pinned is None
            else cohort_gate_set(pinned)
        )

    name = config.model_name
    # the network goes into the served model as the train step wrote it: its file copied, not loaded and saved again
    with tempfile.TemporaryDirectory(prefix="liverlesion-network-") as tmp:
        network_file = Path(tmp) / MODEL_FILE
        fileio.copy(os.path.join(model.uri, MODEL_FILE), str(network_file))
        result = register_and_gate(
            network_file,
            mlflow_run_id,
            name,
            test_metrics["metrics"],
            lineage,
            {**training_settings, "name": profile},
            card,
            render_markdown(card),
            gate_set,
            rules,
            config.experiment,
            context={"zenml_run_name": run.name, "fingerprint": training["fingerprint"]},
            scoring={k: test_metrics[k] for k in ("calibration", "threshold") if k in test_metrics},
        )
    version = result["version"]
    where = [a for a, v in result["aliases"].items() if v == version]
    if not result["created"]:
        log.info(
            f"training run {mlflow_run_id} is registered already as {name} v{version} "
            f"({result['decision'] or '?'}): no second version",
        )
    else:
        log.info(
            f"{name} v{version} -> {result['decision']} ({', '.join(where) or 'no alias'}): "
            f"{result['reason']}; scored on {result['scored_on']}",
        )
    summary = {
        "model_name": name,
        "lineage": lineage,
        "champion_version": result["aliases"].get(CHAMPION),
        **{
            k: result.get(k)
            for k in (
                "version",
                "created",
                "decision",
                "reason",
                "compared_with",
                "candidate",
                "champion",
                "aliases",
                "model_uri",
            )
        },
    }
    log_metadata({k: v for k, v in summary.items() if v is not None})
    return summary
